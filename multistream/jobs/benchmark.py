"""Measure the pipeline's speed and memory in ONE run, every figure against a baseline of the same run.

  python jobs/benchmark.py                      # demo videos (--demo-sets seeds of the demo set)
  python jobs/benchmark.py --input DIR          # any videos (labelled ones for the training section)
  python jobs/benchmark.py --no-extraction      # no extraction section (training extracts its data first)
  python jobs/benchmark.py --no-extraction --training-root runs/demo   # ... on an extracted run root's tables
  python jobs/benchmark.py --scale              # only the scale section (reports/scale.json)
  python jobs/benchmark.py --gpu-paper          # only the paper config on this machine's GPU (bench.paper_gpu)
  python jobs/benchmark.py --no-extraction --no-training --no-kernels   # only windows in duration
  python jobs/benchmark.py --localise --models runs/demo   # where predict in windows finds an anomaly

Sections: extraction (Ray Data vs the sequential loop, the ceiling, stages, memory), training (Ray Train vs
a plain torch loop, motion CNN and one RNN head), windows (one whole video in `video.windows`
through the per-video runner at each of `--window-lengths`, seconds of video per second and peak RSS against
the shortest's) and, where CUDA is at hand, GPU figures. Writes
reports/benchmark.json under --output (default: the demo run root, so its report shows it; the sections
run replace their keys, the others are kept) and prints a table.
"""

import argparse
import dataclasses
import json
import tempfile
from dataclasses import asdict

from multistream.bench import extraction, gpu, localise, training
from multistream.bench.inputs import benchmark_entries
from multistream.cli import job_parser, parse_job_args
from multistream.config import CONFIG_DIR
from multistream.store import storage
from multistream.store.layout import RunRoot
from multistream.store.preflight import hold_run_root


def main(argv: list[str] | None = None) -> int:
    parser = job_parser("Benchmark the pipeline against baselines measured in the same run", __doc__)
    parser.add_argument("--demo-sets", type=int, default=1,
                        help="demo sets (84 clips each) when no --input (more: start-up weighs less in the figures)")
    parser.add_argument("--lengths", default="10,60,600", help="video lengths (s) for the memory probe")
    on_off = argparse.BooleanOptionalAction
    parser.add_argument("--extraction", action=on_off, default=True, help="the extraction section (default: on)")
    parser.add_argument("--training", action=on_off, default=True, help="the training section (default: on)")
    parser.add_argument("--windows", action=on_off, default=True,
                        help="the windows section: one whole video at each --window-lengths through the per-video "
                             "runner with video.windows (the config's, else {length_s: 36, stride_s: 18}), seconds "
                             "of video per second and peak RSS (default: on; ~70 s for 10 s and 10 min on 2 cores)")
    parser.add_argument("--window-lengths", default="10,600", help="video lengths (s) for the windows section")
    parser.add_argument("--localise", action="store_true",
                        help="only where predict in windows finds an anomaly inside long videos: a trained run "
                             "(--models) on 5 seeds of long demo videos, each with and without one anomalous clip "
                             "(multistream.bench.localise; ~5 min on 2 cores)")
    parser.add_argument("--models", default="runs/demo", help="--localise: the trained run (default runs/demo)")
    parser.add_argument("--localise-windows", default=localise.DEMO_WINDOWS,
                        help=f"--localise: video.windows (default {localise.DEMO_WINDOWS}: the demo's clips are 2-4 s)")
    parser.add_argument("--kernels", action=on_off, default=True,
                        help="the per-call figures: RAFT per pair, the motion CNN's input per stack (default: on)")
    parser.add_argument("--motion-epochs", type=int, default=6,
                        help="motion CNN epochs in the training section (the demo config's: 12)")
    parser.add_argument("--rnn-epochs", type=int, default=100,
                        help="RNN head epochs in the training section: a demo epoch is 0.1 s; 100 of them (~10 s a "
                             "run) average out more of the machine's noise than 60 (the demo config's most)")
    parser.add_argument("--training-repeats", type=int, default=2,
                        help="Ray Train runs of each model, each between two plain runs; the median "
                             "efficiency is reported (the plain loop's own speed moves by ~10%% between runs)")
    parser.add_argument("--training-root", default=None,
                        help="an extracted local run root whose tables the training section copies and trains "
                             "on (default: the extraction section's, or a fresh extraction)")
    parser.add_argument("--scale", action="store_true",
                        help="only the scale section (multistream.bench.scale) → reports/scale.json")
    parser.add_argument("--gpu-paper", action="store_true",
                        help="only the paper config (default configs/ucf101.yaml) on a generated UCF101-shaped "
                             "archive on this machine's GPU: extraction, motion CNN steps and embedding pass, RNN "
                             "heads, each against itself alone (multistream.bench.paper_gpu)")
    parser.add_argument("--paper-clips", type=int, default=192, help="clips of the --gpu-paper archive")
    parser.add_argument("--paper-seconds", type=float, default=7.0, help="seconds per --gpu-paper clip (UCF101's mean)")
    parser.add_argument("--paper-device", default=None, help="--gpu-paper on this device (default: cuda)")
    cfg, args = parse_job_args(parser, argv)
    if args.gpu_paper:
        from multistream.bench import paper_gpu

        figures = paper_gpu.run(args.config or str(CONFIG_DIR / "ucf101.yaml"), args.overrides, args.paper_clips,
                                args.paper_seconds, args.paper_device)
        _write_report(cfg, {"gpu_paper": figures})
        print("\n".join(paper_gpu.format_lines(figures)))
        return 0
    if args.localise:
        rows = localise.localisation(args.models, windows=args.localise_windows)
        _write_report(cfg, {"localise": {"windows": args.localise_windows, "videos": rows}})
        print("\n".join(localise.format_lines(rows)))
        return 0
    if args.scale:
        from multistream.bench import scale

        with hold_run_root(cfg, "benchmark --scale"):  # it writes reports/scale.json under the run root
            return scale.run(args.config, args.overrides, cfg.paths.output)
    scratch = tempfile.mkdtemp(prefix="benchmark-")
    needs_entries = args.extraction or (args.training and not args.training_root)
    entries = benchmark_entries(cfg, args.demo_sets) if needs_entries else []
    report, lines = {}, []
    if args.extraction:
        figures = extraction.measure(cfg, entries, args.config, args.overrides,
                                     [int(s) for s in args.lengths.split(",") if s], scratch)
        report |= asdict(figures)
        lines += extraction.format_lines(report)
    if args.kernels:
        from multistream.bench import motion_input, raft

        report["raft"] = raft.raft_speed()
        lines += raft.format_lines(report["raft"])
        report["motion_input"] = motion_input.motion_input_speed()
        lines += motion_input.format_lines(report["motion_input"])
    if args.training:
        try:
            if args.training_root:
                scratch = tempfile.mkdtemp(prefix="benchmark-")
                training.copy_tables(args.training_root, scratch)
            elif not args.extraction:
                extraction.extract(cfg, entries, scratch)
            report["training"] = training.measure(cfg.replace(**{"paths.output": scratch}), args.config,
                                                  args.overrides, args.motion_epochs, args.rnn_epochs,
                                                  args.training_repeats)
        except ValueError as error:  # e.g. unlabelled videos
            parser.exit(2, f"{parser.prog}: training section: {error} (--no-training skips it)\n")
        lines += training.format_lines(report["training"])
    if args.windows:
        from multistream.bench import windows
        from multistream.ray.worker_env import worker_env

        spec = windows.DEFAULT_WINDOWS
        if cfg.video.windows is not None:
            spec = json.dumps(dataclasses.asdict(cfg.video.windows))
        lengths = [float(s) for s in args.window_lengths.split(",") if s]
        report["windows"] = {"spec": spec, "per_length": windows.windows_cost(
            args.config, args.overrides, worker_env(cfg.ray.torch_threads), lengths, spec)}
        lines += windows.format_lines(report["windows"])
    report["gpu"] = gpu.measure(cfg)
    if report["gpu"]:
        lines += gpu.format_lines(report["gpu"])
    _write_report(cfg, report)
    print("\n".join(lines))
    return 0


def _write_report(cfg, report: dict) -> None:
    """Merge `report` into reports/benchmark.json under the run root: the sections run replace their keys."""
    out = RunRoot(cfg.paths.output).benchmark
    with hold_run_root(cfg, "benchmark"):
        kept = json.loads(storage.read_text(out)) if storage.exists(out) else {}
        storage.write_text(out, json.dumps(kept | report, indent=2))
    print(f"→ {out}")


if __name__ == "__main__":
    raise SystemExit(main())

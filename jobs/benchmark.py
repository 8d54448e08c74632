"""Measure the pipeline's speed and memory in ONE run, every figure against a baseline of the same run.

  python jobs/benchmark.py                      # demo videos (--demo-sets seeds of the demo set)
  python jobs/benchmark.py --input DIR          # any videos
  python jobs/benchmark.py --no-extraction      # only the other sections

Sections: extraction (Ray Data vs the sequential loop, the ceiling, stages, memory) and, where CUDA is at
hand, GPU figures. Writes reports/benchmark.json under --output (default: the demo run root, so its report
shows it; the sections run replace their keys, the others are kept) and prints a table.
"""

import argparse
import json
import tempfile
from dataclasses import asdict

import _path  # noqa: F401

from multistream import storage
from multistream.bench import extraction, gpu
from multistream.bench.inputs import benchmark_entries
from multistream.cli import job_parser, parse_job_args
from multistream.layout import RunRoot

REPORT = "benchmark.json"


def main(argv: list[str] | None = None) -> int:
    parser = job_parser("Benchmark the pipeline against baselines measured in the same run", __doc__)
    parser.add_argument("--demo-sets", type=int, default=4,
                        help="demo sets (54 clips each) when no --input: enough that start-up is not the story")
    parser.add_argument("--lengths", default="10,60,600", help="video lengths (s) for the memory probe")
    parser.add_argument("--extraction", action=argparse.BooleanOptionalAction, default=True,
                        help="the extraction section (default: on)")
    parser.add_argument("--scale", action="store_true",
                        help="only the scale section (multistream.bench.scale) → reports/scale.json")
    cfg, args = parse_job_args(parser, argv)
    if args.scale:
        from multistream.bench import scale

        return scale.run(args.config, args.overrides, cfg.paths.output)
    entries = benchmark_entries(cfg, args.demo_sets)
    out = RunRoot(cfg.paths.output).report(REPORT)
    report = json.loads(storage.read_text(out)) if storage.exists(out) else {}
    lines = []
    if args.extraction:
        figures = extraction.measure(cfg, entries, args.config, args.overrides,
                                     [int(s) for s in args.lengths.split(",") if s], tempfile.mkdtemp())
        report |= asdict(figures)
        lines += extraction.format_lines(report)
    report["gpu"] = gpu.measure(cfg)
    if report["gpu"]:
        lines += gpu.format_lines(report["gpu"])
    storage.write_text(out, json.dumps(report, indent=2))
    print("\n".join(lines))
    print(f"→ {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

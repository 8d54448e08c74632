"""Measure extraction speed and memory in ONE run, every figure against a baseline of the same run.

  python jobs/benchmark.py                      # demo videos (--demo-sets seeds of the demo set)
  python jobs/benchmark.py --input DIR          # any videos

Writes reports/benchmark.json under --output (default: the demo run root, so its report shows it) and
prints a table.
"""

import json
import tempfile

import _path  # noqa: F401

from multistream import benchmark, storage
from multistream.cli import job_parser, parse_job_args
from multistream.demo import generate_demo
from multistream.manifest import build_manifest


def main(argv: list[str] | None = None) -> int:
    parser = job_parser("Benchmark the extraction pipeline against the sequential loop", __doc__)
    parser.add_argument("--demo-sets", type=int, default=4,
                        help="demo sets (54 clips each) when no --input: enough that start-up is not the story")
    parser.add_argument("--lengths", default="10,60,600", help="video lengths (s) for the memory probe")
    cfg, args = parse_job_args(parser, argv)
    if cfg.paths.demo:
        entries = []
        for seed in range(args.demo_sets):
            root = f"runs/benchmark-data/seed-{seed}"
            if not storage.exists(storage.join(root, "labels.csv")):
                generate_demo(root, seed=seed)
            entries += build_manifest(root)
        entries = [e.__class__(f"{i:04d}/{e.video_id}", e.uri, e.label, e.split) for i, e in enumerate(entries)]
    else:
        entries = build_manifest(cfg.paths.input, cfg.paths.labels, cfg.paths.split)
    report = benchmark.run_all(cfg, entries, args.config, args.overrides,
                               [int(s) for s in args.lengths.split(",") if s], tempfile.mkdtemp())
    out = storage.join(cfg.paths.output, "reports", "benchmark.json")
    storage.write_text(out, json.dumps(report, indent=2))
    print(benchmark.format_table(report))
    print(f"→ {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Sweep recurrent-head architectures on one stream with Ray Tune (ASHA) and write the paper's Table I.

Reads features/ (or motion/ for --stream temporal) under --output; writes reports/sweep.csv and
reports/sweep.md. The grid comes from the `tune` config section (cells, bidirectional, layers, hidden, attention).

  python jobs/tune_rnn.py                                   # the demo run's spatial stream
  python jobs/tune_rnn.py --config configs/ucf101.yaml --output s3://bucket/run --stream audio
"""

import _path  # noqa: F401

from multistream.cli import job_parser, parse_job_args
from multistream.ray.tune import run_tune_rnn
from multistream.schema import STREAMS


def main(argv: list[str] | None = None) -> int:
    parser = job_parser("Sweep RNN architectures on one stream (paper Table I)", __doc__)
    parser.add_argument("--stream", choices=STREAMS, default=None, help="stream to sweep (default: tune.stream)")
    cfg, args = parse_job_args(parser, argv)
    table = run_tune_rnn(cfg, args.stream)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    print(f"sweep of {len(table)} trials → {cfg.paths.output}/reports/sweep.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Sweep recurrent-head architectures on one stream with Ray Tune (ASHA) and write the paper's Table I.

Reads features/ (or motion/ for --stream temporal) under --output; writes reports/sweep.csv and
reports/sweep.md: by default Table I's 19 rows (17 plain variants, the best with attention, the best with the
SVM), val and test top-1/top-5 beside the paper's figures; `--set tune.grid=product` sweeps cells x
bidirectional x layers x hidden x attention from the `tune` section instead. The val split chooses.

  python jobs/tune_rnn.py                                   # the demo run's spatial stream
  python jobs/tune_rnn.py --config configs/ucf101.yaml --output s3://bucket/run --stream audio
"""

from multistream.cli import job_parser, parse_job_args
from multistream.ray.guard import start_job
from multistream.ray.tune import run_tune_rnn
from multistream.store.layout import RunRoot
from multistream.store.schema import STREAMS
from multistream.train.progress import job_run


def main(argv: list[str] | None = None) -> int:
    parser = job_parser("Sweep RNN architectures on one stream (paper Table I)", __doc__)
    parser.add_argument("--stream", choices=STREAMS, default=None, help="stream to sweep (default: tune.stream)")
    cfg, args = parse_job_args(parser, argv)
    # checks, then the run root's lease; the job's MLflow run where tracking.mlflow_uri is set
    with start_job(cfg, "tune_rnn"), job_run(cfg, "tune_rnn") as cfg:
        result = run_tune_rnn(cfg, args.stream)
    table = result.table
    columns = ["model", "hidden", "val_top1", "test_top1", "paper_top1", "epochs", "stopped_by"]
    print(table[columns].to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    print(f"sweep of {len(table)} rows in {result.wall_s:.1f} s, best on val: {result.best} → "
          f"{RunRoot(cfg.paths.output).sweep_md}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

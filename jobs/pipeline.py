"""Run the whole pipeline in one command: extract → train_motion → train_rnn (all streams) → fuse → report.

Writes every table and model of the separate jobs under --output, plus reports/report.html. With no
arguments it generates the embedded demo dataset (runs/demo-data) and runs on it (runs/demo). Re-running
with the same --output resumes: finished steps and videos are skipped, the report is rewritten.

  python jobs/pipeline.py                                  # the embedded demo, a few minutes on a laptop CPU
  python jobs/pipeline.py --input ../videos --output runs/mine
  ray job submit --working-dir . -- python jobs/pipeline.py --config configs/ucf101.yaml \\
      --input s3://bucket/UCF-101/ --set paths.labels=s3://bucket/ucfTrainTestlist/ --output s3://bucket/runs/ucf101
"""

import _path  # noqa: F401

from multistream import runinfo
from multistream.cli import job_parser, parse_job_args
from multistream.fuse_results import FuseResult, summary_table
from multistream.inputs import prepare_input
from multistream.pipeline import run_pipeline
from multistream.ray.guard import start_job


def main(argv: list[str] | None = None) -> int:
    cfg, _ = parse_job_args(job_parser("Run extract, train_motion, train_rnn, fuse and the report", __doc__), argv)
    prepare_input(cfg)
    with start_job(cfg, "pipeline", reads_input=True):  # one lease for every step
        result = run_pipeline(cfg)
    print(f"{'step':<14} {'status':<8} {'seconds':>9}")
    for step in result.steps:
        print(f"{step.step:<14} {step.status:<8} {step.seconds:>9.1f}")
    print(f"{'total':<23} {result.total_s:>9.1f}")
    metrics = runinfo.read_json(cfg.paths.output, runinfo.METRICS)
    print(summary_table(FuseResult.from_metrics(metrics)))
    print(f"report: {result.report}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

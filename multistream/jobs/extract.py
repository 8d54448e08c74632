"""Extract per-video streams on Ray Data: optical flow, adaptively sampled frame embeddings, audio embeddings.

Writes under --output: videos/ (one row per input video, failures included), features/, flow/.
Re-running with the same --output resumes: committed videos are skipped, error rows whose error was
transient (storage, network, timeout) are extracted again, every error row with --retry-errors.

  python jobs/extract.py                                   # the embedded demo → runs/demo
  python jobs/extract.py --input ../videos --output runs/mine
  ray job submit --working-dir . -- python jobs/extract.py --config configs/ucf101.yaml --input s3://bucket/UCF-101/
"""

from multistream.cli import add_retry_errors, job_parser, parse_job_args
from multistream.dataset.inputs import prepare_input
from multistream.ray.extract import run_extract
from multistream.ray.guard import start_job
from multistream.train.progress import job_run


def main(argv: list[str] | None = None) -> int:
    parser = job_parser("Extract flow, spatial and audio features into Parquet", __doc__)
    add_retry_errors(parser)
    cfg, args = parse_job_args(parser, argv)
    prepare_input(cfg)
    # checks, then the run root's lease; the job's MLflow run where tracking.mlflow_uri is set
    with start_job(cfg, "extract", reads_input=True), job_run(cfg, "extract") as cfg:
        summary = run_extract(cfg, retry_errors=args.retry_errors)
    retried = f" ({summary.retried} error rows retried)" if summary.retried else ""
    print(f"extract: {summary.total} videos, {summary.skipped} already done{retried}, {summary.ok} ok, "
          f"{len(summary.errors)} errors in {summary.seconds:.1f} s ({summary.parts} commits) → {cfg.paths.output}")
    if summary.skipped_line():
        print(summary.skipped_line())
    if summary.errors:
        print(f"errors by kind (every one is a row of {cfg.paths.output}/videos):")
        print("\n".join(summary.errors.lines()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Fuse the per-stream video embeddings with a linear SVM and fit the anomaly autoencoder on them.

Reads embeddings/ under --output; writes models/svm/, models/autoencoder/, models/bundle.json, predictions/, anomaly/ and the
"fusion" and "anomaly" sections of reports/metrics.json, then prints the accuracy of every stream alone,
of each pair and of all three (the paper's Table II) and the anomaly detector's calibration, false-positive and detection rates
and ROC AUC. Fits on the train split, calibrates the anomaly threshold on val, scores test. Always refits.

  python jobs/fuse.py                        # the embedded demo's run root, runs/demo
  python jobs/fuse.py --output runs/mine
  ray job submit --working-dir . -- python jobs/fuse.py --config configs/ucf101.yaml --output s3://bucket/runs/ucf101
"""

from multistream.cli import job_parser, parse_job_args
from multistream.demo.dataset import cue_figures
from multistream.fuse.results import summary_table
from multistream.fuse.run import run_fuse
from multistream.predict.bundle import BundleError, write_bundle
from multistream.ray.guard import start_job
from multistream.train.progress import job_run


def main(argv: list[str] | None = None) -> int:
    cfg, _ = parse_job_args(job_parser("Fit the fusion SVM and the anomaly autoencoder on video embeddings",
                                       __doc__), argv)
    # checks, then the run root's lease; the job's MLflow run where tracking.mlflow_uri is set
    with start_job(cfg, "fuse", uses_ray=False), job_run(cfg, "fuse") as cfg:
        result = run_fuse(cfg, cue_figures)  # the demo's cue figures: None for other classes
        try:
            write_bundle(cfg.paths.output, cfg)  # models/bundle.json: what jobs/predict.py applies
        except BundleError as error:  # e.g. fused before every stream was trained: nothing to seal yet
            print(f"fuse: no model bundle written: {error}")
    print(summary_table(result))
    print(f"fuse: models, predictions/ and anomaly/ → {cfg.paths.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Train the motion CNN (paper §IV.C) on stacks of optical flow with Ray Train, then embed every video's
sampled positions into the temporal stream's sequences.

Reads flow/, videos/ and features/ under --output (written by jobs/extract.py); writes models/motion_cnn/
and motion/. The val split picks the best epoch and stops training; the test split is scored once at the end.
Re-running resumes from the last epoch's checkpoint, and skips training once a model exists.

  python jobs/train_motion.py                       # the demo run root, runs/demo
  python jobs/train_motion.py --output s3://bucket/runs/ucf101 --config configs/ucf101.yaml
"""

from multistream.cli import job_parser, parse_job_args
from multistream.ray.guard import start_job
from multistream.ray.motion import run_train_motion
from multistream.train.progress import job_run


def main(argv: list[str] | None = None) -> int:
    cfg, _ = parse_job_args(job_parser("Train the motion CNN and embed flow stacks", __doc__), argv)
    # checks, then the run root's lease; the job's MLflow run where tracking.mlflow_uri is set
    with start_job(cfg, "train_motion"), job_run(cfg, "train_motion") as cfg:
        result = run_train_motion(cfg)
    t = result.training
    test = f"test accuracy {t.test_accuracy:.3f}" if t.test_accuracy is not None else "no test split"
    val = f"val accuracy {t.val_accuracy:.3f}" if t.val_accuracy is not None else "no val split"
    print(f"motion CNN{'' if result.trained else ' (kept)'}: {len(t.classes)} classes, {val} "
          f"at epoch {t.best_epoch} of {t.epochs}, {test} (chance {t.chance:.3f})")
    print(f"motion/: {result.embedded} videos embedded → {cfg.paths.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

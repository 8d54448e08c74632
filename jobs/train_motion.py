"""Train the motion CNN (paper §IV.C) on stacks of optical flow with Ray Train, then embed every video's
sampled positions into the temporal stream's sequences.

Reads flow/, videos/ and features/ under --output (written by jobs/extract.py); writes models/motion_cnn/
and motion/. Re-running resumes from the last epoch's checkpoint, and skips training once a model exists.

  python jobs/train_motion.py                       # the demo run root, runs/demo
  python jobs/train_motion.py --output s3://bucket/runs/ucf101 --config configs/ucf101.yaml
"""

import _path  # noqa: F401

from multistream.cli import job_parser, parse_job_args
from multistream.ray.motion import run_train_motion


def main(argv: list[str] | None = None) -> int:
    cfg, _ = parse_job_args(job_parser("Train the motion CNN and embed flow stacks", __doc__), argv)
    summary = run_train_motion(cfg)
    if "val_accuracy" in summary:
        print(f"motion CNN: {len(summary['classes'])} classes, test accuracy {summary['val_accuracy']:.3f} "
              f"(chance {summary['chance']:.3f}) at epoch {summary['best_epoch']} of {summary['epochs']}")
    print(f"motion/: {summary['embedded']} videos embedded → {cfg.paths.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

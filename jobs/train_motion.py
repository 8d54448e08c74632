"""Train the motion CNN (paper §IV.C) on stacks of optical flow with Ray Train, then embed every video's (`multistream.jobs.train_motion`).

The entry point `ray job submit --working-dir . -- python jobs/train_motion.py ...` runs; `--help` for its flags.
"""

from multistream.jobs.train_motion import main

if __name__ == "__main__":
    raise SystemExit(main())

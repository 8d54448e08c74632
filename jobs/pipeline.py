"""Run the whole pipeline in one command: extract → train_motion → train_rnn (all streams) → fuse → report (`multistream.jobs.pipeline`).

The entry point `ray job submit --working-dir . -- python jobs/pipeline.py ...` runs; `--help` for its flags.
"""

from multistream.jobs.pipeline import main

if __name__ == "__main__":
    raise SystemExit(main())

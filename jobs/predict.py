"""Apply a trained run to new videos: extract them with the run's own settings, embed, classify, screen (`multistream.jobs.predict`).

The entry point `ray job submit --working-dir . -- python jobs/predict.py ...` runs; `--help` for its flags.
"""

from multistream.jobs.predict import main

if __name__ == "__main__":
    raise SystemExit(main())

"""Fuse the per-stream video embeddings with a linear SVM and fit the anomaly autoencoder on them (`multistream.jobs.fuse`).

The entry point `ray job submit --working-dir . -- python jobs/fuse.py ...` runs; `--help` for its flags.
"""

from multistream.jobs.fuse import main

if __name__ == "__main__":
    raise SystemExit(main())

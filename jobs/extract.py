"""Extract per-video streams on Ray Data: optical flow, adaptively sampled frame embeddings, audio embeddings (`multistream.jobs.extract`).

The entry point `ray job submit --working-dir . -- python jobs/extract.py ...` runs; `--help` for its flags.
"""

from multistream.jobs.extract import main

if __name__ == "__main__":
    raise SystemExit(main())

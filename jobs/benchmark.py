"""Measure the pipeline's speed and memory in ONE run, every figure against a baseline of the same run (`multistream.jobs.benchmark`).

The entry point `ray job submit --working-dir . -- python jobs/benchmark.py ...` runs; `--help` for its flags.
"""

from multistream.jobs.benchmark import main

if __name__ == "__main__":
    raise SystemExit(main())

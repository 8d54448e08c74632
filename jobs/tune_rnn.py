"""Sweep recurrent-head architectures on one stream with Ray Tune (ASHA) and write the paper's Table I (`multistream.jobs.tune_rnn`).

The entry point `ray job submit --working-dir . -- python jobs/tune_rnn.py ...` runs; `--help` for its flags.
"""

from multistream.jobs.tune_rnn import main

if __name__ == "__main__":
    raise SystemExit(main())

"""Train one recurrent head per stream on Ray Train, embed every video, and assemble the embeddings table (`multistream.jobs.train_rnn`).

The entry point `ray job submit --working-dir . -- python jobs/train_rnn.py ...` runs; `--help` for its flags.
"""

from multistream.jobs.train_rnn import main

if __name__ == "__main__":
    raise SystemExit(main())

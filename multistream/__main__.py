"""`python -m multistream <job> ...`: the same as the `multistream` command."""

from multistream.cli import main

if __name__ == "__main__":
    raise SystemExit(main())

"""Thin Ray wrappers (Data, Train, Tune) around the pure cores of `multistream`."""

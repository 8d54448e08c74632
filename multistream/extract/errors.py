"""The error of a video (as opposed to one of the program): it becomes the video's error row."""

from __future__ import annotations


class VideoError(Exception):
    """The input cannot be used as a video: empty, truncated, not a video, without a video stream, or over one
    of its budgets (`multistream.extract.budgets.BudgetError`)."""

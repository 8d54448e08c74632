"""Frame timestamps as FFmpeg guesses them: container pts are not always to be trusted."""

from __future__ import annotations


class BestEffortPts:
    """FFmpeg's `guess_correct_pts` (ffprobe's best_effort_timestamp), which PyAV does not expose.

    Frame pts are trusted unless they go backwards more often than the packet dts do. AVI stores no
    presentation times (its pts are reconstructed, wrongly for packed B-frames), so there dts start trusted.
    """

    def __init__(self, prefer_dts: bool):
        self.faulty_pts, self.faulty_dts = int(prefer_dts), 0
        self.last_pts: int | None = None
        self.last_dts: int | None = None

    def __call__(self, pts: int | None, dts: int | None) -> int | None:
        if dts is not None:
            self.faulty_dts += self.last_dts is not None and dts <= self.last_dts
            self.last_dts = dts
        elif pts is not None:
            self.last_dts = pts
        if pts is not None:
            self.faulty_pts += self.last_pts is not None and pts <= self.last_pts
            self.last_pts = pts
        elif dts is not None:
            self.last_pts = dts
        if pts is not None and (self.faulty_pts <= self.faulty_dts or dts is None):
            return pts
        return dts

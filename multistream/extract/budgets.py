"""What one video may cost, whatever its header and timestamps say (docs/design.md#per-video-budgets).

    gate = FrameGate(Budget(max_fps=60, max_pixels=40_000_000, deadline_s=300), max_seconds=36, name=uri)
    gate.check_size(width, height)   # BudgetError: a frame of more than max_pixels
    gate.keep(time_s)                # False: the frame is dropped (decimation by time)
    gate.full                        # max_seconds x max_fps frames kept: decode no further
    gate.start(); gate.check_deadline(); gate.stop()   # the reader's own decoding time; past deadline_s: BudgetError

Memory is bounded by frames kept, not by frames in the file: a frame is kept only when its timestamp falls in a
later slot of a 1/max_fps grid (anchored on the first frame) than the last kept one, so a video at or below
max_fps keeps every frame, a faster one about max_fps a second, and a file of thousands of frames 10 µs apart
about max_fps a second too. Frames decoded and dropped cost time, not memory: the deadline bounds them.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from multistream.extract.errors import VideoError


class BudgetError(VideoError):
    """A video over one of its budgets (video.max_pixels, video.deadline_s): an error row, never a dead worker."""


@dataclass(frozen=True)
class Budget:
    """The `video` config's budgets (the defaults are the config's)."""

    max_fps: float = 60.0
    max_pixels: int = 40_000_000
    deadline_s: float = 300.0

    @classmethod
    def of(cls, video) -> Budget:
        """From a `config.VideoConfig`."""
        return cls(video.max_fps, video.max_pixels, video.deadline_s)


class FrameGate:
    """One reader's budgets: the frames it keeps (decimation by time, at most `max_frames`), the pixels of a
    frame and the seconds it spends decoding (between `start()` and `stop()`: not its consumer's, e.g. flow's)."""

    def __init__(self, budget: Budget, max_seconds: float, name: str, deadline_per_s: float | None = None):
        self.budget, self.name = budget, name
        # +1: a first frame at t < 0 s; a whole video (max_seconds inf) keeps every frame the grid lets through
        self.max_frames = math.floor(max_seconds * budget.max_fps) + 1 if math.isfinite(max_seconds) else math.inf
        self.deadline_per_s = deadline_per_s  # deadline_s holds per this many seconds of video (None: per video)
        self.video_s = 0.0  # the time of the latest frame seen (deadline_per_s)
        self.kept = 0
        self.spent_s = 0.0
        self._anchor: float | None = None
        self._last_slot: int | None = None
        self._last_time = 0.0  # of the last kept frame that advanced the grid
        self._since: float | None = None

    def check_size(self, width: int, height: int) -> None:
        if width * height > self.budget.max_pixels:
            raise BudgetError(f"{self.name}: frame of {width}x{height} exceeds video.max_pixels "
                              f"({self.budget.max_pixels})")

    def keep(self, time_s: float) -> bool:
        """Whether the frame at `time_s` is kept: its slot of the 1/max_fps grid is after the last kept one's.

        Rounding to the nearest slot keeps every frame of a video at max_fps whatever its timestamps' jitter
        (up to half a slot), and about max_fps a second of a faster one. A frame whose time does not advance
        past the last kept one's (damaged or reordered timestamps) is kept, as it always was: `full` bounds them."""
        if self.full:
            return False
        if self._anchor is None:
            self._anchor = time_s
        elif time_s <= self._last_time:
            self.kept += 1
            return True
        # rounded first: a frame on a half slot (240 fps at 60) falls on the same side whatever the float error
        slot = math.floor(round((time_s - self._anchor) * self.budget.max_fps, 6) + 0.5)
        if self._last_slot is not None and slot <= self._last_slot:
            return False
        self._last_slot, self._last_time = slot, time_s
        self.kept += 1
        return True

    @property
    def full(self) -> bool:
        return self.kept >= self.max_frames

    def check_deadline(self) -> None:
        """BudgetError once the decoding time (this running period's included) passes deadline_s (x the
        `deadline_per_s` spans of video decoded so far, at least one, where it is set)."""
        spent = self.spent_s + (time.perf_counter() - self._since if self._since is not None else 0.0)
        spans = max(1.0, self.video_s / self.deadline_per_s) if self.deadline_per_s else 1.0
        if spent > self.budget.deadline_s * spans:
            per = f" per {self.deadline_per_s:g} s of video" if self.deadline_per_s else ""
            raise BudgetError(f"{self.name}: decode took longer than video.deadline_s ({self.budget.deadline_s:g} s"
                              f"{per})")

    def start(self) -> None:
        """Decoding time runs from now (no-op while it runs)."""
        if self._since is None:
            self._since = time.perf_counter()

    def stop(self) -> None:
        """Decoding time stops (while the reader's consumer, e.g. flow, has the frame; no-op while stopped)."""
        if self._since is not None:
            self.spent_s += time.perf_counter() - self._since
            self._since = None

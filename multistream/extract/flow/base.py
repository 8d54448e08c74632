"""The optical-flow interface every backend implements (`registry` names and builds them)."""

from __future__ import annotations

from typing import Protocol

import numpy as np


class FlowEstimator(Protocol):
    """A backend's estimator. One that reads each video's own flow (`precomputed`) also has
    `for_video(video_id) -> FlowEstimator`, which the decoder calls per video and then feeds that video's frames
    in order; its pairs join consecutive source frames (a decimated video is refused)."""

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        """(N, H, W, 3) uint8 RGB, N >= 2 → (N-1, H, W, 2) float32 displacement (dx, dy) in pixels."""
        ...


def check_frames(frames: np.ndarray) -> None:
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or len(frames) < 2:
        raise ValueError(f"expected (N>=2, H, W, 3) uint8 RGB frames, got {frames.shape} {frames.dtype}")

"""The optical-flow interface every backend implements (`registry` names and builds them)."""

from __future__ import annotations

from typing import Protocol

import numpy as np

from multistream.extract.flow.codec import mean_magnitude, quantize


class FlowEstimator(Protocol):
    """A backend's estimator. One that reads each video's own flow (`precomputed`) also has
    `for_video(video_id) -> FlowEstimator`, which the decoder calls per video and then feeds that video's frames
    in order; its pairs join consecutive source frames (a decimated video is refused). One that can give what the
    decoder stores itself (RAFT, on its device) also has `encode`: see `encode_flow`."""

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        """(N, H, W, 3) uint8 RGB, N >= 2 → (N-1, H, W, 2) float32 displacement (dx, dy) in pixels."""
        ...


def check_frames(frames: np.ndarray) -> None:
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or len(frames) < 2:
        raise ValueError(f"expected (N>=2, H, W, 3) uint8 RGB frames, got {frames.shape} {frames.dtype}")


def encode_flow(estimator: FlowEstimator, frames: np.ndarray, clip_px: float,
                scale: tuple[float, float] = (1.0, 1.0)) -> tuple[np.ndarray, np.ndarray]:
    """What the decoder keeps of a chunk's flow: ((N-1, H, W, 2) uint8 `codec.quantize`d flow, (N-1,) float32
    `codec.mean_magnitude` with `scale`).

    An estimator with `encode(frames, clip_px, scale)` returns both itself (RAFT computes them on its device, so
    that uint8 rather than float32 flow crosses to the host); any other's float flow is quantized and measured
    here, on the host.
    """
    encode = getattr(estimator, "encode", None)
    if encode is not None:
        return encode(frames, clip_px, scale)
    pairs = estimator(frames)
    return quantize(pairs, clip_px), mean_magnitude(pairs, scale)

"""The optical-flow interface every backend implements (`registry` names and builds them)."""

from __future__ import annotations

from typing import Protocol

import numpy as np

from multistream.extract.errors import VideoError
from multistream.extract.flow.codec import mean_magnitude, quantize

FLOW_CHUNK = 32  # frame pairs per flow call of the decoders: bounds memory and lets RAFT batch on a GPU


class FlowEstimator(Protocol):
    """A backend's estimator. One that reads each video's own flow (`precomputed`) also has
    `for_video(video_id) -> FlowEstimator`, which the decoder calls per video and then feeds that video's frames
    in order; its pairs join consecutive source frames (a decimated video is refused). One that can give what the
    decoder stores itself (RAFT, on its device) also has `encode`: see `encode_flow`."""

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        """(N, H, W, 3) uint8 RGB, N >= 2 → (N-1, H, W, 2) float32 displacement (dx, dy) in pixels."""
        ...


def video_estimator(estimator: FlowEstimator, video_id: str) -> tuple[FlowEstimator, bool]:
    """The estimator for one video's frames, and whether it reads that video's own flow (`for_video`): then its
    pairs join consecutive source frames (`check_consecutive`)."""
    for_video = getattr(estimator, "for_video", None)
    return (estimator, False) if for_video is None else (for_video(video_id), True)


def check_consecutive(uri: str, backend: str, n_decoded: int, n_kept: int) -> None:
    """VideoError where a backend reading each video's own flow met a video whose frames were decimated
    (video.max_fps kept `n_kept` of `n_decoded`): its pairs would not join the frames kept."""
    if n_decoded != n_kept:
        raise VideoError(f"{uri}: flow.backend {backend} pairs consecutive source frames, but video.max_fps kept "
                         f"{n_kept} of its {n_decoded} frames")


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

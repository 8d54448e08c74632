"""Which frames of a video enter the sequence models: adaptive sampling by motion (paper §IV.F) or uniform.

    motion = frame_motion(pair_magnitude)               # (N-1,) per flow pair → (N,) per frame
    positions = sample_positions(motion, cfg.sampling)  # ascending unique int64 frame indices, <= max_seq_len

Adaptive sampling splits the video into equal segments and gives each segment a share of the positions
proportional to its mean flow magnitude, so fast movement is sampled densely and still scenes sparsely.
Everything here is deterministic.
"""

from __future__ import annotations

import numpy as np

from multistream.config import SamplingConfig


def frame_motion(pair_magnitude: np.ndarray) -> np.ndarray:
    """(N-1,) mean flow magnitude per consecutive pair → (N,) float64 per frame.

    Frame i gets the magnitude of the pair ending at it (i-1 → i); frame 0 that of the first pair.
    A single frame (no pairs) has motion [0.].
    """
    pair_magnitude = np.asarray(pair_magnitude, dtype=np.float64).reshape(-1)
    if len(pair_magnitude) == 0:
        return np.zeros(1)
    return np.concatenate([pair_magnitude[:1], pair_magnitude])


def uniform_positions(n_frames: int, max_len: int) -> np.ndarray:
    """K = min(n_frames, max_len) evenly spaced frame indices (each at the middle of its 1/K of the video)."""
    return _spread(0, n_frames, min(n_frames, max_len))


def adaptive_positions(motion: np.ndarray, max_len: int, segments: int) -> np.ndarray:
    """(N,) non-negative per-frame motion → ascending unique int64 indices, K = min(N, max_len) of them.

    [0, N) is split into `segments` equal segments (fewer if N < segments). Each gets a share of K
    proportional to its mean motion, capped at its length, the excess going to the others in proportion
    (largest-remainder rounding); positions are then evenly spaced inside each segment. All-zero motion gives
    the uniform sampling.
    """
    motion = np.asarray(motion, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(motion)) or np.any(motion < 0):
        raise ValueError("motion must be finite and non-negative")
    if max_len < 1 or segments < 1:
        raise ValueError(f"max_len and segments must be positive, got {max_len}, {segments}")
    n = len(motion)
    k = min(n, max_len)
    if n == 0 or not motion.any():
        return uniform_positions(n, max_len)
    s = min(segments, n)
    bounds = np.arange(s + 1) * n // s
    lengths = np.diff(bounds)
    weights = np.array([motion[a:b].mean() for a, b in zip(bounds[:-1], bounds[1:], strict=True)])
    counts = _allot(k, weights, lengths)
    parts = [_spread(a, length, c) for a, length, c in zip(bounds[:-1], lengths, counts, strict=True)]
    return np.concatenate(parts)


def sequence_budget(n_frames: int, cfg: SamplingConfig) -> int:
    """How many positions a video of `n_frames` frames gets: min(max_seq_len, max_fraction x n_frames, rounded).

    With `max_fraction` 1 (the default) a clip of at most `max_seq_len` frames keeps every frame, and adaptive
    sampling only shapes longer videos; below 1 it shapes short clips too."""
    return min(cfg.max_seq_len, max(1, int(cfg.max_fraction * n_frames + 0.5)))


def sample_positions(motion: np.ndarray, cfg: SamplingConfig) -> np.ndarray:
    """(N,) per-frame motion → frame indices by `cfg.method` (adaptive | uniform), `sequence_budget` of them."""
    budget = sequence_budget(len(motion), cfg)
    if cfg.method == "adaptive":
        return adaptive_positions(motion, budget, cfg.segments)
    if cfg.method == "uniform":
        return uniform_positions(len(motion), budget)
    raise ValueError(f"sampling.method: unknown method {cfg.method!r}")


def _allot(k: int, weights: np.ndarray, caps: np.ndarray) -> np.ndarray:
    """Split k (<= caps.sum()) into integer counts proportional to weights, count_i <= caps_i."""
    counts = np.zeros(len(weights), dtype=np.int64)
    open_ = np.ones(len(weights), dtype=bool)
    while (left := k - counts.sum()) > 0:
        # Once only zero-weight segments stay open, the rest is spread over them by length.
        w = np.where(open_, weights, 0.0)
        w = w if w.sum() > 0 else np.where(open_, caps, 0)
        quota = left * w / w.sum()
        full = open_ & (quota >= caps)
        if not full.any():
            floors = np.floor(quota).astype(np.int64)
            counts[open_] = floors[open_]
            # Largest fractional part first, closed segments last; ties go to the earlier segment.
            order = np.argsort(-np.where(open_, quota - floors, -1.0), kind="stable")
            counts[order[:left - floors[open_].sum()]] += 1
            break
        counts[full] = caps[full]
        open_ &= ~full
    return counts


def _spread(start: int, length: int, count: int) -> np.ndarray:
    """`count` <= `length` distinct indices evenly spaced in [start, start+length), mid-way in each share."""
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    return start + (2 * np.arange(count, dtype=np.int64) + 1) * length // (2 * count)

"""Flow's uint8 storage form and its per-frame magnitude, whatever backend computed it.

    stored = quantize(flow, cfg.flow.clip_px)         # (N-1, H, W, 2) float32 px → (N-1, H, W, 2) uint8
    flow = dequantize(stored, cfg.flow.clip_px)       # → float32 px, within clip_px/255 of the original
"""

from __future__ import annotations

import numpy as np


def quantize(flow: np.ndarray, clip_px: float) -> np.ndarray:
    """float32 (..., 2) pixels → uint8: clipped to ±clip_px, mapped linearly onto 0..255 (step 2·clip/255)."""
    scaled = (np.clip(flow, -clip_px, clip_px) + clip_px) * (255.0 / (2.0 * clip_px))
    return np.rint(scaled).astype(np.uint8)


def dequantize(q: np.ndarray, clip_px: float) -> np.ndarray:
    """uint8 from `quantize` → float32 pixels in [-clip_px, clip_px] (error <= clip_px/255 inside it)."""
    return (q.astype(np.float32) * np.float32(2.0 * clip_px / 255.0) - np.float32(clip_px)).astype(np.float32)


def mean_magnitude(flow: np.ndarray, scale: tuple[float, float] = (1.0, 1.0)) -> np.ndarray:
    """(T, H, W, 2) float flow → (T,) float32 mean vector length, dx scaled by scale[0] and dy by scale[1].

    Pass scale = (orig_w / flow_w, orig_h / flow_h) to express flow computed on resized frames in pixels of
    the original video.
    """
    if flow.ndim != 4 or flow.shape[-1] != 2:
        raise ValueError(f"expected (T, H, W, 2) flow, got {flow.shape}")
    dx = flow[..., 0] * np.float32(scale[0])
    dy = flow[..., 1] * np.float32(scale[1])
    return np.sqrt(dx * dx + dy * dy).mean(axis=(1, 2), dtype=np.float64).astype(np.float32)

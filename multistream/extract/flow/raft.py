"""RAFT optical flow (torchvision), the GPU flow backends `raft_small` and `raft_large` (see `registry`).

Kept apart from the CPU backends (`opencv`), which never import torch.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.models.optical_flow import Raft_Large_Weights, Raft_Small_Weights, raft_large, raft_small

from multistream.config import FlowConfig
from multistream.device import resolve_device
from multistream.extract.flow.base import check_frames
from multistream.weights import load_state_dict

log = logging.getLogger(__name__)

# RAFT's 4-level correlation pyramid needs feature maps (1/8 of the input) of at least 16 px per side.
_RAFT_MIN_SIDE = 128


def torchvision_weights(cfg: FlowConfig) -> str:
    """`flow.weights: torchvision`: the URL of torchvision's DEFAULT weights of `cfg.backend`."""
    return (Raft_Small_Weights if cfg.backend == "raft_small" else Raft_Large_Weights).DEFAULT.url


class RAFTFlow:
    """torchvision RAFT (small or large) with weights from `cfg.weights` (e.g. torchvision: its DEFAULT), for GPUs.

    Frames go to the device as uint8, are padded (edge-replicated) to multiples of 8 and at least 128 px per
    side, and scaled to [-1, 1] as torchvision's Raft transforms do. Pairs run in chunks of `cfg.batch_size`;
    the last of the 12 refinement iterations is returned, cropped back. Kept in float32: the correlation
    volume is sensitive to fp16.
    """

    def __init__(self, cfg: FlowConfig, threads: int | None = None):
        if not cfg.weights:
            raise ValueError(f"flow.weights: backend {cfg.backend} needs RAFT weights (e.g. torchvision, a path or URI)")
        try:
            state = load_state_dict(cfg.weights, "flow.weights", cfg)
        except FileNotFoundError as error:
            raise ValueError(f"flow.weights: {error}") from error
        model = (raft_small if cfg.backend == "raft_small" else raft_large)(weights=None, progress=False)
        model.load_state_dict(state)
        self.device = resolve_device(cfg.device)
        if self.device.type == "cpu" and threads is not None:
            torch.set_num_threads(max(1, threads))
        self.model = model.eval().to(self.device)
        self.batch_size = cfg.batch_size
        log.info("flow: %s on %s", cfg.backend, self.device)

    @torch.inference_mode()
    def __call__(self, frames: np.ndarray) -> np.ndarray:
        check_frames(frames)
        n, h, w, _ = frames.shape
        pad_h, pad_w = max(-h % 8, _RAFT_MIN_SIDE - h), max(-w % 8, _RAFT_MIN_SIDE - w)
        out = np.empty((n - 1, h, w, 2), np.float32)
        for start in range(0, n - 1, self.batch_size):
            stop = min(start + self.batch_size, n - 1)
            x = torch.from_numpy(frames[start:stop + 1]).to(self.device).permute(0, 3, 1, 2).float()
            x = F.pad(x / 127.5 - 1.0, (0, pad_w, 0, pad_h), mode="replicate")  # (B+1, 3, H', W') in [-1, 1]
            flow = self.model(x[:-1], x[1:])[-1]  # (B, 2, H', W')
            out[start:stop] = flow[:, :, :h, :w].permute(0, 2, 3, 1).cpu().numpy()
        return out

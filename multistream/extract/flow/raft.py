"""RAFT optical flow (torchvision), the GPU flow backends `raft_small` and `raft_large` (see `registry`).

Kept apart from the CPU backends (`opencv`), which never import torch.

torchvision's model is loaded as it is (its state dict, its modules), but its forward is not called: for the
consecutive pairs of a chunk of frames (f0, f1), (f1, f2), ... `RAFTFlow` drives the submodules itself and leaves
out what that forward does and the result does not need:

- each frame's features (`feature_encoder`) are computed once, not once as image1 and again as image2;
  the context (`context_encoder`) of the first frame of each pair only, as torchvision does;
- only the last of the 12 refinement iterations is upsampled to full size (torchvision upsamples all 12,
  running raft_large's mask predictor each time) — convex upsampling with that iteration's mask for
  raft_large, bilinear x8 for raft_small (no mask predictor), as torchvision does;
- the correlation lookup normalises its sampling grid in one multiply-add per level and its features stay
  channels_last, the layout the update block runs in;
- on the CPU the encoders run a few frames at a time (per frame about twice as fast there as a whole chunk
  at once; each frame's result is the same: instance norm, and raft_large's eval-mode batch norm, are per frame).

The flow equals torchvision's `model(image1, image2)[-1]` to float rounding (tests/extract/test_raft_fast.py;
`multistream.bench.raft` measures the speed and the end-point error). The correlation volume and its lookup
are always float32; `precision: bf16` runs the encoders, update block and mask predictor under bf16 autocast
(see `RAFTFlow`).
"""

from __future__ import annotations

import contextlib
import logging

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.models.optical_flow import Raft_Large_Weights, Raft_Small_Weights, raft_large, raft_small

from multistream.config import FlowConfig
from multistream.device import resolve_device
from multistream.extract.flow.base import check_frames
from multistream.weights import load_state_dict

log = logging.getLogger(__name__)

# RAFT's 4-level correlation pyramid needs feature maps (1/8 of the input) of at least 16 px per side.
_RAFT_MIN_SIDE = 128
NUM_FLOW_UPDATES = 12  # torchvision's RAFT.forward default: the iterations the model call ran
PRECISIONS = ("fp32", "bf16")
# frames per encoder call on the CPU: per frame, batches of 4 ran about twice as fast as a chunk's 33 at 320x240
# (their activations stay in cache); on a GPU the chunk's frames go at once
_CPU_ENCODER_BATCH = 4


def torchvision_weights(cfg: FlowConfig) -> str:
    """`flow.weights: torchvision`: the URL of torchvision's DEFAULT weights of `cfg.backend`."""
    return (Raft_Small_Weights if cfg.backend == "raft_small" else Raft_Large_Weights).DEFAULT.url


def build_raft(backend: str, state: dict | None = None) -> torch.nn.Module:
    """torchvision's `raft_small` / `raft_large` (eval mode) with `state` loaded (None: its random init)."""
    model = (raft_small if backend == "raft_small" else raft_large)(weights=None, progress=False)
    if state is not None:
        model.load_state_dict(state)
    return model.eval()


class RAFTFlow:
    """torchvision RAFT (small or large) with weights from `cfg.weights` (e.g. torchvision: its DEFAULT), for GPUs.

    Frames go to the device as uint8, are padded (edge-replicated) to multiples of 8 and at least 128 px per
    side, and scaled to [-1, 1] as torchvision's Raft transforms do. Pairs run in chunks of `cfg.batch_size`;
    the last of the 12 refinement iterations is returned, cropped back.

    `precision` ("fp32" | "bf16"; default `flow.precision`): bf16 runs the
    encoders, the update block and the mask predictor under bf16 autocast; the correlation volume, its lookup,
    the flow and the upsampling stay float32 (the correlation volume is sensitive to reduced precision).

    `encode(frames, clip_px, scale)` gives the processor's next step directly: the quantized uint8 flow and the
    per-pair mean magnitudes, computed on the device (only uint8 flow crosses to the host).
    """

    def __init__(self, cfg: FlowConfig, threads: int | None = None, precision: str | None = None):
        if not cfg.weights:
            raise ValueError(f"flow.weights: backend {cfg.backend} needs RAFT weights (e.g. torchvision, a path or URI)")
        try:
            state = load_state_dict(cfg.weights, "flow.weights", cfg)
        except FileNotFoundError as error:
            raise ValueError(f"flow.weights: {error}") from error
        model = build_raft(cfg.backend, state)
        self.device = resolve_device(cfg.device)
        if self.device.type == "cpu" and threads is not None:
            torch.set_num_threads(max(1, threads))
        self.precision = precision or cfg.precision
        if self.precision not in PRECISIONS:
            raise ValueError(f"flow.precision: {self.precision!r} is not one of {', '.join(PRECISIONS)}")
        self.model = model.to(self.device)
        self.core = RAFTCore(self.model, self.precision)
        self.batch_size = cfg.batch_size
        log.info("flow: %s on %s (%s)", cfg.backend, self.device, self.precision)

    def _chunks(self, frames: np.ndarray | Tensor):
        """(start, stop, flow): flow (stop-start, 2, h, w) float32 on the device of pairs start..stop-1; `frames`
        (N, H, W, 3) uint8 in host memory or a tensor already on the device (the fused GPU path's)."""
        n, h, w, _ = frames.shape
        pad_h, pad_w = max(-h % 8, _RAFT_MIN_SIDE - h), max(-w % 8, _RAFT_MIN_SIDE - w)
        for start in range(0, n - 1, self.batch_size):
            stop = min(start + self.batch_size, n - 1)
            x = torch.as_tensor(frames[start:stop + 1]).to(self.device).permute(0, 3, 1, 2).float()
            x = F.pad(x / 127.5 - 1.0, (0, pad_w, 0, pad_h), mode="replicate")  # (B+1, 3, H', W') in [-1, 1]
            yield start, stop, self.core(x)[:, :, :h, :w]

    @torch.inference_mode()
    def __call__(self, frames: np.ndarray | Tensor) -> np.ndarray:
        if isinstance(frames, np.ndarray):
            check_frames(frames)
        n, h, w, _ = frames.shape
        out = np.empty((n - 1, h, w, 2), np.float32)
        for start, stop, flow in self._chunks(frames):
            out[start:stop] = flow.permute(0, 2, 3, 1).cpu().numpy()
        return out

    @torch.inference_mode()
    def encode(self, frames: np.ndarray | Tensor, clip_px: float,
               scale: tuple[float, float] = (1.0, 1.0)) -> tuple[np.ndarray, np.ndarray]:
        """(N, H, W, 3) uint8 → ((N-1, H, W, 2) uint8 `codec.quantize`d flow, (N-1,) float32 `codec.mean_magnitude`),
        both computed on the device from the float flow that `__call__` returns, with codec's arithmetic. `frames`
        may be a tensor already on the device."""
        if isinstance(frames, np.ndarray):
            check_frames(frames)
        n, h, w, _ = frames.shape
        stored = np.empty((n - 1, h, w, 2), np.uint8)
        magnitudes = np.empty(n - 1, np.float32)
        for start, stop, flow in self._chunks(frames):
            flow = flow.permute(0, 2, 3, 1)
            magnitudes[start:stop] = mean_magnitude(flow, scale).cpu().numpy()
            stored[start:stop] = quantize(flow, clip_px).cpu().numpy()
        return stored, magnitudes


def quantize(flow: Tensor, clip_px: float) -> Tensor:
    """`codec.quantize` on a float32 tensor, on its device (the same float32 operations, so the same bytes)."""
    clip = torch.tensor(np.float32(clip_px), device=flow.device)
    step = torch.tensor(np.float32(255.0 / (2.0 * clip_px)), device=flow.device)
    return torch.round((torch.clamp(flow, -clip, clip) + clip) * step).to(torch.uint8)


def mean_magnitude(flow: Tensor, scale: tuple[float, float] = (1.0, 1.0)) -> Tensor:
    """`codec.mean_magnitude` of (T, H, W, 2) float32 on its device: (T,) float32, the mean taken in float64."""
    dx = flow[..., 0] * torch.tensor(np.float32(scale[0]), device=flow.device)
    dy = flow[..., 1] * torch.tensor(np.float32(scale[1]), device=flow.device)
    return torch.sqrt(dx * dx + dy * dy).to(torch.float64).mean(dim=(1, 2)).to(torch.float32)


class RAFTCore:
    """torchvision RAFT's forward for the consecutive pairs of a batch of frames, driving its submodules.

    core(x): x (B+1, 3, H, W) float32 in [-1, 1], H and W multiples of 8 → (B, 2, H, W) float32, the flow of
    pairs (x[i], x[i+1]) after `updates` iterations: what `model(x[:-1], x[1:], updates)[-1]` gives.
    The model's update block is turned channels_last (its weights' layout; the results are the same).
    """

    def __init__(self, model: torch.nn.Module, precision: str = "fp32", updates: int = NUM_FLOW_UPDATES,
                 encoder_batch: int | None = None):
        self.model = model
        self.updates = updates
        # which parts run under bf16 autocast (precision bf16): the encoders, the update block + mask predictor
        self.bf16_parts = {"encoders", "update"} if precision == "bf16" else set()
        self.encoder_batch = encoder_batch
        corr = model.corr_block
        self.levels, self.radius = corr.num_levels, corr.radius
        self.hidden_size = model.update_block.hidden_state_size
        # channels_last suits the update block's small (1/8 size) maps: its inputs are made channels_last too
        model.update_block.to(memory_format=torch.channels_last)

    def _autocast(self, device: torch.device, part: str):
        if part not in self.bf16_parts:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=torch.bfloat16)

    def _encode(self, encoder: torch.nn.Module, x: Tensor) -> Tensor:
        batch = self.encoder_batch or (_CPU_ENCODER_BATCH if x.device.type == "cpu" else len(x))
        if len(x) <= batch:
            return encoder(x)
        return torch.cat([encoder(part) for part in x.split(batch)])

    def __call__(self, x: Tensor) -> Tensor:
        model = self.model
        b, (h, w) = len(x) - 1, x.shape[-2:]
        if h % 8 or w % 8:
            raise ValueError(f"RAFT needs H and W divisible by 8, got {h}x{w}")
        with self._autocast(x.device, "encoders"):
            fmaps = self._encode(model.feature_encoder, x)  # every frame once
            context_out = self._encode(model.context_encoder, x[:-1])  # the first frame of each pair
        fmaps = fmaps.float()
        lookup = CorrLookup(correlation_pyramid(fmaps[:-1], fmaps[1:], self.levels), self.radius)
        del fmaps
        hidden, context = torch.split(context_out.float(), [self.hidden_size, context_out.shape[1] - self.hidden_size],
                                      dim=1)
        hidden = torch.tanh(hidden).contiguous(memory_format=torch.channels_last)
        context = F.relu(context).contiguous(memory_format=torch.channels_last)
        if "update" in self.bf16_parts:
            context = context.to(torch.bfloat16)
        h8, w8 = h // 8, w // 8
        coords0 = coords_grid(b, h8, w8, x.device)
        coords1 = coords0.clone()
        for _ in range(self.updates):
            corr = lookup(coords1)  # (B, L·(2r+1)², h8, w8) channels_last, float32
            with self._autocast(x.device, "update"):
                flow = (coords1 - coords0).contiguous(memory_format=torch.channels_last)
                hidden, delta = model.update_block(hidden, context, corr, flow)
            coords1 = coords1 + delta.float()
        up_mask = None
        if model.mask_predictor is not None:
            with self._autocast(x.device, "update"):
                up_mask = model.mask_predictor(hidden.contiguous())
            up_mask = up_mask.float().contiguous()
        return upsample_flow(flow=(coords1 - coords0).contiguous(), up_mask=up_mask)


def upsample_flow(flow: Tensor, up_mask: Tensor | None = None, factor: int = 8) -> Tensor:
    """torchvision's optical_flow._utils.upsample_flow: x8 bilinear (align_corners) without a mask, else the
    convex combination of each coarse pixel's 3x3 neighbours with the softmax of `up_mask` (B, 9·8·8, h, w)."""
    b, c, h, w = flow.shape
    if up_mask is None:
        return factor * F.interpolate(flow, size=(h * factor, w * factor), mode="bilinear", align_corners=True)
    up_mask = torch.softmax(up_mask.view(b, 1, 9, factor, factor, h, w), dim=2)
    upsampled = F.unfold(factor * flow, kernel_size=3, padding=1).view(b, c, 9, 1, 1, h, w)
    upsampled = torch.sum(up_mask * upsampled, dim=2)
    return upsampled.permute(0, 1, 4, 2, 5, 3).reshape(b, c, h * factor, w * factor)


def coords_grid(batch: int, h: int, w: int, device: torch.device) -> Tensor:
    """(batch, 2, h, w) float32 pixel coordinates (x, y), torchvision's make_coords_grid on `device`."""
    ys, xs = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
    return torch.stack([xs, ys]).float()[None].repeat(batch, 1, 1, 1)


def correlation_pyramid(fmap1: Tensor, fmap2: Tensor, num_levels: int) -> list[Tensor]:
    """CorrBlock.build_pyramid in float32: the all-pairs dot products / sqrt(C) as (B·h·w, 1, h, w), then
    average-pooled num_levels - 1 times (torchvision's operations, returned instead of kept on the module)."""
    b, c, h, w = fmap1.shape
    corr = torch.matmul(fmap1.reshape(b, c, h * w).transpose(1, 2), fmap2.reshape(b, c, h * w))
    corr = (corr / torch.sqrt(torch.tensor(c, device=corr.device))).reshape(b * h * w, 1, h, w)
    levels = [corr]
    for _ in range(num_levels - 1):
        levels.append(F.avg_pool2d(levels[-1], kernel_size=2, stride=2))
    return levels


class CorrLookup:
    """CorrBlock.index_pyramid over a `correlation_pyramid`: each level bilinearly sampled (zero outside,
    align_corners) at the (2r+1)² points centroid/2^level + (i, j), i, j in -r..r, channel (i+r)·(2r+1) + (j+r)
    for the x offset i and y offset j.

    lookup(coords): (B, 2, h, w) float32 → (B, L·(2r+1)², h, w) float32, channels_last (no copy back to NCHW).
    The sampling grid is normalised in one multiply-add per level, its constants made once per pyramid
    (torchvision, each iteration: an add, a split, three operations per axis and a cat).
    """

    def __init__(self, pyramid: list[Tensor], radius: int):
        self.pyramid, self.side = pyramid, 2 * radius + 1
        device = pyramid[0].device
        offsets = torch.linspace(-radius, radius, self.side, device=device)
        delta = torch.stack(torch.meshgrid(offsets, offsets, indexing="ij"), dim=-1)  # [i, j] = (x, y) offset
        self.constants = []
        for level, corr in enumerate(pyramid):
            lh, lw = corr.shape[-2:]
            # grid = 2·(centroid/2^level + delta)/(size - 1) - 1 per axis (y left as it is for a level of height
            # 1, as torchvision does): centroid · scale + shift
            norm = torch.tensor([2.0 / (lw - 1), 2.0 / (lh - 1) if lh > 1 else 1.0], device=device)
            shift = delta * norm - torch.tensor([1.0, 1.0 if lh > 1 else 0.0], device=device)
            self.constants.append((norm / float(2 ** level), shift))

    def __call__(self, coords: Tensor) -> Tensor:
        b, _, h, w = coords.shape
        centroids = coords.permute(0, 2, 3, 1).reshape(b * h * w, 1, 1, 2)
        out = []
        for corr, (scale, shift) in zip(self.pyramid, self.constants, strict=True):
            grid = torch.addcmul(shift, centroids, scale)
            out.append(F.grid_sample(corr, grid, mode="bilinear", align_corners=True).view(b, h, w, -1))
        return torch.cat(out, dim=-1).permute(0, 3, 1, 2)

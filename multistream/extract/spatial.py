"""Spatial stream: one ImageNet CNN embedding per sampled frame (paper §IV.A: InceptionResNetV2, 1536-d).

    embed = SpatialEmbedder(cfg.spatial)      # any timm model, weights from any multistream.weights spec
    vectors = embed(images)                   # (N, S, S, 3) uint8 RGB → (N, embed.dim) float32

The embedding is the output of the global average pool, the layer before the classifier.
"""

from __future__ import annotations

import logging

import numpy as np
import timm
import torch

from multistream.config import SpatialConfig
from multistream.device import amp_dtype, autocast, resolve_device
from multistream.weights import load_state_dict

log = logging.getLogger(__name__)


class SpatialEmbedder:
    """A timm backbone without its classifier, in eval mode on `cfg.device`.

    On CUDA it runs channels_last under autocast (bf16 where supported, else fp16) when `cfg.amp`.
    Inputs are normalised with the mean/std of the model's pretrained config (0.5/0.5 for the TF ports).
    """

    def __init__(self, cfg: SpatialConfig):
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        model = timm.create_model(cfg.model, pretrained=False, num_classes=0)
        if cfg.weights is None:
            log.warning("spatial.weights is not set: %s is randomly initialised, so spatial embeddings are "
                        "NOT ImageNet features", cfg.model)
        else:
            _load_backbone(model, load_state_dict(cfg.weights, "spatial.weights", cfg), cfg)
        self.dim: int = model.num_features
        on_cuda = self.device.type == "cuda"
        self.memory_format = torch.channels_last if on_cuda else torch.contiguous_format
        self.model = model.eval().to(self.device, memory_format=self.memory_format)
        self.amp_dtype = amp_dtype(self.device, cfg.amp)
        log.info("spatial: %s (%d-d) on %s%s", cfg.model, self.dim, self.device,
                 f" under {self.amp_dtype} autocast" if self.amp_dtype else "")
        shape = (1, 3, 1, 1)
        self.mean = torch.tensor(model.pretrained_cfg["mean"], device=self.device).view(shape) * 255.0
        self.std = torch.tensor(model.pretrained_cfg["std"], device=self.device).view(shape) * 255.0

    @torch.inference_mode()
    def __call__(self, images: np.ndarray) -> np.ndarray:
        """(N, S, S, 3) uint8 RGB with S = cfg.image_size → (N, dim) float32; N may be 0."""
        size = self.cfg.image_size
        if images.ndim != 4 or images.shape[1:] != (size, size, 3) or images.dtype != np.uint8:
            raise ValueError(f"expected (N, {size}, {size}, 3) uint8 RGB images, got {images.shape} "
                             f"{images.dtype}")
        out = np.empty((len(images), self.dim), np.float32)
        for start in range(0, len(images), self.cfg.batch_size):
            # uint8 crosses to the device (4x less traffic than float); normalised there.
            batch = images[start:start + self.cfg.batch_size]
            x = torch.from_numpy(batch).to(self.device).permute(0, 3, 1, 2)
            x = ((x.float() - self.mean) / self.std).contiguous(memory_format=self.memory_format)
            with autocast(self.device, self.cfg.amp):
                features = self.model(x)
            out[start:start + len(x)] = features.float().cpu().numpy()
        return out


def _load_backbone(model: torch.nn.Module, state: dict[str, torch.Tensor], cfg: SpatialConfig) -> None:
    """Load a full-model state dict into the headless model: classifier keys dropped, the rest must fit."""
    heads = model.pretrained_cfg.get("classifier") or ()
    heads = (heads,) if isinstance(heads, str) else tuple(heads)
    state = {k: v for k, v in state.items() if not k.startswith(tuple(h + "." for h in heads))}
    fits = f"spatial.weights {cfg.weights!r} do not fit timm model {cfg.model!r}"
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as error:  # shape mismatches
        raise ValueError(f"{fits}: {error}") from error
    if missing or unexpected:
        raise ValueError(f"{fits}: missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
                         f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}")

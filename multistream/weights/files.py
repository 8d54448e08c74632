"""Reading a weights file without ever unpickling an object: tensors and plain numpy arrays only.

    state = read_state_dict("s3://models/vggish.safetensors")   # or .pt/.pth/.bin, local or any fsspec URI

`.safetensors` goes through safetensors; `.pt`/`.pth`/`.bin` through `torch.load(weights_only=True)`, whose
unpickler refuses every global outside torch's tensor allowlist. The only globals added to it are the three
that rebuild a numeric numpy array (`_reconstruct`, `ndarray`, `dtype` and the numeric dtype classes;
`_reconstruct` under numpy 1's module name too, which files written before numpy 2 use), as torchvggish's
PCA parameters hold them. An object array's items would still meet the same allowlist (and are refused
after loading); numeric arrays become tensors.
"""

from __future__ import annotations

import io
import pickle

import numpy as np
import safetensors.torch
import torch

from multistream.store import storage
from multistream.store.uris import redact

TORCH_SUFFIXES = (".pt", ".pth", ".bin")
_WRAPPER_KEYS = ("state_dict", "model")
_reconstruct = np._core.multiarray._reconstruct
_NUMERIC_DTYPES = [type(np.dtype(code)) for code in "?bBhHiIlLqQefd"]  # numpy.dtypes.Float64DType, ...
_NUMPY_GLOBALS = [_reconstruct, (_reconstruct, "numpy.core.multiarray._reconstruct"), np.ndarray, np.dtype,
                  *_NUMERIC_DTYPES]


def is_weights_file(uri: str) -> bool:
    return uri.split("?", 1)[0].lower().endswith((".safetensors", *TORCH_SUFFIXES))


def parse_state_dict(data: bytes, name: str) -> dict[str, torch.Tensor]:
    """The tensors of a `.safetensors` or torch file's bytes; `name` (the file's name) picks the format.

    Checkpoints that wrap the weights as {"state_dict": ...} or {"model": ...} are unwrapped, a DataParallel
    "module." prefix is removed and numeric numpy arrays become tensors. ValueError for an unknown suffix or
    a file that holds anything but tensors/arrays.
    """
    path = name.split("?", 1)[0].lower()
    if not is_weights_file(path):
        raise ValueError(f"{redact(name)}: unknown weights format (expected .safetensors, .pt, .pth or .bin)")
    if path.endswith(".safetensors"):
        try:
            state = safetensors.torch.load(data)
        except Exception as error:  # noqa: BLE001 - safetensors raises its own error types
            raise ValueError(f"{redact(name)}: not a safetensors file ({error})") from error
    else:
        try:
            with torch.serialization.safe_globals(_NUMPY_GLOBALS):
                state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as error:  # objects; corrupt
            raise ValueError(f"{redact(name)}: not a loadable state dict ({str(error).splitlines()[0]})") from error
    for key in _WRAPPER_KEYS:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor | np.ndarray) for v in state.values()):
        raise ValueError(f"{redact(name)}: expected a mapping of parameter names to tensors")
    if any(isinstance(v, np.ndarray) and v.dtype.kind not in "biuf" for v in state.values()):
        raise ValueError(f"{redact(name)}: holds a numpy array that is not numeric")
    state = {k: torch.from_numpy(np.ascontiguousarray(v)) if isinstance(v, np.ndarray) else v
             for k, v in state.items()}
    if state and all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state


def read_state_dict(uri: str) -> dict[str, torch.Tensor]:
    """`parse_state_dict` of the file at a local path or URI; FileNotFoundError naming it when missing."""
    if not is_weights_file(uri):
        raise ValueError(f"{redact(uri)}: unknown weights format (expected .safetensors, .pt, .pth or .bin)")
    try:
        data = storage.read_bytes(uri)
    except FileNotFoundError as error:
        raise FileNotFoundError(f"weights file not found: {redact(uri)}") from error
    return parse_state_dict(data, uri)

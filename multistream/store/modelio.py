"""One way to save and load every model (motion CNN, RNN heads, SVM, autoencoder): a folder holding
`model.safetensors` (tensors only) and `model.json` (everything else: architecture, classes, statistics,
thresholds, history), written atomically through `storage`, local or `s3://`, and never unpickled.

The metadata is written first and the weights last, so the weights file marks a finished model: a folder
without it is an interrupted save.

Within `verified(hashes)` (a model bundle's, `multistream.predict.bundle.Bundle.verified`), every file read here
must be listed there and hold exactly those bytes: each is read once, hashed, and only then parsed, so that a
file rewritten after the bundle was sealed (a fuse writing the same run) is refused, never loaded.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import json
from collections.abc import Iterator, Mapping

import numpy as np
import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from multistream.store import storage
from multistream.store.layout import MODEL_META as META_FILE
from multistream.store.layout import MODEL_WEIGHTS as WEIGHTS_FILE


class ModelNotFoundError(FileNotFoundError):
    """A model folder has no finished model; the message names the folder."""


class ModelIntegrityError(ValueError):
    """A model file read within `verified` is not listed there or holds other bytes; the message names it."""


_EXPECTED: contextvars.ContextVar[Mapping[str, str] | None] = contextvars.ContextVar("model_hashes", default=None)


@contextlib.contextmanager
def verified(hashes: Mapping[str, str]) -> Iterator[None]:
    """Within: every model file read must be one of `hashes` ({URI: sha256}) and have that sha256."""
    token = _EXPECTED.set(dict(hashes))
    try:
        yield
    finally:
        _EXPECTED.reset(token)


def is_regular_file(uri: str) -> bool:
    """Whether `uri` is a regular file or object (not a device, a pipe or a link to one, which could be read forever)."""
    fs, path = storage.filesystem(uri)
    return fs.info(path).get("type") == "file"


def _read(uri: str) -> bytes:
    """A model file's bytes, checked against `verified`'s hashes where they apply (an unlisted file, or one that is
    not a regular file, is not even read)."""
    hashes = _EXPECTED.get()
    if hashes is None:
        return storage.read_bytes(uri)
    expected = hashes.get(uri)
    if expected is None:
        raise ModelIntegrityError(f"{uri} is not listed in the model bundle: not loaded")
    if not is_regular_file(uri):
        raise ModelIntegrityError(f"{uri} is not a regular file: not read")
    data = storage.read_bytes(uri)
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise ModelIntegrityError(f"{uri} changed after the bundle was sealed (sha256 {actual[:12]}..., the "
                                  f"bundle lists {expected[:12]}...): not loaded")
    return data


def save_model(directory: str, tensors: dict[str, torch.Tensor | np.ndarray], meta: dict) -> None:
    """Write `meta` as model.json, then `tensors` (CPU copies, contiguous) as model.safetensors."""
    state = {name: (torch.from_numpy(np.ascontiguousarray(t)) if isinstance(t, np.ndarray) else t)
             .detach().cpu().contiguous() for name, t in tensors.items()}
    storage.write_text(storage.join(directory, META_FILE),
                       json.dumps(meta, indent=2, sort_keys=True, default=_json_default))
    storage.write_bytes(storage.join(directory, WEIGHTS_FILE), save_safetensors(state))


def has_model(directory: str) -> bool:
    return storage.exists(storage.join(directory, WEIGHTS_FILE))


def read_meta(directory: str) -> dict:
    uri = storage.join(directory, META_FILE)
    if not storage.exists(uri):
        raise ModelNotFoundError(f"{uri} does not exist: no model was saved in {directory}")
    return json.loads(_read(uri).decode("utf-8"))


def load_model(directory: str) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors on the CPU, metadata) of a model folder; raises ModelNotFoundError where it is unfinished."""
    if not has_model(directory):
        raise ModelNotFoundError(f"{directory} holds no finished model ({WEIGHTS_FILE} is missing)")
    return load_safetensors(_read(storage.join(directory, WEIGHTS_FILE))), read_meta(directory)


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")

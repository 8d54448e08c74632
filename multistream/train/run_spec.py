"""The spec beside a named run's checkpoints (`layout.CHECKPOINT_SPEC` in `checkpoints/<name>/`): what models and data
they belong to, so that a re-run resumes only checkpoints of the same models (Ray Train's and Ray Tune's
restore would otherwise load weights of another architecture, input or class list)."""

from __future__ import annotations

import logging

from multistream.store import storage
from multistream.store.layout import CHECKPOINT_SPEC

log = logging.getLogger(__name__)


def matches(directory: str, spec: str) -> bool:
    """Whether the checkpoints in `directory` were written for `spec` (a JSON text)."""
    uri = storage.join(directory, CHECKPOINT_SPEC)
    return storage.exists(uri) and storage.read_text(uri) == spec


def record(directory: str, spec: str) -> None:
    storage.write_text(storage.join(directory, CHECKPOINT_SPEC), spec)


def drop_stale(directory: str, spec: str) -> None:
    """Remove checkpoints in `directory` of another spec (training starts over), then record `spec`."""
    if storage.exists(directory) and not matches(directory, spec):
        log.warning("the checkpoints in %s are of other models; training starts over", directory)
        fs, path = storage.filesystem(directory)
        fs.rm(path, recursive=True)
    record(directory, spec)

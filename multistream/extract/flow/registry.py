"""Every optical-flow backend by the name `flow.backend` takes it: one `FlowBackend` entry each.

    estimate = make_flow_estimator(cfg.flow, threads=2)   # dis | farneback | raft_small | raft_large | precomputed
    flow = estimate(frames)                               # (N, H, W, 3) uint8 RGB → (N-1, H, W, 2) float32 px

Flow i is the displacement (dx, dy) in pixels that carries frame i onto frame i+1. A new backend is one
module plus one entry:

    register(FlowBackend("mine", "mypackage.flow:build"))   # build(cfg: FlowConfig, threads) -> FlowEstimator

Nothing here imports cv2 or torch: `multistream.config` checks `flow.backend` against `BACKENDS`, and a
backend's module is imported when its first estimator is built.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from multistream.config import FlowConfig
    from multistream.extract.flow.base import FlowEstimator

    Factory = Callable[[FlowConfig, int | None], FlowEstimator]


@dataclass(frozen=True)
class FlowBackend:
    """One flow backend: what builds it and what it needs."""

    name: str  # the value of flow.backend
    # (flow section, CPU threads the caller was given or None for the library's default) → estimator; a
    # "module:attribute" path is imported when the first estimator is built
    factory: Factory | str
    # None: the backend reads no weights (flow.weights is neither required nor fetched). Otherwise it reads
    # flow.weights, which may also name one of these defaults: name → "module:function" (or the function)
    # giving the concrete source (URL or hf-hub:) from the flow section, e.g. {"torchvision": ...}
    weights: Mapping[str, str | Callable[[FlowConfig], str]] | None = None
    # True: runs on flow.device ("auto": the GPU where there is one, in Ray only where Ray gave it one);
    # False: on the CPU whatever flow.device says
    gpu: bool = False

    def build(self, cfg: FlowConfig, threads: int | None = None) -> FlowEstimator:
        return load(self.factory)(cfg, threads)


BACKENDS: dict[str, FlowBackend] = {}


def register(backend: FlowBackend) -> FlowBackend:
    """Add `backend` under its name (a name already taken is refused); `BACKENDS.pop(name)` removes it."""
    if backend.name in BACKENDS:
        raise ValueError(f"flow backend {backend.name!r} is registered already")
    BACKENDS[backend.name] = backend
    return backend


def flow_backend(name: str) -> FlowBackend:
    """The registered backend called `name` (ValueError naming flow.backend if there is none)."""
    if name not in BACKENDS:
        raise ValueError(f"flow.backend: unknown backend {name!r}")
    return BACKENDS[name]


def known_backend(name: str) -> str | None:
    """The config's check of flow.backend: None, or why `name` is no registered backend."""
    return None if name in BACKENDS else f"{name!r} is not one of {', '.join(BACKENDS)}"


def make_flow_estimator(cfg: FlowConfig, threads: int | None = None) -> FlowEstimator:
    """The estimator named by `cfg.backend`.

    `threads` sets the process-wide CPU threads of the backend (OpenCV's for dis/farneback, torch's for RAFT
    on CPU): pass the CPUs the caller was given (e.g. an actor's num_cpus) so it does not oversubscribe a
    node. None leaves the library's default. Only the backend built is imported (only RAFT imports torch).
    """
    return flow_backend(cfg.backend).build(cfg, threads)


def load(target: str | Callable) -> Callable:
    """A "module:attribute" path → that attribute (imported now); a callable as it is."""
    if callable(target):
        return target
    module, _, attribute = target.partition(":")
    return getattr(importlib.import_module(module), attribute)


_RAFT_WEIGHTS = {"torchvision": "multistream.extract.flow.raft:torchvision_weights"}  # their DEFAULT weights

register(FlowBackend("dis", "multistream.extract.flow.opencv:dis"))
register(FlowBackend("farneback", "multistream.extract.flow.opencv:farneback"))
register(FlowBackend("raft_small", "multistream.extract.flow.raft:RAFTFlow", weights=_RAFT_WEIGHTS, gpu=True))
register(FlowBackend("raft_large", "multistream.extract.flow.raft:RAFTFlow", weights=_RAFT_WEIGHTS, gpu=True))
# flow images computed elsewhere (TV-L1, FlowNet 2.0), read per video from flow.precomputed.root
register(FlowBackend("precomputed", "multistream.extract.flow.precomputed:PrecomputedFlow"))

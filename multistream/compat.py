"""Make torchvision (and so timm) importable beside a CPU-only torch build of the same version.

A CUDA build of torchvision beside a CPU build of torch fails at import with "operator torchvision::nms does
not exist": its `_C` library needs libc10_cuda.so, and its meta registrations touch the `nms`/`qnms` op
schemas at import. Before torchvision is first imported we try to load the real `_C`; only if that raises
OSError do we declare those two schemas through `torch.library` (no kernels: NMS is unused here, RAFT and
every timm model need no custom op). Where the real library loads, nothing is changed.

`multistream/__init__.py` calls `apply_on_import()`, so this holds in every process that imports the package
before torchvision (Ray workers included). A script that imports torchvision or timm before `multistream`
needs a matching pair of wheels instead (README: "Set up").
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import logging
import sys
from pathlib import Path

log = logging.getLogger(__name__)

_state: dict[str, object] = {"applied": False, "torchvision_stub": None}


def apply() -> None:
    """Idempotent: prepare torchvision for import."""
    if _state["applied"]:
        return
    _state["applied"] = True
    _prepare_torchvision()


class _PrepareBeforeImport(importlib.abc.MetaPathFinder):
    """Runs `apply()` when torchvision is first imported, then lets the import go on."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname == "torchvision" and not _state["applied"]:
            apply()  # marks itself applied first, so its own look-up of the package passes straight by
        return None


def apply_on_import() -> None:
    """Idempotent: arrange for `apply()` to run before torchvision is imported."""
    if _state["applied"] or any(isinstance(finder, _PrepareBeforeImport) for finder in sys.meta_path):
        return
    if "torchvision" in sys.modules:
        apply()
        return
    sys.meta_path.insert(0, _PrepareBeforeImport())


def status() -> dict[str, bool]:
    """What `apply()` had to do: {'torchvision_stub': whether the op schemas were declared here}."""
    return {"torchvision_stub": _state["torchvision_stub"] is not None}


def _prepare_torchvision() -> None:
    import torch

    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return
    package_dir = Path(next(iter(spec.submodule_search_locations)))
    # `_C.so` up to 0.28, `_C_stable.so` (stable ABI) since 0.29
    libraries = sorted({p for suffix in importlib.machinery.EXTENSION_SUFFIXES for p in package_dir.glob("_C*" + suffix)})
    if not libraries:
        return
    for library in libraries:
        try:
            torch.ops.load_library(str(library))
            return
        except OSError as error:
            log.debug("torchvision's %s does not load (%s)", library.name, error)
    if _has_schema(torch, "nms"):
        return
    library = torch.library.Library("torchvision", "DEF")
    library.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    library.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _state["torchvision_stub"] = library  # must stay referenced, or the definitions are dropped


def _has_schema(torch, name: str) -> bool:
    try:
        getattr(torch.ops.torchvision, name).default  # noqa: B018
        return True
    except (AttributeError, RuntimeError):
        return False

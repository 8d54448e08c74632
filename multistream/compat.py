"""Make torchvision (and so timm) and torchaudio importable beside a CPU-only torch.

The registry's torchvision and torchaudio wheels are CUDA builds. Beside a CPU torch:
- torchvision's `_C` library needs libc10_cuda.so, so `import torchvision` fails with "operator
  torchvision::nms does not exist": its meta registrations touch the `nms`/`qnms` schemas at import.
  We try to load the real `_C` first; only if that raises OSError do we declare those two schemas
  ourselves (no kernels: NMS is unused here, RAFT and every timm model need no custom op).
- torchaudio's `_load_lib` re-raises the OSError from its C extension. We make it report "not loaded",
  and torchaudio falls back to its pure-torch code (resample, MelSpectrogram and lfilter give results
  identical to the extension).

On a machine where the real libraries load (a CUDA build of torch), nothing is changed.
`multistream/__init__.py` calls `apply_on_import()`: the preparation runs the first time torchvision or
torchaudio (timm imports torchvision) is imported, in any process that imported the package, Ray workers
included. Processes that never touch them (the decode and write actors) never import torch for it.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import logging
import sys
from pathlib import Path

log = logging.getLogger(__name__)

_state: dict[str, object] = {"applied": False, "torchvision_stub": None, "torchaudio_patched": False}


def apply() -> None:
    """Idempotent: prepare torchvision and torchaudio for import."""
    if _state["applied"]:
        return
    _state["applied"] = True
    _prepare_torchvision()
    _prepare_torchaudio()


class _PrepareBeforeImport(importlib.abc.MetaPathFinder):
    """Runs `apply()` when torchvision or torchaudio is first imported, then lets the import go on."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname in ("torchvision", "torchaudio") and not _state["applied"]:
            apply()  # marks itself applied first, so its own look-ups of both packages pass straight by
        return None


def apply_on_import() -> None:
    """Idempotent: arrange for `apply()` to run before torchvision or torchaudio is imported."""
    if _state["applied"] or any(isinstance(finder, _PrepareBeforeImport) for finder in sys.meta_path):
        return
    if "torchvision" in sys.modules or "torchaudio" in sys.modules:
        apply()
        return
    sys.meta_path.insert(0, _PrepareBeforeImport())


def status() -> dict[str, bool]:
    """What `apply()` had to do: {'torchvision_stub': ..., 'torchaudio_fallback': ...}."""
    return {"torchvision_stub": _state["torchvision_stub"] is not None,
            "torchaudio_fallback": bool(_state["torchaudio_patched"])}


def _prepare_torchvision() -> None:
    import torch

    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return
    package_dir = Path(next(iter(spec.submodule_search_locations)))
    libraries = [p for suffix in importlib.machinery.EXTENSION_SUFFIXES for p in package_dir.glob("_C" + suffix)]
    if libraries:
        try:
            torch.ops.load_library(str(libraries[0]))
            return
        except OSError as error:
            log.debug("torchvision _C does not load (%s); declaring its op schemas", error)
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


def _prepare_torchaudio() -> None:
    # `import torchaudio` would already fail, so load only its small `_extension.utils` module (by file,
    # registered under its own name, which the package import then reuses) and guard `_load_lib`.
    name = "torchaudio._extension.utils"
    if name in sys.modules:
        return
    spec = importlib.util.find_spec("torchaudio")
    if spec is None or not spec.submodule_search_locations:
        return
    path = Path(next(iter(spec.submodule_search_locations))) / "_extension" / "utils.py"
    if not path.exists():
        return
    module_spec = importlib.util.spec_from_file_location(name, path)
    utils = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(utils)
    sys.modules[name] = utils
    original = utils._load_lib

    def load_lib_or_fallback(lib: str) -> bool:
        try:
            return original(lib)
        except OSError as error:
            log.debug("torchaudio extension %s does not load (%s); using pure-torch code", lib, error)
            _state["torchaudio_patched"] = True
            return False

    utils._load_lib = load_lib_or_fallback

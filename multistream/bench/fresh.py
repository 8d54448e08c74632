"""Run one measure in a fresh interpreter and return its JSON result.

A fresh process per baseline: no model, allocator or thread state leaks from one measure to the next, and
allocator settings (read by glibc only at process start) can be those of the pipeline's workers. A measure
is a function `fn(cfg, **kwargs) -> dict` of a `multistream.bench` module, named "module:function".
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys

PACKAGE = "multistream.bench."


def in_fresh_process(measure: str, config_path: str | None, overrides: list[str], kwargs: dict,
                     env: dict[str, str] | None = None) -> dict:
    """`measure(load_config(config_path, overrides), **kwargs)` in a new interpreter (environment `env` added
    to this one's); `kwargs` must be JSON. Raises RuntimeError with the child's stderr when it fails."""
    _resolve(measure)  # a malformed name fails here, not in the child
    payload = json.dumps({"measure": measure, "config": config_path, "overrides": overrides, "kwargs": kwargs})
    result = subprocess.run([sys.executable, "-m", "multistream.bench.fresh"], input=payload, capture_output=True,
                            text=True, env={**os.environ, **(env or {})})
    if result.returncode != 0:
        raise RuntimeError(f"benchmark measure {measure} failed:\n{result.stderr[-4000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def _resolve(measure: str):
    module, _, name = measure.partition(":")
    if not module.startswith(PACKAGE) or not name:
        raise ValueError(f"a measure is 'multistream.bench.<module>:<function>', got {measure!r}")
    return module, name


def _main() -> None:
    from multistream.config import load_config

    request = json.load(sys.stdin)
    module, name = _resolve(request["measure"])
    fn = getattr(importlib.import_module(module), name)
    result = fn(load_config(request["config"], request["overrides"]), **request["kwargs"])
    print(json.dumps(result))


if __name__ == "__main__":
    _main()

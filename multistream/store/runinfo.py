"""Small JSON records under a run root: `reports/metrics.json` (merged section by section) and friends."""

from __future__ import annotations

import json

from multistream.store import layout, storage

METRICS = f"{layout.REPORTS}/{layout.METRICS_FILE}"  # relative to the run root: `RunRoot.metrics`


def read_json(root: str, relative: str) -> dict:
    uri = storage.join(root, relative)
    return json.loads(storage.read_text(uri)) if storage.exists(uri) else {}


def write_json(root: str, relative: str, data: dict) -> None:
    storage.write_text(storage.join(root, relative), json.dumps(data, indent=2, sort_keys=True, default=float))


def update_metrics(root: str, section: str, values: dict) -> dict:
    """Replace one section of `reports/metrics.json` (e.g. "rnn_spatial", "fusion"), keeping the others."""
    metrics = read_json(root, METRICS)
    metrics[section] = values
    write_json(root, METRICS, metrics)
    return metrics

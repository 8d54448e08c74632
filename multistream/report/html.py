"""The report's HTML pieces: page style, escaping, number formatting, tables and the "not run yet" line."""

from __future__ import annotations

import html
import json

import numpy as np

from multistream.store import storage

CSS = """body{font:14px/1.45 system-ui,sans-serif;margin:0;background:#f6f7f9;color:#1d232b}
main{max-width:1100px;margin:auto;padding:24px}section{background:#fff;border:1px solid #dde2e8;
border-radius:8px;padding:4px 20px 16px;margin:16px 0}h1{margin:8px 0 4px}h2{font-size:19px}
table{border-collapse:collapse;margin:8px 0}th,td{border:1px solid #d5dbe3;padding:4px 10px;text-align:left}
th{background:#eef1f5}td.n{text-align:right;font-variant-numeric:tabular-nums}tr.best td{font-weight:600}
img{max-width:100%;display:block;margin:8px 0}.meta,.note{color:#5b6675}.missing{color:#8a94a3;
font-style:italic}code{background:#eef1f5;padding:1px 4px;border-radius:3px}nav a{margin-right:12px}"""


def esc(value) -> str:
    return html.escape(str(value))


def _num(value, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "–"
    if isinstance(value, float) and 0 < abs(value) < 0.01:
        return f"{value:.3g}"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def pct(value: float | None) -> float | None:
    return None if value is None else 100 * value


def table(header: list[str], rows: list[list], classes: list[str] | None = None) -> str:
    """An HTML table; numbers are right-aligned; `classes` gives each row's CSS class."""
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = []
    for i, row in enumerate(rows):
        cells = "".join(f'<td class="n">{_num(v)}</td>' if isinstance(v, int | float) and not isinstance(v, bool)
                        else f"<td>{esc('–' if v is None else v)}</td>" for v in row)
        css = f' class="{classes[i]}"' if classes and classes[i] else ""
        body.append(f"<tr{css}>{cells}</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def missing(what: str, job: str) -> str:
    return f'<p class="missing">{esc(what)}: not run yet (<code>{esc(job)}</code>).</p>'


def read_json(uri: str) -> dict:
    return json.loads(storage.read_text(uri)) if storage.exists(uri) else {}

"""The run report: one self-contained HTML page (figures embedded as base64 PNG) from a run root's outputs.

    python -m multistream.report RUN_ROOT       # → RUN_ROOT/reports/report.html (+ reports/figures/*.png)

Sections: pipeline timings, dataset (`videos/`), classification in the style of the paper's Table II
(`reports/metrics.json` "fusion"), confusion matrix, training curves (motion CNN, RNNs, autoencoder), the
RNN sweep (`reports/sweep.csv`/`.md`), anomaly scores and ROC (`anomaly/`), benchmark (`reports/benchmark.json`).
A section whose inputs are missing says "not run yet". Works on local and s3:// run roots.
"""

from __future__ import annotations

import argparse
import base64
import csv
import html
import io
import json
import time
from collections import Counter

import numpy as np
from matplotlib.figure import Figure

from multistream import runinfo, schema, storage

REPORT = "reports/report.html"
FIGURES = "reports/figures"
STREAM_NAMES = {"spatial": "Spatial", "temporal": "Temporal", "audio": "Audio"}
MODEL_TITLES = {"motion_cnn": "Motion CNN (temporal)", "rnn_spatial": "Spatial RNN", "rnn_temporal": "Temporal RNN",
                "rnn_audio": "Audio RNN"}
SPLIT_ORDER = ["train", "test", "anomaly"]
SPLIT_COLOURS = {"train": "#8c9bab", "test": "#2f6fdf", "anomaly": "#e0452b"}
PAPER_NOTE = ("The paper reports 93.1 % top-1 on UCF101 split 1 with all three streams (spatial S.BiGRU512 "
              "alone 78.34 %, with the SVM 79.40 %).")
CSS = """body{font:14px/1.45 system-ui,sans-serif;margin:0;background:#f6f7f9;color:#1d232b}
main{max-width:1100px;margin:auto;padding:24px}section{background:#fff;border:1px solid #dde2e8;
border-radius:8px;padding:4px 20px 16px;margin:16px 0}h1{margin:8px 0 4px}h2{font-size:19px}
table{border-collapse:collapse;margin:8px 0}th,td{border:1px solid #d5dbe3;padding:4px 10px;text-align:left}
th{background:#eef1f5}td.n{text-align:right;font-variant-numeric:tabular-nums}tr.best td{font-weight:600}
img{max-width:100%;display:block;margin:8px 0}.meta,.note{color:#5b6675}.missing{color:#8a94a3;
font-style:italic}code{background:#eef1f5;padding:1px 4px;border-radius:3px}nav a{margin-right:12px}"""


def _e(value) -> str:
    return html.escape(str(value))


def _num(value, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "–"
    if isinstance(value, float) and 0 < abs(value) < 0.01:
        return f"{value:.3g}"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def table(header: list[str], rows: list[list], classes: list[str] | None = None) -> str:
    """An HTML table; numbers are right-aligned; `classes` gives each row's CSS class."""
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = []
    for i, row in enumerate(rows):
        cells = "".join(f'<td class="n">{_num(v)}</td>' if isinstance(v, int | float) and not isinstance(v, bool)
                        else f"<td>{_e('–' if v is None else v)}</td>" for v in row)
        css = f' class="{classes[i]}"' if classes and classes[i] else ""
        body.append(f"<tr{css}>{cells}</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def missing(what: str, job: str) -> str:
    return f'<p class="missing">{_e(what)}: not run yet (<code>{_e(job)}</code>).</p>'


class Figures:
    """Renders matplotlib figures to PNG, saved under reports/figures/ and embedded in the page."""

    def __init__(self, root: str):
        self.root = root

    def __call__(self, name: str, fig: Figure, alt: str) -> str:
        buffer = io.BytesIO()
        fig.tight_layout()
        fig.savefig(buffer, format="png", dpi=110)
        data = buffer.getvalue()
        storage.write_bytes(storage.join(self.root, FIGURES, f"{name}.png"), data)
        return f'<img alt="{_e(alt)}" src="data:image/png;base64,{base64.b64encode(data).decode()}">'


def rnn_notation(meta: dict) -> str:
    """{"cell": "gru", "bidirectional": True, "layers": 2, "hidden": 512} → "S.BiGRU512" (paper Table I)."""
    if not meta.get("cell"):
        return ""
    stacked = "S." if meta.get("layers", 1) == 2 else (f"{meta['layers']}x" if meta.get("layers", 1) > 2 else "")
    attention = "+att" if meta.get("attention") else ""
    return f"{stacked}{'Bi' if meta.get('bidirectional') else ''}{meta['cell'].upper()}{meta.get('hidden', '')}{attention}"


def _title(streams: str, notation: dict[str, str]) -> str:
    """"spatial" → "Spatial (S.BiGRU512)", "spatial+audio" → "Spatial + Audio", all three → "... (SVM fusion)"."""
    parts = streams.split("+")
    title = " + ".join(STREAM_NAMES.get(p, p) for p in parts)
    if len(parts) == 1 and notation.get(streams):
        return f"{title} ({notation[streams]})"
    return f"{title} (SVM fusion)" if len(parts) == 3 else title


def pipeline_section(metrics: dict) -> str:
    run = metrics.get("pipeline")
    if not run:
        return missing("Pipeline timings", "python jobs/pipeline.py")
    rows = [[step["step"], step.get("status", ""), step["seconds"],
             "; ".join(f"{k} {_brief(v)}" for k, v in step.items() if k not in ("step", "status", "seconds"))]
            for step in run.get("steps", [])]
    return table(["step", "status", "seconds", "details"], rows + [["total", "", run.get("total_s"), ""]])


def _brief(value) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k} {_brief(v)}" for k, v in value.items())
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def dataset_section(root: str) -> str:
    videos = storage.read_table(storage.join(root, schema.VIDEOS), schema=schema.VIDEOS_SCHEMA).to_pylist()
    if not videos:
        return missing("Dataset summary", "python jobs/extract.py")
    splits = sorted({str(v["split"]) for v in videos}, key=lambda s: (SPLIT_ORDER + [s]).index(s))
    rows = []
    for split in [*splits, None]:
        group = [v for v in videos if split is None or str(v["split"]) == split]
        ok = [v for v in group if v["status"] == "ok"]
        durations = [v["duration_s"] for v in ok if v["duration_s"] is not None]
        rows.append([split or "all", len(group), len(ok), len(group) - len(ok),
                     sum(bool(v["has_audio"]) for v in ok), sum(not v["has_audio"] for v in ok),
                     float(np.mean(durations)) if durations else None])
    out = [table(["split", "videos", "ok", "error", "with audio", "without audio", "mean duration, s"], rows,
                 [""] * len(splits) + ["best"])]
    counts = Counter((str(v["label"]), str(v["split"])) for v in videos if v["status"] == "ok")
    labels = sorted({label for label, _ in counts})
    out.append(f"<details><summary>ok videos per class ({len(labels)} classes)</summary>"
               + table(["class", *splits], [[label, *(counts[label, s] for s in splits)] for label in labels])
               + "</details>")
    errors = [[v["video_id"], v["error"]] for v in videos if v["status"] != "ok"]
    if errors:
        out.append(f"<h3>Videos that failed ({len(errors)})</h3>" + table(["video", "error"], errors))
    return "".join(out)


def classification_section(root: str, metrics: dict, figures: Figures) -> str:
    fusion = metrics.get("fusion")
    if not fusion:
        return missing("Classification", "python jobs/fuse.py")
    notation = {}
    for stream in schema.STREAMS:
        meta = runinfo.read_json(root, f"models/rnn_{stream}/model.json")
        notation[stream] = rnn_notation(meta.get("rnn", {}))
    rows, css = [], []
    for row in fusion["ablation"]:
        rnn = metrics.get(f"rnn_{row['streams']}", {}).get("top1")
        rows.append([_title(row["streams"], notation), 100 * row["top1"], 100 * row["top5"],
                     None if rnn is None else 100 * rnn])
        css.append("best" if row["streams"].count("+") == 2 else "")
    out = [f"<p>Linear SVM on the concatenated video embeddings; trained on {fusion['n_train']} videos of the "
           f"train split, scored on {fusion['n_test']} of the test split ({len(fusion['classes'])} classes).</p>",
           table(["streams", "top-1, %", "top-5, %", "RNN softmax top-1, %"], rows, css),
           f'<p class="note">{_e(PAPER_NOTE)}</p>']
    classes, confusion = fusion["classes"], np.asarray(fusion["confusion"])
    size = min(14.0, 2.5 + 0.35 * len(classes))
    fig = Figure(figsize=(size + 1.5, size))
    ax = fig.add_subplot()
    image = ax.imshow(confusion, cmap="Blues")
    fig.colorbar(image, ax=ax, fraction=0.046)
    ax.set(xticks=range(len(classes)), yticks=range(len(classes)), xlabel="predicted", ylabel="true",
           title="Confusion matrix (test split, all streams)")
    font = 9 if len(classes) <= 20 else 5
    ax.set_xticklabels(classes, rotation=60, ha="right", fontsize=font)
    ax.set_yticklabels(classes, fontsize=font)
    if len(classes) <= 20:
        for (i, j), count in np.ndenumerate(confusion):
            ax.text(j, i, str(count), ha="center", va="center", fontsize=9,
                    color="white" if count > confusion.max() / 2 else "black")
    out.append(figures("confusion", fig, "confusion matrix"))
    per_class = [[c, fusion["per_class"][c] * 100] for c in classes if c in fusion["per_class"]]
    out.append("<details><summary>per-class top-1</summary>" + table(["class", "top-1, %"], per_class) + "</details>")
    return "".join(out)


def _series(history) -> dict[str, list[float]]:
    """A history as {metric: values per epoch}, from a list of per-epoch dicts or a dict of lists."""
    if isinstance(history, dict):
        return {k: list(v) for k, v in history.items() if isinstance(v, list)}
    keys = [k for k in (history[0] if history else {}) if k not in ("epoch", "lr")]
    return {k: [h.get(k, np.nan) for h in history] for k in keys}


def curves_section(root: str, metrics: dict, figures: Figures) -> str:
    models = {name: metrics.get(name, {}).get("history") for name in
              ("motion_cnn", *(f"rnn_{s}" for s in schema.STREAMS))}
    if not models["motion_cnn"]:
        models["motion_cnn"] = runinfo.read_json(root, "reports/motion_cnn.json").get("history")
    ae = metrics.get("anomaly", {}).get("history")
    models = {name: _series(h) for name, h in models.items() if h}
    if not models and not ae:
        return missing("Training curves", "python jobs/train_motion.py, jobs/train_rnn.py")
    out = []
    for name, series in models.items():
        fig = Figure(figsize=(10, 3.2))
        loss, acc = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
        for key, values in series.items():
            target = loss if "loss" in key else acc if ("acc" in key or "top" in key) else None
            if target is not None:
                target.plot(range(1, len(values) + 1), values, marker=".", label=key)
        loss.set(title=f"{MODEL_TITLES[name]}: loss", xlabel="epoch")
        acc.set(title=f"{MODEL_TITLES[name]}: accuracy", xlabel="epoch", ylim=(0, 1.02))
        for ax in (loss, acc):
            ax.grid(alpha=0.3)
            if ax.lines:
                ax.legend(fontsize=8)
        out.append(figures(f"curves_{name}", fig, f"{MODEL_TITLES[name]} training curves"))
    if ae:
        fig = Figure(figsize=(5, 3))
        ax = fig.add_subplot()
        ax.plot(range(1, len(ae) + 1), ae)
        ax.set(title="autoencoder: training loss (MSE)", xlabel="epoch")
        ax.grid(alpha=0.3)
        out.append(figures("curves_autoencoder", fig, "autoencoder training loss"))
    return "".join(out)


def sweep_section(root: str) -> str:
    csv_uri, md_uri = storage.join(root, "reports/sweep.csv"), storage.join(root, "reports/sweep.md")
    if storage.exists(csv_uri):
        rows = list(csv.reader(io.StringIO(storage.read_text(csv_uri))))
        if rows:
            return table(rows[0], [[_maybe_float(v) for v in row] for row in rows[1:]])
    if storage.exists(md_uri):
        return f"<pre>{_e(storage.read_text(md_uri))}</pre>"
    return missing("RNN sweep", "python jobs/tune_rnn.py")


def _maybe_float(value: str):
    try:
        return float(value) if "." in value or "e" in value.lower() else int(value)
    except ValueError:
        return value


def anomaly_section(root: str, metrics: dict, figures: Figures) -> str:
    from sklearn.metrics import roc_curve

    info = metrics.get("anomaly")
    scored = storage.read_table(storage.join(root, schema.ANOMALY), schema=schema.ANOMALY_SCHEMA).to_pylist()
    if not info or not scored:
        return missing("Anomaly detection", "python jobs/fuse.py")
    flagged = info.get("flagged", {})
    out = [table(["ROC AUC (test normal vs anomaly)", "threshold", "detection rate", "false-positive rate",
                  "train videos"],
                 [[info.get("roc_auc"), info["threshold"], info.get("detection_rate"),
                   info.get("false_positive_rate"), info.get("n_train")]]),
           f'<p class="note">Flagged per split: {_e(", ".join(f"{k}: {v}" for k, v in flagged.items()))}; '
           f"threshold = the {info.get('threshold_percentile', 0):g}th percentile of the training errors.</p>"]
    by_split = {}
    for row in scored:
        by_split.setdefault(str(row["split"]), []).append(row["score"])
    fig = Figure(figsize=(10, 3.4))
    hist = fig.add_subplot(1, 2, 1)
    every = np.concatenate([np.asarray(v, np.float64) for v in by_split.values()])
    low, high = max(every.min(), 1e-9), max(every.max(), 2e-9)
    logarithmic = high / low > 30  # anomalies often score orders of magnitude above the normal videos
    edges = np.geomspace(low, high, 40) if logarithmic else np.linspace(low, high, 40)
    for split, values in sorted(by_split.items(), key=lambda item: SPLIT_ORDER.index(item[0])
                                if item[0] in SPLIT_ORDER else len(SPLIT_ORDER)):
        hist.hist(np.clip(values, low, high), bins=edges, alpha=0.55, label=f"{split} ({len(values)})",
                  color=SPLIT_COLOURS.get(split))
    if logarithmic:
        hist.set_xscale("log")
    hist.axvline(info["threshold"], color="black", linestyle="--", label="threshold")
    hist.set(title="reconstruction error per video", xlabel="score", ylabel="videos")
    hist.legend(fontsize=8)
    roc = fig.add_subplot(1, 2, 2)
    normal, anomalous = by_split.get("test", []), by_split.get("anomaly", [])
    if normal and anomalous:
        fpr, tpr, _ = roc_curve([0] * len(normal) + [1] * len(anomalous), normal + anomalous)
        roc.plot(fpr, tpr, label=f"AUC {info['roc_auc']:.3f}")
        roc.legend(loc="lower right", fontsize=8)
    else:
        roc.text(0.5, 0.5, "needs test and anomaly videos", ha="center")
    roc.plot([0, 1], [0, 1], color="grey", linestyle=":")
    roc.set(title="ROC: test (normal) vs anomaly", xlabel="false-positive rate", ylabel="true-positive rate")
    out.append(figures("anomaly", fig, "anomaly score histogram and ROC curve"))
    return "".join(out)


def benchmark_section(root: str) -> str:
    bench = runinfo.read_json(root, "reports/benchmark.json")
    if not bench:
        return missing("Benchmark", "python jobs/benchmark.py")
    scalars = [[k, v] for k, v in bench.items() if isinstance(v, int | float | str | bool)]
    out = [table(["measure", "value"], scalars)] if scalars else []
    for key, value in bench.items():
        if isinstance(value, dict) and value and all(isinstance(v, dict) for v in value.values()):
            columns = list(dict.fromkeys(c for v in value.values() for c in v))
            out.append(f"<h3>{_e(key)}</h3>" + table([key, *columns],
                                                     [[name, *(row.get(c) for c in columns)] for name, row in value.items()]))
        elif isinstance(value, dict | list):
            out.append(f"<h3>{_e(key)}</h3><pre>{_e(json.dumps(value, indent=2))}</pre>")
    return "".join(out)


def write_report(root: str) -> str:
    """Render `reports/report.html` for the run root `root` (a path or URI); returns its URI."""
    metrics = runinfo.read_json(root, runinfo.METRICS)
    figures = Figures(root)
    sections = [
        ("pipeline", "Pipeline", pipeline_section(metrics)),
        ("dataset", "Dataset", dataset_section(root)),
        ("classification", "Classification (Table II style)", classification_section(root, metrics, figures)),
        ("curves", "Training curves", curves_section(root, metrics, figures)),
        ("sweep", "RNN sweep (Table I style)", sweep_section(root)),
        ("anomaly", "Anomaly detection", anomaly_section(root, metrics, figures)),
        ("benchmark", "Benchmark", benchmark_section(root)),
    ]
    nav = "".join(f'<a href="#{key}">{_e(title)}</a>' for key, title, _ in sections)
    body = "".join(f'<section id="{key}"><h2>{_e(title)}</h2>{content}</section>' for key, title, content in sections)
    page = (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>multistream report</title>'
            f"<style>{CSS}</style></head><body><main><h1>multistream run report</h1>"
            f'<p class="meta">run root <code>{_e(root)}</code> · generated {time.strftime("%Y-%m-%d %H:%M:%S")}</p>'
            f"<nav>{nav}</nav>{body}</main></body></html>\n")
    uri = storage.join(root, REPORT)
    storage.write_text(uri, page)
    return uri


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Regenerate RUN_ROOT/reports/report.html from a run's outputs.")
    parser.add_argument("root", help="run root (local path or s3:// URI)")
    print(write_report(parser.parse_args(argv).root))


if __name__ == "__main__":
    main()

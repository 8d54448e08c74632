"""The run report: one self-contained HTML page (figures embedded as base64 PNG) from a run root's outputs.

    python -m multistream.report.page RUN_ROOT       # → RUN_ROOT/reports/report.html (+ reports/figures/*.png)

Sections: pipeline timings, dataset (`videos/`), which split did what, classification in the style of the
paper's Table II (`reports/metrics.json` "fusion", with each stream's cue ceiling where the dataset documents
one), confusion matrix, training curves (motion CNN, RNNs, autoencoder: their `history` in metrics.json),
the RNN sweep (`reports/sweep.csv`/`.md`), anomaly detection (calibration, false-positive and detection
rates, scores and ROC from `anomaly/`), benchmark (`reports/benchmark.json`). A section whose inputs are
missing says "not run yet". Works on local and s3:// run roots. The figures are drawn in
`multistream.report.figures`.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import time
from collections import Counter

import numpy as np

from multistream.fuse.results import QUANTILE_WORDS, STREAM_NAMES
from multistream.report.figures import (
    Figures,
    anomaly_figure,
    confusion_figure,
    curves_figure,
    loss_figure,
    split_key,
)
from multistream.report.html import CSS, esc, missing, pct, read_json, table
from multistream.store import layout, modelio, runinfo, schema, storage
from multistream.store.layout import RunRoot

MODEL_TITLES = {layout.MOTION_CNN: "Motion CNN (temporal)",
                **{layout.rnn_name(s): f"{STREAM_NAMES[s]} RNN" for s in schema.STREAMS}}
SPLIT_ROLES = {"fit": "fitted on", "select": "selected on", "calibrate": "calibrated on", "score": "scored on"}
PAPER_NOTE = ("The paper reports 93.1 % top-1 on UCF101 split 1 with all three streams (spatial S.BiGRU512 "
              "alone 78.34 %, with the SVM 79.40 %).")
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
    videos = storage.read_table(RunRoot(root).videos, schema=schema.VIDEOS_SCHEMA).to_pylist()
    if not videos:
        return missing("Dataset summary", "python jobs/extract.py")
    splits = sorted({str(v["split"]) for v in videos}, key=lambda s: (split_key(s), s))
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


def splits_section(metrics: dict) -> str:
    """Which split each model was fitted, selected, calibrated and scored on, with the number of videos."""
    rows = []
    for name in (layout.MOTION_CNN, *(layout.rnn_name(s) for s in schema.STREAMS)):
        section = metrics.get(name, {})
        if "n_val" in section:  # trained with a val split: it chose the schedule, best epoch and early stop
            rows.append([MODEL_TITLES[name], f"train ({section['n_train']})",
                         f"val ({section['n_val']}): learning-rate schedule, best epoch, early stopping", None,
                         f"test ({section['n_test']})"])
    fusion, anomaly = metrics.get("fusion", {}), metrics.get("anomaly", {})
    if "splits" in fusion:
        rows.append(["Fusion SVM", f"{fusion['splits']['fit']} ({fusion['n_train']})", "– (no choice)", None,
                     f"{fusion['splits']['score']} ({fusion['n_test']})"])
    if "splits" in anomaly:
        rows.append(["Anomaly autoencoder", f"{anomaly['splits']['fit']} ({anomaly['n_fit']})", "– (no choice)",
                     f"{anomaly['splits']['calibrate']} ({anomaly['n_calibration']}): threshold",
                     f"{anomaly['splits']['score']} ({anomaly['n_test_normal']} + {anomaly['n_anomaly']})"])
    if not rows:
        return missing("Splits", "python jobs/pipeline.py")
    return (table(["model", *SPLIT_ROLES.values()], rows)
            + '<p class="note">The test split is scored once, at the end; no choice reads it.</p>')


def classification_section(root: str, metrics: dict, figures: Figures) -> str:
    fusion = metrics.get("fusion")
    if not fusion:
        return missing("Classification", "python jobs/fuse.py")
    run = RunRoot(root)
    notation = {}
    for stream in schema.STREAMS:
        try:
            meta = modelio.read_meta(run.model(layout.rnn_name(stream)))
        except modelio.ModelNotFoundError:
            meta = {}
        notation[stream] = rnn_notation(meta.get("rnn", meta))
    top5 = fusion.get("top5") is not None
    ceilings = any(row.get("ceiling") is not None for row in fusion["ablation"])
    header = ["streams", "top-1, %", *(["top-5, %"] if top5 else []),
              *(["cue ceiling, %", "cue accuracy, %"] if ceilings else []), "RNN softmax top-1, %"]
    rows, css = [], []
    for row in fusion["ablation"]:
        rnn = metrics.get(layout.rnn_name(row["streams"]), {}).get("top1")
        rows.append([_title(row["streams"], notation), pct(row["top1"]), *([pct(row["top5"])] if top5 else []),
                     *([pct(row.get("ceiling")), pct(row.get("cue_accuracy"))] if ceilings else []), pct(rnn)])
        css.append("best" if row["streams"].count("+") == 2 else "")
    out = [f"<p>Linear SVM on the concatenated video embeddings; fitted on {fusion['n_train']} videos of the "
           f"{esc(fusion['splits']['fit'])} split, scored once on {fusion['n_test']} of the test split ({len(fusion['classes'])} classes"
           f"{'' if top5 else '; top-5 is left out with 5 classes or fewer'}).</p>", table(header, rows, css)]
    if ceilings:
        out.append('<p class="note">Cue ceiling: the top-1 the streams\' cues allow on this test split (the demo\'s '
                   "<code>multistream.demo.dataset.CUES</code>: one cue tells 3 of the 4 classes apart, any two all four; a "
                   "clip without a stream gets nothing from it). Cue accuracy: the share of test videos predicted as "
                   "a class that carries their cues in those streams, free of the coin flip between the classes that "
                   "share a cue: 100 % where the streams learned their cues.</p>")
    out.append(f'<p class="note">{esc(PAPER_NOTE)}</p>')
    classes = fusion["classes"]
    out.append(figures("confusion", confusion_figure(classes, np.asarray(fusion["confusion"])), "confusion matrix"))
    per_class = [[c, fusion["per_class"][c] * 100] for c in classes if c in fusion["per_class"]]
    out.append("<details><summary>per-class top-1</summary>" + table(["class", "top-1, %"], per_class) + "</details>")
    return "".join(out)


def _series(history) -> dict[str, list[float]]:
    """A history as {metric: values per epoch}, from a list of per-epoch dicts or a dict of lists."""
    if isinstance(history, dict):
        return {k: list(v) for k, v in history.items() if isinstance(v, list)}
    keys = [k for k in (history[0] if history else {}) if k not in ("epoch", "lr")]
    return {k: [h.get(k, np.nan) for h in history] for k in keys}


def curves_section(metrics: dict, figures: Figures) -> str:
    """Every model's `history` as recorded in metrics.json (the motion CNN's and RNNs' per-epoch dicts, the
    autoencoder's loss per epoch)."""
    models = {name: _series(metrics.get(name, {}).get("history") or []) for name in
              (layout.MOTION_CNN, *(layout.rnn_name(s) for s in schema.STREAMS))}
    models = {name: series for name, series in models.items() if series}
    ae = metrics.get("anomaly", {}).get("history")
    if not models and not ae:
        return missing("Training curves", "python jobs/train_motion.py, jobs/train_rnn.py")
    out = [figures(f"curves_{name}", curves_figure(MODEL_TITLES[name], series), f"{MODEL_TITLES[name]} training curves")
           for name, series in models.items()]
    if ae:
        out.append(figures("curves_autoencoder", loss_figure("autoencoder: training loss (MSE)", ae),
                           "autoencoder training loss"))
    return "".join(out)


def sweep_section(root: str) -> str:
    run = RunRoot(root)
    csv_uri, md_uri = run.sweep_csv, run.sweep_md
    if storage.exists(csv_uri):
        rows = list(csv.reader(io.StringIO(storage.read_text(csv_uri))))
        if rows:
            return table(rows[0], [[_maybe_float(v) for v in row] for row in rows[1:]])
    if storage.exists(md_uri):
        return f"<pre>{esc(storage.read_text(md_uri))}</pre>"
    return missing("RNN sweep", "python jobs/tune_rnn.py")


def _maybe_float(value: str):
    try:
        return float(value) if "." in value or "e" in value.lower() else int(value)
    except ValueError:
        return value


def _calibration_note(splits: dict) -> str:
    if "out-of-fold" in splits["calibrate"]:
        return (" (cross-fitting: one autoencoder per fold, fitted on the other folds' normal train and val "
                "videos; each video was scored by its own fold's one, and new videos get the folds' mean score)")
    return ", nor any model upstream" if splits["calibrate"].removesuffix(" windows") == "val" else ""


TIMELINE_VIDEOS = 4  # the highest-scoring videos whose windows' scores the report draws over time


def anomaly_section(root: str, metrics: dict, figures: Figures) -> str:
    from multistream.fuse.windows import videos_only
    from multistream.report.timeline import timeline_figure, top_video_windows

    info = metrics.get("anomaly")
    results = storage.read_table(RunRoot(root).anomaly)
    windowed = results.num_rows > 0 and schema.is_windowed(results.schema)
    scored = videos_only(results).to_pylist() if results.num_rows else []
    if not info or not scored:
        return missing("Anomaly detection", "python jobs/fuse.py")
    splits = info["splits"]
    unit = "windows" if info.get("fit_on") == "windows" else "videos"  # what the autoencoder saw as its rows
    calibration = "calibration" if unit == "videos" else "calibration windows"
    out = [table(["", "videos", "flagged, %", "target, %"], [
        [f"{calibration} ({splits['calibrate']}, normal)", info["n_calibration"], pct(info["calibration_fpr"]),
         pct(info["target_fpr"])],
        ["test, normal: false-positive rate", info["n_test_normal"], pct(info["false_positive_rate"]),
         pct(info["target_fpr"])],
        ["anomaly: detection rate", info["n_anomaly"], pct(info["detection_rate"]), None]]),
        table(["ROC AUC (test normal vs anomaly)", "threshold", "autoencoder fitted on"],
              [[info.get("roc_auc"), info["threshold"], f"{info['n_fit']} {_in_units(splits['fit'], unit)}"]]),
        f'<p class="note">The threshold is set at a {100 * info["target_fpr"]:g} % false-positive rate on '
        f"the {info['n_calibration']} normal {esc(_in_units(splits['calibrate'], unit))}, each scored by an autoencoder that "
        f"was not fitted on it{_calibration_note(splits)}: "
        f"{esc(QUANTILE_WORDS[info.get('quantile', 'empirical')])}. The test and anomalous videos are scored once"
        f"{_window_note(info)}. Flagged per split: "
        f"{esc(', '.join(f'{k}: {v}' for k, v in info.get('flagged', {}).items()))}.</p>"]
    by_split: dict[str, list[float]] = {}
    for row in scored:
        by_split.setdefault(str(row["split"]), []).append(row["score"])
    out.append(figures("anomaly", anomaly_figure(by_split, info["threshold"], info.get("roc_auc")),
                       "anomaly score histogram and ROC curve"))
    if windowed:
        videos = top_video_windows(RunRoot(root).anomaly, TIMELINE_VIDEOS)
        out.append(f'<p class="note">The {len(videos)} videos with the highest anomaly scores: each window\'s score '
                   "over time, the threshold dashed, the flagged intervals shaded.</p>")
        out.append(figures("anomaly_timelines", timeline_figure(videos, info["threshold"]),
                           "anomaly score over time of the highest-scoring videos"))
    return "".join(out)


def _in_units(split: str, unit: str) -> str:
    """"train+val" → "train+val videos"; a windowed split name ("val windows") as it is."""
    return split if split.endswith(f" {unit}") else f"{split} {unit}"


def _window_note(info: dict) -> str:
    windows = info.get("windows")
    if info.get("fit_on") != "windows" or not windows:
        return ""
    return (f", each video's score the {windows['anomaly_score']} of its windows' scores "
            f"({windows['length_s']:g} s windows every {windows['stride_s']:g} s)")


def benchmark_section(root: str) -> str:
    bench = read_json(RunRoot(root).benchmark)
    if not bench:
        return missing("Benchmark", "python jobs/benchmark.py")
    scalars = [[k, v] for k, v in bench.items() if isinstance(v, int | float | str | bool)]
    out = [table(["measure", "value"], scalars)] if scalars else []
    for key, value in bench.items():
        if isinstance(value, dict) and value and all(isinstance(v, dict) for v in value.values()):
            columns = list(dict.fromkeys(c for v in value.values() for c in v))
            out.append(f"<h3>{esc(key)}</h3>" + table([key, *columns],
                                                     [[name, *(row.get(c) for c in columns)] for name, row in value.items()]))
        elif isinstance(value, dict | list):
            out.append(f"<h3>{esc(key)}</h3><pre>{esc(json.dumps(value, indent=2))}</pre>")
    return "".join(out)


def write_report(root: str) -> str:
    """Render `reports/report.html` for the run root `root` (a path or URI); returns its URI."""
    metrics = runinfo.read_json(root, runinfo.METRICS)
    figures = Figures(root)
    sections = [
        ("pipeline", "Pipeline", pipeline_section(metrics)),
        ("dataset", "Dataset", dataset_section(root)),
        ("splits", "Splits: what each model was fitted, selected and scored on", splits_section(metrics)),
        ("classification", "Classification (Table II style)", classification_section(root, metrics, figures)),
        ("curves", "Training curves", curves_section(metrics, figures)),
        ("sweep", "RNN sweep (Table I style)", sweep_section(root)),
        ("anomaly", "Anomaly detection", anomaly_section(root, metrics, figures)),
        ("benchmark", "Benchmark", benchmark_section(root)),
    ]
    nav = "".join(f'<a href="#{key}">{esc(title)}</a>' for key, title, _ in sections)
    body = "".join(f'<section id="{key}"><h2>{esc(title)}</h2>{content}</section>' for key, title, content in sections)
    page = (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>multistream report</title>'
            f"<style>{CSS}</style></head><body><main><h1>multistream run report</h1>"
            f'<p class="meta">run root <code>{esc(root)}</code> · generated {time.strftime("%Y-%m-%d %H:%M:%S")}</p>'
            f"<nav>{nav}</nav>{body}</main></body></html>\n")
    uri = RunRoot(root).report_html
    storage.write_text(uri, page)
    return uri


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Regenerate RUN_ROOT/reports/report.html from a run's outputs.")
    parser.add_argument("root", help="run root (local path or s3:// URI)")
    print(write_report(parser.parse_args(argv).root))


if __name__ == "__main__":
    main()

"""The report's figures: matplotlib (no display) figures, rendered to PNG, saved under `reports/figures/` and
embedded in the page as base64."""

from __future__ import annotations

import base64
import html
import io

import numpy as np
from matplotlib.figure import Figure

from multistream.store import storage
from multistream.store.layout import RunRoot

SPLIT_ORDER = ["train", "val", "test", "anomaly"]
SPLIT_COLOURS = {"train": "#8c9bab", "val": "#3aa864", "test": "#2f6fdf", "anomaly": "#e0452b"}
# class names are data: drawn as they are, never parsed as mathtext or LaTeX (a "$", "^" or "\frac" in a name)
PLAIN_TEXT = {"parse_math": False, "usetex": False}


def split_key(split: str) -> int:
    return SPLIT_ORDER.index(split) if split in SPLIT_ORDER else len(SPLIT_ORDER)


class Figures:
    """Renders figures to PNG under `reports/figures/<name>.png`; calling it returns the <img> tag."""

    def __init__(self, root: str):
        self.run = RunRoot(root)

    def __call__(self, name: str, fig: Figure, alt: str) -> str:
        buffer = io.BytesIO()
        fig.tight_layout()
        fig.savefig(buffer, format="png", dpi=110)
        data = buffer.getvalue()
        storage.write_bytes(self.run.figure(name), data)
        return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(data).decode()}">'


def confusion_figure(classes: list[str], confusion: np.ndarray) -> Figure:
    """confusion (C, C): rows true class, columns predicted; counts written in the cells up to 20 classes."""
    size = min(14.0, 2.5 + 0.35 * len(classes))
    fig = Figure(figsize=(size + 1.5, size))
    ax = fig.add_subplot()
    image = ax.imshow(confusion, cmap="Blues")
    fig.colorbar(image, ax=ax, fraction=0.046)
    ax.set(xticks=range(len(classes)), yticks=range(len(classes)), xlabel="predicted", ylabel="true",
           title="Confusion matrix (test split, all streams)")
    font = 9 if len(classes) <= 20 else 5
    ax.set_xticklabels(classes, rotation=60, ha="right", fontsize=font, **PLAIN_TEXT)
    ax.set_yticklabels(classes, fontsize=font, **PLAIN_TEXT)
    if len(classes) <= 20:
        for (i, j), count in np.ndenumerate(confusion):
            ax.text(j, i, str(count), ha="center", va="center", fontsize=9,
                    color="white" if count > confusion.max() / 2 else "black")
    return fig


def curves_figure(title: str, series: dict[str, list[float]]) -> Figure:
    """Loss curves on the left, accuracy curves on the right; `series` maps a metric name to per-epoch values."""
    fig = Figure(figsize=(10, 3.2))
    loss, acc = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    for key, values in series.items():
        target = loss if "loss" in key else acc if ("acc" in key or "top" in key) else None
        if target is not None:
            target.plot(range(1, len(values) + 1), values, marker=".", label=key)
    loss.set(title=f"{title}: loss", xlabel="epoch")
    acc.set(title=f"{title}: accuracy", xlabel="epoch", ylim=(0, 1.02))
    for ax in (loss, acc):
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    return fig


def loss_figure(title: str, history: list[float]) -> Figure:
    fig = Figure(figsize=(5, 3))
    ax = fig.add_subplot()
    ax.plot(range(1, len(history) + 1), history)
    ax.set(title=title, xlabel="epoch")
    ax.grid(alpha=0.3)
    return fig


def anomaly_figure(by_split: dict[str, list[float]], threshold: float, auc: float | None) -> Figure:
    """Histogram of the scores per split with the threshold, and the ROC curve of test (normal) vs anomaly."""
    from sklearn.metrics import roc_curve

    fig = Figure(figsize=(10, 3.4))
    hist = fig.add_subplot(1, 2, 1)
    every = np.concatenate([np.asarray(v, np.float64) for v in by_split.values()])
    low, high = max(every.min(), 1e-9), max(every.max(), 2e-9)
    logarithmic = high / low > 30  # anomalies often score orders of magnitude above the normal videos
    edges = np.geomspace(low, high, 40) if logarithmic else np.linspace(low, high, 40)
    for split, values in sorted(by_split.items(), key=lambda item: split_key(item[0])):
        hist.hist(np.clip(values, low, high), bins=edges, alpha=0.55, label=f"{split} ({len(values)})",
                  color=SPLIT_COLOURS.get(split))
    if logarithmic:
        hist.set_xscale("log")
    hist.axvline(threshold, color="black", linestyle="--", label="threshold")
    hist.set(title="reconstruction error per video", xlabel="score", ylabel="videos")
    hist.legend(fontsize=8)
    roc = fig.add_subplot(1, 2, 2)
    normal, anomalous = by_split.get("test", []), by_split.get("anomaly", [])
    if normal and anomalous:
        fpr, tpr, _ = roc_curve([0] * len(normal) + [1] * len(anomalous), normal + anomalous)
        roc.plot(fpr, tpr, label="n/a" if auc is None else f"AUC {auc:.3f}")
        roc.legend(loc="lower right", fontsize=8)
    else:
        roc.text(0.5, 0.5, "needs test and anomaly videos", ha="center")
    roc.plot([0, 1], [0, 1], color="grey", linestyle=":")
    roc.set(title="ROC: test (normal) vs anomaly", xlabel="false-positive rate", ylabel="true-positive rate")
    return fig

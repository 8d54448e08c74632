"""Where in a long video the anomaly score rises: the windows' scores over time, as text and as a figure, and
the highest-scoring videos' windows read from a stored `anomaly/` table (`top_video_windows`).

A window is a mapping with `start_s`, `end_s` (float seconds, start < end) and `score` (its reconstruction
error), as in the window rows of `anomaly/`; it may carry `window` (its index in the video). Windows may
overlap (stride < length). A window is flagged where its score is above the threshold, strictly, as
`AnomalyDetector.is_anomaly` decides.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pyarrow.dataset as ds
from matplotlib.figure import Figure

from multistream.fuse.windows import is_windowed_table, own_rows
from multistream.report.figures import PLAIN_TEXT
from multistream.store import storage

BAR_WIDTH = 30
MINUTES_FROM_S = 600.0  # the figure's x axis in minutes once a video is longer than this


def flagged(score: float, threshold: float) -> bool:
    return score > threshold


def flagged_intervals(windows: Sequence[Mapping], threshold: float) -> list[tuple[float, float]]:
    """The union of [start_s, end_s) of the windows scoring above `threshold`: disjoint (start, end) pairs,
    sorted, with overlapping or touching windows merged into one."""
    spans = sorted((float(w["start_s"]), float(w["end_s"])) for w in windows if flagged(w["score"], threshold))
    merged: list[tuple[float, float]] = []
    for start, end in spans:
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def clock(seconds: float) -> str:
    """Seconds → "mm:ss", or "h:mm:ss" from an hour on (rounded to the second)."""
    total = int(round(seconds))
    hours, rest = divmod(total, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60:02d}:{rest % 60:02d}"


def peak_index(windows: Sequence[Mapping]) -> int:
    """Position in `windows` of the highest score (the first of equals; NaN scores never peak)."""
    scores = np.array([w["score"] for w in windows], dtype=np.float64)
    return int(np.argmax(np.where(np.isnan(scores), -np.inf, scores)))


def window_name(windows: Sequence[Mapping], i: int) -> str:
    index = windows[i].get("window")
    return f"window {i if index is None else index}"


def timeline_text(video_id: str, windows: Sequence[Mapping], threshold: float,
                  labels: Sequence[str | None] | None = None) -> str:
    """One line per window, in the given order: its time span, score, a bar of score / max(threshold, max
    score) with "|" at the threshold, "ANOMALY" where flagged and `labels[i]` (aligned with `windows`) where
    given; then the flagged intervals (or "no window flagged") and the peak window."""
    if labels is not None and len(labels) != len(windows):
        raise ValueError(f"{len(labels)} labels for {len(windows)} windows")
    lines = [f"{video_id}  (threshold {threshold:.4g})"]
    if not windows:
        return "\n".join([*lines, "  no windows"])
    spans = [f"{clock(w['start_s'])}–{clock(w['end_s'])}" for w in windows]
    span_width = max(map(len, spans))
    top = max([threshold, *(w["score"] for w in windows if not math.isnan(w["score"]))])
    mark = min(BAR_WIDTH - 1, int(BAR_WIDTH * threshold / top)) if top > 0 else None
    for i, (w, span) in enumerate(zip(windows, spans, strict=True)):
        score = float(w["score"])
        filled = 0 if math.isnan(score) or top <= 0 else int(round(BAR_WIDTH * max(score, 0.0) / top))
        bar = ["█" if c < filled else " " for c in range(BAR_WIDTH)]
        if mark is not None and mark >= filled:
            bar[mark] = "|"
        flag = "ANOMALY" if flagged(score, threshold) else ""
        line = f"  {span:<{span_width}}  {score:10.4g}  {''.join(bar)}  {flag:7}"
        if labels is not None and labels[i] is not None:
            line += f"  {labels[i]}"
        lines.append(line.rstrip())
    intervals = flagged_intervals(windows, threshold)
    lines.append("  flagged: " + (", ".join(f"{clock(s)}–{clock(e)}" for s, e in intervals)
                                  if intervals else "no window flagged"))
    p = peak_index(windows)
    lines.append(f"  peak: {window_name(windows, p)} ({spans[p]}), score {windows[p]['score']:.4g}")
    return "\n".join(lines)


def video_threshold(windows: Sequence[Mapping], default: float) -> float:
    """The threshold a video's windows were flagged at: their rows' "threshold" (`anomaly/` under video.windows),
    else `default`."""
    return float(windows[0]["threshold"]) if windows and windows[0].get("threshold") is not None else default


def timeline_figure(videos: Sequence[tuple[str, Sequence[Mapping]]], threshold: float) -> Figure:
    """One row per (video_id, windows) in `videos` (a handful): each window's score as a horizontal segment
    over [start_s, end_s) joined through the windows' centres, the threshold dashed (the windows' own, where
    their rows carry it: `video_threshold`), flagged intervals shaded, the peak window starred. x in seconds, or
    minutes for a video longer than 10 min; y logarithmic where the scores and threshold span more than 30x."""
    if not videos:
        raise ValueError("a timeline figure needs at least one video")
    fig = Figure(figsize=(10, 0.6 + 2.2 * len(videos)))
    default = threshold
    for row, (video_id, windows) in enumerate(videos):
        threshold = video_threshold(windows, default)
        ax = fig.add_subplot(len(videos), 1, row + 1)
        ax.set_title(str(video_id), fontsize=9, loc="left", **PLAIN_TEXT)
        ax.axhline(threshold, color="black", linestyle="--", linewidth=1, label="threshold")
        if not windows:
            ax.text(0.5, 0.5, "no windows", ha="center", va="center", transform=ax.transAxes)
            continue
        order = sorted(windows, key=lambda w: (w["start_s"], w["end_s"]))
        start, end = (np.array([w[k] for w in order], dtype=np.float64) for k in ("start_s", "end_s"))
        score = np.array([w["score"] for w in order], dtype=np.float64)
        unit, scale = ("min", 60.0) if end.max() > MINUTES_FROM_S else ("s", 1.0)
        for s, e in flagged_intervals(order, threshold):
            ax.axvspan(s / scale, e / scale, color="#e0452b", alpha=0.18, linewidth=0)
        centre = (start + end) / 2 / scale
        ax.plot(centre, score, color="#2f6fdf", linewidth=0.8, alpha=0.6)
        ax.hlines(score, start / scale, end / scale, color="#2f6fdf", linewidth=2)
        p = peak_index(order)
        ax.plot(centre[p], score[p], marker="*", markersize=12, color="#e0452b", linestyle="none",
                label=f"peak: {window_name(order, p)}")
        finite = score[np.isfinite(score)]
        low = max(min(finite.min(initial=threshold), threshold), 1e-9)
        if max(finite.max(initial=threshold), threshold) / low > 30:
            ax.set_yscale("log")
        ax.set(xlim=(start.min() / scale, end.max() / scale), ylabel="reconstruction error")
        ax.set_xlabel(f"time ({unit})")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper right")
    return fig


def top_videos(rows: Sequence[Mapping], n: int = 4) -> list[tuple[str, list[dict]]]:
    """The `n` videos of the `anomaly/` rows with the highest per-video score, highest first (ties by id),
    each with its window rows (those with a `window`) as dicts sorted by `window`. The per-video score is
    that of the video's row (`window` None), or the highest of its window rows where it has none."""
    videos: dict[str, tuple[list[float], list[dict]]] = {}
    for row in rows:
        own, windows = videos.setdefault(row["video_id"], ([], []))
        if row.get("window") is None:
            own.append(float(row["score"]))
        else:
            windows.append(dict(row))

    def score(item: tuple[str, tuple[list[float], list[dict]]]) -> float:
        own, windows = item[1]
        values = own or [w["score"] for w in windows]
        best = max((v for v in values if not math.isnan(v)), default=-math.inf)
        return -best

    ranked = sorted(videos.items(), key=lambda item: (score(item), item[0]))[:n]
    return [(video_id, sorted(windows, key=lambda w: w["window"])) for video_id, (_, windows) in ranked]


def top_video_windows(table_uri: str, n: int) -> list[tuple[str, list[dict]]]:
    """The `n` videos of a stored windowed `anomaly/` table with the highest scores, each with its window rows
    (`report.timeline.top_videos`), reading their own rows first and then only those videos' windows: never
    every window of an archive. [] for a table without windows."""
    if not is_windowed_table(table_uri):
        return []
    top = [video for video, _ in top_videos(own_rows(table_uri, ["video_id", "score"]).to_pylist(), n)]
    if not top:
        return []
    return top_videos(storage.read_table(table_uri, filter=ds.field("video_id").isin(top)).to_pylist(), n)

"""Window scores gathered into their videos (`video.windows`), the `anomaly/` table, and the videos' own rows of
windowed results: shared by `jobs/predict.py` (`multistream.predict.batch`), the fuse job's autoencoder fitted on
windows (`multistream.fuse.run`) and the report."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds

from multistream.config import WindowsConfig
from multistream.store import schema, storage


def anomaly_table(ids: list[str], splits: list, scores: np.ndarray, flagged: np.ndarray,
                  windows: dict[str, list] | None = None) -> pa.Table:
    """`anomaly/` rows; with `windows` (its WINDOW_COLUMNS and peak_window, `window_rows`) the windowed table's."""
    table_schema = schema.windowed(schema.ANOMALY_SCHEMA) if windows else schema.ANOMALY_SCHEMA
    return pa.table({"video_id": ids, **(windows or {}), "split": splits, "score": scores.astype(np.float32),
                     "is_anomaly": flagged}, schema=table_schema)


def window_rows(table: pa.Table, scores: np.ndarray | None, anomaly: np.ndarray, rules: WindowsConfig,
                threshold_for: Callable[[int], float]) -> list[dict]:
    """A windowed table's N window rows (video_id, label, split, window, start_s, end_s) scored ((N, C) class
    scores or None, (N,) anomaly scores; `threshold_for`: a video's number of windows → the threshold its windows
    are flagged above, `AnomalyDetector.threshold_for`) → the rows of the windowed `predictions/` and `anomaly/`
    tables, as dicts (video_id, label, split, window, start_s, end_s, scores (C,) where given, score, is_anomaly,
    peak_window, threshold): for each video its own row first (window null, start_s 0, end_s its last window's
    end, class scores and anomaly score aggregated by `rules`, peak_window its highest-scoring window), then its
    window rows in order. A window is flagged above the threshold for its video's W windows (`rules.false_alarms`
    "video"; "window": for one); the own row's max above that too (so it is flagged where a window is), its mean
    above the one-window threshold."""
    columns = table.select(["video_id", "label", "split", "window", "start_s", "end_s"]).to_pylist()
    by_video: dict[str, list[int]] = {}
    for i, row in enumerate(columns):
        by_video.setdefault(row["video_id"], []).append(i)
    out = []
    for members in by_video.values():
        members.sort(key=lambda i: columns[i]["window"])
        mine = anomaly[members]
        threshold = threshold_for(len(members) if rules.false_alarms == "video" else 1)
        own_threshold = threshold if rules.anomaly_score == "max" else threshold_for(1)
        score = float(mine.max() if rules.anomaly_score == "max" else mine.mean())
        own = {} if scores is None else {
            "scores": scores[members].mean(0) if rules.class_scores == "mean" else scores[members].max(0)}
        out.append(columns[members[0]] | own | {
            "window": None, "start_s": 0.0, "end_s": max(columns[i]["end_s"] for i in members),
            "score": score, "is_anomaly": score > own_threshold,
            "peak_window": columns[members[int(np.argmax(mine))]]["window"], "threshold": own_threshold})
        out += [columns[i] | ({} if scores is None else {"scores": scores[i]}) |
                {"score": float(anomaly[i]), "is_anomaly": bool(anomaly[i] > threshold), "peak_window": None,
                 "threshold": threshold} for i in members]
    return out


def windowed_anomaly_table(rows: list[dict]) -> pa.Table:
    """The windowed `anomaly/` table of `window_rows`' rows."""
    column = {name: [row[name] for row in rows] for name in rows[0]}
    spans = {name: column[name] for name in ("window", "start_s", "end_s", "peak_window", "threshold")}
    return anomaly_table(column["video_id"], column["split"], np.asarray(column["score"]),
                         np.asarray(column["is_anomaly"]), spans)


def videos_only(table: pa.Table) -> pa.Table:
    """The videos' own rows of a `predictions/` or `anomaly/` table (a windowed one's rows with window null)."""
    if not schema.is_windowed(table.schema):
        return table
    return table.filter(table["window"].is_null())


def is_windowed_table(table_uri: str) -> bool:
    """Whether a table's parts were written under video.windows (its first part's footer says)."""
    names = storage.list_parts(table_uri)
    found = storage.part_schema(table_uri, names[0]) if names else None
    return found is not None and schema.is_windowed(found)


def own_rows(table_uri: str, columns: list[str]) -> pa.Table:
    """`columns` of the videos' own rows of a stored `predictions/` or `anomaly/` table (`videos_only`), reading
    only those columns and rows."""
    windowed = is_windowed_table(table_uri)
    return storage.read_table(table_uri, columns=columns, filter=ds.field("window").is_null() if windowed else None)


"""A trained run applied to new videos in batch: the steps, work list and tables of `jobs/predict.py`.

The batch job and one-file mode (`multistream.predict.single`) run the same cores (`multistream.predict.models`)
on the same extracted arrays, so a clip gets the same class and scores from both. Every model up to the RNN heads
runs inside the extraction, on each video's arrays while they are in memory: the motion CNN on its flow in the
actor that computed it (`TemporalStep`), the heads on its three sequences before the commit (`HeadsStep`), so the
extraction commits each group of videos as `embeddings/<part>` with its marker `videos/<part>` and writes neither
`flow/` nor `features/` (unless `--keep-flow`: both, as `jobs/extract.py` writes them). Then, unless
`--embed-only`, each `embeddings/` part without an `anomaly/` twin (`unscored`) is scored under its name:
`predictions/<part>` staged, then `anomaly/<part>`, the commit (`score_part`; `multistream.store.commit`).
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from multistream.config import Config, WindowsConfig
from multistream.device import check_gpu_given
from multistream.extract.rows import EMBEDDINGS, fail
from multistream.extract.windows import split_windows
from multistream.fuse.anomaly import detection_figures
from multistream.fuse.windows import (
    anomaly_table,
    own_rows,
    window_rows,
    windowed_anomaly_table,
)
from multistream.predict.models import Classifier, Detector, TemporalEmbedder, VideoEmbedder
from multistream.store import schema, storage
from multistream.store.commit import committed_parts, drop_uncommitted, write_group
from multistream.store.layout import RunRoot


class TemporalStep:
    """Extraction row → row, right after decode while its flow is in memory (`run_extract`'s `after_decode`):
    "temporal" (K, 2048) float16, the motion CNN on the flow stacks centred at the row's sampled positions
    (`TemporalEmbedder`); "flow" is dropped, or kept with `keep_flow` (then committed to `flow/` as
    `jobs/extract.py` does). Error rows pass through; a failing model makes the row an error row ("temporal").
    `HeadsStep` turns the sequence into the stream's embedding before the commit."""

    def __init__(self, embed: TemporalEmbedder, keep_flow: bool = False):
        self.embed, self.keep_flow = embed, keep_flow

    def __call__(self, row: dict) -> dict:
        if row["video"]["status"] != "ok":
            return row
        flow = row["flow"] if self.keep_flow else row.pop("flow")
        try:
            row["temporal"] = np.asarray(self.embed(flow, row["positions"]), np.float16)
        except Exception as error:  # noqa: BLE001 - a bad video is data, not a crash
            return fail(row, "temporal", error)
        return row


class HeadsStep:
    """Finished extraction rows → rows for the commit, right before it: each ok row's "spatial" (K, D), "audio"
    (E, 128) and "temporal" (K, 2048) sequences → "embedding_<stream>" (H,) float32 for each stream of the bundle
    (`VideoEmbedder`: the ok rows of a call embedded together), then the sequences dropped with the sampled
    positions, unless `keep_features` (--keep-flow: committed to `features/` as `jobs/extract.py` does; "temporal"
    is dropped either way). Error rows pass through; a failing model makes every ok row an error row ("rnn")."""

    def __init__(self, embed: VideoEmbedder, keep_features: bool = False):
        self.embed, self.keep_features = embed, keep_features

    def __call__(self, rows: list[dict]) -> list[dict]:
        ok = [i for i, row in enumerate(rows) if row["video"]["status"] == "ok"]
        if not ok:
            return rows
        # a merged window row's windows are embedded one by one, as clips are (`merge_windows`)
        cut = {i: {s: split_windows(rows[i], s) if "windows" in rows[i] else [rows[i][s]] for s in schema.STREAMS}
               for i in ok}
        try:
            vectors = self.embed({s: [np.asarray(seq, np.float32) for i in ok for seq in cut[i][s]]
                                  for s in schema.STREAMS})
        except Exception as error:  # noqa: BLE001 - a bad batch is data, not a crash
            return [fail(row, "rnn", error) if row["video"]["status"] == "ok" else row for row in rows]
        dropped = ("temporal",) if self.keep_features else (*schema.STREAMS, "positions", "timestamps", "magnitudes")
        out, start = list(rows), 0
        for i in ok:
            row = {key: value for key, value in rows[i].items() if key not in dropped}
            count = len(cut[i]["spatial"])
            out[i] = row | {EMBEDDINGS[stream]: v[start:start + count] if "windows" in row else v[start]
                            for stream, v in vectors.items()}
            start += count
        return out


def _read_parts(table_uri: str, names: list[str], columns: list[str]) -> list[pa.Table]:
    with ThreadPoolExecutor(max_workers=16) as pool:
        return list(pool.map(lambda name: storage.read_part(table_uri, name, columns), names))


def check_run_root(run: RunRoot) -> None:
    """Refuse a run root whose `videos/` hold ok videos without embeddings (a part with no `embeddings/` twin,
    staged or published): extracted by `jobs/extract.py`, or by a predict that committed features/ first."""
    names = storage.list_parts(run.videos)
    embedded = set(storage.list_parts(run.embeddings)) | set(storage.list_staged(run.embeddings))
    waiting = [name for name in names if name not in embedded]
    for name, videos in zip(waiting, _read_parts(run.videos, waiting, ["status"]), strict=True):
        if "ok" in videos["status"].to_pylist():
            raise ValueError(f"{storage.join(run.videos, name)} holds videos extracted without their embeddings (by "
                             "jobs/extract.py or an older multistream): predict into a new --output")


def unscored(run: RunRoot) -> dict[str, list[str]]:
    """{name: video ids} of the `embeddings/` parts without an `anomaly/` twin (the extraction commits them,
    `score_part` scores them), after the `predictions/` parts of an interrupted scoring are dropped."""
    done = committed_parts(run.anomaly)
    drop_uncommitted(done, [run.predictions])
    names = sorted(set(storage.list_parts(run.embeddings)) - done)
    return {name: table["video_id"].to_pylist()
            for name, table in zip(names, _read_parts(run.embeddings, names, ["video_id"]), strict=True)}


def predictions_table(ids: list[str], labels: list, splits: list, scores: np.ndarray, classifier: Classifier,
                      windows: dict[str, list] | None = None) -> pa.Table:
    """`predictions/` rows; with `windows` (its WINDOW_COLUMNS, `window_rows`) the windowed table's."""
    top_labels, top_scores = classifier.top_k(scores)
    table_schema = schema.windowed(schema.TOP_K_PREDICTIONS_SCHEMA) if windows else schema.TOP_K_PREDICTIONS_SCHEMA
    return pa.table({"video_id": ids, **(windows or {}), "label": labels, "split": splits,
                     "predicted": [t[0] for t in top_labels], "scores": list(scores.astype(np.float32)),
                     "top_labels": top_labels, "top_scores": list(top_scores.astype(np.float32))}, schema=table_schema)


def score_table(table: pa.Table, streams: tuple[str, ...], classifier: Classifier, detector: Detector,
                rules: WindowsConfig | None = None) -> tuple[pa.Table, pa.Table]:
    """`embeddings/` rows scored → (their `predictions/` rows, their `anomaly/` rows); of a windowed table, each
    video's own row and its window rows (`window_rows`, by `rules`: default WindowsConfig())."""
    ids, splits = table["video_id"].to_pylist(), table["split"].to_pylist()
    vectors = {s: table[s].combine_chunks().flatten().to_numpy(zero_copy_only=False).reshape(len(ids), -1)
               for s in streams}
    scores = classifier(vectors)
    anomaly, flagged = detector(vectors)
    if not schema.is_windowed(table.schema):
        return (predictions_table(ids, table["label"].to_pylist(), splits, scores, classifier),
                anomaly_table(ids, splits, anomaly, flagged))
    rows = window_rows(table, scores, anomaly, rules or WindowsConfig(), detector.model.threshold_for)
    column = {name: [row[name] for row in rows] for name in rows[0]}
    spans = {name: column[name] for name in ("window", "start_s", "end_s")}
    return (predictions_table(column["video_id"], column["label"], column["split"], np.stack(column["scores"]),
                              classifier, spans),
            windowed_anomaly_table(rows))


def score_part(run: RunRoot, name: str, streams: tuple[str, ...], classifier: Classifier,
               detector: Detector, rules: WindowsConfig | None = None) -> list[str]:
    """The videos of an `embeddings/` part without results (`unscored`), scored: its `predictions/` part staged,
    then its `anomaly/` part, the commit, under its name; returns their ids (a video's once)."""
    table = storage.read_part(run.embeddings, name)
    predictions, anomaly = score_table(table, streams, classifier, detector, rules)
    write_group(name, [(predictions, run.predictions), (anomaly, run.anomaly)])
    return list(dict.fromkeys(table["video_id"].to_pylist()))


def check_predict_devices(cfg: Config) -> None:
    """Refuse a model that must run on CUDA in a pool given no GPU, before any work starts. The motion CNN runs
    in the actors that compute flow (the decode pool, or the fused one)."""
    motion = "decode" if cfg.ray.fused is None else "fused"
    for model, pool in (("motion_cnn", motion), ("rnn", "embed"), ("anomaly", "write")):
        check_gpu_given(cfg, model, f"ray.{pool}.num_gpus")


@dataclass
class PredictSummary:
    extract: object  # the extraction's ExtractSummary
    predicted: int  # videos given results by this run (embedded with --embed-only, else scored)
    pending: int  # videos to score after the extraction (those embedded with --embed-only)
    seconds: float


TIMELINES = "anomaly_timelines"  # the figure of the highest-scoring videos' windows, under reports/figures/


def write_timelines(root: str, n: int = 4) -> tuple[str | None, list[str]]:
    """For the `n` videos of windowed results under `root` with the highest anomaly scores: their score timeline
    as a figure (`reports/figures/anomaly_timelines.png`, with each video's threshold and flagged intervals) and a
    line each naming their peak and flagged intervals → (the figure's URI, the lines); (None, []) for results
    without windows."""
    from multistream.report.figures import Figures
    from multistream.report.timeline import (
        clock,
        flagged_intervals,
        timeline_figure,
        top_video_windows,
        video_threshold,
    )

    run = RunRoot(root)
    videos = top_video_windows(run.anomaly, n)
    if not videos:
        return None, []
    Figures(root)(TIMELINES, timeline_figure(videos, math.nan), "anomaly score over time")  # rendered and written
    lines = []
    for video_id, windows in videos:
        peak, threshold = max(windows, key=lambda w: w["score"]), video_threshold(windows, math.nan)
        spans = ", ".join(f"{clock(a)}–{clock(b)}" for a, b in flagged_intervals(windows, threshold)) or "none"
        lines.append(f"  {video_id}: peak {peak['score']:.4f} at {clock(peak['start_s'])}–{clock(peak['end_s'])} "
                     f"(threshold {threshold:.4f} for its {len(windows)} windows); flagged: {spans}")
    return run.figure(TIMELINES), lines


def evaluate(root: str, classes: list[str]) -> dict:
    """What the labels of the input say about the results under `root`: top-1 over the labelled videos of a
    known class (split 'anomaly' excluded); false-positive rate over those, detection rate and ROC AUC
    against the 'anomaly' split. Of windowed results, each video's own row."""
    run = RunRoot(root)
    predictions = own_rows(run.predictions, ["video_id", "label", "split", "predicted"])
    out: dict = {"n_predicted": predictions.num_rows}
    if predictions.num_rows:
        rows = [r for r in predictions.to_pylist() if r["label"] in classes and r["split"] != "anomaly"]
        out |= {"n_labelled": len(rows), "top1": float(np.mean([r["label"] == r["predicted"] for r in rows]))
                if rows else None}
    anomaly = own_rows(run.anomaly, ["split", "score", "is_anomaly"])
    if anomaly.num_rows:
        is_anomalous = np.array([s == "anomaly" for s in anomaly["split"].to_pylist()])
        flagged = np.array(anomaly["is_anomaly"].to_pylist())
        out |= {"n_anomalous": int(is_anomalous.sum()), "n_normal": int((~is_anomalous).sum()),
                "flagged": int(flagged.sum()),
                **detection_figures(np.array(anomaly["score"].to_pylist()), flagged, is_anomalous, ~is_anomalous)}
    return out

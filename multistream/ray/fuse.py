"""The fusion and anomaly job: a linear SVM over the video embeddings, an autoencoder on the same vectors.

Reads `embeddings/`; writes `models/svm/`, `models/autoencoder/`, `predictions/`, `anomaly/` and the
"fusion" and "anomaly" sections of `reports/metrics.json`.

Both models train in-process on the driver, as one worker: the inputs are one (D_s,) vector per video and
stream (UCF101: 13k videos x 3 x 1024 float32 = 160 MB), a linear SVM fits them in seconds and the small
autoencoder in a minute (on the driver's GPU with `anomaly.device: auto` where it has one). A Ray Train
run would add its start-up cost and nothing else at that size; no Ray is started here.

Splits: the SVM and the autoencoder fit on split 'train'; accuracy is measured on 'test'; the anomaly ROC
AUC contrasts 'test' (normal, unseen) with 'anomaly'. Every video with an embedding gets a prediction and
an anomaly score. Each output table is rewritten as one part.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch

from multistream import runinfo, schema, storage
from multistream.anomaly import AnomalyDetector, roc_auc
from multistream.config import Config
from multistream.fusion import FusionModel, evaluate_predictions, stream_ablation

log = logging.getLogger(__name__)

SVM_DIR = "models/svm"
AUTOENCODER_DIR = "models/autoencoder"
PART = "fuse"  # the single part each output table is written as
STREAM_NAMES = {"spatial": "Spatial", "temporal": "Temporal", "audio": "Audio"}


@dataclass
class Embeddings:
    """One row per video: ids, labels and splits (N,), and per stream an (N, D_s) float32 array, NaN rows
    where the video lacks that stream."""

    video_id: list[str]
    label: list[str | None]
    split: list[str | None]
    features: dict[str, np.ndarray]

    def rows(self, mask: np.ndarray, streams: tuple[str, ...]) -> dict[str, np.ndarray]:
        return {s: self.features[s][mask] for s in streams}

    def split_mask(self, name: str) -> np.ndarray:
        return np.asarray([s == name for s in self.split], dtype=bool)


def _vectors(column: pa.ChunkedArray) -> np.ndarray:
    """A `fixed_size_list<float, D>` column (nulls allowed) → (N, D) float32, NaN rows for nulls."""
    column = column.combine_chunks()
    if pa.types.is_null(column.type):
        return np.full((len(column), 0), np.nan, np.float32)
    if pa.types.is_fixed_size_list(column.type):
        out = np.full((len(column), column.type.list_size), np.nan, np.float32)
        valid = column.is_valid().to_numpy(zero_copy_only=False)
        out[valid] = column.flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape(valid.sum(), -1)
        return out
    cells = column.to_pylist()
    dim = max((len(c) for c in cells if c is not None), default=0)
    return np.stack([np.full(dim, np.nan, np.float32) if c is None else np.asarray(c, np.float32)
                     for c in cells]) if cells else np.zeros((0, dim), np.float32)


def load_embeddings(root: str) -> Embeddings:
    """`embeddings/` of a run root, one row per video; rows of one video in several parts are merged
    (each stream from the first part that has it)."""
    table = storage.read_table(storage.join(root, schema.EMBEDDINGS))
    if table.num_rows == 0:
        raise RuntimeError(f"no embeddings under {storage.join(root, schema.EMBEDDINGS)}: run jobs/train_rnn.py first")
    ids = table["video_id"].to_pylist()
    first: dict[str, int] = {}  # video_id → merged row, in order of first appearance
    for vid in ids:
        first.setdefault(vid, len(first))
    where = np.asarray([first[vid] for vid in ids])  # table row → merged row
    n = len(first)
    labels, splits = [None] * n, [None] * n
    for i, (label, split) in enumerate(zip(table["label"].to_pylist(), table["split"].to_pylist(), strict=True)):
        labels[where[i]] = labels[where[i]] or label
        splits[where[i]] = splits[where[i]] or split
    features = {}
    for stream in schema.STREAMS:
        if stream not in table.column_names:
            continue
        rows = _vectors(table[stream])
        merged = rows
        if n < len(ids):
            merged = np.full((n, rows.shape[1]), np.nan, np.float32)
            for i in np.flatnonzero(~np.isnan(rows).all(axis=1))[::-1]:  # reversed: the first part wins
                merged[where[i]] = rows[i]
        if rows.shape[1] and not np.isnan(merged).all():
            features[stream] = merged
    return Embeddings(list(first), labels, splits, features)


def embeddings_fingerprint(root: str) -> str:
    """A digest of the content of `embeddings/` (ids, labels, splits, vectors), whatever its part layout.

    Content, not file stamps: the RNN job rewrites the table on every run, usually with the same rows.
    """
    table = storage.read_table(storage.join(root, schema.EMBEDDINGS))
    if table.num_rows == 0:
        return ""
    table = table.sort_by("video_id")
    digest = hashlib.sha1()
    for name in sorted(table.column_names):
        digest.update(name.encode())
        if name in schema.STREAMS:
            digest.update(_vectors(table[name]).tobytes())
        else:
            digest.update("\x1f".join(map(str, table[name].to_pylist())).encode())
    return digest.hexdigest()


def is_current(root: str) -> bool:
    """True when the fusion outputs exist and were fitted on the embeddings now under `root`."""
    metrics = runinfo.read_json(root, runinfo.METRICS)
    fingerprint = metrics.get("fusion", {}).get("embeddings_fingerprint")
    return (bool(fingerprint) and "anomaly" in metrics and fingerprint == embeddings_fingerprint(root)
            and storage.exists(storage.join(root, SVM_DIR, "svm.json"))
            and storage.exists(storage.join(root, AUTOENCODER_DIR, "autoencoder.json")))


def replace_table(table: pa.Table, table_uri: str) -> None:
    """Write `table` as the one part of `table_uri` (atomically), then delete any other parts."""
    storage.write_part(table, table_uri, PART)
    for name in storage.list_parts(table_uri):
        if name != PART:
            storage.delete_part(table_uri, name)


def stream_title(streams: str) -> str:
    """"spatial+audio" → "Spatial+Audio"."""
    return "+".join(STREAM_NAMES.get(s, s) for s in streams.split("+"))


def _fit_fusion(cfg: Config, data: Embeddings, streams: tuple[str, ...], root: str) -> tuple[FusionModel, dict]:
    started = time.perf_counter()
    train = data.split_mask("train") & np.asarray([v is not None for v in data.label])
    test = data.split_mask("test")
    y_train = [data.label[i] for i in np.flatnonzero(train)]
    y_test = [str(data.label[i]) for i in np.flatnonzero(test)]
    model = FusionModel.fit(data.rows(train, streams), y_train, cfg.fusion, streams=streams)
    model.save(storage.join(root, SVM_DIR))
    metrics = evaluate_predictions(model.decision_scores(data.rows(test, streams)), y_test, model.classes)
    ablation = stream_ablation(data.rows(train, streams), data.rows(test, streams), y_train, y_test,
                               cfg.fusion, streams)
    metrics |= {"streams": list(streams), "dims": model.dims, "n_train": int(train.sum()),
                "n_test": int(test.sum()), "ablation": ablation,
                "seconds": time.perf_counter() - started}
    return model, metrics


def _fit_anomaly(cfg: Config, data: Embeddings, streams: tuple[str, ...], root: str
                 ) -> tuple[np.ndarray, np.ndarray, dict]:
    """→ per-video scores (N,) float64, flags (N,) bool and the "anomaly" metrics."""
    started = time.perf_counter()
    x = np.concatenate([data.features[s] for s in streams], axis=1)  # (N, sum D_s)
    train, test, anomalous = data.split_mask("train"), data.split_mask("test"), data.split_mask("anomaly")
    detector = AnomalyDetector.fit(x[train], cfg.anomaly, device=cfg.anomaly.device)
    detector.save(storage.join(root, AUTOENCODER_DIR))
    scores = detector.score(x)
    flagged = detector.is_anomaly(scores)
    evaluated = test | anomalous
    auc = roc_auc(scores[evaluated], anomalous[evaluated])
    metrics = {
        "streams": list(streams), "input_dim": int(x.shape[1]), "n_train": int(train.sum()),
        "n_test_normal": int(test.sum()), "n_anomaly": int(anomalous.sum()),
        "threshold": detector.threshold, "threshold_percentile": cfg.anomaly.threshold_percentile,
        "roc_auc": None if np.isnan(auc) else auc,
        "flagged": {split: int(flagged[data.split_mask(split)].sum()) for split in sorted({str(s) for s in data.split})},
        "false_positive_rate": float(flagged[test].mean()) if test.any() else None,
        "detection_rate": float(flagged[anomalous].mean()) if anomalous.any() else None,
        "history": detector.history, "device": str(detector.device),
        "seconds": time.perf_counter() - started,
    }
    return scores, flagged, metrics


def run_fuse(cfg: Config) -> dict:
    """Fit the fusion SVM and the anomaly autoencoder on `embeddings/` → {"fusion": ..., "anomaly": ...}.

    Runs as one worker with `ray.torch_threads` torch threads (more threads than work only spin).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, cfg.ray.torch_threads))
    try:
        return _run_fuse(cfg)
    finally:
        torch.set_num_threads(threads)


def _run_fuse(cfg: Config) -> dict:
    root = cfg.paths.output
    fingerprint = embeddings_fingerprint(root)
    data = load_embeddings(root)
    train = data.split_mask("train")
    streams = tuple(s for s in schema.STREAMS
                    if s in data.features and not np.isnan(data.features[s][train]).all())
    if not streams:
        raise RuntimeError("no training video has any embedding: check the splits in videos/ and embeddings/")
    log.info("fusing %s over %d videos (%d train)", "+".join(streams), len(data.video_id), int(train.sum()))
    keep = ~np.all([np.isnan(data.features[s]).all(axis=1) for s in streams], axis=0)
    data = Embeddings([v for v, k in zip(data.video_id, keep, strict=True) if k],
                      [v for v, k in zip(data.label, keep, strict=True) if k],
                      [v for v, k in zip(data.split, keep, strict=True) if k],
                      {s: data.features[s][keep] for s in streams})

    model, fusion = _fit_fusion(cfg, data, streams, root)
    scores = model.decision_scores(data.rows(np.ones(len(data.video_id), bool), streams))
    predictions = pa.table({
        "video_id": data.video_id, "label": data.label, "split": data.split,
        "predicted": [model.classes[i] for i in scores.argmax(axis=1)],
        "scores": pa.array(list(scores.astype(np.float32)), pa.list_(pa.float32())),
    }, schema=schema.PREDICTIONS_SCHEMA)
    replace_table(predictions, storage.join(root, schema.PREDICTIONS))
    fusion["embeddings_fingerprint"] = fingerprint
    runinfo.update_metrics(root, "fusion", fusion)
    log.info("fusion top-1 %.4f top-5 %.4f on %d test videos", fusion["top1"], fusion["top5"], fusion["n_test"])

    anomaly_scores, flagged, anomaly = _fit_anomaly(cfg, data, streams, root)
    replace_table(pa.table({
        "video_id": data.video_id, "split": data.split, "score": anomaly_scores.astype(np.float32),
        "is_anomaly": flagged,
    }, schema=schema.ANOMALY_SCHEMA), storage.join(root, schema.ANOMALY))
    runinfo.update_metrics(root, "anomaly", anomaly)
    log.info("anomaly ROC AUC %s (%d test-normal vs %d anomalous videos)", anomaly["roc_auc"],
             anomaly["n_test_normal"], anomaly["n_anomaly"])
    return {"fusion": fusion, "anomaly": anomaly}


def summary_table(result: dict) -> str:
    """The Table II-style text summary of `run_fuse`'s result: streams, top-1 %, top-5 %, then anomaly."""
    fusion, anomaly = result["fusion"], result["anomaly"]
    lines = [f"{'streams (linear SVM on the RNN embeddings)':<44} {'top-1 %':>8} {'top-5 %':>8}"]
    for row in fusion["ablation"]:
        lines.append(f"{stream_title(row['streams']):<44} {100 * row['top1']:>8.2f} {100 * row['top5']:>8.2f}")
    lines.append(f"{fusion['n_train']} train / {fusion['n_test']} test videos, classes: {', '.join(fusion['classes'])}")
    auc = anomaly["roc_auc"]
    lines.append(f"anomaly: ROC AUC {'n/a' if auc is None else f'{auc:.3f}'} ({anomaly['n_test_normal']} test-normal vs "
                 f"{anomaly['n_anomaly']} anomalous videos), threshold {anomaly['threshold']:.4f} "
                 f"(p{anomaly['threshold_percentile']:g} of held-out normal training videos), flagged per split: {anomaly['flagged']}")
    return "\n".join(lines)

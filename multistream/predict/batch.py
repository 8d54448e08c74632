"""A trained run applied to new videos in batch: the work list, rows and tables of `jobs/predict.py`.

The batch job and one-file mode (`multistream.predict.single`) run the same cores (`multistream.predict.models`)
on the same extracted arrays, so a clip gets the same class and scores from both. The batch job commits a group of videos (one
`videos/` part of its extraction) as `embeddings/<part>`, then `predictions/<part>`, then `anomaly/<part>`:
the last one is the commit (`multistream.store.commit`; `embeddings/` alone with `--embed-only`). On start, parts without it are deleted
and committed videos are skipped.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from multistream.config import Config
from multistream.device import check_gpu_given
from multistream.fuse.anomaly import detection_figures
from multistream.predict.models import Classifier, Detector, TemporalEmbedder, VideoEmbedder
from multistream.store import schema, storage
from multistream.store.commit import committed_parts, drop_uncommitted, part_name, write_group
from multistream.store.layout import RunRoot

log = logging.getLogger(__name__)

FEATURE_COLUMNS = ["video_id", "frame_index", "spatial", "audio"]


def _read_parts(table_uri: str, names: list[str], columns: list[str]) -> list[pa.Table]:
    with ThreadPoolExecutor(max_workers=16) as pool:
        return list(pool.map(lambda name: storage.read_part(table_uri, name, columns), names))


def committed_ids(run: RunRoot, embed_only: bool) -> set[str]:
    """Videos whose results are committed; in full mode, first drop the parts of an interrupted commit."""
    marker = run.embeddings if embed_only else run.anomaly
    done = committed_parts(marker)
    if not embed_only:
        drop_uncommitted(done, [run.embeddings, run.predictions])
    return {v for table in _read_parts(marker, sorted(done), ["video_id"]) for v in table["video_id"].to_pylist()}


def pending(run: RunRoot, embed_only: bool = False) -> list[dict]:
    """One work item per extraction commit that holds ok videos without results:
    {"part": name, "video_id": [...], "label": [...], "split": [...]}."""
    done = committed_ids(run, embed_only)
    names = storage.list_parts(run.videos)
    items = []
    for name, videos in zip(names, _read_parts(run.videos, names, ["video_id", "label", "split", "status"]),
                            strict=True):
        rows = [v for v in videos.to_pylist() if v["status"] == "ok" and v["video_id"] not in done]
        if rows:
            items.append({"part": name, **{key: [v[key] for v in rows] for key in ("video_id", "label", "split")}})
    return items


def read_inputs(run: RunRoot, item: dict) -> tuple[pa.Table, dict[str, np.ndarray]]:
    """The item's `features/` rows (in item order) and {video_id: (P, H, W, 2) uint8 flow}, both from the part
    named like the commit."""
    from multistream.extract.rows import read_flow

    ids = item["video_id"]
    features = storage.read_part(run.features, item["part"], FEATURE_COLUMNS)
    index = {v: i for i, v in enumerate(features["video_id"].to_pylist())}
    features = features.take([index[v] for v in ids])
    flows = {row["video_id"]: read_flow(row) for row in storage.read_part(run.flow, item["part"]).to_pylist()
             if row["video_id"] in index}
    return features, flows


def stream_inputs(features: pa.Table, temporal: list[np.ndarray]) -> dict[str, list[np.ndarray]]:
    """{stream: N sequences (T_i, D) float32} from `features/` rows and their temporal sequences."""
    sequences = {}
    for stream in ("spatial", "audio"):
        dim = features.schema.field(stream).type.value_type.list_size
        sequences[stream] = [np.zeros((0, dim), np.float32) if x is None else x
                             for x in schema.column_to_sequences(features[stream])]
    return sequences | {"temporal": [np.asarray(t, np.float32) for t in temporal]}


def embeddings_table(ids: list[str], labels: list, splits: list, vectors: dict[str, np.ndarray]) -> pa.Table:
    """`embeddings/` rows: one (E,) float32 vector per stream of the bundle, null for the others."""
    dim = next(iter(vectors.values())).shape[1]
    columns = {}
    for stream in schema.STREAMS:
        rows = vectors.get(stream)
        mask = pa.array(np.full(len(ids), rows is None))
        flat = np.zeros((len(ids), dim), np.float32) if rows is None else np.ascontiguousarray(rows, np.float32)
        columns[stream] = pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1)), dim, mask=mask)
    return pa.table({"video_id": ids, "label": labels, "split": splits, **columns},
                    schema=schema.embeddings_schema(dim))


def predictions_table(ids: list[str], labels: list, splits: list, scores: np.ndarray,
                      classifier: Classifier) -> pa.Table:
    top_labels, top_scores = classifier.top_k(scores)
    return pa.table({"video_id": ids, "label": labels, "split": splits, "predicted": [t[0] for t in top_labels],
                     "scores": list(scores.astype(np.float32)), "top_labels": top_labels,
                     "top_scores": list(top_scores.astype(np.float32))}, schema=schema.TOP_K_PREDICTIONS_SCHEMA)


def anomaly_table(ids: list[str], splits: list, scores: np.ndarray, flagged: np.ndarray) -> pa.Table:
    return pa.table({"video_id": ids, "split": splits, "score": scores.astype(np.float32), "is_anomaly": flagged},
                    schema=schema.ANOMALY_SCHEMA)


def temporal_table(run: RunRoot, item: dict, embed: TemporalEmbedder) -> pa.Table:
    """One work item (`pending`) → per video: video_id, label, split, spatial, audio and the temporal sequence."""
    features, flows = read_inputs(run, item)
    positions = features["frame_index"].to_pylist()
    temporal = [embed(flows[v], np.asarray(p, np.int64)) for v, p in zip(item["video_id"], positions, strict=True)]
    text = {key: pa.array(item[key], pa.string()) for key in ("video_id", "label", "split")}
    return pa.table({**text, "spatial": features["spatial"], "audio": features["audio"],
                     "temporal": schema.sequence_array(temporal, schema.MOTION_DIM)})


def heads_table(table: pa.Table, embed: VideoEmbedder) -> pa.Table:
    """`temporal_table` rows → `embeddings/` rows (each stream's RNN head)."""
    vectors = embed(stream_inputs(table, schema.column_to_sequences(table["temporal"])))
    return embeddings_table(table["video_id"].to_pylist(), table["label"].to_pylist(), table["split"].to_pylist(),
                            vectors)


def commit_group(run: RunRoot, table: pa.Table, streams: tuple[str, ...], classifier: Classifier | None,
                 detector: Detector | None) -> str:
    """A group's `embeddings/` rows written, then (unless embed-only: no classifier) scored into its
    `predictions/` and, last, its `anomaly/` part; returns the part's name."""
    ids, splits = table["video_id"].to_pylist(), table["split"].to_pylist()
    name = part_name(ids)
    table = table.cast(schema.embeddings_schema(table.schema.field(schema.STREAMS[0]).type.list_size))
    parts = [(table, run.embeddings)]
    if classifier is not None:
        vectors = {s: table[s].combine_chunks().flatten().to_numpy(zero_copy_only=False).reshape(len(ids), -1)
                   for s in streams}
        scores = classifier(vectors)
        parts += [(predictions_table(ids, table["label"].to_pylist(), splits, scores, classifier), run.predictions),
                  (anomaly_table(ids, splits, *detector(vectors)), run.anomaly)]
    write_group(name, parts)
    return name


def check_predict_devices(cfg: Config) -> None:
    """Refuse a model that must run on CUDA in a pool given no GPU, before any work starts."""
    for model, pool in (("motion_cnn", "embed"), ("rnn", "embed"), ("anomaly", "write")):
        check_gpu_given(cfg, model, f"ray.{pool}.num_gpus")


@dataclass
class PredictSummary:
    extract: object  # the extraction's ExtractSummary
    predicted: int  # videos given results by this run
    pending: int  # videos that had none when it started
    seconds: float


def evaluate(root: str, classes: list[str]) -> dict:
    """What the labels of the input say about the results under `root`: top-1 over the labelled videos of a
    known class (split 'anomaly' excluded); false-positive rate over those, detection rate and ROC AUC
    against the 'anomaly' split."""
    run = RunRoot(root)
    predictions = storage.read_table(run.predictions, columns=["video_id", "label", "split", "predicted"])
    out: dict = {"n_predicted": predictions.num_rows}
    if predictions.num_rows:
        rows = [r for r in predictions.to_pylist() if r["label"] in classes and r["split"] != "anomaly"]
        out |= {"n_labelled": len(rows), "top1": float(np.mean([r["label"] == r["predicted"] for r in rows]))
                if rows else None}
    anomaly = storage.read_table(run.anomaly, columns=["split", "score", "is_anomaly"])
    if anomaly.num_rows:
        is_anomalous = np.array([s == "anomaly" for s in anomaly["split"].to_pylist()])
        flagged = np.array(anomaly["is_anomaly"].to_pylist())
        out |= {"n_anomalous": int(is_anomalous.sum()), "n_normal": int((~is_anomalous).sum()),
                "flagged": int(flagged.sum()),
                **detection_figures(np.array(anomaly["score"].to_pylist()), flagged, is_anomalous, ~is_anomalous)}
    return out

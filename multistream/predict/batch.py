"""A trained run applied to new videos in batch: the work list, rows and tables of `jobs/predict.py`.

The batch job and one-file mode (`multistream.predict.single`) run the same cores (`multistream.predict.models`)
on the same extracted arrays, so a clip gets the same class and scores from both. The motion CNN runs inside the
extraction, on each video's flow while the actor that computed it holds it (`TemporalStep`): the extraction
commits the temporal sequence as a column of `features/` and writes no `flow/` (unless `keep_flow`). The later
stages read `features/` part by part (`inputs_table`) and commit a group of videos as `embeddings/<part>`,
then `predictions/<part>`, then `anomaly/<part>`: the last one is the commit (`multistream.store.commit`;
`embeddings/` alone with `--embed-only`). On start, parts without it are deleted and committed videos are
skipped; in full mode, the `embeddings/` parts an `--embed-only` run committed are scored (`score_part`), not
embedded again. Once every ok video of an extraction commit has results, its `features/` part, read by nothing
else, is deleted, unless it has a `flow/` twin (`--keep-flow` keeps the extraction's tables: `drop_used_features`).
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from multistream.config import Config
from multistream.device import check_gpu_given
from multistream.extract.rows import fail
from multistream.fuse.anomaly import detection_figures
from multistream.predict.models import Classifier, Detector, TemporalEmbedder, VideoEmbedder
from multistream.store import schema, storage
from multistream.store.commit import committed_parts, delete_part, drop_uncommitted, part_name, write_group
from multistream.store.layout import RunRoot

log = logging.getLogger(__name__)

FEATURE_COLUMNS = ["video_id", "spatial", "audio", "temporal"]


class TemporalStep:
    """Extraction row → row, right after decode while its flow is in memory (`run_extract`'s `after_decode`):
    "temporal" (K, 2048) float16, the motion CNN on the flow stacks centred at the row's sampled positions
    (`TemporalEmbedder`); "flow" is dropped, or kept with `keep_flow` (then committed to `flow/` as
    `jobs/extract.py` does). Error rows pass through; a failing model makes the row an error row ("temporal")."""

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


def _read_parts(table_uri: str, names: list[str], columns: list[str]) -> list[pa.Table]:
    with ThreadPoolExecutor(max_workers=16) as pool:
        return list(pool.map(lambda name: storage.read_part(table_uri, name, columns), names))


def committed_ids(run: RunRoot, embed_only: bool) -> set[str]:
    """Videos whose embeddings are committed: in full mode, those with results and those an --embed-only run
    embedded (`unscored`: they are scored, not embedded again), after the parts of an interrupted commit
    are published or dropped."""
    if not embed_only:
        done = committed_parts(run.anomaly)
        drop_uncommitted(done | set(storage.list_parts(run.embeddings)), [run.embeddings])
        drop_uncommitted(done, [run.predictions])
    names = storage.list_parts(run.embeddings)
    return {v for table in _read_parts(run.embeddings, names, ["video_id"]) for v in table["video_id"].to_pylist()}


def unscored(run: RunRoot) -> dict[str, list[str]]:
    """{name: video ids} of the `embeddings/` parts without an `anomaly/` twin: committed by an --embed-only run
    into this run root (its features/ are gone once used); full mode scores them (`score_part`)."""
    names = sorted(set(storage.list_parts(run.embeddings)) - committed_parts(run.anomaly))
    return {name: table["video_id"].to_pylist()
            for name, table in zip(names, _read_parts(run.embeddings, names, ["video_id"]), strict=True)}


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


def inputs_table(run: RunRoot, item: dict) -> pa.Table:
    """One work item (`pending`) → per video, in item order: video_id, label, split and its spatial, audio and
    temporal sequences, from the `features/` part named like the commit."""
    features = storage.read_part(run.features, item["part"])
    if "temporal" not in features.column_names:
        raise ValueError(f"{storage.join(run.features, item['part'])} has no temporal sequences: it was extracted by "
                         f"an older multistream, which wrote flow/ instead; predict into a new --output")
    features = features.select(FEATURE_COLUMNS)
    index = {v: i for i, v in enumerate(features["video_id"].to_pylist())}
    features = features.take([index[v] for v in item["video_id"]])
    text = {key: pa.array(item[key], pa.string()) for key in ("video_id", "label", "split")}
    return pa.table({**text, **{stream: features[stream] for stream in ("spatial", "audio", "temporal")}})


def stream_inputs(table: pa.Table) -> dict[str, list[np.ndarray]]:
    """{stream: N sequences (T_i, D) float32} from `inputs_table` rows."""
    sequences = {}
    for stream in schema.STREAMS:
        dim = table.schema.field(stream).type.value_type.list_size
        sequences[stream] = [np.zeros((0, dim), np.float32) if x is None else x
                             for x in schema.column_to_sequences(table[stream])]
    return sequences


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


def heads_table(table: pa.Table, embed: VideoEmbedder) -> pa.Table:
    """`inputs_table` rows → `embeddings/` rows (each stream's RNN head)."""
    vectors = embed(stream_inputs(table))
    return embeddings_table(table["video_id"].to_pylist(), table["label"].to_pylist(), table["split"].to_pylist(),
                            vectors)


def result_parts(run: RunRoot, table: pa.Table, streams: tuple[str, ...], classifier: Classifier,
                 detector: Detector) -> list[tuple[pa.Table, str]]:
    """`embeddings/` rows scored: [(their `predictions/` rows, its URI), (their `anomaly/` rows, its URI)]."""
    ids, splits = table["video_id"].to_pylist(), table["split"].to_pylist()
    vectors = {s: table[s].combine_chunks().flatten().to_numpy(zero_copy_only=False).reshape(len(ids), -1)
               for s in streams}
    scores = classifier(vectors)
    return [(predictions_table(ids, table["label"].to_pylist(), splits, scores, classifier), run.predictions),
            (anomaly_table(ids, splits, *detector(vectors)), run.anomaly)]


def commit_group(run: RunRoot, table: pa.Table, streams: tuple[str, ...], classifier: Classifier | None,
                 detector: Detector | None) -> str:
    """A group's `embeddings/` rows written, then (unless embed-only: no classifier) scored into its
    `predictions/` and, last, its `anomaly/` part; returns the part's name."""
    name = part_name(table["video_id"].to_pylist())
    table = table.cast(schema.embeddings_schema(table.schema.field(schema.STREAMS[0]).type.list_size))
    parts = [(table, run.embeddings)]
    if classifier is not None:
        parts += result_parts(run, table, streams, classifier, detector)
    write_group(name, parts)
    return name


def score_part(run: RunRoot, name: str, streams: tuple[str, ...], classifier: Classifier,
               detector: Detector) -> list[str]:
    """The videos of an `embeddings/` part that an --embed-only run committed (`unscored`), scored: its
    `predictions/` part staged, then its `anomaly/` part, the commit, under its name; returns their ids."""
    table = storage.read_part(run.embeddings, name)
    write_group(name, result_parts(run, table, streams, classifier, detector))
    return table["video_id"].to_pylist()


def drop_used_features(run: RunRoot, waiting: set[str]) -> list[str]:
    """Delete the `features/` parts whose ok videos all have results (every part but `waiting`: those of videos
    still without) and that have no `flow/` twin (extracted with --keep-flow: kept, as `jobs/extract.py` writes
    them); returns their names."""
    kept = waiting | set(storage.list_parts(run.flow))
    used = [name for name in storage.list_parts(run.features) if name not in kept]
    for name in used:
        delete_part(run.features, name)
    if used:
        log.info("predict: removed %d features/ part(s) whose videos all have results", len(used))
    return used


def check_predict_devices(cfg: Config) -> None:
    """Refuse a model that must run on CUDA in a pool given no GPU, before any work starts. The motion CNN runs
    in the actors that compute flow (the decode pool, or the fused one)."""
    motion = "decode" if cfg.ray.fused is None else "fused"
    for model, pool in (("motion_cnn", motion), ("rnn", "embed"), ("anomaly", "write")):
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

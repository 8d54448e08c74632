"""Which videos each stream's recurrent head trains, validates, is scored and embeds on, and its sequences.

Per stream (spatial: `features.spatial`, audio: `features.audio`, temporal: `motion.temporal`):
classes = the sorted labels of the ok train-split videos; `train` fits, `val` drives every model choice
(learning-rate schedule, best epoch, early stopping, ASHA), `test` is scored once at the end; every ok
video (anomaly and unlabelled ones too) is embedded.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from multistream.store import schema, storage
from multistream.store.layout import RunRoot

log = logging.getLogger(__name__)

# stream → (table, column): the motion CNN's embeddings are in motion/, the extracted ones in features/
SOURCES = {s: (schema.MOTION if s == "temporal" else schema.FEATURES, s) for s in schema.STREAMS}
PRODUCER = {schema.FEATURES: "jobs/extract.py", schema.MOTION: "jobs/train_motion.py"}
SPLITS = ("train", "val", "test")


class MissingStreamError(FileNotFoundError):
    """The table a stream is read from does not exist yet; the message names the job that writes it."""


@dataclass(frozen=True)
class StreamData:
    """Where one stream's sequences live and which videos train, validate, are scored and embedded."""

    stream: str
    table: str  # table URI
    column: str
    input_dim: int
    classes: list[str]
    targets: dict[str, int]  # video_id → class index, for the train, val and test ids
    train_ids: list[str]
    val_ids: list[str]
    test_ids: list[str]
    all_ids: list[str]  # every ok video with this stream

    def ids(self, split: str) -> list[str]:
        return {"train": self.train_ids, "val": self.val_ids, "test": self.test_ids, "all": self.all_ids}[split]


@dataclass
class Sequences:
    """One split in memory: `seqs[i]` (T_i, D) float16 (T_i may be 0), `targets` (N,) int64 (-1: no class)."""

    ids: list[str]
    seqs: list[np.ndarray]
    targets: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)


def shard(ids: list[str], rank: int, world: int, pad: bool = False) -> list[str]:
    """Every `world`-th id from `rank`; `pad` repeats the first ids so that every shard has ceil(N / world)
    (the distributed-sampler rule: every worker then takes the same number of optimizer steps)."""
    chosen = list(ids[rank::world])
    if pad:
        chosen += list(ids[:-(-len(ids) // world) - len(chosen)])
    return chosen


def ok_videos(run: RunRoot) -> pa.Table:
    """video_id, label, split of the ok videos, sorted by video_id."""
    videos = storage.read_table(run.videos, columns=["video_id", "label", "split", "status"],
                                schema=schema.VIDEOS_SCHEMA)
    if videos.num_rows == 0:
        raise MissingStreamError(f"{run.videos} has no videos: run jobs/extract.py first")
    return videos.filter(pc.equal(videos["status"], "ok")).drop_columns(["status"]).sort_by("video_id")


def stream_data(run: RunRoot, stream: str, videos: pa.Table) -> StreamData:
    """The ids, classes and input size of `stream`; raises MissingStreamError when its table is absent."""
    if stream not in SOURCES:
        raise ValueError(f"unknown stream {stream!r}; streams are {', '.join(SOURCES)}")
    table_name, column = SOURCES[stream]
    table = run.table(table_name)
    parts = storage.list_parts(table)
    if not parts:
        raise MissingStreamError(f"stream {stream!r} reads {table}, which does not exist: "
                                 f"run {PRODUCER[table_name]} first")
    with storage.open_input(storage.join(table, parts[0] + storage.PART_SUFFIX)) as f:
        input_dim = pq.read_schema(f).field(column).type.value_type.list_size
    present = set(storage.read_table(table, columns=["video_id"])["video_id"].to_pylist())
    rows = [r for r in videos.to_pylist() if r["video_id"] in present]
    classes = sorted({r["label"] for r in rows if r["split"] == "train" and r["label"]})
    index = {label: i for i, label in enumerate(classes)}
    split_ids = {split: [r["video_id"] for r in rows if r["split"] == split and r["label"] in index]
                 for split in SPLITS}
    for split in ("val", "test"):
        unknown = sum(r["split"] == split and r["label"] not in index for r in rows)
        if unknown:
            log.warning("%s: %d %s videos have a label absent from the train split; not scored", stream,
                        unknown, split)
    if not split_ids["train"] or not split_ids["test"]:
        counts = ", ".join(f"{len(ids)} {split}" for split, ids in split_ids.items())
        raise ValueError(f"stream {stream!r} needs labelled ok videos in the train and test splits "
                         f"(val, where there is one, drives the model choices; test is scored), found {counts}")
    scored = {v for ids in split_ids.values() for v in ids}
    targets = {r["video_id"]: index[r["label"]] for r in rows if r["video_id"] in scored}
    return StreamData(stream, table, column, input_dim, classes, targets, split_ids["train"], split_ids["val"],
                      split_ids["test"], [r["video_id"] for r in rows])


def sequences(column: pa.ChunkedArray | pa.Array) -> list[np.ndarray]:
    """(T_i, D) float16 arrays of a `vectors()` column; a null cell is an empty sequence."""
    dim = column.type.value_type.list_size
    return [np.zeros((0, dim), np.float16) if s is None else s
            for s in schema.column_to_sequences(column, np.float16)]


def read_sequences(data: StreamData, ids: list[str]) -> Sequences:
    """The sequences of `ids` (in that order) from the stream's table; unscored ids get target -1."""
    table = storage.read_table(data.table, columns=["video_id", data.column],
                               filter=pc.field("video_id").isin(ids))
    found = {v: i for i, v in enumerate(table["video_id"].to_pylist())}
    missing = [v for v in ids if v not in found]
    if missing:
        raise ValueError(f"{data.table} has no {data.column} rows for {len(missing)} videos, e.g. {missing[:3]}")
    seqs = sequences(table[data.column])
    return Sequences(list(ids), [seqs[found[v]] for v in ids],
                     np.array([data.targets.get(v, -1) for v in ids], np.int64))

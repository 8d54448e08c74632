"""The fuse job's input: `embeddings/` of a run root as one row per video (or, windowed, per window), and a digest
of its content."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from multistream.store import schema, storage
from multistream.store.layout import RunRoot


@dataclass
class Embeddings:
    """One row per video: ids, labels and splits (N,), and per stream an (N, D_s) float32 array, NaN rows
    where the video has no embedding of that stream (a silent clip has one: VGGish on silence)."""

    video_id: list[str]
    label: list[str | None]
    split: list[str | None]
    features: dict[str, np.ndarray]

    def rows(self, mask: np.ndarray, streams: tuple[str, ...]) -> dict[str, np.ndarray]:
        """Per stream the (M, D_s) rows where `mask` (N,) bool is set."""
        return {s: self.features[s][mask] for s in streams}

    def split_mask(self, name: str) -> np.ndarray:
        """(N,) bool: the videos of split `name`."""
        return np.asarray([s == name for s in self.split], dtype=bool)

    def labels(self, mask: np.ndarray) -> list[str]:
        return [str(self.label[i]) for i in np.flatnonzero(mask)]

    def present(self, stream: str) -> np.ndarray:
        """(N,) bool: the videos that have an embedding of `stream`."""
        return ~np.isnan(self.features[stream]).all(axis=1)

    def select(self, mask: np.ndarray, streams: tuple[str, ...]) -> Embeddings:
        """The videos where `mask` (N,) bool is set, with only `streams`."""
        keep = np.flatnonzero(mask)
        return Embeddings([self.video_id[i] for i in keep], [self.label[i] for i in keep],
                          [self.split[i] for i in keep], {s: self.features[s][mask] for s in streams})


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
    uri = RunRoot(root).embeddings
    table = storage.read_table(uri)
    if table.num_rows == 0:
        raise RuntimeError(f"no embeddings under {uri}: run jobs/train_rnn.py first")
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


WINDOW_SPANS = ["video_id", "label", "split", "window", "start_s", "end_s"]


def load_window_embeddings(root: str) -> tuple[Embeddings, pa.Table, str]:
    """The windowed `embeddings/` of a run root (`video.windows`) → (one row per (video, window): `video_id`
    repeats over a video's windows, per stream (W, D_s) float32; the W rows' WINDOW_SPANS columns, in the same
    order: by video_id, then window; the table's `embeddings_fingerprint`)."""
    uri = RunRoot(root).embeddings
    table = storage.read_table(uri)
    if table.num_rows == 0:
        raise RuntimeError(f"no window embeddings under {uri}: the pipeline's windows step writes them")
    if not schema.is_windowed(table.schema):
        raise RuntimeError(f"{uri} was not extracted in time windows (it has no window column)")
    table = table.sort_by([("video_id", "ascending"), ("window", "ascending")])
    features = {}
    for stream in schema.STREAMS:
        if stream in table.column_names:
            rows = _vectors(table[stream])
            if rows.shape[1] and not np.isnan(rows).all():
                features[stream] = rows
    data = Embeddings(table["video_id"].to_pylist(), table["label"].to_pylist(), table["split"].to_pylist(),
                      features)
    return data, table.select(WINDOW_SPANS), table_fingerprint(table)


def embeddings_fingerprint(root: str) -> str:
    """A digest of the content of `embeddings/` (ids, labels, splits, vectors), whatever its part layout.

    Content, not file stamps: the RNN job rewrites the table on every run, usually with the same rows.
    """
    return table_fingerprint(storage.read_table(RunRoot(root).embeddings))


def table_fingerprint(table: pa.Table) -> str:
    """`embeddings_fingerprint` of an `embeddings/` table already read."""
    if table.num_rows == 0:
        return ""
    table = table.sort_by([("video_id", "ascending"), ("window", "ascending")] if schema.is_windowed(table.schema)
                          else "video_id")
    digest = hashlib.sha1()
    for name in sorted(table.column_names):
        digest.update(name.encode())
        if name in schema.STREAMS:
            digest.update(_vectors(table[name]).tobytes())
        else:
            digest.update("\x1f".join(map(str, table[name].to_pylist())).encode())
    return digest.hexdigest()


def has_audio(root: str, video_ids: list[str]) -> np.ndarray | None:
    """(N,) bool: whether each video has an audio track, from `videos/`; None without that table. (A clip
    without one has an audio embedding all the same: its RNN embeds VGGish's sequence for silence.)"""
    table = storage.read_table(RunRoot(root).videos, columns=["video_id", "has_audio"])
    if table.num_rows == 0:
        return None
    tracks = {vid: bool(a) for vid, a in zip(table["video_id"].to_pylist(), table["has_audio"].to_pylist(),
                                             strict=True)}
    return np.asarray([tracks.get(vid, True) for vid in video_ids], dtype=bool)


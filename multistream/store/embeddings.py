"""The video embeddings: each stream's part `models/rnn_<stream>/embeddings.parquet` (video_id, embedding), and
the `embeddings/` table assembled from them (one row per ok video, null where a stream is missing).
"""

from __future__ import annotations

import time
import uuid

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from multistream.store import layout, schema, storage
from multistream.store.commit import delete_part
from multistream.store.layout import RunRoot
from multistream.train.rnn.data import ok_videos


def fixed_list(rows: np.ndarray, mask: np.ndarray | None = None) -> pa.FixedSizeListArray:
    """(N, E) float32 → `fixed_size_list<float32, E>`; rows where `mask` is True are null."""
    flat = pa.array(np.ascontiguousarray(rows, np.float32).reshape(-1))
    return pa.FixedSizeListArray.from_arrays(flat, rows.shape[1], mask=None if mask is None else pa.array(mask))


def _read_file(uri: str, columns: list[str] | None = None) -> pa.Table:
    with storage.open_input(uri) as f:
        return pq.read_table(f, columns=columns)


def write_stream(run: RunRoot, stream: str, ids: list[str], embeddings: np.ndarray) -> None:
    """A stream's part: ids (N,) with embeddings (N, E) float32."""
    storage.write_part(pa.table({"video_id": list(ids), "embedding": fixed_list(embeddings)}),
                       run.model(layout.rnn_name(stream)), layout.EMBEDDINGS_PART)


def embedded_ids(run: RunRoot, stream: str) -> set[str]:
    """The videos in a stream's part (empty when there is none)."""
    part = run.model_embeddings(layout.rnn_name(stream))
    return set(_read_file(part, ["video_id"])["video_id"].to_pylist()) if storage.exists(part) else set()


def read_stream(run: RunRoot, stream: str) -> tuple[list[str], np.ndarray] | None:
    """(ids, embeddings (N, E) float32) of a stream's part, None when there is none."""
    part = run.model_embeddings(layout.rnn_name(stream))
    if not storage.exists(part):
        return None
    table = _read_file(part)
    column = table["embedding"].combine_chunks()
    return table["video_id"].to_pylist(), column.flatten().to_numpy(zero_copy_only=False).reshape(
        -1, column.type.list_size)


def write_embeddings(run: RunRoot) -> int:
    """Rebuild `embeddings/` from every stream's part; returns its row count (0: no stream embedded yet)."""
    videos = ok_videos(run)
    ids = videos["video_id"].to_pylist()
    found = {stream: part for stream in schema.STREAMS if (part := read_stream(run, stream)) is not None}
    if not found:
        return 0
    dims = {stream: matrix.shape[1] for stream, (_, matrix) in found.items()}
    if len(set(dims.values())) > 1:
        raise ValueError(f"streams have different embedding sizes {dims}: retrain them with one rnn config")
    dim = next(iter(dims.values()))
    arrays = {}
    for stream in schema.STREAMS:
        part_ids, matrix = found.get(stream, ([], np.zeros((1, dim), np.float32)))
        rows = {v: i for i, v in enumerate(part_ids)}
        index = np.array([rows.get(v, -1) for v in ids], np.int64)
        arrays[stream] = fixed_list(matrix[np.maximum(index, 0)].reshape(-1, dim), index < 0)
    table = pa.table({"video_id": ids, "label": videos["label"], "split": videos["split"], **arrays},
                     schema=schema.embeddings_schema(dim))
    old = storage.list_parts(run.embeddings)
    storage.write_part(table, run.embeddings, f"part-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}")
    for name in old:  # after the new part is complete: a reader never finds the table empty
        delete_part(run.embeddings, name)
    return table.num_rows

"""The rows one video becomes on its way through the extraction stages, and the tables they are written as.

A row is a dict:
    "video":      the `videos/` row (dict, schema.VIDEOS_SCHEMA names), status "ok" or "error"
    "positions":  (K,) int32 sampled frame indices     "timestamps": (K,) float32 s   "magnitudes": (K,) float32 px
    "frames":     (K, S, S, 3) uint8 RGB (until the spatial stage replaces it by "spatial" (K, D) float16)
    "wave":       (N,) float32 mono (until the audio stage replaces it by "audio" (E, 128) float16)
    "flow":       (P, H, W, 2) uint8 quantized flow
    "temporal":   (K, 2048) float16 motion-CNN embeddings at the positions: only in `jobs/predict.py`, whose step
                  after decode (`multistream.predict.batch.TemporalStep`) replaces "flow" by it
    "embedding_<stream>": (E,) float32, the stream's RNN head on its sequence: only in `jobs/predict.py`, whose
                  heads (`multistream.predict.batch.HeadsStep`) replace the sequences by them before the commit
    "windows":    (W, 5) float64 under video.windows: the arrays above are its W windows' concatenated, and each
                  "embedding_<stream>" is (W, E) (`multistream.extract.windows.merge_windows`)
An error row holds only "video". Between Ray stages a batch of rows travels as columns (`to_columns`): arrays
as `.npy` bytes (so sequences of different lengths cross Arrow without ragged-tensor conversions) and the
`videos/` row as JSON.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pyarrow as pa

from multistream.dataset.manifest import VideoEntry
from multistream.extract.errors import error_kind
from multistream.extract.video import VideoError
from multistream.extract.windows import spans, split_windows
from multistream.store import schema
from multistream.store.uris import redact, scrub

EMBEDDINGS = {stream: f"embedding_{stream}" for stream in schema.STREAMS}  # row key of each stream's embedding
ARRAYS = ("positions", "timestamps", "magnitudes", "frames", "wave", "flow", "spatial", "audio", "temporal",
          *EMBEDDINGS.values(), "windows")
ENTRY_COLUMNS = ("video_id", "uri", "label", "split")


def pack(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def unpack(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


def to_columns(rows: list[dict]) -> dict[str, np.ndarray]:
    """Rows → one object column per key (every row gets every key: b"" where it has no array)."""
    names = ["video", *[name for name in ARRAYS if any(name in row for row in rows)]]
    columns = {"video": [json.dumps(row["video"]) for row in rows]}
    for name in names[1:]:
        columns[name] = [pack(row[name]) if name in row else b"" for row in rows]
    return {name: np.array(values, dtype=object) for name, values in columns.items()}


def from_columns(batch: dict[str, np.ndarray]) -> list[dict]:
    """The inverse of `to_columns` (empty cells are dropped). A cell may also be None: Ray Data fills a column
    with nulls for the rows of a block that did not have it (e.g. a block of error rows, concatenated)."""
    rows = []
    for i, video in enumerate(batch["video"]):
        row = {"video": json.loads(video)}
        for name in ARRAYS:
            cell = batch[name][i] if name in batch else None
            if cell is not None and len(cell):
                row[name] = unpack(cell)
        rows.append(row)
    return rows


def entries_from_columns(batch: dict[str, np.ndarray]) -> list[VideoEntry]:
    """A batch of manifest columns (ENTRY_COLUMNS, "" for None) → entries."""
    return [VideoEntry(*[(value or None) for value in values])
            for values in zip(*(batch[name] for name in ENTRY_COLUMNS), strict=True)]


def entries_table(entries: list[VideoEntry]) -> pa.Table:
    """The manifest as an Arrow table of ENTRY_COLUMNS ("" for None): ~100 bytes a video."""
    return pa.table({name: pa.array([getattr(e, name) or "" for e in entries], pa.string())
                     for name in ENTRY_COLUMNS})


def blocks(table: pa.Table, parallelism: int, max_videos: int = 64) -> list[pa.Table]:
    """`table` cut into zero-copy slices for Ray Data: at most `max_videos` rows each (a block per task, so
    that the per-task cost is shared), and at least 4 per actor of the widest pool (so that stages overlap and
    every actor has work) where there are that many rows."""
    n = table.num_rows
    count = min(n, max(4 * parallelism, -(-n // max_videos)))
    bounds = [i * n // count for i in range(count + 1)] if count else [0]
    return [table.slice(start, stop - start) for start, stop in zip(bounds, bounds[1:], strict=False)]


def video_row(entry: VideoEntry, status: str = "ok", error: str | None = None,
              facts: dict | None = None, seconds: dict | None = None, kind: str | None = None) -> dict:
    """A `videos/` row; the facts of a failed video stay null. Its id, URI and error message are redacted
    (`multistream.store.uris`): no credential or query string of the URI (a presigned URL's signature) is stored."""
    row = {name: None for name in schema.VIDEOS_SCHEMA.names}
    row |= {"video_id": redact(entry.video_id), "uri": redact(entry.uri), "label": entry.label,
            "split": entry.split, "status": status, "error": scrub(error, entry.uri),
            "error_kind": (kind or "video") if status != "ok" else None}  # multistream.extract.errors
    row |= facts or {}
    row |= seconds or {}
    return row


# Raised by the program itself (a bug, a missing or incompatible dependency), never by a video's content: one
# stops the job with its traceback instead of turning every video into an error row.
PROGRAM_ERRORS = (TypeError, AttributeError, ImportError, NameError, SyntaxError, AssertionError,
                  NotImplementedError)


class ProgramError(RuntimeError):
    """An error of the program met while processing a video: the job stops (the cause's traceback follows)."""


def stop_on_program_error(error: BaseException, uri: str, stage: str) -> None:
    """Raise ProgramError from `error` when it is a PROGRAM_ERRORS one; return for an error of the video."""
    if isinstance(error, PROGRAM_ERRORS):
        raise ProgramError(f"{stage} of {redact(uri)}: {type(error).__name__}: {scrub(str(error), uri)}. This is "
                           "an error of the program or of an installed package, not of the video: the job stops "
                           "(traceback below); every committed video is kept and a re-run resumes") from error


def error_message(error: BaseException, uri: str | None = None) -> str:
    """One line: a VideoError's message, else the error's type and message (after `uri` where the message does
    not name it)."""
    text = " ".join((str(error) or type(error).__name__).split())
    if isinstance(error, VideoError):
        return text
    where = f"{uri}: " if uri and uri not in text else ""
    return f"{where}{type(error).__name__}: {text}"


def fail(row: dict, stage: str, error: BaseException) -> dict:
    """The row as an error row: its arrays dropped, the message naming the stage (ProgramError for a bug)."""
    stop_on_program_error(error, row["video"]["uri"], stage)
    message = scrub(f"{stage}: {error_message(error)}", row["video"]["uri"])
    return {"video": row["video"] | {"status": "error", "error": message, "error_kind": error_kind(error, stage)}}


def row_bytes(row: dict) -> int:
    """Bytes the row adds to the `features/`, `flow/` and `embeddings/` parts it is committed in (about)."""
    return sum(row[name].nbytes for name in ("positions", "timestamps", "magnitudes", "spatial", "audio", "flow",
                                             *EMBEDDINGS.values()) if name in row)


def videos_table(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist([row["video"] for row in rows], schema=schema.VIDEOS_SCHEMA)


def per_window(rows: list[dict]) -> list[dict]:
    """Merged window rows (`multistream.extract.windows.merge_windows`) → one row per (video, window), each with its
    window's share of the arrays and "span" (window, start_s, end_s); rows without windows as they are."""
    if not rows or "windows" not in rows[0]:
        return rows
    out = []
    for row in rows:
        cut = {key: list(row[key]) if key in EMBEDDINGS.values() else split_windows(row, key)
               for key in row if key not in ("video", "windows")}
        for w, span in enumerate(spans(row)):
            out.append({"video": row["video"], "span": span, **{key: parts[w] for key, parts in cut.items()}})
    return out


def window_columns(rows: list[dict]) -> dict[str, list]:
    """The WINDOW_COLUMNS of `per_window` rows; {} for rows without windows."""
    if not rows or "span" not in rows[0]:
        return {}
    return {"window": [row["span"].index for row in rows], "start_s": [row["span"].start_s for row in rows],
            "end_s": [row["span"].end_s for row in rows]}


def features_table(rows: list[dict]) -> pa.Table:
    """`features/` rows of ok rows (each with "spatial" (K, D) and "audio" (E, 128)); a row per window of merged
    window rows."""
    rows = per_window(rows)
    spatial_dim = rows[0]["spatial"].shape[1]
    columns = {
        "video_id": [row["video"]["video_id"] for row in rows],
        **window_columns(rows),
        "frame_index": [row["positions"].tolist() for row in rows],
        "timestamp_s": [row["timestamps"].tolist() for row in rows],
        "flow_magnitude": [row["magnitudes"].tolist() for row in rows],
        "spatial": schema.sequence_array([row["spatial"] for row in rows], spatial_dim),
        "audio": schema.sequence_array([row["audio"] for row in rows], schema.AUDIO_DIM),
    }
    table_schema = schema.features_schema(spatial_dim)
    return pa.table(columns, schema=schema.windowed(table_schema) if "window" in columns else table_schema)


def embeddings_table(ids: list[str], labels: list, splits: list, vectors: dict[str, np.ndarray],
                     windows: dict[str, list] | None = None) -> pa.Table:
    """`embeddings/` rows: one (E,) float32 vector per stream of `vectors` ({stream: (N, E)}), null for the others;
    with `windows` (`window_columns`) a row per (video, window)."""
    dim = next(iter(vectors.values())).shape[1]
    columns = {}
    for stream in schema.STREAMS:
        rows = vectors.get(stream)
        mask = pa.array(np.full(len(ids), rows is None))
        flat = np.zeros((len(ids), dim), np.float32) if rows is None else np.ascontiguousarray(rows, np.float32)
        columns[stream] = pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1)), dim, mask=mask)
    table_schema = schema.embeddings_schema(dim)
    return pa.table({"video_id": ids, **(windows or {}), "label": labels, "split": splits, **columns},
                    schema=schema.windowed(table_schema) if windows else table_schema)


def embedded_table(rows: list[dict]) -> pa.Table:
    """`embeddings/` rows of ok rows carrying their streams' "embedding_<stream>" (the same streams in each): (E,)
    each, or (W, E) for the W windows of a merged window row (then a row per window)."""
    rows = per_window(rows)
    vectors = {stream: np.stack([row[key] for row in rows]) for stream, key in EMBEDDINGS.items() if key in rows[0]}
    return embeddings_table([row["video"]["video_id"] for row in rows], [row["video"]["label"] for row in rows],
                            [row["video"]["split"] for row in rows], vectors, window_columns(rows))


def flow_table(video_id: str, flow: np.ndarray, clip_px: float) -> pa.Table:
    """One `flow/` row: the shape (P, H, W, 2) and the quantized bytes (`read_flow` reads it back)."""
    return pa.table({
        "video_id": [video_id],
        "shape": [list(flow.shape)],
        "data": pa.array([flow.tobytes()], pa.large_binary()),
        "clip_px": pa.array([clip_px], pa.float32()),
    }, schema=schema.FLOW_SCHEMA)


def read_flow(row: dict) -> np.ndarray:
    """(P, H, W, 2) uint8 from a `flow/` row as a Python dict ("shape", "data"); `flow.dequantize` gives pixels."""
    return np.frombuffer(row["data"], np.uint8).reshape(row["shape"])

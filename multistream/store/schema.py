"""The explicit pyarrow schemas of every table a job writes (docs/design.md#tables). One row per video everywhere,
except under `video.windows` (`windowed`): one row per (video, window) in features/, flow/ and embeddings/, and in
predictions/ and anomaly/ the window rows plus each video's own row (window null).

Sequences of vectors are `list<fixed_size_list<float16|float32, D>>`: a (T, D) array per video.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from multistream.streams import STREAMS  # the stream columns of embeddings/, as everywhere

VIDEOS = "videos"
FEATURES = "features"
FLOW = "flow"
MOTION = "motion"
EMBEDDINGS = "embeddings"
PREDICTIONS = "predictions"
ANOMALY = "anomaly"

AUDIO_DIM = 128  # VGGish
MOTION_DIM = 2048  # motion CNN full7

STAGE_SECONDS = ("decode_s", "flow_s", "spatial_s", "audio_s")

VIDEOS_SCHEMA = pa.schema([
    ("video_id", pa.string()),
    ("uri", pa.string()),
    ("label", pa.string()),
    ("split", pa.string()),
    ("status", pa.string()),  # 'ok' | 'error'
    ("error", pa.string()),  # null when ok
    ("error_kind", pa.string()),  # null when ok: 'transient' (retried by a re-run) | 'input' | 'video' | 'model'
    ("duration_s", pa.float64()),
    ("fps", pa.float64()),  # measured from timestamps
    ("kept_fps", pa.float64()),  # of the frames kept: fps, or ~video.max_fps where a faster video was decimated
    ("width", pa.int32()),
    ("height", pa.int32()),
    ("n_frames", pa.int32()),  # frames kept within max_seconds (all decoded ones unless decimated)
    ("has_audio", pa.bool_()),
    ("n_samples", pa.int32()),  # sampled positions (features sequence length)
    *[(name, pa.float64()) for name in STAGE_SECONDS],
])

FLOW_SCHEMA = pa.schema([
    ("video_id", pa.string()),
    ("shape", pa.list_(pa.int32())),  # (T-1, H, W, 2): one field per consecutive frame pair
    ("data", pa.large_binary()),  # uint8, C order, value = round((clip(d, ±clip_px) + clip_px) * 255 / 2clip_px)
    ("clip_px", pa.float32()),
])


def vectors(dim: int, dtype: pa.DataType | None = None) -> pa.DataType:
    """Arrow type of a (T, dim) sequence of vectors (float16 unless `dtype` says otherwise)."""
    return pa.list_(pa.list_(dtype or pa.float16(), dim))


def features_schema(spatial_dim: int, audio_dim: int = AUDIO_DIM) -> pa.Schema:
    return pa.schema([
        ("video_id", pa.string()),
        ("frame_index", pa.list_(pa.int32())),  # sampled positions, ascending
        ("timestamp_s", pa.list_(pa.float32())),
        ("flow_magnitude", pa.list_(pa.float32())),  # mean flow length, pixels of the original video
        ("spatial", vectors(spatial_dim)),  # aligned with frame_index
        ("audio", vectors(audio_dim)),  # one vector per 0.96 s example (own length)
    ])


def motion_schema(dim: int = MOTION_DIM) -> pa.Schema:
    return pa.schema([("video_id", pa.string()), ("temporal", vectors(dim))])


def embeddings_schema(dim: int = 1024) -> pa.Schema:
    return pa.schema([
        ("video_id", pa.string()),
        ("label", pa.string()),
        ("split", pa.string()),
        *[(s, pa.list_(pa.float32(), dim)) for s in STREAMS],  # null where a stream is missing
    ])


PREDICTIONS_SCHEMA = pa.schema([
    ("video_id", pa.string()),
    ("label", pa.string()),
    ("split", pa.string()),
    ("predicted", pa.string()),
    ("scores", pa.list_(pa.float32())),  # decision score per class, in the order of models/svm classes
])
# predictions/ of jobs/predict.py: also each video's best classes (at most 5), best first, and their scores
TOP_K_PREDICTIONS_SCHEMA = PREDICTIONS_SCHEMA.append(pa.field("top_labels", pa.list_(pa.string()))).append(
    pa.field("top_scores", pa.list_(pa.float32())))

ANOMALY_SCHEMA = pa.schema([
    ("video_id", pa.string()),
    ("split", pa.string()),
    ("score", pa.float32()),  # reconstruction error
    ("is_anomaly", pa.bool_()),
])


# the columns a table gains under video.windows, after video_id: the window's index (null in a video's own row
# of predictions/ and anomaly/) and its span on the video's clock
WINDOW_COLUMNS = [("window", pa.int32()), ("start_s", pa.float64()), ("end_s", pa.float64())]
# anomaly/ under video.windows: in a video's own row, its highest-scoring window; in every row, the threshold its
# verdict was drawn at (video.windows.false_alarms: it grows with the video's number of windows)
WINDOWED_ANOMALY = [pa.field("peak_window", pa.int32()), pa.field("threshold", pa.float32())]


def windowed(table_schema: pa.Schema) -> pa.Schema:
    """`table_schema` with WINDOW_COLUMNS after video_id (and anomaly/'s WINDOWED_ANOMALY last)."""
    out = table_schema
    for offset, (name, arrow_type) in enumerate(WINDOW_COLUMNS):
        out = out.insert(1 + offset, pa.field(name, arrow_type))
    if table_schema.equals(ANOMALY_SCHEMA):
        for extra in WINDOWED_ANOMALY:
            out = out.append(extra)
    return out


def is_windowed(table_schema: pa.Schema) -> bool:
    return "window" in table_schema.names


def sequence_array(seqs: list[np.ndarray | None], dim: int, dtype=np.float16) -> pa.Array:
    """Arrow `list<fixed_size_list<dtype, dim>>` from (T_i, dim) arrays (None → null)."""
    arrow_type = pa.from_numpy_dtype(np.dtype(dtype))
    offsets, chunks, mask = [0], [], []
    for seq in seqs:
        mask.append(seq is None)
        seq = np.zeros((0, dim), dtype) if seq is None else np.asarray(seq, dtype).reshape(-1, dim)
        chunks.append(seq.reshape(-1))
        offsets.append(offsets[-1] + len(seq))
    flat = pa.array(np.concatenate(chunks) if chunks else np.zeros(0, dtype), type=arrow_type)
    inner = pa.FixedSizeListArray.from_arrays(flat, dim)
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), inner, mask=pa.array(mask, pa.bool_()))


def column_to_sequences(column: pa.ChunkedArray | pa.Array, dtype=np.float32) -> list[np.ndarray | None]:
    """Every cell of a `vectors()` column as a (T, D) array, without a Python loop over the vectors."""
    if isinstance(column, pa.ChunkedArray):
        return [seq for chunk in column.chunks for seq in column_to_sequences(chunk, dtype)]
    dim = column.type.value_type.list_size
    flat = column.flatten().flatten().to_numpy(zero_copy_only=False).astype(dtype).reshape(-1, dim)
    base = column.offsets[0].as_py()
    offsets = column.offsets.to_numpy() - base
    valid = column.is_valid().to_numpy(zero_copy_only=False)
    return [flat[offsets[i]:offsets[i + 1]] if valid[i] else None for i in range(len(column))]

"""Synthetic `embeddings/` tables for the fuse job's tests: labelled train/val/test videos and anomalies."""

import numpy as np
import pyarrow as pa

from multistream.config import load_config
from multistream.store import schema, storage

CLASSES = ["Archery", "Biking", "Diving"]
DIM = 8
SETTINGS = ["anomaly.hidden=32", "anomaly.bottleneck=4", "anomaly.epochs=80", "anomaly.batch_size=16",
            "anomaly.device=cpu"]


def synthetic_videos(seed: int = 0, train: int = 20, val: int = 10, test: int = 10, anomalies: int = 8) -> list[dict]:
    """Rows with a (DIM,) vector per stream: stream k tells class k apart from the other two (which it
    confuses), so a single stream reaches about 2/3 top-1 and the three together nearly 1; the anomalies
    sit far off in the directions the normal videos only fill with noise."""
    rng = np.random.default_rng(seed)
    rows = []
    for split, n in (("train", train), ("val", val), ("test", test)):
        for c, label in enumerate(CLASSES):
            for i in range(n):
                vectors = {}
                for k, stream in enumerate(schema.STREAMS):
                    v = rng.normal(size=DIM)
                    v[0] += 4.0 if c == k else 0.0
                    vectors[stream] = v
                rows.append({"video_id": f"{label}/{split}_{i:02d}", "label": label, "split": split, **vectors})
    for i in range(anomalies):
        vectors = {s: rng.normal(size=DIM) + np.r_[0.0, np.full(DIM - 1, 5.0)] for s in schema.STREAMS}
        rows.append({"video_id": f"anomaly/anomaly_{i:02d}", "label": "anomaly", "split": "anomaly", **vectors})
    return rows


def embeddings_table(rows: list[dict], streams: tuple[str, ...]) -> pa.Table:
    columns = {name: [r[name] for r in rows]
               for name in ("video_id", "label", "split")}
    for stream in schema.STREAMS:
        columns[stream] = [r[stream].astype(np.float32) if stream in streams and r.get(stream) is not None
                           else None for r in rows]
    return pa.table(columns, schema=schema.embeddings_schema(DIM))


def write_synthetic_embeddings(root: str, seed: int = 0) -> list[dict]:
    """embeddings/ in two parts (spatial+temporal, then audio), one test video without audio and one
    video with no embedding at all; returns the rows."""
    rows = synthetic_videos(seed)
    rows[len(CLASSES) * 30]["audio"] = None  # the first test video has no audio track
    table = storage.join(root, schema.EMBEDDINGS)
    empty = {"video_id": "Biking/empty", "label": "Biking", "split": "test"}
    storage.write_part(embeddings_table(rows + [empty], ("spatial", "temporal")), table, "part-a")
    storage.write_part(embeddings_table(rows, ("audio",)), table, "part-b")
    return rows


def fuse_config(root: str):
    return load_config(None, [f"paths.output={root}", *SETTINGS])

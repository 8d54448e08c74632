"""A tiny synthetic run root for the recurrent heads: 3 classes, learnable in a few epochs, every split."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from multistream.config import load_config
from multistream.store import schema, storage

CLASSES = ("jump", "run", "wave")
DIM, AUDIO_DIM, HIDDEN = 16, 8, 8
PER_CLASS = 10  # 5 train, 2 val, 3 test


def split_of(i: int) -> str:
    return "train" if i < 5 else "val" if i < 7 else "test"


def _sequence(rng: np.random.Generator, label: int, dim: int, length: int) -> np.ndarray:
    """(length, dim): noise around a class-specific direction, so the class is learnable."""
    center = np.zeros(dim)
    center[label * 3:label * 3 + 3] = 1.5
    return (center + rng.normal(scale=0.7, size=(length, dim))).astype(np.float16)


def write_videos(root: str, videos: list[dict], part: str, with_motion: bool, seed: int) -> None:
    """One part of videos/ for `videos` (dicts of video_id, label, split, status, has_audio) and, for the
    ok ones, of features/ (and motion/) with sequences around their class's direction."""
    rng = np.random.default_rng(seed)
    rows = []
    for video in videos:
        if video["status"] != "ok":
            continue
        label, length = CLASSES.index(video["label"]) if video["label"] in CLASSES else 1, int(rng.integers(3, 9))
        rows.append({"video_id": video["video_id"], "spatial": _sequence(rng, label, DIM, length),
                     "audio": _sequence(rng, label, AUDIO_DIM, 2 if video["has_audio"] else 0),
                     "temporal": _sequence(rng, label, DIM, length), "length": length})
    storage.write_part(pa.table({
        "video_id": [r["video_id"] for r in rows],
        "frame_index": [list(range(r["length"])) for r in rows],
        "timestamp_s": [[0.1 * t for t in range(r["length"])] for r in rows],
        "flow_magnitude": [[1.0] * r["length"] for r in rows],
        "spatial": schema.sequence_array([r["spatial"] for r in rows], DIM),
        "audio": schema.sequence_array([r["audio"] for r in rows], AUDIO_DIM),
    }, schema=schema.features_schema(DIM, AUDIO_DIM)), storage.join(root, schema.FEATURES), part)
    if with_motion:
        storage.write_part(pa.table({
            "video_id": [r["video_id"] for r in rows],
            "temporal": schema.sequence_array([r["temporal"] for r in rows], DIM),
        }, schema=schema.motion_schema(DIM)), storage.join(root, schema.MOTION), part)
    storage.write_part(pa.Table.from_pylist(videos, schema=schema.VIDEOS_SCHEMA), storage.join(root, schema.VIDEOS),
                       part)


def run_root_videos(test_labels: dict[str, str] | None = None) -> list[dict]:
    """30 labelled ok videos (15 train, 6 val, 9 test), 2 anomaly, 1 error; `test_labels` relabels test videos
    (their sequences stay those of their true class)."""
    videos = [{"video_id": f"{label}_{i}", "label": label, "split": split_of(i), "status": "ok",
               "has_audio": not (c == 0 and i == PER_CLASS - 1)}
              for c, label in enumerate(CLASSES) for i in range(PER_CLASS)]
    videos += [{"video_id": f"odd_{i}", "label": "anomaly", "split": "anomaly", "status": "ok", "has_audio": True}
               for i in range(2)]
    videos.append({"video_id": "broken", "label": "run", "split": "train", "status": "error", "error": "bad file"})
    return videos


def make_run_root(root: str, with_motion: bool = False, poison_test: bool = False) -> dict[str, str]:
    """videos/, features/ in two parts, optionally motion/; returns {video_id: split} of the ok videos.

    One test video has no audio track (empty sequence). `poison_test` gives every test video the label of the
    next class (same sequences): a model choice that read the test split would change."""
    videos = run_root_videos()
    halves = [videos[:17], videos[17:]]
    for part, (chunk, seed) in enumerate(zip(halves, (0, 1), strict=True)):
        rows = [dict(v) for v in chunk]
        write_videos(root, rows, "ab"[part], with_motion, seed=seed)
        if poison_test:  # videos/ rewritten after the features were drawn from the true labels
            for v in rows:
                if v["split"] == "test":
                    v["label"] = CLASSES[(CLASSES.index(v["label"]) + 1) % len(CLASSES)]
            storage.write_part(pa.Table.from_pylist(rows, schema=schema.VIDEOS_SCHEMA),
                               storage.join(root, schema.VIDEOS), "ab"[part])
    return {video["video_id"]: video["split"] for video in videos if video["status"] == "ok"}


def toy_config(root, epochs: int = 25, **overrides):
    values = {"paths.output": str(root), "rnn.hidden": HIDDEN, "rnn.layers": 1, "rnn.dropout": 0.1,
              "rnn.lr": 0.05, "rnn.batch_size": 4, "rnn.epochs": epochs, "rnn.patience": epochs,
              "ray.spatial.num_cpus": 0.5, "ray.train.checkpoint_every_s": 0, **overrides}
    return load_config(overrides=[f"{key}={value}" for key, value in values.items()])

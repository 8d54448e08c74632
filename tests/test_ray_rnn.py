"""The recurrent-head job on Ray Train + Ray Data, on a tiny synthetic run root (3 classes, learnable in a few epochs)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pytest
import torch

from multistream import runinfo, schema, storage
from multistream.config import load_config
from multistream.ray.rnn import (
    MODEL_FILE,
    MissingStreamError,
    load_model,
    model_dir,
    run_train_rnn,
)
from multistream.ray.train import STATE_FILE

CLASSES = ("jump", "run", "wave")
DIM, AUDIO_DIM, HIDDEN = 16, 8, 8


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


def make_run_root(root: str, with_motion: bool = False) -> dict[str, str]:
    """videos/ (24 labelled ok, 2 anomaly, 1 error), features/ in two parts, optionally motion/.

    Returns {video_id: split} of the ok videos. One test video has no audio track (empty sequence).
    """
    videos = [{"video_id": f"{label}_{i}", "label": label, "split": "train" if i < 5 else "test", "status": "ok",
               "has_audio": not (c == 0 and i == 7)} for c, label in enumerate(CLASSES) for i in range(8)]
    videos += [{"video_id": f"odd_{i}", "label": "anomaly", "split": "anomaly", "status": "ok", "has_audio": True}
               for i in range(2)]
    videos.append({"video_id": "broken", "label": "run", "split": "train", "status": "error", "error": "bad file"})
    write_videos(root, videos[:14], "a", with_motion, seed=0)
    write_videos(root, videos[14:], "b", with_motion, seed=1)
    return {video["video_id"]: video["split"] for video in videos if video["status"] == "ok"}


def toy_config(root, epochs: int = 25, **overrides):
    values = {"paths.output": str(root), "rnn.hidden": HIDDEN, "rnn.layers": 1, "rnn.dropout": 0.1,
              "rnn.lr": 0.05, "rnn.batch_size": 4, "rnn.epochs": epochs, "rnn.patience": epochs,
              "ray.spatial.num_cpus": 0.5, **overrides}
    return load_config(overrides=[f"{key}={value}" for key, value in values.items()])


def _checkpoint_epochs(root, stream: str) -> list[int]:
    """Epochs of the checkpoints Ray Train kept for the stream."""
    states = (root / "checkpoints" / f"rnn_{stream}").rglob(STATE_FILE)
    return sorted(torch.load(state, weights_only=True)["epoch"] for state in states)


def test_trains_resumes_embeds_and_skips(tmp_path, ray_session):
    splits = make_run_root(str(tmp_path), with_motion=True)
    first = run_train_rnn(toy_config(tmp_path, epochs=2), ["temporal"])["temporal"]
    assert first["epochs"] == 2 and _checkpoint_epochs(tmp_path, "temporal") == [1, 2]

    # without the final model the job trains again, continuing from the checkpoint of epoch 2
    for name in (MODEL_FILE, "model.json", "embeddings.parquet"):
        (tmp_path / "models" / "rnn_temporal" / name).unlink()
    result = run_train_rnn(toy_config(tmp_path, epochs=15), ["temporal"])["temporal"]
    assert [h["epoch"] for h in result["history"]] == list(range(1, 16)) and result["epochs"] == 15
    assert result["history"][:2] == first["history"]  # restored, not run again
    assert _checkpoint_epochs(tmp_path, "temporal") == [14, 15]
    assert result["top1"] >= 0.75, result  # chance is 1/3 on 9 test videos
    assert result["top5"] == 1.0 and result["n_train"] == 15 and result["n_test"] == 9
    assert result["classes"] == list(CLASSES)
    assert result["history"][-1]["train_loss"] < result["history"][0]["train_loss"]

    table = ds.dataset(str(tmp_path / schema.EMBEDDINGS)).to_table().sort_by("video_id")
    assert table.schema.equals(schema.embeddings_schema(2 * HIDDEN))
    assert table["video_id"].to_pylist() == sorted(splits)  # the error video has no row; anomalies do
    assert table["split"].to_pylist() == [splits[v] for v in sorted(splits)]
    assert table["temporal"].null_count == 0 and table["spatial"].null_count == len(splits)
    assert table["audio"].null_count == len(splits)
    temporal = np.array(table["temporal"].to_pylist(), np.float32)
    assert temporal.shape == (len(splits), 2 * HIDDEN) and np.isfinite(temporal).all()

    model, meta = load_model(model_dir(str(tmp_path), "temporal"))
    assert meta["classes"] == list(CLASSES) and meta["input_dim"] == DIM and model.embedding_dim == 2 * HIDDEN
    assert runinfo.read_json(str(tmp_path), runinfo.METRICS)["rnn_temporal"]["top1"] == result["top1"]

    # a video added since is embedded by the saved model, no retraining; another stream joins embeddings/
    late = {"video_id": "late", "label": None, "split": None, "status": "ok", "has_audio": True}
    write_videos(str(tmp_path), [late], "c", with_motion=True, seed=2)
    again = run_train_rnn(toy_config(tmp_path, epochs=2), ["temporal", "audio"])
    assert "skipped" not in again["temporal"] and again["temporal"]["history"] == result["history"]
    assert again["audio"]["epochs"] == 2 and again["audio"]["n_train"] == 15
    assert len(storage.list_parts(str(tmp_path / schema.EMBEDDINGS))) == 1
    table = ds.dataset(str(tmp_path / schema.EMBEDDINGS)).to_table().sort_by("video_id")
    assert table["video_id"].to_pylist() == sorted([*splits, "late"])  # a video without audio has a row too
    assert table["audio"].null_count == 0 and table["temporal"].null_count == 0
    assert table["spatial"].null_count == len(splits) + 1
    rows = [v != "late" for v in table["video_id"].to_pylist()]
    assert np.array(table["temporal"].filter(rows).to_pylist(), np.float32) == pytest.approx(temporal, abs=1e-5)  # other batches

    # done streams are skipped
    done = run_train_rnn(toy_config(tmp_path, epochs=2), ["temporal", "audio"])
    assert done["temporal"]["skipped"] and done["audio"]["skipped"] and done["temporal"]["top1"] == result["top1"]


def test_missing_motion_table_names_the_job(tmp_path):
    make_run_root(str(tmp_path))
    with pytest.raises(MissingStreamError, match="jobs/train_motion.py"):  # before any Ray work
        run_train_rnn(toy_config(tmp_path), ["temporal"])
    assert "missing" in run_train_rnn(toy_config(tmp_path), ["temporal"], skip_missing=True)["temporal"]


def test_runs_on_an_object_store(s3_bucket, ray_session):
    root = f"{s3_bucket}/run"
    splits = make_run_root(root)
    result = run_train_rnn(toy_config(root, epochs=2), ["spatial"])["spatial"]
    assert result["epochs"] == 2 and result["n_test"] == 9
    model, meta = load_model(model_dir(root, "spatial"))
    assert meta["epochs"] == 2 and model.embedding_dim == 2 * HIDDEN
    table = storage.read_table(storage.join(root, schema.EMBEDDINGS))
    assert sorted(table["video_id"].to_pylist()) == sorted(splits) and table["spatial"].null_count == 0
    assert storage.list_files(storage.join(root, "checkpoints", "rnn_spatial"), extensions=(STATE_FILE,))

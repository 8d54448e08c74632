"""The recurrent-head job on Ray Train, on a tiny synthetic run root (3 classes, learnable in a few epochs)."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.dataset as ds
import pytest
import torch

from multistream.ray.rnn import run_train_rnn
from multistream.store import layout, modelio, runinfo, schema, storage
from multistream.store.layout import CHECKPOINT_STATE, RunRoot
from multistream.train.rnn.data import MissingStreamError
from multistream.train.rnn.heads import load_head
from tests.support.rnn import CLASSES, DIM, HIDDEN, make_run_root, toy_config, write_videos


def _steps(history: list[dict]) -> list[dict]:
    """A history without its timings."""
    return [{k: v for k, v in h.items() if k not in ("seconds", "run_s")} for h in history]


def _checkpoint_epochs(root, run_name: str, stream: str) -> list[int]:
    """Epochs of `stream`'s head in the checkpoints Ray Train kept for a run."""
    states = (root / "checkpoints" / run_name).rglob(CHECKPOINT_STATE)
    return sorted(len(json.loads(torch.load(s, weights_only=True)[stream]["bookkeeping"])["history"]) for s in states)


def test_trains_resumes_embeds_and_reuses(tmp_path, ray_session):
    splits = make_run_root(str(tmp_path), with_motion=True)
    first = run_train_rnn(toy_config(tmp_path, epochs=2), ["temporal"]).streams["temporal"]
    assert first.epochs == 2 and first.status == "trained"
    assert _checkpoint_epochs(tmp_path, "rnn_temporal", "temporal") == [1, 2]

    # without the final model the job trains again, continuing from the checkpoint of epoch 2
    for name in (modelio.WEIGHTS_FILE, modelio.META_FILE, "embeddings.parquet"):
        (tmp_path / "models" / "rnn_temporal" / name).unlink()
    result = run_train_rnn(toy_config(tmp_path, epochs=15), ["temporal"]).streams["temporal"]
    assert [h["epoch"] for h in result.history] == list(range(1, 16)) and result.epochs == 15
    assert result.history[:2] == first.history  # restored, not run again
    assert _checkpoint_epochs(tmp_path, "rnn_temporal", "temporal") == [14, 15]
    assert result.best_epoch == min(result.history, key=lambda h: h["val_loss"])["epoch"]
    assert result.top1 >= 0.75, result  # chance is 1/3 on 9 test videos
    assert result.top5 is None and "val_top5" not in result.history[0]  # 3 classes: no top-5
    assert (result.n_train, result.n_val, result.n_test) == (15, 6, 9) and result.classes == list(CLASSES)

    table = ds.dataset(str(tmp_path / schema.EMBEDDINGS)).to_table().sort_by("video_id")
    assert table.schema.equals(schema.embeddings_schema(2 * HIDDEN))
    assert table["video_id"].to_pylist() == sorted(splits)  # the error video has no row; anomalies do
    assert table["split"].to_pylist() == [splits[v] for v in sorted(splits)]
    assert table["temporal"].null_count == 0 and table["spatial"].null_count == len(splits)
    temporal = np.array(table["temporal"].to_pylist(), np.float32)
    assert temporal.shape == (len(splits), 2 * HIDDEN) and np.isfinite(temporal).all()

    model, meta = load_head(RunRoot(str(tmp_path)).model(layout.rnn_name("temporal")))
    assert meta["classes"] == list(CLASSES) and meta["input_dim"] == DIM and model.embedding_dim == 2 * HIDDEN
    metrics = runinfo.read_json(str(tmp_path), runinfo.METRICS)["rnn_temporal"]
    assert metrics["top1"] == result.top1 and metrics["val"] == result.val

    # a video added since is embedded by the saved model, no retraining; two more streams train in one run, which
    # at an hour between checkpoints checkpoints only its final epoch
    late = {"video_id": "late", "label": None, "split": None, "status": "ok", "has_audio": True}
    write_videos(str(tmp_path), [late], "c", with_motion=True, seed=2)
    hourly = toy_config(tmp_path, epochs=2, **{"ray.train.checkpoint_every_s": 3600})
    again = run_train_rnn(hourly, ["temporal", "audio", "spatial"]).streams
    assert again["temporal"].status == "embedded" and again["temporal"].history == result.history
    assert again["audio"].epochs == 2 and again["spatial"].epochs == 2 and again["audio"].status == "trained"
    assert _checkpoint_epochs(tmp_path, "rnn_audio-spatial", "spatial") == [2]
    assert len(storage.list_parts(str(tmp_path / schema.EMBEDDINGS))) == 1
    table = ds.dataset(str(tmp_path / schema.EMBEDDINGS)).to_table().sort_by("video_id")
    assert table["video_id"].to_pylist() == sorted([*splits, "late"])  # a video without audio has a row too
    assert table["audio"].null_count == 0 and table["temporal"].null_count == 0 and table["spatial"].null_count == 0
    rows = [v != "late" for v in table["video_id"].to_pylist()]
    assert np.array(table["temporal"].filter(rows).to_pylist(), np.float32) == pytest.approx(temporal, abs=1e-5)

    # done streams are reused
    done = run_train_rnn(toy_config(tmp_path, epochs=2), ["temporal", "audio"]).streams
    assert done["temporal"].status == done["audio"].status == "reused" and done["temporal"].top1 == again[
        "temporal"].top1


def test_model_choices_read_val_not_test(tmp_path, ray_session):
    """Poisoned test labels leave every choice (schedule, best epoch, early stop) as it was; only test moves."""
    cfg = {"rnn.patience": 3, "rnn.lr_patience": 2}
    results = {}
    for name, poison in (("clean", False), ("poisoned", True)):
        make_run_root(str(tmp_path / name), poison_test=poison)
        results[name] = run_train_rnn(toy_config(tmp_path / name, epochs=12, **cfg), ["spatial"]).streams["spatial"]
    clean, poisoned = results["clean"], results["poisoned"]
    assert _steps(poisoned.history) == _steps(clean.history) and poisoned.best_epoch == clean.best_epoch
    assert poisoned.val == clean.val and poisoned.top1 < clean.top1


def test_missing_motion_table_names_the_job(tmp_path):
    make_run_root(str(tmp_path))
    with pytest.raises(MissingStreamError, match="jobs/train_motion.py"):  # before any Ray work
        run_train_rnn(toy_config(tmp_path), ["temporal"])
    assert "train_motion" in run_train_rnn(toy_config(tmp_path), ["temporal"], skip_missing=True).missing["temporal"]


def test_cuda_without_gpus_is_refused_before_work(tmp_path):
    make_run_root(str(tmp_path))
    with pytest.raises(ValueError, match="rnn.device: cuda, but ray.train.use_gpu is false"):
        run_train_rnn(toy_config(tmp_path, **{"rnn.device": "cuda"}), ["spatial"])


def test_runs_on_an_object_store(s3_bucket, ray_session):
    root = f"{s3_bucket}/run"
    splits = make_run_root(root)
    result = run_train_rnn(toy_config(root, epochs=2), ["spatial"]).streams["spatial"]
    assert result.epochs == 2 and result.n_test == 9
    model, meta = load_head(RunRoot(root).model(layout.rnn_name("spatial")))
    assert meta["epochs"] == 2 and model.embedding_dim == 2 * HIDDEN
    table = storage.read_table(storage.join(root, schema.EMBEDDINGS))
    assert sorted(table["video_id"].to_pylist()) == sorted(splits) and table["spatial"].null_count == 0
    assert storage.list_files(storage.join(root, "checkpoints", "rnn_spatial"), extensions=(CHECKPOINT_STATE,))

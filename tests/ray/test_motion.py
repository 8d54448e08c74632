"""jobs/train_motion.py on Ray Train and Ray Data: learning, the motion/ table, resume, a killed worker."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from multistream.config import ConfigError
from multistream.ray.motion import run_train_motion
from multistream.store import schema, storage
from multistream.store.layout import MOTION_CNN, RunRoot
from tests.support.helpers import kill_train_worker_when
from tests.support.motion import OVERRIDES, SIZE, config, make_run_root

ROOT = Path(__file__).resolve().parents[2]


def test_trains_embeds_resumes_and_learns(tmp_path, ray_session):
    ids = make_run_root(tmp_path, videos_per_class=8)
    model_dir = Path(RunRoot(str(tmp_path)).model(MOTION_CNN))
    result = run_train_motion(config(tmp_path, 2))
    assert result.trained and result.embedded == len(ids)
    assert [m["epoch"] for m in result.training.history] == [1, 2]
    first_epoch = result.training.history[0]

    motion = storage.read_table(str(tmp_path / "motion"))
    features = storage.read_table(str(tmp_path / "features"), columns=["video_id", "frame_index"])
    lengths = dict(zip(features["video_id"].to_pylist(), map(len, features["frame_index"].to_pylist()),
                       strict=True))
    assert sorted(motion["video_id"].to_pylist()) == sorted(ids)
    for video_id, sequence in zip(motion["video_id"].to_pylist(), schema.column_to_sequences(motion["temporal"]),
                                  strict=True):
        assert sequence.shape == (lengths[video_id], 2048) and np.isfinite(sequence).all()
    assert motion.schema.field("temporal").type == schema.vectors(2048)

    # a complete run is skipped; a lost motion/ part is embedded again by the saved model
    again = run_train_motion(config(tmp_path, 2))
    assert (again.trained, again.embedded) == (False, 0) and again.training == result.training
    lost = storage.read_table(str(tmp_path / "motion"), columns=["video_id"])  # parts hold several videos
    part = storage.list_parts(str(tmp_path / "motion"))[0]
    storage.delete_part(str(tmp_path / "motion"), part)
    missing = len(lost) - storage.read_table(str(tmp_path / "motion"), columns=["video_id"]).num_rows
    assert run_train_motion(config(tmp_path, 2)).embedded == missing > 0
    assert sorted(storage.read_table(str(tmp_path / "motion"))["video_id"].to_pylist()) == sorted(ids)

    # with more epochs and no model, training resumes after epoch 2
    (model_dir / "model.safetensors").unlink()
    resumed = run_train_motion(config(tmp_path, 5))
    t = resumed.training
    assert [m["epoch"] for m in t.history] == [1, 2, 3, 4, 5]
    assert t.history[0] == first_epoch, "the first epochs come from the checkpoint, not a new run"
    assert storage.read_table(str(tmp_path / "motion"))["video_id"].to_pylist().count(ids[0]) == 1
    assert t.val_accuracy > 0.75 > t.chance and t.test_accuracy > 0.75
    assert (t.n_train, t.n_val, t.n_test) == (8, 4, 4)
    meta = json.loads((model_dir / "model.json").read_text())
    assert meta["classes"] == ["class0", "class1"] and meta["flow_size"] == list(SIZE)
    metrics = json.loads((tmp_path / "reports" / "metrics.json").read_text())["motion_cnn"]
    assert metrics["best_epoch"] == t.best_epoch and metrics["test_accuracy"] == t.test_accuracy


def test_two_workers_split_the_videos_and_the_batch(tmp_path, ray_session):
    ids = make_run_root(tmp_path, videos_per_class=7)  # 6 train, 4 val, 4 test videos
    rows = storage.read_table(str(tmp_path / "videos")).to_pylist()
    for row in rows:  # 5 train videos: 3 and 2 for the workers, which still take equal steps
        row["status"] = "error" if row["video_id"] == "c1/v6.mp4" else row["status"]
    storage.write_part(pa.Table.from_pylist(rows, schema=schema.VIDEOS_SCHEMA), str(tmp_path / "videos"), "part-0")
    result = run_train_motion(config(tmp_path, 2, "ray.train.num_workers=2", "ray.train.cpus_per_worker=1"))
    assert [m["epoch"] for m in result.training.history] == [1, 2] and result.embedded == len(ids)
    assert result.training.n_train == 5
    assert sorted(storage.read_table(str(tmp_path / "motion"))["video_id"].to_pylist()) == sorted(ids)
    assert 0 <= result.training.val_accuracy <= 1 and result.training.n_val == 4
    assert result.training.bn_spread > 0  # each worker's BatchNorm kept the statistics of its own stacks


def test_two_workers_with_sync_bn_keep_equal_batchnorm_statistics(tmp_path, ray_session):
    """motion_cnn.sync_bn: the two workers' BatchNorms normalize the batch of both, and end with the same running
    statistics (the record's bn_spread: the largest difference of one between workers), bit for bit."""
    make_run_root(tmp_path, videos_per_class=6)
    result = run_train_motion(config(tmp_path, 2, "ray.train.num_workers=2", "ray.train.cpus_per_worker=1",
                                     "motion_cnn.sync_bn=true", "motion_cnn.epoch=whole_flow"))
    assert [m["epoch"] for m in result.training.history] == [1, 2]
    assert result.training.bn_spread == 0.0
    metrics = json.loads((tmp_path / "reports" / "metrics.json").read_text())["motion_cnn"]
    assert metrics["bn_spread"] == 0.0


def test_cuda_without_a_gpu_is_refused_before_training(tmp_path):
    make_run_root(tmp_path, videos_per_class=2)
    cfg = config(tmp_path, 1, "motion_cnn.device=cuda", "ray.train.use_gpu=true", "ray.embed.num_gpus=0")
    with pytest.raises(ConfigError, match="ray.embed.num_gpus is 0"):
        run_train_motion(cfg)
    assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "motion").exists()


@pytest.mark.slow
def test_a_killed_training_worker_does_not_lose_the_run(tmp_path):
    EPOCHS = 16  # noqa: N806 - an epoch takes about a second: time to find the worker and kill it
    make_run_root(tmp_path, videos_per_class=9)
    command = [sys.executable, str(ROOT / "jobs" / "train_motion.py"), "--output", str(tmp_path),
               *[arg for o in OVERRIDES for arg in ("--set", o)], "--set", f"motion_cnn.epochs={EPOCHS}"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, "RAY_ADDRESS": "local"}, start_new_session=True)
    checkpoints = tmp_path / "checkpoints" / "motion_cnn"
    killed, output = kill_train_worker_when(
        process, lambda: checkpoints.exists() and any(p.name.startswith("checkpoint_") for p in checkpoints.iterdir()))
    assert killed is not None, "no training worker was found to kill:\n" + output[-4000:]
    assert process.returncode == 0, output[-4000:]
    history = json.loads((tmp_path / "reports" / "metrics.json").read_text())["motion_cnn"]["history"]
    assert [m["epoch"] for m in history] == list(range(1, EPOCHS + 1))


def test_a_worker_group_larger_than_the_local_ray_is_refused_not_waited_for(tmp_path):
    make_run_root(tmp_path, videos_per_class=5)
    command = [sys.executable, str(ROOT / "jobs" / "train_motion.py"), "--output", str(tmp_path),
               *[arg for o in OVERRIDES for arg in ("--set", o)], "--set", "ray.num_cpus=2",
               "--set", "ray.train.num_workers=2", "--set", "ray.train.cpus_per_worker=2"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "RAY_ADDRESS": "local"})
    output = done.stdout + done.stderr
    assert done.returncode != 0 and "= 4 CPUs, but this local Ray has 2" in output, output[-3000:]

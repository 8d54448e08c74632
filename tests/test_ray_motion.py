"""jobs/train_motion.py on Ray Train and Ray Data: learning, the motion/ table, resume, a killed worker."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from multistream import schema, storage
from multistream.config import load_config
from multistream.extract import flow_table, part_name, video_row
from multistream.flow import quantize
from multistream.manifest import VideoEntry
from multistream.ray.motion import MODEL_DIR, run_train_motion

ROOT = Path(__file__).resolve().parents[1]
SIZE = (72, 64)  # (W, H): the motion CNN takes 57 px a side at the least
OVERRIDES = [f"flow.size=[{SIZE[0]}, {SIZE[1]}]", "motion_cnn.width=0.125", "motion_cnn.stack_length=4",
             "motion_cnn.stacks_per_video=12", "motion_cnn.batch_size=16", "motion_cnn.patience=50",
             "ray.train.max_failures=2"]


def synthetic_flow(label: int, pairs: int, rng: np.random.Generator) -> np.ndarray:
    """(P, H, W, 2) uint8: an object moving right (class 0) or down (class 1) on a still, noisy background."""
    flow = rng.normal(0, 1.0, (pairs, SIZE[1], SIZE[0], 2)).astype(np.float32)
    flow[:, 16:48, 20:52, label] += 4.0  # local motion: the stacks' mean subtraction keeps it
    return quantize(flow, 20.0)


def make_run_root(root: Path, videos_per_class: int = 6) -> list[str]:
    """videos/, flow/ and features/ of a toy two-class set, as the extraction job writes them."""
    rng = np.random.default_rng(0)
    rows, ids = [], []
    for label in (0, 1):
        for i in range(videos_per_class):
            video_id = f"c{label}/v{i}.mp4"
            pairs = int(rng.integers(6, 20))
            split = "test" if i % 3 == 0 else "train"
            entry = VideoEntry(video_id, f"/x/{video_id}", f"class{label}", split)
            rows.append(video_row(entry, facts={"n_frames": pairs + 1, "n_samples": 5}))
            storage.write_part(flow_table(video_id, synthetic_flow(label, pairs, rng), 20.0),
                               str(root / "flow"), part_name([video_id]))
            positions = np.linspace(0, pairs, 5).round().astype(int)
            storage.write_part(pa.table({
                "video_id": [video_id], "frame_index": [positions.tolist()],
                "timestamp_s": [(positions / 15).tolist()], "flow_magnitude": [[1.0] * 5],
                "spatial": schema.sequence_array([np.zeros((5, 8))], 8),
                "audio": schema.sequence_array([np.zeros((1, 128))], 128)}, schema=schema.features_schema(8)),
                str(root / "features"), part_name([video_id]))
            ids.append(video_id)
    storage.write_part(pa.Table.from_pylist(rows, schema=schema.VIDEOS_SCHEMA), str(root / "videos"), "part-0")
    return ids


def config(root: Path, epochs: int):
    return load_config(overrides=[*OVERRIDES, f"motion_cnn.epochs={epochs}", f"paths.output={root}"])


def test_trains_embeds_resumes_and_learns(tmp_path, ray_session):
    ids = make_run_root(tmp_path, videos_per_class=8)
    summary = run_train_motion(config(tmp_path, epochs=2))
    assert [m["epoch"] for m in summary["history"]] == [1, 2] and summary["embedded"] == len(ids)
    first_epoch = summary["history"][0]

    motion = storage.read_table(str(tmp_path / "motion"))
    features = storage.read_table(str(tmp_path / "features"), columns=["video_id", "frame_index"])
    lengths = dict(zip(features["video_id"].to_pylist(), map(len, features["frame_index"].to_pylist()),
                       strict=True))
    assert sorted(motion["video_id"].to_pylist()) == sorted(ids)
    for video_id, sequence in zip(motion["video_id"].to_pylist(), schema.column_to_sequences(motion["temporal"]),
                                  strict=True):
        assert sequence.shape == (lengths[video_id], 2048) and np.isfinite(sequence).all()
    assert motion.schema.field("temporal").type == schema.vectors(2048)

    # a complete run is skipped; with more epochs and no model, training resumes after epoch 2
    assert run_train_motion(config(tmp_path, epochs=2))["embedded"] == 0
    storage.delete_part(str(tmp_path / "motion"), storage.list_parts(str(tmp_path / "motion"))[0])
    (tmp_path / MODEL_DIR / "model.safetensors").unlink()
    resumed = run_train_motion(config(tmp_path, epochs=5))
    assert [m["epoch"] for m in resumed["history"]] == [1, 2, 3, 4, 5]
    assert resumed["history"][0] == first_epoch, "the first epochs come from the checkpoint, not a new run"
    assert storage.read_table(str(tmp_path / "motion"))["video_id"].to_pylist().count(ids[0]) == 1
    assert resumed["val_accuracy"] > 0.75 > resumed["chance"]
    meta = json.loads((tmp_path / MODEL_DIR / "model.json").read_text())
    assert meta["classes"] == ["class0", "class1"] and meta["flow_size"] == list(SIZE)


@pytest.mark.slow
def test_a_killed_training_worker_does_not_lose_the_run(tmp_path):
    import psutil

    make_run_root(tmp_path, videos_per_class=9)
    command = [sys.executable, str(ROOT / "jobs" / "train_motion.py"), "--output", str(tmp_path),
               *[arg for o in OVERRIDES for arg in ("--set", o)], "--set", "motion_cnn.epochs=5"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, "RAY_ADDRESS": "local"}, start_new_session=True)
    checkpoints = tmp_path / "checkpoints" / "motion_cnn"
    killed, deadline = None, time.time() + 400
    try:
        while killed is None and time.time() < deadline and process.poll() is None:
            if checkpoints.exists() and any(p.name.startswith("checkpoint_") for p in checkpoints.iterdir()):
                workers = [p for p in psutil.Process(process.pid).children(recursive=True)
                           if "RayTrainWorker" in " ".join(p.cmdline())]
                if workers:
                    killed = workers[0].pid
                    os.kill(killed, signal.SIGKILL)
            time.sleep(0.2)
        output, _ = process.communicate(timeout=600)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert killed is not None, "no training worker was found to kill"
    assert process.returncode == 0, output[-4000:]
    history = json.loads((tmp_path / "reports" / "metrics.json").read_text())["motion_cnn"]["history"]
    assert [m["epoch"] for m in history] == [1, 2, 3, 4, 5]

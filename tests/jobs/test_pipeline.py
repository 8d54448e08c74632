"""The whole pipeline on a small demo dataset, then again on the finished run root: every step skips itself."""

import sys
from pathlib import Path

import pyarrow.dataset as ds
import pytest

from multistream.config import load_config
from multistream.demo.dataset import generate_demo
from multistream.jobs.pipeline import run_pipeline
from multistream.store import runinfo
from tests.support.helpers import kill_train_worker_when

REPO = Path(__file__).resolve().parents[2]
SMALL = ["flow.size=[64, 60]", "spatial.image_size=32", "sampling.max_seq_len=8", "sampling.segments=4",
         "motion_cnn.epochs=2", "motion_cnn.stacks_per_video=2", "motion_cnn.patience=2", "rnn.hidden=8",
         "rnn.layers=1", "rnn.epochs=3", "rnn.batch_size=4", "anomaly.hidden=16", "anomaly.bottleneck=4",
         "anomaly.epochs=20", "ray.spatial.num_cpus=0.5"]
OUTPUTS = ["models/motion_cnn/model.safetensors", "models/rnn_spatial/model.safetensors",
           "models/rnn_temporal/model.safetensors", "models/rnn_audio/model.safetensors", "models/svm/model.safetensors",
           "models/autoencoder/model.safetensors", "predictions/fuse.parquet", "anomaly/fuse.parquet"]


def run_job(argv: list[str]) -> int:
    from multistream.jobs import pipeline as job

    return job.main(argv)


@pytest.mark.slow
def test_pipeline_runs_every_step_then_skips_them_all(ray_session, tmp_path, capsys):
    data = generate_demo(tmp_path / "data", clips_per_class=3, n_anomalies=2)
    root = tmp_path / "run"
    cfg = load_config(None, [f"paths.input={data}", f"paths.output={root}", *SMALL])

    first = run_pipeline(cfg)

    assert [s.step for s in first.steps] == ["extract", "train_motion", "train_rnn", "fuse", "report"]
    # the motion CNN and the heads in one Ray Train run (ray.train.chain): train_rnn's work is in train_motion's
    assert [s.status for s in first.steps] == ["ran", "ran", "chained", "ran", "ran"], first.steps
    assert first.steps[2].figures["top1"].keys() == {"spatial", "temporal", "audio"}
    assert first.steps[0].figures["ok"] == 14 and first.steps[0].figures["errors"] == 0
    assert Path(first.report).is_file()
    metrics = runinfo.read_json(str(root), runinfo.METRICS)
    assert {"motion_cnn", "rnn_spatial", "rnn_temporal", "rnn_audio", "fusion", "anomaly", "pipeline"} <= set(metrics)
    assert metrics["fusion"]["streams"] == ["spatial", "temporal", "audio"]
    assert metrics["anomaly"]["n_anomaly"] == 2 and metrics["anomaly"]["roc_auc"] is not None
    assert [s["step"] for s in metrics["pipeline"]["steps"]] == [s.step for s in first.steps]
    assert ds.dataset(str(root / "predictions")).count_rows() == 14
    stamps = {name: (root / name).stat().st_mtime_ns for name in OUTPUTS}
    html = Path(first.report).read_text()
    assert "not run yet" in html and "Spatial + Temporal + Audio (SVM fusion)" in html

    assert run_job([f"--input={data}", f"--output={root}", *(f"--set={s}" for s in SMALL)]) == 0

    second = runinfo.read_json(str(root), runinfo.METRICS)["pipeline"]
    status = {s["step"]: s["status"] for s in second["steps"]}
    assert status == {"extract": "skipped", "train_motion": "skipped", "train_rnn": "skipped", "fuse": "skipped",
                      "report": "ran"}
    assert {name: (root / name).stat().st_mtime_ns for name in OUTPUTS} == stamps
    out = capsys.readouterr().out
    assert "Spatial+Temporal+Audio" in out and "report.html" in out


@pytest.mark.slow
def test_a_worker_killed_in_the_chained_run_s_rnn_phase_resumes_the_heads_not_the_motion_cnn(tmp_path):
    """kill -9 of the Train worker after the motion CNN is saved and a head checkpoint is written: Ray Train
    restarts the group, which skips the motion phase and resumes the heads from their last epoch."""
    import json
    import os
    import subprocess

    data = generate_demo(tmp_path / "data", clips_per_class=3, n_anomalies=2)
    root = tmp_path / "run"
    slow_heads = [o for o in SMALL if not o.startswith(("rnn.epochs", "motion_cnn.epochs"))] + [
        "rnn.epochs=60", "rnn.patience=100", "motion_cnn.epochs=3", "ray.train.checkpoint_every_s=0"]
    command = [sys.executable, str(REPO / "jobs" / "pipeline.py"), f"--input={data}", f"--output={root}",
               *(f"--set={o}" for o in slow_heads)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, "RAY_ADDRESS": "local"}, start_new_session=True)
    model, checkpoints = root / "models" / "motion_cnn" / "model.json", root / "checkpoints" / "motion_rnn"

    def two_head_checkpoints() -> bool:  # the first is surely registered by Ray Train (the newest may not be)
        saved = model.exists() and model.stat().st_mtime
        return bool(saved) and sum(p.stat().st_mtime > saved for p in checkpoints.glob("checkpoint_*")) >= 2

    killed, output = kill_train_worker_when(process, two_head_checkpoints, timeout_s=600)
    assert killed is not None, "no training worker was found in the heads' phase:\n" + output[-4000:]
    assert process.returncode == 0, output[-4000:]
    metrics = json.loads((root / "reports" / "metrics.json").read_text())
    assert [m["epoch"] for m in metrics["motion_cnn"]["history"]] == [1, 2, 3]  # trained once, not again
    for stream in ("spatial", "temporal", "audio"):
        assert [m["epoch"] for m in metrics[f"rnn_{stream}"]["history"]] == list(range(1, 61)), stream
    assert "resumed after epoch spatial" in output, output[-3000:]


@pytest.mark.slow
def test_a_healthy_pipeline_prints_epochs_and_little_else_and_writes_every_model_s_curves(tmp_path):
    import os
    import re
    import subprocess

    from tests.train.test_progress import scalars

    data = generate_demo(tmp_path / "data", clips_per_class=3, n_anomalies=2)
    root = tmp_path / "run"
    done = subprocess.run([sys.executable, str(REPO / "jobs" / "pipeline.py"), f"--input={data}", f"--output={root}",
                           *(f"--set={o}" for o in SMALL)], capture_output=True, text=True, timeout=900,
                          env={**os.environ, "RAY_ADDRESS": "local"})
    assert done.returncode == 0, done.stderr[-4000:]
    lines = done.stderr.splitlines()
    epochs = [line for line in lines if re.search(r": epoch \d+/\d+  ", line)]
    models = {re.search(r"([\w/]+): epoch \d+/", line).group(1) for line in epochs}
    assert {"motion_cnn", "rnn_spatial", "rnn_temporal", "rnn_audio", "autoencoder/fold0"} <= models, models
    rest = [line for line in lines if line not in epochs]
    if any("Found multiple active Ray instances" in line for line in rest):
        # the test session's own Ray runs beside the job's: Ray's placement-group cleaner, asking the state API
        # of "the" cluster, finds two and prints a traceback; a user's machine runs one Ray
        rest = [line for line in rest if "(PlacementGroupCleaner" not in line]
    for noise in ("Failed to query", "Checkpoint successfully created", "Reporting training result",
                  "Token authentication", "Execution plan of Dataset"):
        assert not any(noise in line for line in rest), noise
    # Ray Data's actor pools log one line of Ray's core about their own arguments (Ray 2.60): nothing else
    errors = [line for line in rest if re.search(r"\[[-\d :,.]+ E \d+ \d+\]", line)]
    assert all("has constructor arguments in the object store" in line for line in errors), errors
    assert len(rest) <= 60, "\n".join(rest)
    for model in ("motion_cnn", "rnn_spatial", "rnn_temporal", "rnn_audio", "autoencoder/fold0"):
        tags = set(scalars(root / "logs" / model))
        assert f"{model}/train_loss" in tags, (model, tags)

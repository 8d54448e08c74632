"""Training as it happens: a line per epoch, TensorBoard event files under RUN/logs, an MLflow run per job."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from multistream.config import RNNConfig, TrackingConfig
from multistream.store import storage
from multistream.train.progress import epoch_log, format_line, job_run
from multistream.train.rnn.recipe import Sequences, train_head
from tests.support.fuse import SETTINGS, write_synthetic_embeddings
from tests.support.helpers import run_job_main

RNN = RNNConfig(hidden=8, layers=1, epochs=4, batch_size=4, patience=10)


def toy_sequences(n: int = 12, seed: int = 0) -> Sequences:
    rng = np.random.default_rng(seed)
    targets = np.arange(n) % 2
    seqs = [rng.normal(t, 1.0, (6, 5)).astype(np.float32) for t in targets]
    return Sequences([f"v{i}" for i in range(n)], seqs, targets)


def scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """tag → [(step, value)] of every TensorBoard event file in `folder`."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(folder))
    accumulator.Reload()
    return {tag: [(e.step, e.value) for e in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]}


def test_a_line_and_event_files_per_epoch(tmp_path, caplog):
    hook = epoch_log(str(tmp_path), TrackingConfig(), "rnn_spatial")
    with caplog.at_level(logging.INFO, logger="multistream.train.progress"):
        head = train_head(toy_sequences(), toy_sequences(seed=1), RNN, 2, on_epoch=hook)
    hook.close()
    lines = [r.getMessage() for r in caplog.records if r.name == "multistream.train.progress"]
    assert len(lines) == head.loop.epoch == 4
    assert lines[0].startswith("rnn_spatial: epoch 1/4  train loss ") and "val top-1 " in lines[0]
    assert "lr 1.0e-02" in lines[0] and lines[-1].endswith("ETA 0 s")
    curves = scalars(tmp_path / "logs" / "rnn_spatial")
    assert {"rnn_spatial/train_loss", "rnn_spatial/val_loss", "rnn_spatial/val_top1", "rnn_spatial/lr"} <= set(curves)
    assert [step for step, _ in curves["rnn_spatial/val_loss"]] == [1, 2, 3, 4]
    np.testing.assert_allclose([v for _, v in curves["rnn_spatial/val_loss"]],
                               [e["val_loss"] for e in head.loop.history], rtol=1e-6)


def test_other_ranks_log_nothing(tmp_path, caplog):
    hook = epoch_log(str(tmp_path), TrackingConfig(), "motion_cnn", rank=1)
    with caplog.at_level(logging.INFO):
        train_head(toy_sequences(), toy_sequences(seed=1), RNN, 2, on_epoch=hook)
    assert not (tmp_path / "logs").exists() and not any("epoch 1/" in r.getMessage() for r in caplog.records)


def test_event_files_reach_an_object_store_run_root(s3_bucket):
    root = f"{s3_bucket}/run"
    hook = epoch_log(root, TrackingConfig(), "autoencoder/fold0")
    train_head(toy_sequences(), toy_sequences(seed=1), RNN, 2, on_epoch=hook)
    hook.close()
    files = storage.list_files(f"{root}/logs/autoencoder/fold0", extensions=None)
    assert len(files) == 1 and "tfevents" in files[0] and len(storage.read_bytes(files[0])) > 100


def test_the_line_names_only_what_the_model_measures():
    from multistream.train.loop import EpochRecord

    line = format_line("autoencoder", EpochRecord(2, 150, 0.5, None, None, 1e-3, 0.25), 37.0)
    assert line == "autoencoder: epoch 2/150  train loss 0.5000  lr 1.0e-03  0.2 s  ETA 37 s"
    uncapped = format_line("motion_cnn", EpochRecord(2, None, 0.5, 0.4, 0.75, 1e-3, 0.25), None)  # epochs: null
    assert uncapped == "motion_cnn: epoch 2  train loss 0.5000  val loss 0.4000  val top-1 0.750  lr 1.0e-03  0.2 s"


def test_without_an_mlflow_uri_a_job_run_is_nothing(tmp_path):
    from multistream.config import load_config

    cfg = load_config(None, [f"paths.output={tmp_path}"])
    with job_run(cfg, "fuse") as inside:
        assert inside is cfg and not (tmp_path / "mlruns").exists()


@pytest.mark.parametrize("fails", [False, True])
def test_the_fuse_job_is_an_mlflow_run_with_config_metrics_and_models(tmp_path, monkeypatch, fails):
    pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 asks a file: store's user to opt in
    from mlflow.tracking import MlflowClient

    root, store = str(tmp_path / "run"), f"file:{tmp_path / 'mlruns'}"
    if not fails:  # without embeddings the job raises inside its run, which still ends, marked FAILED
        write_synthetic_embeddings(root)
    overrides = [f"--set={s}" for s in SETTINGS] + ["--set", f"tracking.mlflow_uri={store}",
                                                     "--set", "tracking.mlflow_experiment=tests"]
    if fails:
        with pytest.raises(RuntimeError, match="train_rnn"):
            run_job_main("fuse", "--output", root, *overrides)
    else:
        assert run_job_main("fuse", "--output", root, *overrides) == 0
    client = MlflowClient(tracking_uri=store)
    [run] = client.search_runs([client.get_experiment_by_name("tests").experiment_id])
    assert run.info.run_name == "fuse" and run.info.status == ("FAILED" if fails else "FINISHED")
    assert run.data.params["anomaly.epochs"] == "80" and run.data.params["paths.output"] == root
    if fails:
        return
    history = client.get_metric_history(run.info.run_id, "autoencoder/fold0/train_loss")
    assert [m.step for m in history] == list(range(1, 81))
    assert run.data.tags["model.svm"].endswith("models/svm") and "model.autoencoder" in run.data.tags

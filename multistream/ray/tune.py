"""The paper's Table I on Ray Tune: a grid of recurrent heads on one stream, pruned by ASHA, written as a table.

Grid: `cfg.tune.cells` x `bidirectional` x `layers` x `hidden` x `attention` (x `num_samples` seeds). Each trial
trains a `SequenceClassifier` with the paper's recipe (`cfg.rnn`: SGD Nesterov, plateau schedule, early stopping)
on the train split and validates on the test split, reporting every epoch; ASHA stops the trials whose
validation loss lags. A trial's score is taken at its best-validation-loss epoch, as early stopping would keep.
The stream's sequences are read once and shared by every trial through the object store.

Writes `reports/sweep.csv` and `reports/sweep.md` under the run root (best top-1 first). Re-running the same
sweep restores it from `checkpoints/tune_rnn` (finished trials are kept); a changed sweep starts afresh.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging

import numpy as np
import pandas as pd
import pyarrow.compute as pc
import torch
from ray import tune
from ray.tune.schedulers import ASHAScheduler

from multistream import storage
from multistream.config import Config, RNNConfig
from multistream.ray.rnn import StreamData, absolute_root, ok_videos, sequences, stream_data
from multistream.ray.session import actor_device, init_ray, worker_setup
from multistream.rnn import SequenceClassifier, pad_sequences
from multistream.training import (
    EarlyStopping,
    evaluate,
    resolve_device,
    rnn_optimizer,
    seed_everything,
    train_epoch,
)

log = logging.getLogger(__name__)

NAME = "tune_rnn"
SPEC_FILE = "multistream_sweep.json"  # the sweep a restorable experiment was started with
GRID = ("cell", "bidirectional", "layers", "hidden", "attention")


def model_name(cell: str, bidirectional: bool, layers: int, attention: bool, **_) -> str:
    """Table I naming: "S. BiGRU + attention" (S. = two stacked layers, Bi = bidirectional)."""
    stacked = "S. " if layers == 2 else f"{layers}x " if layers > 2 else ""
    return f"{stacked}{'Bi' if bidirectional else ''}{cell.upper()}{' + attention' if attention else ''}"


def load_split(data: StreamData, ids: list[str]) -> tuple[list[np.ndarray], np.ndarray]:
    """(T_i, D) float16 sequences and (N,) int64 targets of `ids`, in table order."""
    table = storage.read_table(data.table, columns=["video_id", data.column],
                               filter=pc.field("video_id").isin(ids))
    seqs = [s.astype(np.float16) for s in sequences(table[data.column])]
    return seqs, np.array([data.targets[v] for v in table["video_id"].to_pylist()], np.int64)


def _batches(split: tuple[list[np.ndarray], np.ndarray], batch_size: int, rng: np.random.Generator | None):
    seqs, targets = split
    order = rng.permutation(len(seqs)) if rng is not None else np.arange(len(seqs))
    for start in range(0, len(order), batch_size):
        chosen = order[start:start + batch_size]
        yield pad_sequences([seqs[i] for i in chosen]), torch.from_numpy(targets[chosen])


def trial(config: dict, train: tuple, test: tuple, rnn: RNNConfig, input_dim: int, num_classes: int,
          epochs: int, torch_threads: int) -> None:
    """One grid point: per epoch `tune.report` of val_loss/val_accuracy/val_top5 and the best-epoch scores."""
    worker_setup(torch_threads)
    rnn = dataclasses.replace(rnn, **{name: config[name] for name in (*GRID, "seed")})
    seed_everything(rnn.seed)
    rng = np.random.default_rng(rnn.seed)
    device = resolve_device(actor_device("auto"))
    model = SequenceClassifier.from_config(rnn, input_dim, num_classes).to(device)
    optimizer, scheduler = rnn_optimizer(model, rnn)
    stopping, best, loss_fn = EarlyStopping(rnn.patience), {}, torch.nn.CrossEntropyLoss()
    for epoch in range(1, epochs + 1):
        fit = train_epoch(model, _batches(train, rnn.batch_size, rng), optimizer, loss_fn, device)
        val = evaluate(model, _batches(test, rnn.batch_size, None), loss_fn, device)
        scheduler.step(val["loss"])
        if stopping.step(val["loss"]):
            best = {"best_val_loss": val["loss"], "best_val_accuracy": val["accuracy"], "best_val_top5": val["top5"],
                    "best_epoch": epoch}
        tune.report({"train_loss": fit["loss"], "val_loss": val["loss"], "val_accuracy": val["accuracy"],
                     "val_top5": val["top5"], "epoch": epoch, "early_stopped": stopping.should_stop, **best})
        if stopping.should_stop:
            break


def sweep_table(results: tune.ResultGrid, max_epochs: int) -> pd.DataFrame:
    """One row per trial, best top-1 first; a failed trial keeps its last scores, marked "error"."""
    rows = []
    for result in results:
        metrics, config = result.metrics or {}, result.config or {}
        if "best_val_loss" not in metrics:
            log.warning("trial %s reported nothing: %s", result.path, result.error)
            continue
        epochs = int(metrics["epoch"])
        stop = ("error" if result.error else "early stop" if metrics["early_stopped"]
                else "max epochs" if epochs >= max_epochs else "ASHA")
        rows.append({"model": model_name(**config), **{name: config[name] for name in GRID},
                     "top1": metrics["best_val_accuracy"], "top5": metrics["best_val_top5"],
                     "best_val_loss": metrics["best_val_loss"], "best_epoch": int(metrics["best_epoch"]),
                     "epochs": epochs, "stopped_by": stop, "seed": config["seed"]})
    table = pd.DataFrame(rows, columns=["model", *GRID, "top1", "top5", "best_val_loss", "best_epoch",
                                        "epochs", "stopped_by", "seed"])
    return table.sort_values(["top1", "best_val_loss"], ascending=[False, True], ignore_index=True)


def sweep_markdown(table: pd.DataFrame, stream: str, n_train: int, n_test: int) -> str:
    lines = [f"# RNN architectures on the {stream} stream (cf. the paper's Table I)", "",
             f"{n_train} train / {n_test} test videos; scores at each trial's best validation loss. "
             "\"S.\" = two stacked layers, \"Bi\" = bidirectional; units are per LSTM/GRU cell.", "",
             "| Model | Hidden units | Top-1, % | Top-5, % | Best val loss | Epochs | Stopped by |",
             "|---|---:|---:|---:|---:|---:|---|"]
    lines += [f"| {r.model} | {r.hidden} | {100 * r.top1:.2f} | {100 * r.top5:.2f} | {r.best_val_loss:.4f} | "
              f"{r.epochs} | {r.stopped_by} |" for r in table.itertuples()]
    return "\n".join(lines) + "\n"


def run_tune_rnn(cfg: Config, stream: str | None = None) -> pd.DataFrame:
    """Sweep the grid on `stream` (default `cfg.tune.stream`); writes reports/sweep.{csv,md}, returns the table."""
    stream = stream or cfg.tune.stream
    root = absolute_root(cfg.paths.output)
    data = stream_data(root, stream, ok_videos(root))
    train, test = load_split(data, data.train_ids), load_split(data, data.test_ids)
    log.info("sweep on %s: %d train / %d test videos, %d classes, input %d-d", stream, len(train[0]),
             len(test[0]), len(data.classes), data.input_dim)
    space = {name: tune.grid_search(list(getattr(cfg.tune, "cells" if name == "cell" else name))) for name in GRID}
    space["seed"] = tune.randint(0, 2**31 - 1) if cfg.tune.num_samples > 1 else cfg.rnn.seed
    resources = {"cpu": cfg.ray.train.cpus_per_worker, "gpu": 1 if cfg.ray.train.use_gpu else 0}
    trainable = tune.with_resources(tune.with_parameters(
        trial, train=train, test=test, rnn=cfg.rnn, input_dim=data.input_dim, num_classes=len(data.classes),
        epochs=cfg.tune.epochs, torch_threads=cfg.ray.torch_threads), resources)
    storage_path, filesystem = storage.arrow_location(storage.join(root, "checkpoints"))
    experiment = storage.join(root, "checkpoints", NAME)
    spec = json.dumps({"stream": stream, "tune": dataclasses.asdict(cfg.tune), "rnn": dataclasses.asdict(cfg.rnn),
                       "classes": data.classes, "n_train": len(train[0]), "n_test": len(test[0])}, sort_keys=True)
    spec_uri = storage.join(experiment, SPEC_FILE)
    init_ray(cfg)
    if (tune.Tuner.can_restore(storage.join(storage_path, NAME), storage_filesystem=filesystem)
            and storage.exists(spec_uri) and storage.read_text(spec_uri) == spec):
        log.info("restoring the sweep in %s", experiment)
        tuner = tune.Tuner.restore(storage.join(storage_path, NAME), trainable, resume_errored=True,
                                   storage_filesystem=filesystem)
    else:
        tuner = tune.Tuner(trainable, param_space=space, tune_config=tune.TuneConfig(
            metric="val_loss", mode="min", num_samples=cfg.tune.num_samples,
            scheduler=ASHAScheduler(time_attr="training_iteration", grace_period=cfg.tune.grace_period,
                                    max_t=cfg.tune.epochs),
            max_concurrent_trials=cfg.tune.max_concurrent or None),
            run_config=tune.RunConfig(name=NAME, storage_path=storage_path, storage_filesystem=filesystem,
                                      verbose=1))
        storage.write_text(spec_uri, spec)
    table = sweep_table(tuner.fit(), cfg.tune.epochs)
    buffer = io.StringIO()
    table.to_csv(buffer, index=False)
    storage.write_text(storage.join(root, "reports", "sweep.csv"), buffer.getvalue())
    storage.write_text(storage.join(root, "reports", "sweep.md"),
                       sweep_markdown(table, stream, len(train[0]), len(test[0])))
    return table

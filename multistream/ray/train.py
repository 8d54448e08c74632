"""Shared Ray Train plumbing: a TorchTrainer per model with per-epoch checkpoints, failures and resume.

A training loop checkpoints after every epoch with `report(metrics, state)` (`EpochLoop` does it for one model:
model, optimizer, scheduler, early stopping, history and the best weights so far) and resumes with
`restore_state()`. Re-running with the same run root resumes from the latest
checkpoint — Ray Train restores it for a run of the same name and storage path, and `ray.train.get_checkpoint()`
hands it to the loop — and a worker that dies mid-run is restarted from it (`FailureConfig.max_failures`).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import ray.train
import torch
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from multistream import storage
from multistream.config import Config, ConfigError
from multistream.layout import RunRoot
from multistream.ray.session import fixed_size
from multistream.training import EarlyStopping

log = logging.getLogger(__name__)

STATE_FILE = "state.pt"


def run_training(loop: Callable[[dict], None], loop_config: dict, cfg: Config, name: str,
                 datasets: dict | None = None) -> ray.train.Result:
    """Fit `loop` on `cfg.ray.train` workers; checkpoints live under `<run root>/checkpoints/<name>`."""
    # A worker's report blocks until the controller polls it (every 2 s by default): a floor of 2 s per epoch,
    # longer than a demo epoch. The controller reads this at start-up (Ray Train propagates RAY_TRAIN_* vars).
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.05")
    resources = cfg.ray.train
    need, have = resources.num_workers * resources.cpus_per_worker, ray.cluster_resources().get("CPU", 0)
    if need > have and fixed_size():  # Ray Train would wait for the worker group forever
        raise ConfigError(f"ray.train: {resources.num_workers} workers x {resources.cpus_per_worker:g} CPUs = "
                          f"{need:g} CPUs, but this local Ray has {have:g}: lower ray.train.num_workers or "
                          f"ray.train.cpus_per_worker")
    storage_path, filesystem = _storage(RunRoot(cfg.paths.output).checkpoints)
    trainer = TorchTrainer(
        loop,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(num_workers=resources.num_workers, use_gpu=resources.use_gpu,
                                     resources_per_worker={"CPU": resources.cpus_per_worker}),
        run_config=RunConfig(name=name, storage_path=storage_path, storage_filesystem=filesystem,
                             failure_config=FailureConfig(max_failures=resources.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=2)),
        datasets=datasets,
    )
    return trainer.fit()


def _storage(uri: str):
    path, filesystem = storage.arrow_location(uri)
    if filesystem is None:
        os.makedirs(path, exist_ok=True)
    return path, filesystem


@dataclass
class EpochLoop:
    """Epoch bookkeeping inside a Ray Train worker: resume, report + checkpoint, early stop, best weights."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object | None = None
    patience: int = 10
    epoch: int = 0
    history: list[dict] = field(default_factory=list)
    best_state: dict | None = None

    def __post_init__(self) -> None:
        self.stopping = EarlyStopping(self.patience)
        self._started = time.perf_counter()

    def resume(self) -> None:
        state = restore_state()
        if state is None or "model" not in state:  # none, or another phase's (`multistream.ray.chain`)
            return
        _unwrap(self.model).load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state.get("scheduler"):
            self.scheduler.load_state_dict(state["scheduler"])
        self.stopping.load_state_dict(json.loads(state["stopping"]))
        self.epoch, self.history, self.best_state = state["epoch"], json.loads(state["history"]), state["best"]
        log.info("resumed after epoch %d (best validation loss %.4f)", self.epoch, self.stopping.best)

    @property
    def done(self) -> bool:
        return self.stopping.should_stop

    def end_epoch(self, metrics: dict) -> None:
        """Record an epoch's metrics (must include `val_loss`), checkpoint on rank 0, report on every rank."""
        self.epoch += 1
        if self.stopping.step(metrics["val_loss"]):
            self.best_state = {k: v.detach().cpu().clone() for k, v in _unwrap(self.model).state_dict().items()}
        now = time.perf_counter()
        metrics = {**metrics, "epoch": self.epoch, "lr": self.optimizer.param_groups[0]["lr"],
                   "seconds": now - self._started}
        self._started = now
        self.history.append(metrics)
        report(metrics, {
            "model": _unwrap(self.model).state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "epoch": self.epoch, "stopping": json.dumps(self.stopping.state_dict()),
            "history": json.dumps(self.history), "best": self.best_state,
        })


def restore_state() -> dict | None:
    """The state of the checkpoint this worker was started from (Ray Train's latest), None on a fresh run."""
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as directory:
        return torch.load(Path(directory) / STATE_FILE, weights_only=True, map_location="cpu")


def report(metrics: dict, state: dict) -> None:
    """Report an epoch on every rank; rank 0 attaches `state` (tensors, JSON strings) as the checkpoint."""
    if ray.train.get_context().get_world_rank() != 0:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as directory:
        torch.save(state, Path(directory) / STATE_FILE)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(directory))


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") else model


def sum_over_workers(values: np.ndarray, device: torch.device) -> np.ndarray:
    """(K,) float64 summed over the Train workers (identity on one)."""
    if ray.train.get_context().get_world_size() == 1:
        return values
    total = torch.as_tensor(values, dtype=torch.float64, device=device)
    torch.distributed.all_reduce(total)
    return total.cpu().numpy()


def mean_over_workers(metrics: dict[str, float], device: torch.device) -> dict[str, float]:
    """Metrics averaged over the Train workers (their shards are of equal size), so that every rank takes
    the same early-stopping and learning-rate decisions."""
    world = ray.train.get_context().get_world_size()
    if world == 1:
        return metrics
    values = torch.tensor(list(metrics.values()), dtype=torch.float64, device=device)
    torch.distributed.all_reduce(values)
    return dict(zip(metrics, (values / world).tolist(), strict=True))

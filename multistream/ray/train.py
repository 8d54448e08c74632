"""Shared Ray Train plumbing: a TorchTrainer per model with scheduled checkpoints, failures and resume.

A training loop hands every epoch to a `reporter` (the `Report` of `multistream.train.loop`), which checkpoints
it on `ray.train.checkpoint_every_s`'s schedule and after the final epoch, and resumes from `restore_state()`.
Re-running with the same run root resumes from the latest checkpoint — Ray Train restores it for a run of the
same name and storage path, and `ray.train.get_checkpoint()` hands it to the loop — and a worker that dies
mid-run is restarted from it (`FailureConfig.max_failures`).
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import ray.train
import torch
from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from multistream.config import Config, ConfigError
from multistream.ray.session import fixed_size
from multistream.store import storage
from multistream.store.layout import CHECKPOINT_STATE, RunRoot
from multistream.train.loop import CheckpointSchedule, ScheduledReport, sum_over_workers

log = logging.getLogger(__name__)


def run_training(loop: Callable[[dict], None], loop_config: dict, cfg: Config, name: str) -> ray.train.Result:
    """Fit `loop` on `cfg.ray.train` workers; checkpoints live under `<run root>/checkpoints/<name>`. Raises
    where the run failed (after `ray.train.max_failures` restarts)."""
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
                             checkpoint_config=CheckpointConfig(num_to_keep=2),
                             # Ray Train's own INFO lines (worker group, process group, each checkpoint) are
                             # left to its log files: the epoch lines of `train.progress` say how it goes
                             logging_config=LoggingConfig(log_level="WARNING")),
    )
    result = trainer.fit()
    if result.error is not None:
        raise RuntimeError(f"training {name} failed: {result.error}")
    return result


def _storage(uri: str):
    path, filesystem = storage.arrow_location(uri)
    if filesystem is None:
        os.makedirs(path, exist_ok=True)
    return path, filesystem


def restore_state() -> dict | None:
    """The state of the checkpoint this worker was started from (Ray Train's latest), None on a fresh run."""
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as directory:
        return torch.load(Path(directory) / CHECKPOINT_STATE, weights_only=True, map_location="cpu")


def reporter(every_s: float) -> ScheduledReport:
    """A Ray Train loop's `Report`: `report` after the final epoch and at most every `every_s` seconds before it,
    rank 0's clock deciding for every worker (Ray Train needs each to report the same number of times)."""
    return ScheduledReport(report, CheckpointSchedule(every_s), _as_rank_zero)


def _as_rank_zero(due: bool) -> bool:
    mine = float(due) if ray.train.get_context().get_world_rank() == 0 else 0.0
    return bool(sum_over_workers(np.array([mine]), ray.train.torch.get_device())[0] > 0)


def report(metrics: dict, state: dict) -> None:
    """Report an epoch on every rank; rank 0 attaches `state` (tensors, JSON strings) as the checkpoint."""
    if ray.train.get_context().get_world_rank() != 0:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as directory:
        torch.save(state, Path(directory) / CHECKPOINT_STATE)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(directory))

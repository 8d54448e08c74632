"""What a data-parallel training worker does apart from its framework: one model's epochs (`EpochLoop`: early
stopping on the val loss, the best weights, the history and the state a checkpoint holds) and sums over the
workers' process group (torch.distributed, set up by Ray Train; the identity in one process).

The framework comes in as two plain values: `report(metrics, state, final)` is called after every epoch (Ray
Train checkpoints `state` there when `CheckpointSchedule` says so, and always after the `final` one; the plain
loop passes `no_report`), and the state a run resumes from is handed to `EpochLoop.resume` (None on a fresh run).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as dist

from multistream.train.steps import EarlyStopping

log = logging.getLogger(__name__)

# (an epoch's metrics, the checkpoint state: tensors and JSON strings, loadable with weights_only=True, and
# whether it is the run's final epoch: the same on every worker)
Report = Callable[[dict, dict, bool], None]


def no_report(metrics: dict, state: dict, final: bool = False) -> None:
    """The plain loop's report: nothing is checkpointed."""


@dataclass
class CheckpointSchedule:
    """Which epochs a Ray Train loop checkpoints: the final one, and any other once `every_s` seconds have passed
    since the last checkpoint (0: every epoch). Each checkpoint costs a save and a report
    (docs/design.md#checkpoint-schedule); a worker that dies loses at most the epochs since the last one."""

    every_s: float = 0.0
    clock: Callable[[], float] = time.monotonic

    def __post_init__(self) -> None:
        self._last = self.clock()

    def due(self) -> bool:
        return self.clock() - self._last >= self.every_s

    def checkpointed(self) -> None:
        self._last = self.clock()


@dataclass
class ScheduledReport:
    """A `Report` that hands an epoch to `checkpoint(metrics, state)` after the final epoch and whenever
    `schedule` is due; `agree(due)` makes one worker's answer every worker's (each must checkpoint as often)."""

    checkpoint: Callable[[dict, dict], None]
    schedule: CheckpointSchedule
    agree: Callable[[bool], bool] = bool

    def __call__(self, metrics: dict, state: dict, final: bool = False) -> None:
        if final or self.agree(self.schedule.due()):
            self.checkpoint(metrics, state)
            self.schedule.checkpointed()


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside a DistributedDataParallel wrapper (the model itself where it is not wrapped)."""
    return model.module if hasattr(model, "module") else model


@dataclass
class EpochLoop:
    """One model's epochs (at most `epochs`): `end_epoch` records, keeps the best weights and reports with the
    whole state."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    report: Report = no_report
    patience: int = 10
    epochs: int = sys.maxsize
    epoch: int = 0
    history: list[dict] = field(default_factory=list)
    best_state: dict | None = None

    def __post_init__(self) -> None:
        self.stopping = EarlyStopping(self.patience)
        self._started = time.perf_counter()

    def resume(self, state: dict | None) -> None:
        """Continue from a checkpoint's state; None, or another phase's state (`ray.chain`), starts afresh."""
        if state is None or "model" not in state:
            return
        unwrap(self.model).load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.stopping.load_state_dict(json.loads(state["stopping"]))
        self.epoch, self.history, self.best_state = state["epoch"], json.loads(state["history"]), state["best"]
        log.info("resumed after epoch %d (best validation loss %.4f)", self.epoch, self.stopping.best)

    @property
    def done(self) -> bool:
        return self.stopping.should_stop or self.epoch >= self.epochs

    def end_epoch(self, metrics: dict) -> None:
        """Record an epoch's metrics (must include `val_loss`; "seconds" is the epoch's work: the wall since the
        last report returned), then report them with the state to resume from."""
        self.epoch += 1
        seconds = time.perf_counter() - self._started
        if self.stopping.step(metrics["val_loss"]):
            self.best_state = {k: v.detach().cpu().clone() for k, v in unwrap(self.model).state_dict().items()}
        metrics = {**metrics, "epoch": self.epoch, "lr": self.optimizer.param_groups[0]["lr"], "seconds": seconds}
        self.history.append(metrics)
        self.report(metrics, {
            "model": unwrap(self.model).state_dict(), "optimizer": self.optimizer.state_dict(),
            "epoch": self.epoch, "stopping": json.dumps(self.stopping.state_dict()),
            "history": json.dumps(self.history), "best": self.best_state,
        }, self.done)
        self._started = time.perf_counter()  # the report and its checkpoint are not the next epoch's work


def world_size() -> int:
    """Workers in this process's torch.distributed group (1 without one)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def sum_over_workers(values: np.ndarray, device: torch.device) -> np.ndarray:
    """(K,) float64 summed over the workers (the identity on one)."""
    if world_size() == 1:
        return values
    total = torch.as_tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(total)
    return total.cpu().numpy()


def sum_metrics(metrics: dict[str, float], device: torch.device) -> dict[str, float]:
    """Each figure summed over the workers, so that every rank takes the same decisions."""
    totals = sum_over_workers(np.array(list(metrics.values()), np.float64), device)
    return dict(zip(metrics, np.asarray(totals).tolist(), strict=True))

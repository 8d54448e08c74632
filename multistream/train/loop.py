"""The one epoch loop of every model that trains (motion CNN, recurrent heads, the anomaly autoencoder), and
sums over the data-parallel workers' process group (torch.distributed, set up by Ray Train; the identity in
one process).

A model plugs in with its network, its optimizer (and LR schedule, if any) and one epoch's work,
`step(epoch, rng) → figures`: train on this worker's train shard, then score val, and return the model's own
history entry, already summed over the workers: the train loss under `train_key` and, where the model is
validated, "val_loss" (and "val_accuracy", its top-1). `EpochLoop` does the rest:

- at most `epochs` epochs (None: no cap); each seeded from (seed, epoch, rank) (`epoch_rng`: the step's generator, and
  torch's seed for dropout), so that a resumed run takes the very steps an uninterrupted one would;
- on the val loss: the LR plateau schedule, early stopping after `patience` epochs without a lower one, and
  the best weights (those of the lowest val loss, the first of equals); without "val_loss" every epoch runs
  and the last weights are the model's;
- one `EpochRecord` per epoch for `on_epoch`, and the history entry with the state to resume from for
  `report`.

The framework comes in as two plain values: `report(metrics, state, final)` is called after every epoch (Ray
Train checkpoints `state` there when `CheckpointSchedule` says so, and always after the `final` one; the plain
loop passes `no_report`), and the state a run resumes from is handed to `EpochLoop.resume` (None on a fresh
run).
"""

from __future__ import annotations

import json
import logging
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
# one epoch's work: (epoch, 1-based; its generator, None where the loop has no seed) → the model's figures
Step = Callable[[int, np.random.Generator | None], dict]


def no_report(metrics: dict, state: dict, final: bool = False) -> None:
    """The plain loop's report: nothing is checkpointed."""


def epoch_rng(seed: int, epoch: int, rank: int = 0) -> np.random.Generator:
    """The generator of one epoch's draws on one worker; it also seeds torch (dropout) for that epoch, so a
    run resumed from a checkpoint draws what an uninterrupted one would have."""
    rng = np.random.default_rng([seed, epoch, rank])
    torch.manual_seed(int(rng.integers(2**62)))
    return rng


@dataclass(frozen=True)
class EpochRecord:
    """One epoch as every loop reports it (`EpochLoop.on_epoch`); None where the model does not measure it."""

    epoch: int  # 1-based
    of: int | None  # the epoch budget (None: none, early stopping ends the run)
    train_loss: float | None
    val_loss: float | None
    val_top1: float | None
    lr: float
    seconds: float  # the epoch's work: its step, not the report or checkpoint before it


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


def _cpu_copy(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


@dataclass
class EpochLoop:
    """One model's epochs: `fit(step)` runs them until `done`; `run_epoch(step)` runs one; `end_epoch(figures)`
    records one whose work was done by the caller. `model` is the network whose weights are kept (a DDP
    wrapper is unwrapped); `best_state` holds the best epoch's weights (CPU), `history` every epoch's entry."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    report: Report = no_report
    patience: int = 10
    epochs: int | None = None  # None: until early stopping
    scheduler: torch.optim.lr_scheduler.ReduceLROnPlateau | None = None  # stepped with the val loss
    seed: int | None = None  # per-epoch seeding (`epoch_rng`); None: the step seeds its own draws
    rank: int = 0
    on_epoch: Callable[[EpochRecord], None] | None = None
    train_key: str = "train_loss"  # the step's name for its train loss
    epoch: int = 0
    history: list[dict] = field(default_factory=list)
    best_state: dict | None = None
    best_epoch: int = 0
    final: bool = False  # resumed from an early-stopped state: only its best weights, nothing to train on

    def __post_init__(self) -> None:
        self.model = unwrap(self.model)
        self.stopping = EarlyStopping(self.patience)
        self._started = time.perf_counter()

    @property
    def done(self) -> bool:
        return self.final or self.stopping.should_stop or (self.epochs is not None and self.epoch >= self.epochs)

    def fit(self, step: Step) -> EpochLoop:
        """Epochs until `done`."""
        while not self.done:
            self.run_epoch(step)
        return self

    def run_epoch(self, step: Step) -> dict:
        """One epoch: seeded, `step`, then recorded (`end_epoch`); returns its history entry."""
        self._started = time.perf_counter()
        rng = epoch_rng(self.seed, self.epoch + 1, self.rank) if self.seed is not None else None
        return self.end_epoch(step(self.epoch + 1, rng))

    def end_epoch(self, figures: dict) -> dict:
        """Record an epoch's figures (the model's keys; "val_loss" drives the choices): schedule, early stopping,
        best weights, the history entry {"epoch", **figures, "lr", "seconds"} ("seconds": the wall since the
        epoch began, or since the last report returned), `on_epoch` and `report`; returns the entry."""
        self.epoch += 1
        seconds = time.perf_counter() - self._started
        lr = self.optimizer.param_groups[0]["lr"]  # the rate this epoch trained at
        val_loss = figures.get("val_loss")
        if val_loss is not None:
            if self.scheduler is not None:
                self.scheduler.step(val_loss)
            if self.stopping.step(val_loss):
                self.best_state, self.best_epoch = _cpu_copy(self.model), self.epoch
        entry = {"epoch": self.epoch, **figures, "lr": lr, "seconds": seconds}
        self.history.append(entry)
        if self.on_epoch is not None:
            self.on_epoch(EpochRecord(self.epoch, self.epochs, figures.get(self.train_key), val_loss,
                                      figures.get("val_accuracy"), lr, seconds))
        if self.report is not no_report:
            self.report(entry, self.state_dict(), self.done)
        self._started = time.perf_counter()  # the report and its checkpoint are not the next epoch's work
        return entry

    def load_best(self) -> torch.nn.Module:
        """The model with the best epoch's weights (its last ones where none was chosen), in eval mode."""
        if self.best_state is not None:
            self.model.load_state_dict(self.best_state)
        return self.model.eval()

    def state_dict(self) -> dict:
        """Everything a resumed run needs; tensors and JSON strings only (loads with weights_only=True). An
        early-stopped loop keeps only its best weights and bookkeeping: it never trains again; where this
        epoch is the best, the best weights are the model's and are not written twice."""
        book = json.dumps({"epoch": self.epoch, "history": self.history, "best_epoch": self.best_epoch,
                           "stopping": self.stopping.state_dict()})
        if self.final or self.stopping.should_stop:
            return {"best": self.best_state, "bookkeeping": book}
        state = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(), "bookkeeping": book}
        if self.scheduler is not None:
            state["scheduler"] = self.scheduler.state_dict()
        if self.best_epoch != self.epoch:
            state["best"] = self.best_state
        return state

    def resume(self, state: dict | None) -> None:
        """Continue from `state_dict()`'s state; None, or another phase's state (`ray.chain`), starts afresh."""
        if state is None or "bookkeeping" not in state:
            return
        book = json.loads(state["bookkeeping"])
        self.epoch, self.history, self.best_epoch = book["epoch"], book["history"], book["best_epoch"]
        self.stopping.load_state_dict(book["stopping"])
        self.final = "model" not in state
        if not self.final:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            if self.scheduler is not None:
                self.scheduler.load_state_dict(state["scheduler"])
        self.best_state = state["best"] if "best" in state else _cpu_copy(self.model)
        log.info("resumed after epoch %d (best validation loss %s)", self.epoch, self.stopping.best)


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

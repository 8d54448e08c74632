"""Training the motion CNN without Ray: one epoch (random stacks of the train split, then validation), the
final test scoring, the plain loop over epochs, and the record kept in model.json and metrics.json.

`fit_motion_cnn` is the loop of a Ray Train worker (`multistream.ray.motion` gives it scheduled checkpoints;
figures are summed over the workers' process group) and, with its defaults, the plain one-process loop. Model choice
reads `val` only: the best epoch has the lowest val loss, training stops after `patience` epochs without a
lower one; `test` is scored once, with the best epoch's weights. Without val videos (`validation.fraction: 0`)
`motion_cnn.epochs` epochs run and the last one's weights are kept.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from multistream.config import Config, ConfigError
from multistream.device import actor_device, amp_dtype, autocast, check_gpu_given, resolve_device
from multistream.store import modelio, runinfo
from multistream.store.layout import MOTION_CNN, RunRoot
from multistream.train.loop import EpochLoop, EpochRecord, Report, no_report, world_size
from multistream.train.motion.data import (
    PREFETCH,
    FlowSource,
    MotionPlan,
    NodeFlowCache,
    Prefetch,
    device_batches,
    epoch_batches,
    epoch_stacks,
    read_plan,
)
from multistream.train.motion.model import MotionCNN, model_meta
from multistream.train.steps import motion_optimizer, seed_everything
from multistream.train.sync_bn import bn_spread, convert_sync_bn

log = logging.getLogger(__name__)


def motion_device(cfg: Config) -> str:
    """Where the motion CNN runs in this process: `motion_cnn.device`, "auto" being the GPU only in a Ray
    worker that was given one (no other stage's device key moves it)."""
    return actor_device(cfg.motion_cnn.device)


def check_motion_resources(cfg: Config) -> None:
    """Refuse (ConfigError), before any work, a motion CNN that must run on CUDA where Ray gives no GPU, or a
    batch that cannot be divided among the Train workers."""
    workers = cfg.ray.train.num_workers
    if cfg.motion_cnn.batch_size % workers:
        raise ConfigError(f"motion_cnn.batch_size: {cfg.motion_cnn.batch_size} stacks a step cannot be divided "
                          f"among ray.train.num_workers={workers} Train workers")
    check_gpu_given(cfg, "motion_cnn", "ray.train.use_gpu")
    check_gpu_given(cfg, "motion_cnn", "ray.embed.num_gpus")


def new_model(plan: MotionPlan, cfg: Config) -> MotionCNN:
    """The untrained network, initialised from `motion_cnn.seed` (the same on every worker); its BatchNorms
    synchronised across the Train workers with `motion_cnn.sync_bn` (`multistream.train.sync_bn`)."""
    seed_everything(cfg.motion_cnn.seed)
    model = MotionCNN.from_config(cfg.motion_cnn, len(plan.classes), cfg.flow.size)
    return convert_sync_bn(model) if cfg.motion_cnn.sync_bn else model


def flow_source(run: RunRoot, cfg: Config) -> FlowSource:
    """A Train worker's flow: `flow/` of `run`, stored once per node in the node's cache
    (`motion_cnn.flow_cache_dir`, up to `motion_cnn.flow_cache_disk_gb`; 0: none), the rest kept in memory up to
    `motion_cnn.flow_cache_gb`."""
    mc = cfg.motion_cnn
    cache = (NodeFlowCache(run.flow, mc.flow_cache_dir or None, mc.flow_cache_disk_gb * 2**30)
             if mc.flow_cache_disk_gb > 0 else None)
    return FlowSource(run.flow, mc.flow_cache_gb * 2**30, cache)


class MotionTrainer:
    """The epochs of worker `rank` of `world`: `model` (unwrapped: validation, test), `wrapped` (what trains:
    DDP across Ray Train workers, else `model`) and this worker's `plan` shard; figures are summed over the
    workers. Each worker takes `motion_cnn.batch_size / world` stacks a step, so that a step sees `batch_size`
    stacks in all, and `pad_to` stacks an epoch (DDP needs equal steps). `validated`: whether any worker has
    val videos (without, an epoch returns no val figures).

    Batches are gathered as uint8 pairs on a background thread (`data.Prefetch`) and made stacks on `device`;
    losses and hits are summed there and read once per pass (no host sync per step)."""

    def __init__(self, model: MotionCNN, optimizer: torch.optim.Optimizer, source: FlowSource, plan: MotionPlan,
                 cfg: Config, device: torch.device, world: int = 1, wrapped: torch.nn.Module | None = None,
                 pad_to: int | None = None, validated: bool = True):
        self.model, self.wrapped, self.optimizer = model, wrapped or model, optimizer
        self.source, self.plan, self.cfg, self.device = source, plan, cfg, device
        self.batch_size = cfg.motion_cnn.batch_size // world
        self.pad_to, self.validated = pad_to, validated
        self.loss_fn = torch.nn.CrossEntropyLoss()

    def batches(self, ids, rng: np.random.Generator | None = None, pad_to: int | None = None):
        """Host batches of `ids` (`data.epoch_batches`: uint8 pairs, targets) for a `Prefetch`: pinned for a GPU
        (torch's pinned-memory cache reuses the buffers), a ring of reused buffers for the CPU."""
        mc, cuda = self.cfg.motion_cnn, self.device.type == "cuda"
        return epoch_batches(self.source, ids, self.plan.targets, mc.stacks_per_video, self.batch_size,
                             mc.stack_length, rng, pad_to, mc.epoch == "whole_flow", pin_memory=cuda,
                             ring=0 if cuda else PREFETCH + 3)

    def epoch(self, epoch: int, rng: np.random.Generator) -> dict[str, float]:
        """Train epoch `epoch` (1-based) on stacks drawn with `rng`, then validate → loss, accuracy, val_loss,
        val_accuracy (the last two only where there are val videos)."""
        with Prefetch(self.batches(self.plan.train, rng, self.pad_to)) as batches:
            train = self._mean(self._train(batches))
        if not self.validated:
            return {"loss": train["loss"], "accuracy": train["accuracy"]}
        val = self.score(self.plan.val)
        return {"loss": train["loss"], "accuracy": train["accuracy"], "val_loss": val["loss"],
                "val_accuracy": val["accuracy"]}

    def score(self, ids) -> dict[str, float]:
        """Loss and accuracy of the evenly spaced stacks of `ids` (summed over every worker's share)."""
        sums = torch.zeros(3, dtype=torch.float64, device=self.device)
        if ids:
            with Prefetch(self.batches(ids)) as batches:
                sums = self._evaluate(batches)
        return self._mean(sums)

    def _train(self, batches) -> torch.Tensor:
        """One pass in train mode → (3,) float64 on the device: the loss summed per stack, hits, stacks (the
        mean loss of each step times its stacks, as `steps.train_epoch` sums them)."""
        device, amp, model = self.device, self.cfg.motion_cnn.amp, self.wrapped
        model.train()
        scaler = torch.amp.GradScaler(device.type) if amp_dtype(device, amp) == torch.float16 else None
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        hits = torch.zeros((), dtype=torch.int64, device=device)
        count, steps = torch.zeros((), dtype=torch.float64, device=device), 0
        for stacks, targets in device_batches(batches, device, self.cfg.flow.clip_px):
            self.optimizer.zero_grad(set_to_none=True)
            with autocast(device, amp):
                logits = model(stacks)
                loss = self.loss_fn(logits.float(), targets)
            (scaler.scale(loss) if scaler is not None else loss).backward()
            if scaler is not None:
                scaler.step(self.optimizer)
                scaler.update()
            else:
                self.optimizer.step()
            loss_sum += loss.detach().double() * len(targets)
            hits += (logits.detach().argmax(1) == targets).sum()
            count += len(targets)
            steps += 1
        if not steps:
            raise ValueError("the motion CNN's training epoch got no batches")
        return torch.stack([loss_sum, hits.double(), count])

    @torch.no_grad()
    def _evaluate(self, batches) -> torch.Tensor:
        """One pass in eval mode (`model`, unwrapped) → (3,) float64 on the device: loss sum, hits, stacks."""
        device, amp = self.device, self.cfg.motion_cnn.amp
        self.model.eval()
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        hits = torch.zeros((), dtype=torch.int64, device=device)
        count = torch.zeros((), dtype=torch.float64, device=device)
        for stacks, targets in device_batches(batches, device, self.cfg.flow.clip_px):
            with autocast(device, amp):
                logits = self.model(stacks).float()
            loss_sum += self.loss_fn(logits, targets).double() * len(targets)
            hits += (logits.argmax(1) == targets).sum()
            count += len(targets)
        return torch.stack([loss_sum, hits.double(), count])

    def _mean(self, sums: torch.Tensor) -> dict[str, float]:
        """(loss sum, hits, stacks) summed over the workers, read to the host once → loss, accuracy."""
        if world_size() > 1:
            dist.all_reduce(sums)
        loss, hits, n = sums.tolist()
        return {"loss": loss / n if n else math.nan, "accuracy": hits / n if n else math.nan}


@dataclass
class MotionTraining:
    """What a motion CNN's training gave: its history and the figures of its best (lowest val loss) epoch (the
    last one, val figures None, without val videos), and the test split's, scored once with that epoch's
    weights. `bn_spread`: the largest difference of a BatchNorm running statistic between the Train workers
    after the last epoch (0.0 in one process and with `motion_cnn.sync_bn`)."""

    classes: list[str]
    history: list[dict]
    epochs: int
    best_epoch: int
    val_loss: float | None
    val_accuracy: float | None
    test_loss: float | None
    test_accuracy: float | None
    n_train: int
    n_val: int
    n_test: int
    chance: float
    bn_spread: float = 0.0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping) -> MotionTraining:
        return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data})


def summarize(plan: MotionPlan, history: list[dict], test: Mapping[str, float], bn_spread: float = 0.0
              ) -> MotionTraining:
    validated = [m for m in history if "val_loss" in m]
    best = min(validated, key=lambda m: m["val_loss"]) if validated else history[-1]  # the first of equals
    tested = bool(plan.test)
    return MotionTraining(list(plan.classes), history, history[-1]["epoch"], best["epoch"], best.get("val_loss"),
                          best.get("val_accuracy"), test["loss"] if tested else None,
                          test["accuracy"] if tested else None, len(plan.train), len(plan.val), len(plan.test),
                          1 / len(plan.classes), bn_spread)


def plan_meta(plan: MotionPlan, cfg: Config) -> dict:
    """The network's architecture, flow and classes for `plan` (what its checkpoints belong to)."""
    return model_meta(list(plan.classes), cfg.motion_cnn, cfg.flow.size, cfg.flow.clip_px)


def training_meta(plan: MotionPlan, cfg: Config, training: MotionTraining) -> dict:
    """model.json of a trained motion CNN: architecture, flow, classes and the training record."""
    return plan_meta(plan, cfg) | {"training": training.to_dict()}


def training_plan(run: RunRoot, workers: int) -> MotionPlan:
    """The videos the motion CNN trains, selects and is tested on under `run` (refused where fewer train
    videos than Train workers)."""
    plan = read_plan(run)
    if len(plan.train) < workers:
        raise ValueError(f"{run.uri}: {len(plan.train)} train videos for {workers} Train workers")
    log.info("motion CNN: %d classes; %d train, %d val and %d test videos", len(plan.classes), len(plan.train),
             len(plan.val), len(plan.test))
    return plan


def record_motion(run: RunRoot) -> MotionTraining:
    """The saved motion CNN's training record, also written to the "motion_cnn" metrics."""
    training = MotionTraining.from_dict(modelio.read_meta(run.model(MOTION_CNN))["training"])
    runinfo.update_metrics(run.uri, MOTION_CNN, training.to_dict())
    return training


@dataclass
class TrainMotionResult:
    """What `jobs/train_motion.py` did."""

    training: MotionTraining
    trained: bool  # False: the saved model was kept
    embedded: int  # videos added to motion/


@dataclass
class MotionFit:
    model: MotionCNN  # with the best epoch's weights, in eval mode
    state: dict[str, torch.Tensor]  # those weights (CPU)
    training: MotionTraining


def fit_motion_cnn(flows: FlowSource | Mapping[str, np.ndarray], plan: MotionPlan, cfg: Config,
                   device: str | torch.device = "auto", *, report: Report = no_report, state: dict | None = None,
                   rank: int = 0, world: int = 1, wrap: Callable | None = None,
                   on_epoch: Callable[[EpochRecord], None] | None = None) -> MotionFit:
    """The motion CNN's epochs, then the test split scored once with the best epoch's weights, over flow in
    memory ({video_id: (P, H, W, 2) uint8}) or a `FlowSource`.

    With the defaults, the plain one-process loop. A Ray Train worker passes its `rank` of `world` (it trains on
    its share of `plan`), `wrap` (the model → its DDP wrapper), `report` (checkpoints `EpochLoop` states on its
    schedule) and the `state` it resumes from; `on_epoch` gets each epoch's `EpochRecord`: the same model, stacks, epochs and selection rule either way."""
    source = flows if isinstance(flows, FlowSource) else FlowSource.of(flows)
    mc, device, shard = cfg.motion_cnn, resolve_device(device), plan.shard(rank, world)
    started = time.perf_counter()
    kept = source.preload(shard.train + shard.val + shard.test)
    log.info("motion CNN: %d videos' flow kept (%.2f GB mapped from the node's cache, %.2f GB in memory) after "
             "%.1f s", kept, source.mapped_bytes / 2**30, source.kept_bytes / 2**30, time.perf_counter() - started)
    if not plan.val and mc.epochs is None:
        raise ValueError("motion_cnn.epochs: no val videos to stop training on (validation.fraction is 0?): "
                         "set an epoch budget")
    model = new_model(plan, cfg).to(device)
    wrapped = wrap(model) if wrap is not None else model
    optimizer = motion_optimizer(wrapped, mc)
    loop = EpochLoop(model, optimizer, report, patience=mc.patience, epochs=mc.epochs, seed=mc.seed, rank=rank,
                     train_key="loss", on_epoch=on_epoch)
    loop.resume(state)
    trainer = MotionTrainer(model, optimizer, source, shard, cfg, device, world, wrapped,
                            _pad_to(plan, source, cfg, world), bool(plan.val))
    loop.fit(trainer.epoch)
    spread = bn_spread(model, device)  # before the best weights replace the last epoch's
    fitted = loop.load_best()
    return MotionFit(fitted, loop.best_state or {k: v.detach().cpu().clone() for k, v in fitted.state_dict().items()},
                     summarize(plan, loop.history, trainer.score(trainer.plan.test), spread))


def _pad_to(plan: MotionPlan, source: FlowSource, cfg: Config, world: int) -> int | None:
    """Stacks of a training epoch on the worker that has the most (every worker takes as many steps: DDP)."""
    if world == 1:
        return None
    mc = cfg.motion_cnn

    def stacks(video_id: str) -> int:
        pairs = plan.pairs.get(video_id) or len(source.get([video_id])[0])
        return epoch_stacks(pairs, mc.stacks_per_video, mc.stack_length, mc.epoch == "whole_flow")

    return max(sum(stacks(v) for v in plan.shard(rank, world).train) for rank in range(world))

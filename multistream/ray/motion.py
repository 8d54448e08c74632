"""The motion CNN on Ray Train and its embedding pass: the Ray side of `multistream.train.motion.data` (videos, flow,
stacks, the `motion/` table) and `multistream.train.motion.recipe` (the epochs, the record).

Each Train worker reads its share of the train and val videos' flow into the node's flow cache (read from `flow/`
once per node: `motion_cnn.flow_cache_dir`, shared by the node's workers, removed by its local rank 0 at the end
of the run; beyond its budget, kept in memory up to `motion_cnn.flow_cache_gb`) and draws every epoch's stacks
from it; rank 0 checkpoints on the schedule of `ray.train.checkpoint_every_s` and after the last epoch, and a
re-run resumes from the latest checkpoint. After the last epoch the workers, which hold the model and most of the
flow already, score the test split once and embed every video missing from `motion/`; then rank 0 saves
`models/motion_cnn/`. Where that model exists it is not retrained, and only the videos missing from `motion/` are
embedded, by a pool of `ray.embed` actors.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import ray
import ray.train
import ray.train.torch

from multistream.config import Config
from multistream.device import resolve_device
from multistream.extract.rows import read_flow
from multistream.ray.session import init_ray, map_stage, read_parquet, worker_setup
from multistream.ray.train import reporter, restore_state, run_training
from multistream.ray.worker_env import train_worker_threads
from multistream.store import modelio
from multistream.store.layout import MOTION_CNN, RunRoot, absolute
from multistream.train import run_spec
from multistream.train.loop import sum_metrics
from multistream.train.motion.data import (
    embed_video,
    embed_videos,
    pending_positions,
    write_motion,
)
from multistream.train.motion.model import load_motion_cnn, save_motion_cnn
from multistream.train.motion.recipe import (
    MotionTraining,
    TrainMotionResult,
    check_motion_resources,
    fit_motion_cnn,
    flow_source,
    motion_device,
    plan_meta,
    record_motion,
    training_meta,
    training_plan,
)
from multistream.train.progress import epoch_log

log = logging.getLogger(__name__)


def train_loop(config: dict) -> None:
    """One Ray Train worker: the epochs (resumed from the last checkpoint), then test, embedding and the model."""
    cfg, plan, positions = config["cfg"], config["plan"], config["positions"]
    mc, run = cfg.motion_cnn, RunRoot(cfg.paths.output)
    worker_setup(train_worker_threads(cfg.ray.torch_threads, cfg.ray.train.cpus_per_worker))
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = resolve_device(motion_device(cfg))
    source = flow_source(run, cfg)
    progress = epoch_log(run.uri, cfg.tracking, MOTION_CNN, rank)
    fit = fit_motion_cnn(source, plan, cfg, device, report=reporter(cfg.ray.train.checkpoint_every_s),
                         state=restore_state(), rank=rank, world=world,
                         wrap=lambda model: ray.train.torch.prepare_model(model, move_to_device=device),
                         on_epoch=progress)
    progress.close()
    meta = training_meta(plan, cfg, fit.training)
    mine = {v: positions[v] for v in sorted(positions)[rank::world]}
    embed_videos(fit.model, meta, source, mine, run, device, mc.embed_batch_size, cfg.ray.embed.batch_size)
    sum_metrics({"n": len(mine)}, device)  # every worker waits here until all have written their motion/ parts
    if source.cache is not None and context.get_local_rank() == 0:
        source.cache.clear()  # the node's workers are done with it (a failed run keeps it for its retry)
    if rank == 0:
        save_motion_cnn(run.model(MOTION_CNN), fit.state, meta)


def train_motion_cnn(cfg: Config, positions: dict[str, list[int]]) -> MotionTraining:
    """Fit the motion CNN on Ray Train, embedding `positions` at the end; returns its training record."""
    run = RunRoot(cfg.paths.output)
    plan = training_plan(run, cfg.ray.train.num_workers)
    run_spec.drop_stale(run.checkpoint(MOTION_CNN), json.dumps(plan_meta(plan, cfg), sort_keys=True))
    init_ray(cfg)
    run_training(train_loop, {"cfg": cfg, "plan": plan, "positions": positions}, cfg, MOTION_CNN)
    return record_motion(run)


class EmbedStage:
    """`flow/` rows → the full7 embedding of the stack at each sampled position, written as a `motion/` part."""

    def __init__(self, cfg: Config, positions: dict[str, list[int]]):
        worker_setup(cfg.ray.torch_threads)
        self.run, self.positions, self.batch_size = RunRoot(cfg.paths.output), positions, cfg.motion_cnn.embed_batch_size
        self.device = resolve_device(motion_device(cfg))
        self.model, self.meta = load_motion_cnn(self.run.model(MOTION_CNN))
        self.model.to(self.device)

    def __call__(self, batch: dict) -> dict:
        ids = [str(v) for v in batch["video_id"]]
        sequences = [embed_video(self.model, read_flow({"shape": shape, "data": data}), self.positions[video_id],
                                 self.meta, self.batch_size, self.device)
                     for video_id, shape, data in zip(ids, batch["shape"], batch["data"], strict=True)]
        write_motion(self.run, ids, sequences)
        return {"video_id": np.array(ids, dtype=object)}


def embed_motion(cfg: Config, positions: dict[str, list[int]]) -> int:
    """Embed these videos with the saved model on `ray.embed` actors; returns how many were written."""
    if not positions:
        return 0
    init_ray(cfg)
    ds = read_parquet(RunRoot(cfg.paths.output).flow, set(positions), columns=["video_id", "shape", "data"])
    return sum(1 for _ in map_stage(ds, EmbedStage, cfg.ray.embed, cfg=cfg, positions=positions).iter_rows())


def run_train_motion(cfg: Config) -> TrainMotionResult:
    """Train (unless a model exists) and embed the videos not yet in `motion/`; resumable at both steps."""
    check_motion_resources(cfg)
    cfg = cfg.replace(**{"paths.output": absolute(cfg.paths.output)})  # workers must not depend on the cwd
    run = RunRoot(cfg.paths.output)
    positions = pending_positions(run)
    if modelio.has_model(run.model(MOTION_CNN)):
        log.info("motion CNN already trained under %s: skipping training", run.uri)
        training = MotionTraining.from_dict(modelio.read_meta(run.model(MOTION_CNN))["training"])
        result = TrainMotionResult(training, False, embed_motion(cfg, positions))
    else:
        result = TrainMotionResult(train_motion_cnn(cfg, positions), True, len(positions))
    log.info("motion/: %d videos embedded", result.embedded)
    return result

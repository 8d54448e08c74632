"""The motion CNN and every stream's RNN head in ONE Ray Train run, for the pipeline on a fresh run root: one
worker-group start-up instead of two, which on a small archive is most of what training costs.

The workers fit the motion CNN and embed every video into `motion/` (`ray.motion.train_loop`), then read the
streams — the temporal one from the `motion/` table just written — and fit the heads (`ray.rnn.train_loop`).
Both phases checkpoint every epoch under `checkpoints/motion_rnn/`: a restarted worker group skips the motion
phase once its model is saved, and each phase resumes only from a checkpoint of its own. The models, tables
and metrics are those of `jobs/train_motion.py` followed by `jobs/train_rnn.py`, which stay as they are.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from multistream import modelio, run_spec, schema
from multistream.config import Config
from multistream.layout import MOTION_CNN, RunRoot, absolute, rnn_name
from multistream.motion import pending_positions
from multistream.motion_training import (
    TrainMotionResult,
    check_motion_resources,
    plan_meta,
    record_motion,
    training_plan,
)
from multistream.ray import motion, rnn
from multistream.ray.session import init_ray
from multistream.ray.train import run_training
from multistream.rnn_models import TrainRNNResult, check_rnn_devices, heads_spec, record_streams
from multistream.streams import StreamData, ok_videos, stream_data

NAME = "motion_rnn"


def chain_loop(config: dict) -> None:
    """Ray Train worker: the motion CNN's epochs and embedding pass, then every head's (see the module)."""
    run = RunRoot(config["root"])
    if not modelio.has_model(run.model(MOTION_CNN)):
        motion.train_loop(config["motion"])
    videos = ok_videos(run)
    rnn.train_loop({**config["rnn"], "streams": [stream_data(run, s, videos) for s in config["streams"]]})


@dataclass(frozen=True)
class ChainResult:
    motion: TrainMotionResult
    rnn: TrainRNNResult


def _fresh_inputs(run: RunRoot, streams: list[str]) -> dict[str, StreamData] | None:
    """The extracted streams (all but the temporal one, which the chain's motion phase writes) where nothing of
    either step is saved yet; None otherwise: that run root is left to the separate steps, which say why."""
    if modelio.has_model(run.model(MOTION_CNN)) or any(modelio.has_model(run.model(rnn_name(s))) for s in streams):
        return None
    videos = ok_videos(run)
    try:
        return {s: stream_data(run, s, videos) for s in streams if s != "temporal"}
    except (ValueError, FileNotFoundError):  # MissingStreamError among them
        return None


def run_train_chain(cfg: Config, streams: list[str]) -> ChainResult | None:
    """Fit the motion CNN and `streams`' heads in one Ray Train run, recording as the two jobs would; None (and
    nothing done) where the run root is not fresh."""
    started = time.perf_counter()
    cfg = cfg.replace(**{"paths.output": absolute(cfg.paths.output)})  # workers must not depend on the cwd
    run = RunRoot(cfg.paths.output)
    extracted = _fresh_inputs(run, streams)
    if extracted is None:
        return None
    check_motion_resources(cfg)
    check_rnn_devices(cfg)
    positions = pending_positions(run)
    plan = training_plan(run, cfg.ray.train.num_workers)
    inputs = {s: {"input_dim": data.input_dim, "classes": data.classes} for s, data in extracted.items()}
    if "temporal" in streams:
        inputs["temporal"] = {"input_dim": schema.MOTION_DIM, "classes": list(plan.classes)}
    spec = {"motion": plan_meta(plan, cfg), "rnn": heads_spec(cfg.rnn, inputs)}
    run_spec.drop_stale(run.checkpoint(NAME), json.dumps(spec, sort_keys=True))
    init_ray(cfg)
    run_training(chain_loop, {"root": run.uri, "motion": {"cfg": cfg, "plan": plan, "positions": positions},
                                       "rnn": rnn.loop_config(cfg, run), "streams": streams}, cfg, NAME)
    trained = TrainMotionResult(record_motion(run), True, len(positions))
    heads = record_streams(run, dict.fromkeys(streams, "trained"))
    return ChainResult(trained, TrainRNNResult(heads, {}, time.perf_counter() - started))

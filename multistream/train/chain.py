"""What the chained training run (`multistream.ray.chain`) needs around it: whether the run root is fresh, the
extracted streams it reads, the spec its checkpoints belong to, and its record (that of the two jobs)."""

from __future__ import annotations

import time
from dataclasses import dataclass

from multistream.config import Config
from multistream.store import modelio, schema
from multistream.store.layout import MOTION_CNN, RunRoot, rnn_name
from multistream.train.motion.data import MotionPlan
from multistream.train.motion.recipe import TrainMotionResult, plan_meta, record_motion
from multistream.train.rnn.data import StreamData, ok_videos, stream_data
from multistream.train.rnn.heads import TrainRNNResult, heads_spec, record_streams


@dataclass(frozen=True)
class ChainResult:
    motion: TrainMotionResult
    rnn: TrainRNNResult


def fresh_inputs(run: RunRoot, streams: list[str]) -> dict[str, StreamData] | None:
    """The extracted streams (all but the temporal one, which the chain's motion phase writes) where nothing of
    either step is saved yet; None otherwise: that run root is left to the separate steps, which say why."""
    if modelio.has_model(run.model(MOTION_CNN)) or any(modelio.has_model(run.model(rnn_name(s))) for s in streams):
        return None
    try:
        videos = ok_videos(run)
        return {s: stream_data(run, s, videos) for s in streams if s != "temporal"}
    except (ValueError, FileNotFoundError):  # MissingStreamError among them
        return None


def chain_spec(cfg: Config, plan: MotionPlan, extracted: dict[str, StreamData], streams: list[str]) -> dict:
    """The models the chain's checkpoints belong to: the motion CNN's metadata and every head's spec (the
    temporal head's input is the motion CNN's embedding)."""
    inputs = {s: {"input_dim": data.input_dim, "classes": data.classes} for s, data in extracted.items()}
    if "temporal" in streams:
        inputs["temporal"] = {"input_dim": schema.MOTION_DIM, "classes": list(plan.classes)}
    return {"motion": plan_meta(plan, cfg), "rnn": heads_spec(cfg.rnn, inputs)}


def record_chain(run: RunRoot, streams: list[str], embedded: int, started: float) -> ChainResult:
    """The saved models' records, written to the metrics as `jobs/train_motion.py` and `jobs/train_rnn.py` do;
    `embedded` videos were added to motion/ since `started` (a `time.perf_counter()`)."""
    motion = TrainMotionResult(record_motion(run), True, embedded)
    heads = record_streams(run, dict.fromkeys(streams, "trained"))
    return ChainResult(motion, TrainRNNResult(heads, {}, time.perf_counter() - started))

"""The motion CNN and every stream's RNN head in ONE Ray Train run, for the pipeline on a fresh run root: one
worker-group start-up instead of two, which on a small archive is most of what training costs
(docs/design.md#chained-train-run).

The workers fit the motion CNN and embed every video into `motion/` (`ray.motion.train_loop`), then read the
streams — the temporal one from the `motion/` table just written — and fit the heads (`ray.rnn.train_loop`).
Both phases checkpoint under `checkpoints/motion_rnn/` (`ray.train.checkpoint_every_s`): a restarted worker
group skips the motion phase once its model is saved, and each phase resumes only from a checkpoint of its own.
The models, tables and metrics are those of `jobs/train_motion.py` followed by `jobs/train_rnn.py`, which stay
as they are.
"""

from __future__ import annotations

import json
import time

from multistream.config import Config
from multistream.ray import motion, rnn
from multistream.ray.session import init_ray
from multistream.ray.train import run_training
from multistream.store import modelio
from multistream.store.layout import MOTION_CNN, RunRoot, absolute
from multistream.train import run_spec
from multistream.train.chain import ChainResult, chain_spec, fresh_inputs, record_chain
from multistream.train.motion.data import pending_positions
from multistream.train.motion.recipe import check_motion_resources, training_plan
from multistream.train.rnn.data import ok_videos, stream_data
from multistream.train.rnn.heads import check_rnn_devices

NAME = "motion_rnn"


def chain_loop(config: dict) -> None:
    """Ray Train worker: the motion CNN's epochs and embedding pass, then every head's (see the module)."""
    run = RunRoot(config["root"])
    if not modelio.has_model(run.model(MOTION_CNN)):
        motion.train_loop(config["motion"])
    videos = ok_videos(run)
    rnn.train_loop({**config["rnn"], "streams": [stream_data(run, s, videos) for s in config["streams"]]})


def run_train_chain(cfg: Config, streams: list[str]) -> ChainResult | None:
    """Fit the motion CNN and `streams`' heads in one Ray Train run, recording as the two jobs would; None (and
    nothing done) where the run root is not fresh."""
    started = time.perf_counter()
    cfg = cfg.replace(**{"paths.output": absolute(cfg.paths.output)})  # workers must not depend on the cwd
    run = RunRoot(cfg.paths.output)
    extracted = fresh_inputs(run, streams)
    if extracted is None:
        return None
    check_motion_resources(cfg)
    check_rnn_devices(cfg)
    positions = pending_positions(run)
    plan = training_plan(run, cfg.ray.train.num_workers)
    run_spec.drop_stale(run.checkpoint(NAME), json.dumps(chain_spec(cfg, plan, extracted, streams), sort_keys=True))
    init_ray(cfg)
    loop_config = {"root": run.uri, "motion": {"cfg": cfg, "plan": plan, "positions": positions},
                   "rnn": rnn.loop_config(cfg, run), "streams": streams}
    run_training(chain_loop, loop_config, cfg, NAME)
    return record_chain(run, streams, len(positions), started)

"""Every stream's recurrent head in ONE Ray Train run, then the `embeddings/` table (paper §III.E, §V.D).

The streams still to train share one worker group (`rnn_models.HeadGroup`): each worker reads its shard of
every stream's train and val videos once, and each epoch trains every head that is not done one epoch, then
reports once with one checkpoint holding every head, so that a re-run or a restarted worker continues from
the last epoch (checkpoints of a different architecture, input or class list are dropped instead). Rank 0
then embeds every ok video with each best model and scores val and test once (`rnn_models.embed_stream`).
A saved model whose stream has videos added since is only re-embedded, in one Ray task; a stream saved and fully embedded is reused as it is.
"""

from __future__ import annotations

import json
import logging
import time

import ray
import ray.train
import ray.train.torch

from multistream.config import Config
from multistream.device import actor_device, resolve_device
from multistream.ray.session import init_ray, worker_setup
from multistream.ray.train import reporter, restore_state, run_training
from multistream.ray.worker_env import train_worker_threads
from multistream.store import layout
from multistream.store.layout import RunRoot
from multistream.train import run_spec
from multistream.train.rnn.data import StreamData
from multistream.train.rnn.heads import (
    HeadGroup,
    TrainRNNResult,
    check_rnn_devices,
    embed_stream,
    find_streams,
    heads_spec,
    load_head,
    record_streams,
    stream_status,
)

log = logging.getLogger(__name__)


def train_loop(config: dict) -> None:
    """Ray Train worker: every head of `config["streams"]` epoch by epoch, then (rank 0) save and embed."""
    worker_setup(config["torch_threads"])
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = resolve_device(actor_device(config["rnn"].device))
    wrap = (lambda model: ray.train.torch.prepare_model(model, move_to_device=False)) if world > 1 else None
    group = HeadGroup(config["streams"], config["rnn"], device, rank, world, wrap=wrap,
                      progress=(config["root"], config["tracking"]))
    group.resume(restore_state())
    group.fit(reporter(config["checkpoint_every_s"]))
    if rank == 0:
        group.save_and_embed(RunRoot(config["root"]), config["rnn"].batch_size)


def loop_config(cfg: Config, run: RunRoot) -> dict:
    """train_loop's config, less "streams"; a worker computes on every CPU it holds (ray.torch_threads is the
    floor)."""
    return {"rnn": cfg.rnn, "root": run.uri, "tracking": cfg.tracking,
            "checkpoint_every_s": cfg.ray.train.checkpoint_every_s,
            "torch_threads": train_worker_threads(cfg.ray.torch_threads, cfg.ray.train.cpus_per_worker)}


def train_streams(cfg: Config, run: RunRoot, streams: list[StreamData]) -> None:
    """One Ray Train run (`checkpoints/rnn_<stream>[-<stream>...]`) for `streams`; saves and embeds each."""
    name = layout.rnn_name("-".join(data.stream for data in streams))
    spec = heads_spec(cfg.rnn, {d.stream: {"input_dim": d.input_dim, "classes": d.classes} for d in streams})
    run_spec.drop_stale(run.checkpoint(name), json.dumps(spec, sort_keys=True))
    run_training(train_loop, {**loop_config(cfg, run), "streams": streams}, cfg, name)


@ray.remote
def _embed_task(run: RunRoot, data: StreamData, device: str, batch_size: int, torch_threads: int) -> dict:
    worker_setup(torch_threads)
    model, meta = load_head(run.model(layout.rnn_name(data.stream)))
    return embed_stream(run, data, model, meta, batch_size, resolve_device(actor_device(device)))


def run_train_rnn(cfg: Config, streams: list[str], skip_missing: bool = False) -> TrainRNNResult:
    """Train (one Ray Train run), embed or reuse each stream's head, then rebuild `embeddings/`.

    A stream whose table is missing raises MissingStreamError, or with `skip_missing` is listed in `missing`.
    """
    started = time.perf_counter()
    check_rnn_devices(cfg)
    run = RunRoot(layout.absolute(cfg.paths.output))
    cfg = cfg.replace(**{"paths.output": run.uri})
    found, missing = find_streams(run, streams, skip_missing)
    status = stream_status(run, found)
    if any(s != "reused" for s in status.values()):
        init_ray(cfg)
    to_train = [found[s] for s, state in status.items() if state == "trained"]
    if to_train:
        train_streams(cfg, run, to_train)
    embed = cfg.ray.embed
    ray.get([_embed_task.options(num_cpus=embed.num_cpus, num_gpus=embed.num_gpus).remote(
        run, found[s], cfg.rnn.device, cfg.rnn.batch_size, cfg.ray.torch_threads)
        for s, state in status.items() if state == "embedded"])
    results = record_streams(run, status)
    return TrainRNNResult(results, missing, time.perf_counter() - started)

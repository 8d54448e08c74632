"""Every stream's recurrent head in ONE Ray Train run, then the `embeddings/` table (paper §III.E, §V.D).

The streams still to train share one worker group: each worker reads its shard of every stream's train and
val videos once (`streams.read_sequences`), and each epoch trains every head that is not done one epoch
(`rnn_training.Head`: the recipe shared with the sweep), then reports once with one checkpoint holding every
head, so that a re-run or a restarted worker continues from the last epoch (checkpoints of a different
architecture, input or class list are dropped instead). Rank 0 then embeds every ok video with each best
model and scores val and test once (`rnn_models.embed_stream`). A saved model whose stream has videos added
since is only re-embedded, in one Ray task; a stream saved and fully embedded is reused as it is.
"""

from __future__ import annotations

import json
import logging
import time

import ray
import ray.train
import ray.train.torch

from multistream import embeddings, layout, modelio, run_spec, runinfo
from multistream.config import Config, RNNConfig
from multistream.device import actor_device, resolve_device
from multistream.layout import RunRoot
from multistream.ray.session import init_ray, worker_setup
from multistream.ray.train import report, restore_state, run_training, sum_over_workers
from multistream.rnn_models import (
    StreamResult,
    TrainRNNResult,
    check_rnn_devices,
    embed_stream,
    head_meta,
    heads_spec,
    load_head,
    stream_status,
)
from multistream.rnn_training import Head, frame_moments, input_statistics
from multistream.streams import MissingStreamError, StreamData, ok_videos, read_sequences, shard, stream_data

log = logging.getLogger(__name__)

def train_loop(config: dict) -> None:
    """Ray Train worker: every head of `config["streams"]` epoch by epoch, then (rank 0) save and embed."""
    worker_setup(config["torch_threads"])
    rnn: RNNConfig = config["rnn"]
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = resolve_device(actor_device(rnn.device))

    def reduce(values):
        return sum_over_workers(values, device)

    heads, splits = {}, {}
    for data in config["streams"]:
        own = shard(data.train_ids, rank, world)
        train = read_sequences(data, shard(data.train_ids, rank, world, pad=True))
        moments = reduce(frame_moments(train.seqs[:len(own)]))  # the padding repeats videos: left out
        head = Head(rnn, data.input_dim, len(data.classes), input_statistics(moments), device, world)
        if world > 1:
            head.network = ray.train.torch.prepare_model(head.model, move_to_device=False)
        heads[data.stream] = head
        splits[data.stream] = (train, read_sequences(data, shard(data.val_ids, rank, world)))
    state = restore_state()
    if state is not None and set(heads) <= set(state):  # not another phase's (`multistream.ray.chain`)
        for stream, head in heads.items():
            head.load_state_dict(state[stream])
        log.info("resumed after epoch %s", ", ".join(f"{s} {h.epoch}" for s, h in heads.items()))
    last = time.perf_counter()
    while not all(head.done for head in heads.values()):
        training = [stream for stream, head in heads.items() if not head.done]
        metrics = {f"{stream}/{key}": value for stream in training
                   for key, value in heads[stream].run_epoch(*splits[stream], reduce).items()}
        for stream in training:  # "seconds": the head's own epoch; "run_s": every head's + the last report
            heads[stream].history[-1]["run_s"] = time.perf_counter() - last
        report(metrics, {stream: head.state_dict() for stream, head in heads.items()})
        last = time.perf_counter()
    if rank == 0:
        run = RunRoot(config["root"])
        for data in config["streams"]:
            head = heads[data.stream]
            embed_stream(run, data, head.best_model(), head_meta(data, head), rnn.batch_size, device)


def loop_config(cfg: Config, run: RunRoot) -> dict:
    """train_loop's config, less "streams"; a worker computes on every CPU it holds (ray.torch_threads is the
    floor)."""
    return {"rnn": cfg.rnn, "root": run.uri,
            "torch_threads": max(cfg.ray.torch_threads, int(cfg.ray.train.cpus_per_worker))}


def train_streams(cfg: Config, run: RunRoot, streams: list[StreamData]) -> None:
    """One Ray Train run (`checkpoints/rnn_<stream>[-<stream>...]`) for `streams`; saves and embeds each."""
    name = layout.rnn_name("-".join(data.stream for data in streams))
    spec = heads_spec(cfg.rnn, {d.stream: {"input_dim": d.input_dim, "classes": d.classes} for d in streams})
    run_spec.drop_stale(run.checkpoint(name), json.dumps(spec, sort_keys=True))
    for data in streams:
        log.info("%s: %d classes, %d train / %d val / %d test videos, input %d-d", data.stream, len(data.classes),
                 len(data.train_ids), len(data.val_ids), len(data.test_ids), data.input_dim)
    result = run_training(train_loop, {**loop_config(cfg, run), "streams": streams}, cfg, name)
    if result.error is not None:
        raise RuntimeError(f"training {name} failed: {result.error}")


@ray.remote
def _embed_task(run: RunRoot, data: StreamData, device: str, batch_size: int, torch_threads: int) -> dict:
    worker_setup(torch_threads)
    model, meta = load_head(run.model(layout.rnn_name(data.stream)))
    return embed_stream(run, data, model, meta, batch_size, resolve_device(actor_device(device)))


def record_streams(run: RunRoot, status: dict[str, str]) -> dict[str, StreamResult]:
    """Each stream's result from its saved head (metrics updated where it was trained or embedded now), then
    `embeddings/` rebuilt."""
    results = {}
    for stream, state in status.items():
        results[stream] = StreamResult.from_meta(modelio.read_meta(run.model(layout.rnn_name(stream))), state)
        if state != "reused":
            runinfo.update_metrics(run.uri, layout.rnn_name(stream), results[stream].metrics())
    embeddings.write_embeddings(run)
    return results


def run_train_rnn(cfg: Config, streams: list[str], skip_missing: bool = False) -> TrainRNNResult:
    """Train (one Ray Train run), embed or reuse each stream's head, then rebuild `embeddings/`.

    A stream whose table is missing raises MissingStreamError, or with `skip_missing` is listed in `missing`.
    """
    started = time.perf_counter()
    check_rnn_devices(cfg)
    run = RunRoot(layout.absolute(cfg.paths.output))
    cfg = cfg.replace(**{"paths.output": run.uri})
    videos = ok_videos(run)
    found, missing = {}, {}
    for stream in streams:
        try:
            found[stream] = stream_data(run, stream, videos)
        except MissingStreamError as error:
            if not skip_missing:
                raise
            log.warning("%s", error)
            missing[stream] = str(error)
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

"""A stream's trained recurrent head on disk (`models/rnn_<stream>/`, through `multistream.store.modelio`), and the pass
that embeds every ok video with it and scores the test split once.

model.json: stream, input_dim, classes, embedding_dim, rnn (architecture), config (the whole rnn section),
epochs, best_epoch, best_val_loss, history (per epoch: train_loss, train_accuracy, val_loss, val_accuracy
[, val_top5], lr), val and test ({top1[, top5]} of the best weights).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from multistream.config import Config, RNNConfig, TrackingConfig
from multistream.device import check_gpu_given
from multistream.store import embeddings, layout, modelio, runinfo
from multistream.store.layout import RunRoot
from multistream.train.loop import Report, sum_over_workers
from multistream.train.progress import epoch_log
from multistream.train.rnn.data import (
    MissingStreamError,
    StreamData,
    ok_videos,
    read_sequences,
    shard,
    stream_data,
)
from multistream.train.rnn.model import SequenceClassifier
from multistream.train.rnn.recipe import Head, embed, frame_moments, input_statistics
from multistream.train.steps import top_ks, topk_accuracy

log = logging.getLogger(__name__)

ARCHITECTURE = ("cell", "bidirectional", "layers", "hidden", "attention", "dropout")
EMBED_CHUNK = 1024  # videos read and embedded at a time: a stream's table is never held whole


def architecture(rnn: RNNConfig) -> dict:
    return {name: getattr(rnn, name) for name in ARCHITECTURE}


def heads_spec(rnn: RNNConfig, streams: dict[str, dict]) -> dict:
    """What the checkpoints of these heads belong to: {stream: {input_dim, classes}} and the architecture."""
    return {"streams": streams, **architecture(rnn)}


def head_meta(data: StreamData, head: Head) -> dict:
    """model.json of a trained head (`embed_stream` adds the scores and saves it with the best weights)."""
    loop = head.loop
    best_epoch = loop.best_epoch or loop.epoch  # without val videos: the last epoch
    best = {m["epoch"]: m for m in loop.history}[best_epoch]
    meta = {"stream": data.stream, "input_dim": data.input_dim, "classes": data.classes,
            "embedding_dim": head.model.embedding_dim, "rnn": architecture(head.rnn),
            "config": dataclasses.asdict(head.rnn), "epochs": loop.epoch, "best_epoch": best_epoch,
            "best_val_loss": best.get("val_loss"), "history": loop.history}
    return meta


def check_rnn_devices(cfg: Config) -> None:
    """A head asked onto CUDA where Ray gives its workers no GPU is refused before any work starts."""
    check_gpu_given(cfg, "rnn", "ray.train.use_gpu")
    check_gpu_given(cfg, "rnn", "ray.embed.num_gpus")


def stream_status(run: RunRoot, streams: dict[str, StreamData]) -> dict[str, str]:
    """What `train_rnn` does for each stream: "trained" (no saved head), "reused" (saved, with every ok video
    embedded and the test split scored) or "embedded" (saved; videos added since are embedded)."""
    status = {}
    for stream, data in streams.items():
        directory = run.model(layout.rnn_name(stream))
        if not modelio.has_model(directory):
            status[stream] = "trained"
        elif set(data.all_ids) <= embeddings.embedded_ids(run, stream) and "test" in modelio.read_meta(directory):
            status[stream] = "reused"
            log.info("%s: already trained and embedded in %s, reusing it", stream, directory)
        else:
            status[stream] = "embedded"
    return status


def find_streams(run: RunRoot, streams: list[str], skip_missing: bool = False,
                 ) -> tuple[dict[str, StreamData], dict[str, str]]:
    """({stream: its data}, {stream: why it has no table}) over the ok videos; a missing table raises
    MissingStreamError unless `skip_missing`."""
    videos, found, missing = ok_videos(run), {}, {}
    for stream in streams:
        try:
            data = found[stream] = stream_data(run, stream, videos)
            log.info("%s: %d classes, %d train / %d val / %d test videos, input %d-d", stream, len(data.classes),
                     len(data.train_ids), len(data.val_ids), len(data.test_ids), data.input_dim)
        except MissingStreamError as error:
            if not skip_missing:
                raise
            log.warning("%s", error)
            missing[stream] = str(error)
    return found, missing


class HeadGroup:
    """Several streams' heads trained side by side by worker `rank` of `world`, which reads its shard of every
    stream's train and val videos once. Each epoch trains every head not done one epoch (`Head`, the recipe
    shared with the sweep), then reports once, with one state holding every head. Figures are summed over the
    workers' process group (`loop.sum_over_workers`).

    wrap: a head's model → what trains (DDP), or None. progress: the run root and tracking settings of each
    head's epoch log (`train.progress`), or None."""

    def __init__(self, streams: list[StreamData], rnn: RNNConfig, device: torch.device, rank: int = 0,
                 world: int = 1, wrap: Callable | None = None, progress: tuple[str, TrackingConfig] | None = None):
        self.streams = streams
        self.heads, self.splits = {}, {}
        for data in streams:
            if not data.val_ids and rnn.epochs is None:
                raise ValueError(f"rnn.epochs: stream {data.stream!r} has no val videos to stop training on "
                                 "(validation.fraction is 0?): set an epoch budget")
            own = shard(data.train_ids, rank, world)
            train = read_sequences(data, shard(data.train_ids, rank, world, pad=True))
            moments = frame_moments(train.seqs[:len(own)])  # the padding repeats videos: left out
            moments = sum_over_workers(moments, device)
            head = Head(rnn, data.input_dim, len(data.classes), input_statistics(moments), device, world)
            if wrap is not None:
                head.network = wrap(head.model)
            if progress is not None:
                head.loop.on_epoch = epoch_log(*progress, layout.rnn_name(data.stream), rank)
            self.heads[data.stream] = head
            self.splits[data.stream] = (train, read_sequences(data, shard(data.val_ids, rank, world)))

    def resume(self, state: dict | None) -> None:
        """Continue from a checkpoint holding every head; None, or another phase's (`ray.chain`), starts afresh."""
        if state is None or not set(self.heads) <= set(state):
            return
        for stream, head in self.heads.items():
            head.loop.resume(state[stream])
        log.info("resumed after epoch %s", ", ".join(f"{s} {h.loop.epoch}" for s, h in self.heads.items()))

    def fit(self, report: Report) -> None:
        """Epochs until every head is done; each epoch's metrics are "<stream>/<key>"."""
        last = time.perf_counter()
        while not all(head.loop.done for head in self.heads.values()):
            training = [stream for stream, head in self.heads.items() if not head.loop.done]
            metrics = {f"{stream}/{key}": value for stream in training
                       for key, value in self.heads[stream].run_epoch(*self.splits[stream]).items()}
            for stream in training:  # "seconds": the head's own epoch; "run_s": every head's + the last report
                self.heads[stream].loop.history[-1]["run_s"] = time.perf_counter() - last
            report(metrics, {stream: head.loop.state_dict() for stream, head in self.heads.items()},
                   all(head.loop.done for head in self.heads.values()))
            last = time.perf_counter()
        for head in self.heads.values():
            if head.loop.on_epoch is not None:
                head.loop.on_epoch.close()

    def save_and_embed(self, run: RunRoot, batch_size: int) -> None:
        """Every head's best model saved and every ok video embedded with it (`embed_stream`)."""
        for data in self.streams:
            head = self.heads[data.stream]
            embed_stream(run, data, head.best_model(), head_meta(data, head), batch_size, head.device)


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


def load_head(directory: str) -> tuple[SequenceClassifier, dict]:
    """(model in eval mode on the CPU, model.json) of `models/rnn_<stream>` (local or s3://)."""
    tensors, meta = modelio.load_model(directory)
    model = SequenceClassifier(meta["input_dim"], len(meta["classes"]), **meta["rnn"])
    model.load_state_dict(tensors)
    return model.eval(), meta


def scores(logits: np.ndarray, targets: np.ndarray) -> dict[str, float]:
    """{"top1"[, "top5"]} of logits (N, C) against targets (N,) (-1: a class the model does not know)."""
    return {f"top{k}": topk_accuracy(logits, targets, k) for k in top_ks(logits.shape[1])}


def embed_stream(run: RunRoot, data: StreamData, model: SequenceClassifier, meta: dict, batch_size: int,
                 device: str | torch.device = "cpu") -> dict:
    """Embed every ok video of the stream → its embeddings part; score val and test once; returns model.json
    with "val" and "test" ({top1[, top5]}) and "n_train", "n_val", "n_test" added (and saved)."""
    ids, chunks, logits = [], [], []
    for start in range(0, len(data.all_ids), EMBED_CHUNK):
        part = read_sequences(data, data.all_ids[start:start + EMBED_CHUNK])
        e, z = embed(model, part, batch_size, device)
        ids += part.ids
        chunks.append(e)
        logits.append(z)
    matrix, logits = np.concatenate(chunks), np.concatenate(logits)
    embeddings.write_stream(run, data.stream, ids, matrix)
    index = {label: i for i, label in enumerate(meta["classes"])}  # a reused model keeps its classes
    row = {v: i for i, v in enumerate(ids)}
    meta = dict(meta)
    for split in ("val", "test"):
        chosen = [row[v] for v in data.ids(split)]
        targets = np.array([index.get(data.classes[data.targets[v]], -1) for v in data.ids(split)], np.int64)
        meta[split] = scores(logits[chosen], targets) if chosen else {}  # a run without val scores none
    meta.update(n_train=len(data.train_ids), n_val=len(data.val_ids), n_test=len(data.test_ids))
    model_dir = run.model(layout.rnn_name(data.stream))
    modelio.save_model(model_dir, {k: v.cpu() for k, v in model.state_dict().items()}, meta)
    log.info("%s: %d videos embedded; test top-1 %.4f", data.stream, len(ids), meta["test"]["top1"])
    return meta


@dataclass(frozen=True)
class StreamResult:
    """A stream's head after `run_train_rnn`: `status` "trained" | "embedded" (saved model, new videos
    embedded) | "reused" (nothing to do); val and test: {"top1"[, "top5"]} of the best weights."""

    stream: str
    status: str
    classes: list[str]
    epochs: int
    best_epoch: int
    n_train: int
    n_val: int
    n_test: int
    val: dict[str, float]
    test: dict[str, float]
    history: list[dict] = field(repr=False)

    @property
    def top1(self) -> float:
        return self.test["top1"]

    @property
    def top5(self) -> float | None:
        return self.test.get("top5")

    @classmethod
    def from_meta(cls, meta: dict, status: str) -> StreamResult:
        return cls(meta["stream"], status, meta["classes"], meta["epochs"], meta.get("best_epoch", meta["epochs"]),
                   meta["n_train"], meta["n_val"], meta["n_test"], meta["val"], meta["test"], meta["history"])

    def metrics(self) -> dict:
        """The stream's section of reports/metrics.json; top1/top5 are the test split's."""
        return {**self.test, "val": self.val, "test": self.test, "epochs": self.epochs,
                "best_epoch": self.best_epoch, "history": self.history, "classes": self.classes,
                "n_train": self.n_train, "n_val": self.n_val, "n_test": self.n_test,
                "selection": "val: learning-rate schedule, best epoch, early stopping; test: scored once"}


@dataclass(frozen=True)
class TrainRNNResult:
    streams: dict[str, StreamResult]  # the streams that have a head, in the order asked
    missing: dict[str, str]  # stream → why it has none (its table does not exist yet)
    seconds: float

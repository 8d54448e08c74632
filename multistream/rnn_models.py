"""A stream's trained recurrent head on disk (`models/rnn_<stream>/`, through `multistream.modelio`), and the pass
that embeds every ok video with it and scores the test split once.

model.json: stream, input_dim, classes, embedding_dim, rnn (architecture), config (the whole rnn section),
epochs, best_epoch, best_val_loss, history (per epoch: train_loss, train_accuracy, val_loss, val_accuracy
[, val_top5], lr), val and test ({top1[, top5]} of the best weights).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field

import numpy as np
import torch

from multistream import embeddings, layout, modelio
from multistream.config import Config, RNNConfig
from multistream.layout import RunRoot
from multistream.rnn import SequenceClassifier
from multistream.rnn_training import Head, embed, top_ks
from multistream.streams import StreamData, read_sequences
from multistream.training import topk_accuracy

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
    best = {m["epoch"]: m for m in head.history}[head.best_epoch]
    meta = {"stream": data.stream, "input_dim": data.input_dim, "classes": data.classes,
            "embedding_dim": head.model.embedding_dim, "rnn": architecture(head.rnn),
            "config": dataclasses.asdict(head.rnn), "epochs": head.epoch, "best_epoch": head.best_epoch,
            "best_val_loss": best["val_loss"], "history": head.history}
    return meta


def check_rnn_devices(cfg: Config) -> None:
    """A head asked onto CUDA where Ray gives its workers no GPU is refused before any work starts."""
    if cfg.rnn.device == "cuda" and not cfg.ray.train.use_gpu:
        raise ValueError("rnn.device is cuda but ray.train.use_gpu is false: the Train workers get no GPU")
    if cfg.rnn.device == "cuda" and not cfg.ray.embed.num_gpus:
        raise ValueError("rnn.device is cuda but ray.embed.num_gpus is 0: the embedding task gets no GPU")


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
        meta[split] = scores(logits[chosen], targets)
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

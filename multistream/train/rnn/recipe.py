"""The one training recipe of a recurrent head (paper §V.D), shared by Ray Train, every Ray Tune trial and the
plain loop the benchmark compares them with:

- inputs standardized per feature with the mean and std of every frame of the train split (kept in the model);
- SGD with Nesterov momentum; lr x `lr_factor` once the validation loss has not improved for `lr_patience`
  epochs in a row (down to `min_lr`); early stop once it has not improved for `patience` epochs; the weights
  kept are those of the epoch with the lowest validation loss;
- `rnn.batch_size` videos per optimizer step in total: with W data-parallel workers each takes batch_size / W;
- only the `val` split is read for those choices; the test split is scored once, by whoever holds the result.

`Head` is one model in training (its state round-trips through `state_dict` for checkpoints);
`train_head` is the plain loop over in-memory sequences.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Iterator

import numpy as np
import torch

from multistream.config import RNNConfig
from multistream.device import autocast, resolve_device
from multistream.train.rnn.data import Sequences
from multistream.train.rnn.model import SequenceClassifier, pad_sequences
from multistream.train.steps import EarlyStopping, evaluate, rnn_optimizer, seed_everything, train_epoch

log = logging.getLogger(__name__)

# sums over workers: (values,) float64 → (values,) float64; None on a single worker
Reduce = Callable[[np.ndarray], np.ndarray] | None


def top_ks(num_classes: int) -> tuple[int, ...]:
    """Top-5 only where there are more than 5 classes (with fewer it is 1 by construction)."""
    return (1, 5) if num_classes > 5 else (1,)


def frame_moments(seqs: Iterable[np.ndarray]) -> np.ndarray:
    """(2D + 1,) float64: per-feature sums of x and x^2 over every frame, then the frame count."""
    total = None
    for s in seqs:
        if len(s) == 0:
            continue
        s = np.asarray(s, np.float64)
        part = np.concatenate([s.sum(0), (s ** 2).sum(0), [len(s)]])
        total = part if total is None else total + part
    if total is None:
        raise ValueError("the train split has no frames to standardize with")
    return total


def input_statistics(moments: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`frame_moments` (summed over workers) → (mean, std), each (D,) float64."""
    dim = (len(moments) - 1) // 2
    count = moments[-1]
    mean = moments[:dim] / count
    return mean, np.sqrt(np.maximum(moments[dim:2 * dim] / count - mean ** 2, 0.0))


def batches(data: Sequences, batch_size: int, rng: np.random.Generator | None = None) -> Iterator:
    """((x (B, T, D) float32, lengths (B,) int64), targets (B,) int64); shuffled when `rng` is given."""
    order = rng.permutation(len(data)) if rng is not None else np.arange(len(data))
    for start in range(0, len(order), batch_size):
        chosen = order[start:start + batch_size]
        yield pad_sequences([data.seqs[i] for i in chosen]), torch.from_numpy(data.targets[chosen])


class Head:
    """One recurrent head in training: model, optimizer, plateau schedule, early stopping, best weights."""

    def __init__(self, rnn: RNNConfig, input_dim: int, num_classes: int, statistics: tuple[np.ndarray, np.ndarray],
                 device: str | torch.device = "cpu", world: int = 1):
        if rnn.batch_size % world:
            log.warning("rnn.batch_size %d is not a multiple of %d workers: %d per worker", rnn.batch_size,
                        world, max(1, rnn.batch_size // world))
        self.rnn, self.num_classes, self.device = rnn, num_classes, resolve_device(device)
        self.batch_size = max(1, rnn.batch_size // world)
        seed_everything(rnn.seed)
        self.model = SequenceClassifier.from_config(rnn, input_dim, num_classes)
        self.model.set_input_statistics(*statistics)
        self.model.to(self.device)
        self.network: torch.nn.Module = self.model  # what runs forward: the model, or its DDP wrapper
        self.optimizer, self.scheduler = rnn_optimizer(self.model, rnn)
        self.stopping = EarlyStopping(rnn.patience)
        self.loss_fn = torch.nn.CrossEntropyLoss()
        self.epoch, self.history, self.best, self.best_epoch = 0, [], None, 0
        self.final = False  # restored from an early-stopped checkpoint: no state to train on from

    @property
    def done(self) -> bool:
        return self.final or self.stopping.should_stop or self.epoch >= self.rnn.epochs

    def run_epoch(self, train: Sequences, val: Sequences, reduce: Reduce = None) -> dict:
        """One epoch on this worker's `train` and `val` shards; `reduce` sums over the workers, so that every
        worker takes the same schedule and stopping decisions. Returns the epoch's metrics (val_* on `val`)."""
        started = time.perf_counter()
        self.epoch += 1
        # shuffling and dropout seeded by epoch: a resumed run (or a head trained beside others) takes the
        # very steps an uninterrupted one alone would
        rng = np.random.default_rng([self.rnn.seed, self.epoch])
        torch.manual_seed(int(rng.integers(2**62)))
        ks = top_ks(self.num_classes)
        fit = train_epoch(self.network, batches(train, self.batch_size, rng), self.optimizer, self.loss_fn,
                          self.device)
        keys = ["loss", "accuracy", *(f"top{k}" for k in ks[1:])]
        # the unwrapped model: evaluation takes no collective step, so a worker may have an empty shard
        val_stats = (evaluate(self.model, batches(val, self.batch_size), self.loss_fn, self.device, top_k=ks)
                     if len(val) else dict.fromkeys(keys, 0.0))
        sums = np.array([fit["loss"] * len(train), fit["accuracy"] * len(train), len(train),
                         *(val_stats[k] * len(val) for k in keys), len(val)], np.float64)
        if reduce is not None:
            sums = reduce(sums)
        n_train, n_val = sums[2], sums[-1]
        metrics = {"epoch": self.epoch, "train_loss": sums[0] / n_train, "train_accuracy": sums[1] / n_train,
                   **{f"val_{k}": v / n_val for k, v in zip(keys, sums[3:-1], strict=True)},
                   "lr": self.optimizer.param_groups[0]["lr"], "seconds": time.perf_counter() - started}
        self.scheduler.step(metrics["val_loss"])
        if self.stopping.step(metrics["val_loss"]):
            self.best = {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}
            self.best_epoch = self.epoch
        self.history.append(metrics)
        return metrics

    def best_model(self) -> SequenceClassifier:
        """The model with the best epoch's weights, in eval mode, on this head's device."""
        if self.best is not None:
            self.model.load_state_dict(self.best)
        return self.model.eval()

    def state_dict(self) -> dict:
        """Everything a resumed run needs; tensors and JSON strings only (loads with weights_only=True).
        An early-stopped head keeps only its best weights and history: it never trains again."""
        book = json.dumps({"epoch": self.epoch, "history": self.history, "best_epoch": self.best_epoch,
                           "stopping": self.stopping.state_dict()})
        if self.stopping.should_stop:
            return {"best": self.best, "bookkeeping": book}
        # where this epoch is the best, the best weights are the model's: not written twice
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "bookkeeping": book,
                **({} if self.best_epoch == self.epoch else {"best": self.best})}

    def load_state_dict(self, state: dict) -> None:
        book = json.loads(state["bookkeeping"])
        self.epoch, self.history, self.best_epoch = book["epoch"], book["history"], book["best_epoch"]
        self.stopping.load_state_dict(book["stopping"])
        self.final = "model" not in state
        if not self.final:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
        self.best = state["best"] if "best" in state else {k: v.detach().cpu().clone()
                                                           for k, v in self.model.state_dict().items()}


def train_head(train: Sequences, val: Sequences, rnn: RNNConfig, num_classes: int, device: str = "cpu",
               on_epoch: Callable[[Head, dict], None] | None = None) -> Head:
    """The plain loop (one process, no Ray): statistics of `train`, then epochs until `Head.done`."""
    head = Head(rnn, train.seqs[0].shape[1], num_classes, input_statistics(frame_moments(train.seqs)), device)
    while not head.done:
        metrics = head.run_epoch(train, val)
        if on_epoch is not None:
            on_epoch(head, metrics)
    return head


@torch.no_grad()
def embed(model: SequenceClassifier, data: Sequences, batch_size: int, device: str | torch.device = "cpu",
          amp: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(embeddings (N, E) float32, logits (N, C) float32) of every sequence, in `data` order."""
    device = resolve_device(device)
    model.eval().to(device)
    embeddings, logits = [], []
    for (x, lengths), _ in batches(data, batch_size):
        with autocast(device, amp):
            e = model.embed(x.to(device), lengths)
            embeddings.append(e.float().cpu().numpy())
            logits.append(model.dense(e).float().cpu().numpy())  # eval mode: forward() without its dropout
    return np.concatenate(embeddings), np.concatenate(logits)

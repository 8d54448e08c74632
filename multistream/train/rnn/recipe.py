"""The one training recipe of a recurrent head (paper §V.D), shared by Ray Train, every Ray Tune trial and the
plain loop the benchmark compares them with:

- inputs standardized per feature with the mean and std of every frame of the train split (kept in the model);
- SGD with Nesterov momentum; lr x `lr_factor` once the validation loss has not improved for `lr_patience`
  epochs in a row (down to `min_lr`); early stop once it has not improved for `patience` epochs; the weights
  kept are those of the epoch with the lowest validation loss;
- `rnn.batch_size` videos per optimizer step in total: with W data-parallel workers each takes batch_size / W;
- only the `val` split is read for those choices; the test split is scored once, by whoever holds the result;
  without val videos (`validation.fraction: 0`) no choice is made: `rnn.epochs` epochs at `rnn.lr`, the last
  one's weights kept.

`Head` is one model in training: the recipe's epoch run by the one epoch loop (`multistream.train.loop`),
whose state round-trips through checkpoints; `train_head` is the plain loop over in-memory sequences.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator

import numpy as np
import torch

from multistream.config import RNNConfig
from multistream.device import autocast, resolve_device
from multistream.train.loop import EpochLoop, EpochRecord, sum_metrics
from multistream.train.rnn.data import Sequences
from multistream.train.rnn.model import SequenceClassifier, pad_sequences
from multistream.train.steps import evaluate, rnn_optimizer, seed_everything, top_ks, train_epoch

log = logging.getLogger(__name__)


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
    """One recurrent head in training: the model, what runs it forward (`network`: the model or its DDP
    wrapper) and its `loop` (SGD + Nesterov, the plateau schedule, early stopping, best weights, history);
    `run_epoch` is one epoch of the recipe. Its state round-trips through `loop.state_dict` / `loop.resume`."""

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
        self.network: torch.nn.Module = self.model
        optimizer, scheduler = rnn_optimizer(self.model, rnn)
        # shuffling and dropout seeded by epoch (not by rank): a resumed run, or a head trained beside others,
        # takes the very steps an uninterrupted one alone would
        self.loop = EpochLoop(self.model, optimizer, patience=rnn.patience, epochs=rnn.epochs, scheduler=scheduler,
                              seed=rnn.seed)
        self.loss_fn = torch.nn.CrossEntropyLoss()

    def run_epoch(self, train: Sequences, val: Sequences) -> dict:
        """One epoch on this worker's `train` and `val` shards, its figures summed over the workers so that
        every worker takes the same schedule and stopping decisions. Returns its history entry (val_* on
        `val`)."""
        return self.loop.run_epoch(lambda epoch, rng: self._step(train, val, rng))

    def _step(self, train: Sequences, val: Sequences, rng: np.random.Generator) -> dict:
        ks = top_ks(self.num_classes)
        fit = train_epoch(self.network, batches(train, self.batch_size, rng), self.loop.optimizer, self.loss_fn,
                          self.device)
        keys = ["loss", "accuracy", *(f"top{k}" for k in ks[1:])]
        # the unwrapped model: evaluation takes no collective step, so a worker may have an empty shard
        val_stats = (evaluate(self.model, batches(val, self.batch_size), self.loss_fn, self.device, top_k=ks)
                     if len(val) else dict.fromkeys(keys, 0.0))
        sums = sum_metrics({"train_loss": fit["loss"] * len(train), "train_accuracy": fit["accuracy"] * len(train),
                            "n_train": len(train), **{f"val_{k}": val_stats[k] * len(val) for k in keys},
                            "n_val": len(val)}, self.device)
        n_train, n_val = sums.pop("n_train"), sums.pop("n_val")
        return {k: v / (n_train if k.startswith("train_") else n_val) for k, v in sums.items()
                if n_val or k.startswith("train_")}  # no val videos on any worker: no val figures

    def best_model(self) -> SequenceClassifier:
        """The model with the best epoch's weights, in eval mode, on this head's device."""
        return self.loop.load_best()


def train_head(train: Sequences, val: Sequences, rnn: RNNConfig, num_classes: int, device: str = "cpu",
               on_epoch: Callable[[EpochRecord], None] | None = None) -> Head:
    """The plain loop (one process, no Ray): statistics of `train`, then epochs until the head's loop is done."""
    if not len(val) and rnn.epochs is None:
        raise ValueError("rnn.epochs: no val videos to stop training on: set an epoch budget")
    head = Head(rnn, train.seqs[0].shape[1], num_classes, input_statistics(frame_moments(train.seqs)), device)
    head.loop.on_epoch = on_epoch
    while not head.loop.done:
        head.run_epoch(train, val)
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

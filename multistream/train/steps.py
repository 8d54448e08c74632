"""Framework-free training pieces: one epoch, evaluation, early stopping, the paper's optimizers.

Batches are `(inputs, targets)` pairs: `inputs` a Tensor or a tuple of Tensors passed as `model(*inputs)`
(e.g. `(x, lengths)` for a `SequenceClassifier`), `targets` (B,) int64 class indices. The distributed
training loops call these once per epoch on each worker.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable

import numpy as np
import torch
from torch import nn

from multistream.config import MotionCNNConfig, RNNConfig
from multistream.device import amp_dtype, autocast, resolve_device


def seed_everything(seed: int) -> None:
    """Seeds Python, NumPy and torch (every CUDA device too)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _to_device(inputs, device: torch.device) -> tuple[torch.Tensor, ...]:
    inputs = inputs if isinstance(inputs, tuple | list) else (inputs,)
    return tuple(t.to(device, non_blocking=True) for t in inputs)


def train_epoch(model: nn.Module, batches: Iterable, optimizer: torch.optim.Optimizer,
                loss_fn: Callable, device: str | torch.device, amp: bool | str = False,
                max_grad_norm: float | None = None) -> dict[str, float]:
    """One pass over `batches` in train mode → {"loss": mean per sample, "accuracy": top-1 on the fly}.

    `amp` as `device.amp_dtype` takes it; in float16 the loss is scaled (a GradScaler: fp16 gradients underflow).
    `max_grad_norm` clips the global gradient norm (None: no clipping).
    """
    device = resolve_device(device)
    model.train()
    scaler = torch.amp.GradScaler(device.type) if amp_dtype(device, amp) == torch.float16 else None
    total_loss, correct, count = 0.0, 0, 0
    for inputs, targets in batches:
        inputs, targets = _to_device(inputs, device), targets.to(device)
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, amp):
            logits = model(*inputs)
            loss = loss_fn(logits.float(), targets)
        (scaler.scale(loss) if scaler is not None else loss).backward()
        if scaler is not None:
            scaler.unscale_(optimizer)
        if max_grad_norm is not None:
            nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        total_loss += float(loss.detach()) * len(targets)
        correct += int((logits.argmax(1) == targets).sum())
        count += len(targets)
    if count == 0:
        raise ValueError("train_epoch got no batches")
    return {"loss": total_loss / count, "accuracy": correct / count}


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable, loss_fn: Callable, device: str | torch.device,
             top_k: tuple[int, ...] = (1, 5), amp: bool | str = False) -> dict[str, float]:
    """Eval-mode pass → {"loss", "accuracy" (top-1), "top<k>" for every other k in top_k}.

    `loss_fn` must average over the batch (the default of torch losses).
    """
    device = resolve_device(device)
    model.eval()
    total_loss, count, scores, labels = 0.0, 0, [], []
    for inputs, targets in batches:
        inputs, targets = _to_device(inputs, device), targets.to(device)
        with autocast(device, amp):
            logits = model(*inputs).float()
        total_loss += float(loss_fn(logits, targets)) * len(targets)
        count += len(targets)
        scores.append(logits.cpu().numpy())
        labels.append(targets.cpu().numpy())
    if count == 0:
        raise ValueError("evaluate got no batches")
    scores_np, labels_np = np.concatenate(scores), np.concatenate(labels)
    result = {"loss": total_loss / count}
    for k in top_k:
        result["accuracy" if k == 1 else f"top{k}"] = topk_accuracy(scores_np, labels_np, k)
    return result


TOP5_MIN_CLASSES = 6  # top-5 is reported only where it can miss: with 5 classes or fewer it is always 1


def top_ks(num_classes: int) -> tuple[int, ...]:
    """The k reported for `num_classes` classes: (1, 5) from `TOP5_MIN_CLASSES` classes on, else (1,)."""
    return (1, 5) if num_classes >= TOP5_MIN_CLASSES else (1,)


def topk_accuracy(scores: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Fraction of rows of scores (N, C) whose label (N,) int is among the k highest (a label of -1, a class
    the scores do not cover, never is); k is capped at C; NaN without rows."""
    scores, labels = np.asarray(scores), np.asarray(labels)
    if len(labels) == 0:
        return float("nan")
    k = min(k, scores.shape[1])
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    return float((top == labels[:, None]).any(axis=1).mean())


class EarlyStopping:
    """Stops after `patience` consecutive epochs without a better value (lower, or higher with mode="max").

    As in the paper: training stops once the validation loss has not decreased for `patience` epochs.
    """

    def __init__(self, patience: int, mode: str = "min", min_delta: float = 0.0):
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        self.patience = patience
        self.mode = mode
        self.min_delta = min_delta
        self.best: float | None = None
        self.bad_epochs = 0

    def step(self, value: float) -> bool:
        """Records one epoch's value; True when it is the best so far."""
        value = float(value)
        sign = 1.0 if self.mode == "min" else -1.0
        if self.best is None or sign * (self.best - value) > self.min_delta:
            self.best, self.bad_epochs = value, 0
            return True
        self.bad_epochs += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.bad_epochs >= self.patience

    def state_dict(self) -> dict:
        return {"best": self.best, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.bad_epochs = state["best"], state["bad_epochs"]


def rnn_optimizer(model: nn.Module, cfg: RNNConfig
                  ) -> tuple[torch.optim.SGD, torch.optim.lr_scheduler.ReduceLROnPlateau]:
    """SGD with Nesterov momentum and its schedule: lr x `lr_factor` on a validation-loss plateau.

    Step the scheduler with the validation loss once per epoch. The rate drops on the `lr_patience`-th epoch
    in a row without a lower loss (torch cuts once its count of bad epochs EXCEEDS its `patience`, hence
    lr_patience - 1), then again after `lr_patience` more, never below `min_lr`. "Lower" is strictly lower,
    as for `EarlyStopping` (torch's default threshold would call a 1e-4 relative gain no gain).
    """
    if cfg.lr_patience < 1:
        raise ValueError(f"rnn.lr_patience must be at least 1, got {cfg.lr_patience}")
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, nesterov=True)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=cfg.lr_factor,
                                                           patience=cfg.lr_patience - 1, threshold=0.0,
                                                           min_lr=cfg.min_lr)
    return optimizer, scheduler


def motion_optimizer(model: nn.Module, cfg: MotionCNNConfig) -> torch.optim.Adam:
    """Adam with its paper's defaults (betas 0.9/0.999, eps 1e-8) at `cfg.lr` (1e-3)."""
    return torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=(0.9, 0.999), eps=1e-8)

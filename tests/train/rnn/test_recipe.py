"""The one training recipe of the recurrent heads, in one process (no Ray)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from multistream.config import RNNConfig
from multistream.store.layout import RunRoot
from multistream.train.rnn.data import Sequences, ok_videos, read_sequences, stream_data
from multistream.train.rnn.recipe import (
    Head,
    batches,
    embed,
    frame_moments,
    input_statistics,
    train_head,
)
from tests.support.rnn import make_run_root


def _steps(history: list[dict]) -> list[dict]:
    """A history without its timings."""
    return [{k: v for k, v in h.items() if k not in ("seconds", "run_s")} for h in history]


RNN = RNNConfig(hidden=8, layers=1, dropout=0.1, lr=0.05, batch_size=4, epochs=12, patience=12)


def _splits(root, poison_test: bool = False) -> tuple[Sequences, Sequences, Sequences]:
    make_run_root(str(root), poison_test=poison_test)
    run = RunRoot(str(root))
    data = stream_data(run, "spatial", ok_videos(run))
    return tuple(read_sequences(data, data.ids(split)) for split in ("train", "val", "test"))


def test_batches_cover_the_split_once():
    seqs = [np.ones((n, 3), np.float16) * n for n in (1, 4, 2, 0, 3)]
    data = Sequences([f"v{i}" for i in range(5)], seqs, np.arange(5))
    plain = list(batches(data, 2))
    assert [len(y) for _, y in plain] == [2, 2, 1] and [int(v) for _, y in plain for v in y] == [0, 1, 2, 3, 4]
    (x, lengths), _ = plain[1]
    assert x.shape == (2, 2, 3) and lengths.tolist() == [2, 1]  # an empty sequence: one step of zeros
    shuffled = [int(v) for _, y in batches(data, 2, np.random.default_rng(0)) for v in y]
    assert sorted(shuffled) == [0, 1, 2, 3, 4] and shuffled != [0, 1, 2, 3, 4]


def test_input_statistics_over_every_frame_and_shards_add_up():
    rng = np.random.default_rng(0)
    seqs = [rng.normal(3, 2, size=(n, 4)) for n in (5, 0, 7, 2)]
    mean, std = input_statistics(frame_moments(seqs))
    frames = np.concatenate(seqs)
    np.testing.assert_allclose(mean, frames.mean(0))
    np.testing.assert_allclose(std, frames.std(0))
    np.testing.assert_allclose(frame_moments(seqs[:2]) + frame_moments(seqs[2:]), frame_moments(seqs))
    with pytest.raises(ValueError, match="no frames"):
        frame_moments([np.zeros((0, 4))])


def test_the_plain_loop_learns_and_keeps_the_best_val_epoch(tmp_path):
    train, val, test = _splits(tmp_path)
    head = train_head(train, val, RNN, num_classes=3)
    history = head.loop.history
    assert [h["epoch"] for h in history] == list(range(1, 13)) and "val_top5" not in history[0]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    best = min(history, key=lambda h: h["val_loss"])
    assert head.loop.best_epoch == best["epoch"]  # the lowest validation loss, the first of equals
    assert head.model.input_mean.abs().sum() > 0  # standardized with the train split's statistics
    _, logits = embed(head.best_model(), test, batch_size=4)
    assert (logits.argmax(1) == test.targets).mean() >= 0.75  # chance is 1/3


def test_model_choices_ignore_the_test_split(tmp_path):
    """Every selection (schedule, best epoch, early stop) reads val only: poisoned test labels change nothing."""
    rnn = dataclasses.replace(RNN, patience=3, lr_patience=2)
    clean = train_head(*_splits(tmp_path / "clean")[:2], rnn, num_classes=3)
    train, val, test = _splits(tmp_path / "poisoned", poison_test=True)
    poisoned = train_head(train, val, rnn, num_classes=3)
    assert _steps(poisoned.loop.history) == _steps(clean.loop.history)
    assert poisoned.loop.best_epoch == clean.loop.best_epoch


def test_resuming_from_a_state_takes_the_same_steps(tmp_path):
    train, val, _ = _splits(tmp_path)
    whole = train_head(train, val, dataclasses.replace(RNN, epochs=6), num_classes=3)
    first = train_head(train, val, dataclasses.replace(RNN, epochs=3), num_classes=3)
    state = first.loop.state_dict()
    resumed = Head(dataclasses.replace(RNN, epochs=6), train.seqs[0].shape[1], 3,
                   input_statistics(frame_moments(train.seqs)))
    resumed.loop.resume(state)
    while not resumed.loop.done:
        resumed.run_epoch(train, val)
    assert _steps(resumed.loop.history) == _steps(whole.loop.history)
    for name, value in whole.best_model().state_dict().items():
        torch.testing.assert_close(resumed.best_model().state_dict()[name], value)


def test_an_early_stopped_head_keeps_only_its_best_weights(tmp_path):
    train, val, _ = _splits(tmp_path)
    head = train_head(train, val, dataclasses.replace(RNN, epochs=40, patience=1, lr=0.5), num_classes=3)
    assert head.loop.stopping.should_stop and head.loop.epoch < 40
    state = head.loop.state_dict()
    assert set(state) == {"best", "bookkeeping"}
    again = Head(dataclasses.replace(RNN, epochs=40, patience=5), train.seqs[0].shape[1], 3,
                 input_statistics(frame_moments(train.seqs)))
    again.loop.resume(state)
    assert again.loop.done and again.loop.best_epoch == head.loop.best_epoch


def test_the_batch_is_split_over_workers():
    head = Head(dataclasses.replace(RNN, batch_size=32), 4, 3, (np.zeros(4), np.ones(4)), world=4)
    assert head.batch_size == 8

"""The training workers' loops without Ray: one model's `EpochLoop` and the heads' `HeadGroup`, checkpointed
through a plain `report` and resumed from the state it was handed."""

from __future__ import annotations

import io
import time

import numpy as np
import pytest
import torch

from multistream.config import RNNConfig
from multistream.store.layout import RunRoot
from multistream.train.loop import (
    CheckpointSchedule,
    EpochLoop,
    EpochRecord,
    ScheduledReport,
    epoch_rng,
    sum_metrics,
    sum_over_workers,
)
from multistream.train.rnn.heads import HeadGroup, find_streams
from tests.support.rnn import make_run_root


def _through_disk(state: dict) -> dict:
    """`state` as a checkpoint holds it: saved, then loaded with weights_only=True (no unpickling)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


class Recorder:
    def __init__(self):
        self.reports, self.finals = [], []

    def __call__(self, metrics: dict, state: dict, final: bool = False) -> None:
        self.reports.append((metrics, _through_disk(state)))
        self.finals.append(final)


def test_epoch_loop_keeps_the_lowest_val_loss_and_resumes_from_a_report():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    recorder = Recorder()
    loop = EpochLoop(model, optimizer, recorder, patience=2)
    weights = []
    for val_loss in (1.0, 0.5, 0.7, 0.9):
        with torch.no_grad():
            model.weight.add_(1.0)  # a different model every epoch
        weights.append(model.weight.detach().clone())
        loop.end_epoch({"val_loss": val_loss})
    assert loop.done and loop.epoch == 4  # two epochs without a lower loss: patience 2
    assert torch.equal(loop.best_state["weight"], weights[1])
    assert [m["epoch"] for m, _ in recorder.reports] == [1, 2, 3, 4]
    assert recorder.finals == [False, False, False, True]
    assert all(m["seconds"] >= 0 and m["lr"] == 0.1 for m, _ in recorder.reports)

    fresh = torch.nn.Linear(3, 2)
    resumed = EpochLoop(fresh, torch.optim.SGD(fresh.parameters(), lr=0.1), patience=2)
    resumed.resume(recorder.reports[2][1])  # after epoch 3: one bad epoch so far
    assert resumed.epoch == 3 and not resumed.done and len(resumed.history) == 3
    assert torch.equal(resumed.model.weight, weights[2]) and torch.equal(resumed.best_state["weight"], weights[1])
    resumed.end_epoch({"val_loss": 0.9})
    assert resumed.done  # the stopping counter came back with the state


def test_an_epochs_seconds_leave_its_report_out():
    model = torch.nn.Linear(3, 2)
    slow_report = lambda metrics, state, final: time.sleep(0.3)  # noqa: E731 (a checkpoint that takes its time)
    loop = EpochLoop(model, torch.optim.SGD(model.parameters(), lr=0.1), slow_report, patience=5)
    started = time.perf_counter()
    for _ in range(3):
        loop.end_epoch({"val_loss": 1.0})
    assert time.perf_counter() - started >= 0.9
    assert all(m["seconds"] < 0.25 for m in loop.history)


def test_epoch_loop_stops_after_its_epochs_and_says_the_last_is_final():
    recorder = Recorder()
    loop = EpochLoop(torch.nn.Linear(2, 2), torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1), recorder,
                     patience=10, epochs=3)
    while not loop.done:
        loop.end_epoch({"val_loss": 1.0 / (loop.epoch + 1)})
    assert loop.epoch == 3 and recorder.finals == [False, False, True]


def test_a_loop_without_an_epoch_budget_runs_until_early_stopping():
    model = torch.nn.Linear(2, 2)
    loop = EpochLoop(model, torch.optim.SGD(model.parameters(), lr=0.1), patience=3, epochs=None)
    records = []
    loop.on_epoch = records.append
    losses = [1.0, 0.5, 0.25] + [0.3] * 100  # no lower val loss after epoch 3
    loop.fit(lambda epoch, rng: {"val_loss": losses[epoch - 1]})
    assert loop.epoch == 6 and loop.best_epoch == 3 and {r.of for r in records} == {None}


def test_checkpoint_schedule_waits_its_seconds_between_checkpoints():
    now = [0.0]
    schedule = CheckpointSchedule(5.0, clock=lambda: now[0])
    due = []
    for _ in range(12):  # one epoch a second
        now[0] += 1.0
        due.append(schedule.due())
        if due[-1]:
            schedule.checkpointed()
    assert [i + 1 for i, d in enumerate(due) if d] == [5, 10]
    every_epoch = CheckpointSchedule(0.0, clock=lambda: now[0])
    assert every_epoch.due() and every_epoch.due()


def test_a_scheduled_report_checkpoints_when_due_and_after_the_final_epoch():
    now, saved = [0.0], []
    report = ScheduledReport(lambda metrics, state: saved.append(metrics["epoch"]),
                             CheckpointSchedule(2.5, clock=lambda: now[0]))
    for epoch in range(1, 7):  # one epoch a second, the sixth final
        now[0] += 1.0
        report({"epoch": epoch}, {}, final=epoch == 6)
    assert saved == [3, 6]
    told = []  # what the other workers' agreement says wins: here, never due
    never = ScheduledReport(lambda m, s: saved.append(m["epoch"]), CheckpointSchedule(0.0),
                            agree=lambda due: told.append(due) or False)
    never({"epoch": 1}, {})
    never({"epoch": 2}, {}, final=True)
    assert saved == [3, 6, 2] and told == [True]  # the final epoch is checkpointed without asking


def test_epoch_loop_ignores_a_state_of_another_phase():
    loop = EpochLoop(torch.nn.Linear(2, 2), torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1))
    loop.resume({"spatial": {}})  # the heads' checkpoint of a chained run
    loop.resume(None)
    assert loop.epoch == 0 and loop.history == [] and loop.best_state is None


def test_every_epoch_gives_one_record_and_the_plateau_schedule_reads_the_val_loss():
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.1, patience=0, threshold=0.0)
    records: list[EpochRecord] = []
    loop = EpochLoop(model, optimizer, patience=3, epochs=5, scheduler=scheduler, on_epoch=records.append)
    losses = iter([1.0, 2.0, 3.0, 4.0])
    loop.fit(lambda epoch, rng: {"train_loss": 0.5, "val_loss": next(losses), "val_accuracy": 0.25})
    assert loop.epoch == 4 and loop.stopping.should_stop and loop.best_epoch == 1  # early stop, not the budget
    assert [(r.epoch, r.of, r.train_loss, r.val_top1) for r in records] == [(e, 5, 0.5, 0.25) for e in (1, 2, 3, 4)]
    assert [r.lr for r in records] == pytest.approx([1.0, 1.0, 0.1, 0.01])  # the rate each epoch trained at
    assert [h["lr"] for h in loop.history] == [r.lr for r in records]


def test_epochs_are_seeded_by_seed_epoch_and_rank():
    draws = []
    loop = EpochLoop(torch.nn.Linear(2, 2), torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1), epochs=3,
                     seed=7, rank=1)
    loop.fit(lambda epoch, rng: draws.append((rng.integers(1000), float(torch.rand(1)))) or {"train_loss": 0.0})
    again = [(epoch_rng(7, epoch, 1).integers(1000), float(torch.rand(1))) for epoch in (1, 2, 3)]
    assert draws == again and len(set(draws)) == 3


def test_a_loop_without_validation_runs_its_budget_and_keeps_the_last_weights():
    model = torch.nn.Linear(2, 2)
    loop = EpochLoop(model, torch.optim.SGD(model.parameters(), lr=0.1), patience=1, epochs=4, train_key="loss")
    records = []
    loop.on_epoch = records.append
    loop.fit(lambda epoch, rng: {"loss": 1.0 / epoch})
    assert loop.epoch == 4 and loop.best_state is None and loop.load_best() is model
    assert [r.train_loss for r in records] == [1.0, 0.5, 1 / 3, 0.25] and records[0].val_loss is None


def test_sums_are_the_identity_in_one_process():
    assert sum_over_workers(np.array([1.0, 2.0]), torch.device("cpu")).tolist() == [1.0, 2.0]
    assert sum_metrics({"n": 3, "loss": 1.5}, torch.device("cpu")) == {"n": 3.0, "loss": 1.5}


RNN = RNNConfig(hidden=8, layers=1, dropout=0.1, lr=0.05, batch_size=4, epochs=6, patience=6)


def _group(root) -> HeadGroup:
    found, _ = find_streams(RunRoot(str(root)), ["spatial", "audio"])
    return HeadGroup(list(found.values()), RNN, torch.device("cpu"))


def _steps(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in h.items() if k not in ("seconds", "run_s")} for h in history]


def test_head_group_trains_every_head_and_a_resumed_group_takes_the_same_steps(tmp_path):
    make_run_root(str(tmp_path))
    whole, recorder = _group(tmp_path), Recorder()
    whole.fit(recorder)
    assert len(recorder.reports) == RNN.epochs and recorder.finals == [False] * (RNN.epochs - 1) + [True]
    first = recorder.reports[0][0]
    assert {"spatial/val_loss", "audio/val_loss", "spatial/train_loss"} <= set(first)

    resumed = _group(tmp_path)
    resumed.resume(recorder.reports[2][1])  # the checkpoint after epoch 3
    assert {s: h.loop.epoch for s, h in resumed.heads.items()} == {"spatial": 3, "audio": 3}
    rest = Recorder()
    resumed.fit(rest)
    assert len(rest.reports) == RNN.epochs - 3
    for stream, head in whole.heads.items():
        assert _steps(resumed.heads[stream].loop.history) == _steps(head.loop.history)
        for name, tensor in head.loop.best_state.items():
            assert torch.allclose(resumed.heads[stream].loop.best_state[name], tensor)

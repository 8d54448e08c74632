"""The Table I sweep on Ray Tune, on the tiny synthetic run root of test_ray_rnn."""

from __future__ import annotations

import pandas as pd

from multistream.ray.tune import model_name, run_tune_rnn
from tests.test_ray_rnn import make_run_root, toy_config


def test_model_names_follow_table_one():
    assert model_name("gru", True, 2, False) == "S. BiGRU"
    assert model_name("lstm", False, 1, False) == "LSTM"
    assert model_name("gru", True, 2, True) == "S. BiGRU + attention"


def test_sweep_writes_the_table(tmp_path, ray_session):
    make_run_root(str(tmp_path))
    cfg = toy_config(tmp_path, **{"tune.epochs": 4, "tune.grace_period": 2, "tune.cells": "[gru, lstm]",
                                  "tune.bidirectional": "[true]", "tune.layers": "[1]", "tune.hidden": "[8]"})
    table = run_tune_rnn(cfg, stream="audio")

    csv = pd.read_csv(tmp_path / "reports" / "sweep.csv")
    assert sorted(csv["model"]) == ["BiGRU", "BiLSTM"] and list(csv["hidden"]) == [8, 8]
    assert list(csv["top1"]) == sorted(csv["top1"], reverse=True) and csv["top1"].between(0, 1).all()
    assert ((csv["epochs"] >= 2) & (csv["epochs"] <= 4)).all() and (csv["best_epoch"] <= csv["epochs"]).all()
    assert list(table["model"]) == list(csv["model"])
    markdown = (tmp_path / "reports" / "sweep.md").read_text()
    assert "| Model | Hidden units | Top-1, % |" in markdown and "audio stream" in markdown
    best = csv.iloc[0]
    assert f"| {best['model']} | 8 | {100 * best['top1']:.2f} |" in markdown

    # the same sweep again is restored from its experiment, not rerun
    trials = sorted(p.name for p in (tmp_path / "checkpoints" / "tune_rnn").glob("trial_*"))
    pd.testing.assert_frame_equal(run_tune_rnn(cfg, stream="audio"), table)
    assert sorted(p.name for p in (tmp_path / "checkpoints" / "tune_rnn").glob("trial_*")) == trials

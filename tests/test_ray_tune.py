"""The Table I sweep on Ray Tune, on the tiny synthetic run root of the recurrent-head tests."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from multistream import runinfo
from multistream.config import FusionConfig, TuneConfig
from multistream.ray.tune import run_tune_rnn
from multistream.sweep import TABLE_I, best_row, model_name, svm_scores, variants
from tests.rnn_fixtures import make_run_root, toy_config

PRODUCT = {"tune.grid": "product", "tune.epochs": 4, "tune.grace_period": 2, "tune.cells": "[gru, lstm]",
           "tune.bidirectional": "[true]", "tune.layers": "[1]", "tune.hidden": "[8]", "tune.max_concurrent": 1}


def test_model_names_follow_table_one():
    assert model_name("gru", True, 2, False) == "S. BiGRU"
    assert model_name("lstm", False, 1, False) == "LSTM"
    assert model_name("gru", True, 2, True) == "S. BiGRU + attention"
    assert model_name("gru", True, 2, head="svm") == "S. BiGRU + SVM"


def test_table_one_variants_in_the_paper_order():
    rows = variants(TuneConfig(hidden_scale=0.125))
    assert len(rows) == 17 and [model_name(**r) for r in rows[:4]] == ["LSTM"] * 4
    assert [r["paper_hidden"] for r in rows[:4]] == [256, 512, 1024, 2048] and [r["hidden"] for r in rows[:4]] == [
        32, 64, 128, 256]
    assert (model_name(**rows[14]), rows[14]["paper_hidden"], rows[14]["paper_top1"]) == ("S. BiGRU", 512, 78.34)
    assert model_name(**rows[16]) == "S. BiLSTM" and len(TABLE_I) == 17
    product = variants(TuneConfig(grid="product", cells=("gru",), bidirectional=(True,), layers=(2,),
                                  hidden=(512, 64)))
    assert [r["paper_top1"] for r in product] == [78.34, None]


def test_the_best_is_chosen_on_val_only():
    rows = [{"attention": False, "head": "softmax", "val_top1": v, "best_val_loss": loss, "test_top1": t}
            for v, loss, t in [(0.5, 1.0, 0.9), (0.7, 0.9, 0.1), (0.7, 0.8, 0.2), (float("nan"), 0.1, 1.0)]]
    assert best_row(rows) is rows[2]  # highest val top-1, then lowest val loss; test ignored


def test_svm_row_scores_val_and_test():
    rng = np.random.default_rng(0)
    y = np.arange(60) % 3
    x = rng.normal(size=(60, 6)) + 3 * np.eye(3, 6)[y]
    scores = svm_scores((x[:30], y[:30]), {"val": (x[30:45], y[30:45]), "test": (x[45:], y[45:])}, 3, FusionConfig())
    assert scores["val_top1"] > 0.8 and scores["test_top1"] > 0.8 and math.isnan(scores["test_top5"])


def test_sweep_writes_table_one_rows(tmp_path, ray_session):
    make_run_root(str(tmp_path))
    cfg = toy_config(tmp_path, **PRODUCT)
    result = run_tune_rnn(cfg, stream="audio")
    table = result.table

    csv = pd.read_csv(tmp_path / "reports" / "sweep.csv")
    assert list(csv["model"]) == ["BiGRU", "BiLSTM", f"{best(csv)} + attention", f"{best(csv)} + SVM"]
    assert list(csv["hidden"]) == [8] * 4 and csv["best"].sum() == 1
    assert csv[["val_top1", "test_top1"]].apply(lambda c: c.between(0, 1)).all().all()
    assert csv["test_top5"].isna().all()  # 3 classes
    assert ((csv["epochs"] >= 2) & (csv["epochs"] <= 4)).all() and (csv["best_epoch"] <= csv["epochs"]).all()
    assert list(table["model"]) == list(csv["model"]) and result.best == best(csv) and result.wall_s > 0
    markdown = (tmp_path / "reports" / "sweep.md").read_text()
    assert "| Model | Hidden units | Val top-1, % |" in markdown and "audio stream" in markdown
    assert "Sweep wall time" in markdown and "1 CPU + 0 GPU per trial" in markdown
    chosen = csv[csv["best"]].iloc[0]
    assert f"| {chosen['model']} (*) | 8 | {100 * chosen['val_top1']:.2f} |" in markdown
    assert runinfo.read_json(str(tmp_path), runinfo.METRICS)["sweep"]["wall_s"] > 0

    # the same sweep again is restored from its experiments, not rerun
    trials = sorted(p.name for p in (tmp_path / "checkpoints" / "tune_rnn").glob("trial_*"))
    pd.testing.assert_frame_equal(run_tune_rnn(cfg, stream="audio").table, table)
    assert sorted(p.name for p in (tmp_path / "checkpoints" / "tune_rnn").glob("trial_*")) == trials

    # poisoned test labels: every choice (ASHA, best epoch, best variant) unchanged, only test figures move
    make_run_root(str(tmp_path / "poisoned"), poison_test=True)
    poisoned = run_tune_rnn(toy_config(tmp_path / "poisoned", **PRODUCT), stream="audio").table
    choices = ["model", "best", "val_top1", "best_val_loss", "best_epoch", "epochs", "stopped_by"]
    pd.testing.assert_frame_equal(poisoned[choices], table[choices])
    assert (poisoned["test_top1"] <= table["test_top1"]).all()


def best(csv: pd.DataFrame) -> str:
    return csv[csv["best"]].iloc[0]["model"]


@pytest.mark.parametrize("key", ["tune.cpus_per_trial=0", "tune.grid=table2"])
def test_sweep_settings_are_checked(key):
    from multistream.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=key.split("=")[0]):
        load_config(overrides=[key])

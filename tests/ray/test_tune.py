"""The Table I sweep on Ray Tune, on the tiny synthetic run root of the recurrent-head tests."""

from __future__ import annotations

import pandas as pd
import pyarrow as pa
import pytest

from multistream.ray.tune import run_tune_rnn
from multistream.store import runinfo, schema, storage
from tests.support.rnn import make_run_root, toy_config

PRODUCT = {"tune.grid": "product", "tune.epochs": 4, "tune.grace_period": 2, "tune.cells": "[gru, lstm]",
           "tune.bidirectional": "[true]", "tune.layers": "[1]", "tune.hidden": "[8]", "tune.max_concurrent": 1}


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


class _Tuner:
    """What `_fit` hands Ray Tune, kept instead of run."""

    configs: list = []

    def __init__(self, trainable, param_space, tune_config, run_config):
        _Tuner.configs.append(tune_config)

    @staticmethod
    def can_restore(*args, **kwargs) -> bool:
        return False

    def fit(self):
        return []


@pytest.mark.parametrize("scheduler, epochs", [("asha", 4), ("none", "null")])
def test_the_sweep_prunes_with_asha_or_trains_every_variant(tmp_path, monkeypatch, scheduler, epochs):
    """tune.scheduler: asha (grace_period, reduction_factor, max_t = tune.epochs) or none: every variant until its
    early stop (or tune.epochs, here none)."""
    from multistream.ray import tune as sweep
    from multistream.store.layout import RunRoot

    monkeypatch.setattr(sweep.tune, "Tuner", _Tuner)
    cfg = toy_config(tmp_path, **{"tune.scheduler": scheduler, "tune.epochs": epochs, "tune.reduction_factor": 3,
                                  "tune.grace_period": 2})
    sweep._fit(cfg, RunRoot(str(tmp_path)), "sweep", [{"index": 0}], None, {})
    chosen = _Tuner.configs[-1].scheduler
    if scheduler == "none":
        assert chosen is None and cfg.tune.epochs is None
    else:
        assert (chosen._reduction_factor, chosen._max_t) == (3, 4)


def test_the_sweep_refuses_a_run_without_val(tmp_path):
    make_run_root(str(tmp_path))
    rows = storage.read_table(str(tmp_path / "videos")).to_pylist()
    for row in rows:
        row["split"] = "train" if row["split"] == "val" else row["split"]
    for part in storage.list_parts(str(tmp_path / "videos")):
        storage.delete_part(str(tmp_path / "videos"), part)
    storage.write_part(pa.Table.from_pylist(rows, schema=schema.VIDEOS_SCHEMA), str(tmp_path / "videos"), "part-0")
    with pytest.raises(ValueError, match="the sweep trains, prunes and chooses on the val split"):
        run_tune_rnn(toy_config(tmp_path, **PRODUCT), stream="audio")

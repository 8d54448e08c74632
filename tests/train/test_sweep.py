"""The sweep's pure parts (Table I variants, the choice of the best on val, the SVM row) and the spec that keys
a named run's checkpoints, without Ray."""

from __future__ import annotations

import math

import numpy as np

from multistream.config import FusionConfig, TuneConfig
from multistream.store import storage
from multistream.train import run_spec
from multistream.train.sweep import TABLE_I, best_row, model_name, svm_scores, variants


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


def test_checkpoints_of_another_spec_are_dropped_and_the_same_spec_kept(tmp_path):
    directory = str(tmp_path / "checkpoints" / "rnn_audio")
    run_spec.drop_stale(directory, '{"hidden": 8}')  # nothing there yet: the spec is recorded
    storage.write_text(f"{directory}/checkpoint_000001/state.pt", "weights")
    assert run_spec.matches(directory, '{"hidden": 8}')
    run_spec.drop_stale(directory, '{"hidden": 8}')
    assert storage.exists(f"{directory}/checkpoint_000001/state.pt")
    run_spec.drop_stale(directory, '{"hidden": 16}')
    assert not storage.exists(f"{directory}/checkpoint_000001/state.pt")
    assert run_spec.matches(directory, '{"hidden": 16}') and not run_spec.matches(directory, '{"hidden": 8}')

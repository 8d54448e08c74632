import json

import numpy as np
import pytest
from safetensors.numpy import load_file
from sklearn.svm import LinearSVC

from multistream.config import FusionConfig
from multistream.fuse.svm import FusionModel, choose_c, evaluate_predictions, stream_ablation
from multistream.store import modelio

DIMS = {"spatial": 16, "temporal": 12, "audio": 8}
CLASSES = ["Archery", "Biking", "Diving", "Fencing"]
CFG = FusionConfig()


def _toy(n_per_class, seed, informative=tuple(DIMS), spread=0.3):
    """Class-separable embeddings in the `informative` streams, pure noise in the others."""
    centers = np.random.default_rng(123)
    means = {s: centers.normal(size=(len(CLASSES), d)) for s, d in DIMS.items()}
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(len(CLASSES)), n_per_class)
    features = {}
    for s, d in DIMS.items():
        signal = means[s][y] if s in informative else 0.0
        features[s] = (signal + spread * rng.normal(size=(len(y), d))).astype(np.float32)
    return features, [CLASSES[i] for i in y]


def test_separable_embeddings_are_classified():
    train, y_train = _toy(20, seed=0)
    test, y_test = _toy(10, seed=1)
    model = FusionModel.fit(train, y_train, CFG)
    assert model.streams == ("spatial", "temporal", "audio") and model.classes == CLASSES
    scores = model.decision_scores(test)
    assert scores.shape == (40, 4)
    assert model.predict(test) == y_test
    metrics = evaluate_predictions(scores, y_test, model.classes)
    assert metrics.top1 == 1.0 and metrics.top5 is None  # top-5 cannot miss with 4 classes
    assert metrics.confusion == (10 * np.eye(4, dtype=int)).tolist()


def test_l2_maps_to_linear_svc_c():
    train, y_train = _toy(15, seed=2, spread=1.5)
    model = FusionModel.fit(train, y_train, CFG)
    x = np.concatenate([train[s] for s in DIMS], axis=1).astype(np.float64)
    x = (x - x.mean(0)) / x.std(0)
    reference = LinearSVC(loss="hinge", C=1 / (2 * len(x) * CFG.l2), max_iter=CFG.max_iter, random_state=0)
    reference.fit(x, y_train)
    np.testing.assert_allclose(model.coef, reference.coef_, atol=1e-6)
    np.testing.assert_allclose(model.decision_scores(train), reference.decision_function(x), atol=1e-6)


def test_missing_streams_are_imputed():
    train, y_train = _toy(20, seed=3)
    test, y_test = _toy(10, seed=4)
    train["audio"][::3] = np.nan
    test["audio"][::2] = np.nan
    test["temporal"][1::4] = np.nan
    model = FusionModel.fit(train, y_train, CFG)
    scores = model.decision_scores(test)
    assert np.isfinite(scores).all()
    assert np.mean(np.array(model.predict(test)) == np.array(y_test)) >= 0.95


def test_save_load_roundtrip_without_pickle(tmp_path):
    train, y_train = _toy(20, seed=5)
    test, _ = _toy(5, seed=6)
    model = FusionModel.fit(train, y_train, CFG, streams=("spatial", "audio"))
    model.save(tmp_path / "svm")
    assert sorted(p.name for p in (tmp_path / "svm").iterdir()) == ["model.json", "model.safetensors"]
    tensors = load_file(tmp_path / "svm" / "model.safetensors")
    assert tensors["coef"].shape == (4, 16 + 8) and tensors["mean"].shape == tensors["scale"].shape == (24,)
    meta = json.loads((tmp_path / "svm" / "model.json").read_text())
    assert meta["streams"] == ["spatial", "audio"] and meta["classes"] == CLASSES and meta["kind"] == "linear_svm"
    loaded = FusionModel.load(tmp_path / "svm")
    assert loaded.streams == ("spatial", "audio") and loaded.classes == CLASSES
    np.testing.assert_array_equal(loaded.decision_scores(test), model.decision_scores(test))


def test_load_refuses_other_models_and_unfinished_folders(tmp_path):
    modelio.save_model(str(tmp_path / "ae"), {"w": np.zeros(2)}, {"kind": "autoencoder", "format": 2})
    with pytest.raises(ValueError, match="linear_svm"):
        FusionModel.load(tmp_path / "ae")
    with pytest.raises(modelio.ModelNotFoundError, match="nothing"):
        FusionModel.load(tmp_path / "nothing")


def test_save_load_fsspec_uri():
    train, y_train = _toy(10, seed=7)
    model = FusionModel.fit(train, y_train, CFG)
    model.save("memory://fusion-test/models/svm")
    loaded = FusionModel.load("memory://fusion-test/models/svm")
    np.testing.assert_array_equal(loaded.decision_scores(train), model.decision_scores(train))


def test_two_classes_give_two_score_columns():
    train, y_train = _toy(20, seed=8)
    keep = [i for i, label in enumerate(y_train) if label in ("Biking", "Fencing")]
    subset = {s: v[keep] for s, v in train.items()}
    labels = [y_train[i] for i in keep]
    model = FusionModel.fit(subset, labels, CFG)
    assert model.decision_scores(subset).shape == (len(keep), 2)
    assert model.predict(subset) == labels
    with pytest.raises(ValueError, match="two classes"):
        FusionModel.fit(subset, ["Biking"] * len(keep), CFG)


def test_evaluate_predictions_by_hand():
    scores = np.array([[3.0, 1, 0], [0, 2, 1], [0, 1, 2], [2, 0, 1], [0, 0, 1]])
    labels = ["a", "b", "b", "c", "zzz"]
    metrics = evaluate_predictions(scores, labels, ["a", "b", "c"])
    assert metrics.top1 == pytest.approx(2 / 5) and metrics.top5 is None
    assert metrics.per_class == {"a": 1.0, "b": 0.5, "c": 0.0}
    assert metrics.confusion == [[1, 0, 0], [0, 1, 1], [1, 0, 0]]
    assert metrics.n == 5 and metrics.n_unknown == 1


def test_top5_where_there_are_more_than_five_classes():
    classes = list("abcdefg")
    scores = np.tile(np.arange(7.0)[::-1], (3, 1))  # every video ranks a > b > ... > g
    metrics = evaluate_predictions(scores, ["a", "e", "f"], classes)
    assert metrics.top1 == pytest.approx(1 / 3) and metrics.top5 == pytest.approx(2 / 3)


def test_stream_ablation_rows():
    train, y_train = _toy(15, seed=9, informative=("spatial",))
    test, y_test = _toy(10, seed=10, informative=("spatial",))
    rows = stream_ablation(train, test, y_train, y_test, CFG)
    assert [r.streams for r in rows] == ["spatial", "temporal", "audio", "spatial+temporal",
                                            "spatial+audio", "temporal+audio", "spatial+temporal+audio"]
    by_name = {r.streams: r for r in rows}
    for name in ("spatial", "spatial+temporal", "spatial+audio", "spatial+temporal+audio"):
        assert by_name[name].top1 >= 0.9
    for name in ("temporal", "audio", "temporal+audio"):
        assert by_name[name].top1 <= 0.6  # chance is 0.25
    assert all(r.top5 is None and r.ceiling is None for r in rows)  # 4 classes, nothing documented
    two = stream_ablation({"spatial": train["spatial"], "audio": train["audio"]}, test, y_train, y_test, CFG)
    assert [r.streams for r in two] == ["spatial", "audio", "spatial+audio"]

    def cues(subset, predicted):  # the rows' own predictions reach the callback
        return {"ceiling": float(len(subset)), "cue_accuracy": float(np.mean(np.asarray(predicted) == y_test))}

    judged = stream_ablation(train, test, y_train, y_test, CFG, cues=cues)
    assert [(r.ceiling, r.cue_accuracy) for r in judged] == [(r.streams.count("+") + 1.0, r.top1) for r in rows]


def test_choose_c_reads_train_and_val_only_and_prefers_the_smaller_of_equals():
    train, y_train = _toy(12, seed=7)
    val, y_val = _toy(6, seed=8)
    cfg = FusionConfig(C="auto", C_grid=(10.0, 1.0, 1e-6))
    c, top1 = choose_c(train, y_train, val, y_val, cfg)
    assert set(top1) == {"1e-06", "1", "10"} and top1 == dict.fromkeys(top1, 1.0)  # separable: all equal
    assert c == 1e-6  # the smallest C (the strongest regularisation) of equals
    poisoned = [CLASSES[(CLASSES.index(y) + 1) % len(CLASSES)] for y in y_val]
    assert choose_c(train, y_train, val, poisoned, cfg)[1] == dict.fromkeys(top1, 0.0)  # val's labels are read
    with pytest.raises(ValueError, match="fusion.C: auto is chosen on the val split"):
        FusionModel.fit(train, y_train, cfg)
    assert FusionModel.fit(train, y_train, cfg, c=c).c == 1e-6
    assert FusionModel.fit(train, y_train, FusionConfig(C=0.25)).c == 0.25
    with pytest.raises(ValueError, match="no val videos"):
        choose_c(train, y_train, val, [], cfg)

import json
import math

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from multistream.config import AnomalyConfig
from multistream.fuse.anomaly import (
    AnomalyDetector,
    Autoencoder,
    calibrate_threshold,
    cross_fit,
    detection_figures,
    lognormal_threshold,
    quantile_rule,
    roc_auc,
)

CFG = AnomalyConfig(hidden=32, bottleneck=4, epochs=60, lr=3e-3, batch_size=32, device="cpu")
D = 24


def _embeddings(n_normal, n_outliers, seed):
    """Normal rows lie near a 3-d subspace of R^24; outliers fill all 24 dimensions at the same scale."""
    basis = np.random.default_rng(42).normal(size=(3, D))
    rng = np.random.default_rng(seed)
    normal = rng.normal(size=(n_normal, 3)) @ basis + 0.05 * rng.normal(size=(n_normal, D))
    outliers = rng.normal(size=(n_outliers, D)) * normal.std(axis=0)
    x = np.concatenate([normal, outliers]).astype(np.float32)
    return x, np.r_[np.zeros(n_normal, bool), np.ones(n_outliers, bool)]


@pytest.fixture(scope="module")
def detector():
    train, _ = _embeddings(300, 6, seed=0)  # a few anomalies hide in the training archive
    detector = AnomalyDetector.fit(train, CFG)
    normal = _embeddings(200, 0, seed=8)[0]
    detector.calibrate_scores(detector.score(normal), target_fpr=0.1, split="val")
    return detector


def test_outliers_score_higher(detector):
    test, is_outlier = _embeddings(100, 20, seed=1)
    scores = detector.score(test)
    assert scores.shape == (120,) and np.isfinite(scores).all()
    assert roc_auc(scores, is_outlier) > 0.9
    flagged = detector.is_anomaly(scores)
    assert flagged.dtype == bool and flagged[is_outlier].mean() > flagged[~is_outlier].mean()


def test_threshold_and_history(detector):
    # the threshold comes from held-out normal videos, so new normal videos are flagged at about its rate
    fresh, _ = _embeddings(2000, 0, seed=9)
    assert 0.05 < np.mean(detector.is_anomaly(detector.score(fresh))) < 0.15
    assert detector.calibration == {"split": "val", "n": 200, "target_fpr": 0.1, "quantile": "empirical",
                                    "log_sd": pytest.approx(0.44, abs=0.05)}
    assert len(detector.history) == CFG.epochs
    assert detector.history[-1] < 0.5 * detector.history[0]


def test_threshold_holds_for_new_normal_videos_when_the_autoencoder_memorizes():
    # few, high-dimensional training videos: the autoencoder reconstructs them almost perfectly
    rng = np.random.default_rng(0)
    train, fresh = rng.normal(size=(40, 64)), rng.normal(size=(400, 64))
    cfg = AnomalyConfig(hidden=256, bottleneck=32, epochs=300, lr=3e-3, batch_size=16)
    detector = AnomalyDetector.fit(train, cfg, device="cpu")
    own = calibrate_threshold(detector.score(train), 0.1)
    assert np.mean(detector.score(fresh[200:]) > own) > 0.5  # a threshold from its own videos fails
    detector.calibrate_scores(detector.score(fresh[:200]), target_fpr=0.1, split="val")
    assert np.mean(detector.is_anomaly(detector.score(fresh[200:]))) < 0.2


def test_calibrated_threshold_flags_at_most_the_target_share():
    scores = np.random.default_rng(0).permutation(100).astype(float)  # 0 .. 99
    assert calibrate_threshold(scores, 0.05) == 94.0  # 95 .. 99 above it: 5 of 100
    assert calibrate_threshold(scores, 0.0) == 99.0
    assert calibrate_threshold(scores[:8], 0.05) == scores[:8].max()  # 8 videos: none may be flagged
    for fpr in (0.01, 0.1, 0.37):
        assert np.mean(scores > calibrate_threshold(scores, fpr)) <= fpr
    with pytest.raises(ValueError, match="normal videos"):
        calibrate_threshold(np.zeros(0), 0.05)
    with pytest.raises(ValueError, match="target_fpr"):
        calibrate_threshold(scores, 1.0)


def test_a_lognormal_threshold_misses_its_target_by_less_than_an_order_statistic_of_few_videos():
    # 24 normal videos, 0.05 target: the empirical threshold is their 2nd-largest score; on log-normal scores
    # the fitted quantile lands nearer the true 95th percentile, draw after draw
    sigma, z95 = 0.5, 1.6448536
    true_fpr = {"empirical": [], "lognormal": []}
    for seed in range(300):
        scores = np.exp(sigma * np.random.default_rng(seed).normal(size=24))
        for rule, threshold in (("empirical", calibrate_threshold(scores, 0.05)),
                                ("lognormal", lognormal_threshold(scores, 0.05))):
            true_fpr[rule].append(0.5 * math.erfc(np.log(threshold) / sigma / math.sqrt(2)))
    error = {rule: np.abs(np.array(fprs) - 0.05).mean() for rule, fprs in true_fpr.items()}
    assert error["lognormal"] < 0.75 * error["empirical"]  # measured: 0.029 against 0.045
    assert abs(np.mean(true_fpr["lognormal"]) - 0.05) < 0.01
    many = np.exp(sigma * np.random.default_rng(0).normal(size=100_000))
    assert lognormal_threshold(many, 0.05) == pytest.approx(np.exp(sigma * z95), rel=0.01)
    with pytest.raises(ValueError, match="3 normal videos"):
        lognormal_threshold(np.ones(2), 0.05)
    with pytest.raises(ValueError, match="target_fpr"):
        lognormal_threshold(many, 0.0)


def test_auto_reads_the_quantile_off_the_scores_once_enough_lie_beyond_it():
    assert quantile_rule(24, 0.05, "auto") == "lognormal"
    assert quantile_rule(199, 0.05, "auto") == "lognormal" and quantile_rule(200, 0.05, "auto") == "empirical"
    assert quantile_rule(100, 0.1, "auto") == "empirical"
    assert quantile_rule(2, 0.05, "auto") == quantile_rule(24, 0.0, "auto") == "empirical"  # nothing to fit
    assert quantile_rule(10_000, 0.05, "lognormal") == "lognormal"
    assert quantile_rule(24, 0.05, "empirical") == "empirical"
    scores = np.exp(np.random.default_rng(1).normal(size=24))
    detector = AnomalyDetector([], float("nan"), [])
    assert detector.calibrate_scores(scores, 0.05, "val") == lognormal_threshold(scores, 0.05)
    assert detector.calibration == {"split": "val", "n": 24, "target_fpr": 0.05, "quantile": "lognormal",
                                    "log_sd": pytest.approx(np.log(scores).std(ddof=1))}
    assert detector.calibrate_scores(scores, 0.05, "val", "empirical") == np.sort(scores)[-2]


def test_an_uncalibrated_detector_flags_nothing_silently():
    train, _ = _embeddings(32, 0, seed=6)
    detector = AnomalyDetector.fit(train, AnomalyConfig(hidden=8, bottleneck=2, epochs=1), device="cpu")
    with pytest.raises(RuntimeError, match="calibrate"):
        detector.is_anomaly(detector.score(train))


def test_fit_is_seeded():
    train, _ = _embeddings(64, 0, seed=2)
    cfg = AnomalyConfig(hidden=16, bottleneck=2, epochs=3, batch_size=16, seed=5)
    a, b = AnomalyDetector.fit(train, cfg), AnomalyDetector.fit(train, cfg)
    np.testing.assert_array_equal(a.score(train), b.score(train))
    assert a.history == b.history


def test_missing_values_are_imputed(detector):
    test, _ = _embeddings(10, 0, seed=3)
    test[:5, :8] = np.nan
    assert np.isfinite(detector.score(test)).all()
    train, _ = _embeddings(64, 0, seed=4)
    train[::4, -5:] = np.nan
    detector = AnomalyDetector.fit(train, AnomalyConfig(hidden=8, bottleneck=2, epochs=2))
    assert np.isfinite(detector.calibrate_scores(detector.score(test), 0.05, "val"))


def test_save_load_roundtrip(detector, tmp_path):
    test, _ = _embeddings(30, 5, seed=5)
    detector.save(tmp_path / "ae")
    assert sorted(p.name for p in (tmp_path / "ae").iterdir()) == ["model.json", "model.safetensors"]
    tensors = load_file(tmp_path / "ae" / "model.safetensors")
    assert tensors["scaler.mean"].shape == (D,) and "encoder.0.weight" in tensors
    meta = json.loads((tmp_path / "ae" / "model.json").read_text())
    assert (meta["input_dim"], meta["hidden"], meta["bottleneck"]) == (D, 32, 4)
    assert meta["threshold"] == detector.threshold and meta["calibration"]["split"] == "val"
    loaded = AnomalyDetector.load(tmp_path / "ae")
    assert loaded.threshold == detector.threshold and loaded.history == detector.history
    assert loaded.calibration == detector.calibration
    np.testing.assert_array_equal(loaded.score(test), detector.score(test))


def test_autoencoder_shapes_and_bottleneck():
    model = Autoencoder(10, 6, 3)
    assert model(torch.randn(4, 10)).shape == (4, 10)
    assert model.encoder(torch.randn(4, 10)).shape == (4, 3)
    with pytest.raises(ValueError, match="bottleneck"):
        Autoencoder(8, 16, 8)


def test_roc_auc():
    assert roc_auc([0.1, 0.2, 0.9, 0.8], [False, False, True, True]) == 1.0
    assert roc_auc([0.9, 0.8, 0.1, 0.2], [False, False, True, True]) == 0.0
    assert roc_auc([0.5, 0.5, 0.5, 0.5], [False, True, False, True]) == 0.5
    assert np.isnan(roc_auc([0.1, 0.2], [False, False]))


def test_cross_fitting_scores_each_video_with_the_one_fold_model_not_fitted_on_it():
    # the memorizing case above: the out-of-fold scores of the 40 fitted videos stand in for new ones
    rng = np.random.default_rng(0)
    normal, fresh = rng.normal(size=(40, 64)), rng.normal(size=(400, 64))
    cfg = AnomalyConfig(hidden=256, bottleneck=32, epochs=300, lr=3e-3, batch_size=16, device="cpu")
    folds = np.arange(40) % 5
    detector, scores = cross_fit(normal, folds, cfg)
    assert scores.shape == (40,) and np.isnan(detector.threshold) and len(detector.members) == 5
    memorized = AnomalyDetector.fit(normal, cfg).score(normal)
    assert np.median(scores) > 20 * np.median(memorized)  # none was scored by a model fitted on it

    def alone(member):
        return AnomalyDetector([member], float("nan"), [])

    for fold, member in enumerate(detector.members):
        np.testing.assert_array_equal(alone(member).score(normal[folds == fold]), scores[folds == fold])
    np.testing.assert_allclose(detector.score(fresh), np.mean([alone(m).score(fresh) for m in detector.members], 0))
    detector.calibrate_scores(scores, 0.1, "train, out-of-fold")
    assert {k: v for k, v in detector.calibration.items() if k != "log_sd"} == {
        "split": "train, out-of-fold", "n": 40, "target_fpr": 0.1, "quantile": "lognormal"}
    assert np.mean(detector.is_anomaly(detector.score(fresh))) < 0.25
    with pytest.raises(ValueError, match="two folds"):
        cross_fit(normal, np.zeros(40, int), cfg)


def test_a_cross_fitted_detector_saves_every_fold_model_and_a_one_model_folder_of_format_2_still_loads(tmp_path):
    train, _ = _embeddings(60, 0, seed=10)
    test, _ = _embeddings(20, 4, seed=11)
    cfg = AnomalyConfig(hidden=16, bottleneck=2, epochs=3, batch_size=16, device="cpu")
    detector, scores = cross_fit(train, np.arange(60) % 3, cfg)
    detector.calibrate_scores(scores, 0.1, "val, out-of-fold (3 folds)")
    detector.save(tmp_path / "folds")
    assert {"0.scaler.mean", "2.encoder.0.weight"} <= set(load_file(tmp_path / "folds" / "model.safetensors"))
    loaded = AnomalyDetector.load(tmp_path / "folds")
    assert len(loaded.members) == 3 and loaded.calibration == detector.calibration
    np.testing.assert_array_equal(loaded.score(test), detector.score(test))

    single = AnomalyDetector.fit(train, cfg)
    single.calibrate_scores(single.score(test), 0.1, "val")
    single.save(tmp_path / "one")
    meta_path = tmp_path / "one" / "model.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({k: v for k, v in meta.items() if k != "members"} | {"format": 2}))
    np.testing.assert_array_equal(AnomalyDetector.load(tmp_path / "one").score(test), single.score(test))


def test_detection_figures_set_the_anomalies_against_the_normal_videos_only():
    scores = np.array([0.1, 0.2, 0.9, 0.8, 0.95, 0.3])
    flagged = scores > 0.5
    anomalous = np.array([False, False, True, True, False, False])
    normal = np.array([True, True, False, False, True, False])  # the last row is neither: left out
    figures = detection_figures(scores, flagged, anomalous, normal)
    assert figures == {"roc_auc": pytest.approx(4 / 6), "false_positive_rate": pytest.approx(1 / 3),
                       "detection_rate": 1.0}
    none = detection_figures(scores, flagged, np.zeros(6, bool), normal)
    assert none["roc_auc"] is None and none["detection_rate"] is None and none["false_positive_rate"] == 1 / 3


def test_a_video_of_more_windows_is_flagged_above_a_higher_threshold_at_the_same_video_false_alarm_rate():
    rng = np.random.default_rng(0)
    calibration = np.exp(rng.normal(0.0, 0.3, 400))  # log-normal normal scores
    detector = AnomalyDetector([], np.nan, [])
    threshold = detector.calibrate_scores(calibration, 0.05, "val", "lognormal")
    assert detector.threshold_for(1) == threshold
    thresholds = [detector.threshold_for(w) for w in (1, 12, 200)]
    assert thresholds == sorted(thresholds) and thresholds[1] > threshold * 1.2
    # videos of 12 windows drawn from the calibration's distribution: about 5 % have a window above it
    videos = np.exp(rng.normal(0.0, 0.3, (20000, 12))).max(axis=1)
    assert abs((videos > thresholds[1]).mean() - 0.05) < 0.01
    assert (videos > threshold).mean() > 0.35  # the one-window threshold flags a third of them

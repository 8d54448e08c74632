import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pytest

from multistream.config import load_config
from multistream.dataset.splits import group_folds
from multistream.demo.dataset import cue_figures
from multistream.fuse.anomaly import AnomalyDetector
from multistream.fuse.data import embeddings_fingerprint, load_embeddings
from multistream.fuse.results import FuseResult, summary_table
from multistream.fuse.run import is_current, run_fuse
from multistream.fuse.svm import FusionModel
from multistream.store import modelio, runinfo, schema, storage
from tests.support.fuse import (
    CLASSES,
    DIM,
    SETTINGS,
    embeddings_table,
    fuse_config,
    synthetic_videos,
    write_synthetic_embeddings,
)

REPO = Path(__file__).resolve().parents[2]


def test_fuse_fits_fusion_and_anomaly_and_writes_everything(tmp_path):
    root = str(tmp_path / "run")
    rows = write_synthetic_embeddings(root)
    runinfo.update_metrics(root, "rnn_spatial", {"top1": 0.5})  # written by the RNN job: must survive

    data = load_embeddings(root)
    assert len(data.video_id) == len(rows) + 1
    assert np.isnan(data.features["audio"][data.video_id.index("Archery/test_00")]).all()
    assert not np.isnan(data.features["spatial"][data.video_id.index("Archery/test_00")]).any()

    result = run_fuse(fuse_config(root), cue_figures)

    fusion, anomaly = result.fusion, result.anomaly
    ablation = {row.streams: row for row in fusion.ablation}
    assert list(ablation) == ["spatial", "temporal", "audio", "spatial+temporal", "spatial+audio",
                              "temporal+audio", "spatial+temporal+audio"]
    fused = ablation["spatial+temporal+audio"].top1
    assert fused == pytest.approx(fusion.top1)
    assert fused >= 0.9
    for stream in schema.STREAMS:
        assert fused > ablation[stream].top1 + 0.1
    assert fusion.top5 is None and all(row.top5 is None for row in fusion.ablation)  # 3 classes
    assert all(row.ceiling is None for row in fusion.ablation)  # not the demo's classes: no documented ceiling
    assert fusion.classes == CLASSES and (fusion.n_train, fusion.n_val, fusion.n_test) == (60, 30, 30)
    assert np.sum(fusion.confusion) == 30 and set(fusion.per_class) == set(CLASSES)
    assert fusion.splits == {"fit": "train", "score": "test"}
    assert anomaly.roc_auc > 0.8 and anomaly.n_anomaly == 8 and anomaly.n_test_normal == 30
    # cross-fitted on every normal train and val video; calibrated on the val ones, which no RNN was fitted on
    assert (anomaly.n_fit, anomaly.n_calibration) == (90, 30)
    calibrated_on = "val, out-of-fold (5 folds)"
    assert anomaly.splits == {"fit": "train+val", "calibrate": calibrated_on, "score": "test + anomaly"}
    assert anomaly.target_fpr == 0.05 and anomaly.calibration_fpr <= 0.05
    assert anomaly.detection_rate >= 0.75
    assert anomaly.false_positive_rate <= 0.2  # val and test are drawn alike: the calibrated rate carries over

    metrics = runinfo.read_json(root, runinfo.METRICS)
    assert metrics["rnn_spatial"] == {"top1": 0.5}
    assert FuseResult.from_metrics(metrics) == result

    predictions = ds.dataset(f"{root}/predictions").to_table()
    assert predictions.schema.equals(schema.PREDICTIONS_SCHEMA)
    assert predictions.num_rows == len(rows)  # the video without any embedding is left out
    assert set(predictions["split"].to_pylist()) == {"train", "val", "test", "anomaly"}
    assert {len(s) for s in predictions["scores"].to_pylist()} == {3}
    model = FusionModel.load(f"{root}/models/svm")
    test = predictions.filter(ds.field("split") == "test").to_pylist()
    assert np.mean([r["predicted"] == r["label"] for r in test]) == pytest.approx(fusion.top1)
    by_id = {r["video_id"]: r for r in rows}
    features = {s: np.stack([by_id[r["video_id"]][s] if by_id[r["video_id"]][s] is not None
                             else np.full(DIM, np.nan) for r in test]) for s in schema.STREAMS}
    assert model.predict(features) == [r["predicted"] for r in test]

    scored = ds.dataset(f"{root}/anomaly").to_table()
    assert scored.schema.equals(schema.ANOMALY_SCHEMA) and scored.num_rows == len(rows)
    flagged = {split: [] for split in ("train", "val", "test", "anomaly")}
    for row in scored.to_pylist():
        flagged[row["split"]].append(row["is_anomaly"])
    assert np.mean(flagged["anomaly"]) > np.mean(flagged["test"])
    detector = AnomalyDetector.load(f"{root}/models/autoencoder")
    assert detector.threshold == pytest.approx(anomaly.threshold)
    assert {k: v for k, v in detector.calibration.items() if k != "log_sd"} == {
        "split": calibrated_on, "n": 30, "target_fpr": 0.05, "quantile": "lognormal"}
    assert len(detector.members) == 5  # one autoencoder per fold; new videos get their mean score
    # a cross-fitted video keeps the score of its own fold's autoencoder, the one not fitted on it
    pool = [r for r in scored.to_pylist() if r["split"] in ("train", "val")]
    x = np.stack([np.concatenate([by_id[r["video_id"]][s] if by_id[r["video_id"]][s] is not None
                                  else np.full(DIM, np.nan) for s in schema.STREAMS]) for r in pool])
    folds = group_folds([r["video_id"] for r in pool], 5, 0)
    own = [AnomalyDetector([detector.members[fold]], float("nan"), []).score(x[i:i + 1])[0]
           for i, fold in enumerate(folds)]
    np.testing.assert_allclose([r["score"] for r in pool], own, rtol=1e-5)
    val_flagged = [r["is_anomaly"] for r in pool if r["split"] == "val"]
    assert np.mean(val_flagged) == pytest.approx(anomaly.calibration_fpr)
    for name in ("svm", "autoencoder"):
        assert sorted(p.name for p in Path(root, "models", name).iterdir()) == ["model.json", "model.safetensors"]
        assert modelio.read_meta(f"{root}/models/{name}")["kind"] in ("linear_svm", "autoencoder")
    assert not list(Path(root).rglob("*.pkl"))
    text = summary_table(result)
    assert "top-5" not in text and f"calibrated on 30 {calibrated_on} videos" in text and "false-positive rate" in text
    assert "the quantile of a log-normal fitted to their scores" in text  # 30 x 0.05: too few beyond it to count


def test_calibrating_on_val_fits_the_autoencoder_on_train_and_scores_val_with_it(tmp_path):
    root = str(tmp_path / "run")
    write_synthetic_embeddings(root)
    anomaly = run_fuse(fuse_config(root).replace(**{"anomaly.calibrate": "val"})).anomaly
    assert (anomaly.n_fit, anomaly.n_calibration) == (60, 30)
    assert anomaly.splits == {"fit": "train", "calibrate": "val", "score": "test + anomaly"}
    assert anomaly.calibration_fpr <= 0.05 and anomaly.detection_rate >= 0.75
    assert anomaly.false_positive_rate <= 0.2
    scored = ds.dataset(f"{root}/anomaly").to_table().to_pylist()
    assert np.mean([r["is_anomaly"] for r in scored if r["split"] == "val"]) == pytest.approx(anomaly.calibration_fpr)


def test_fuse_job_refits_in_place_and_reports_table_ii(tmp_path):
    root = str(tmp_path / "run")
    write_synthetic_embeddings(root)
    assert not is_current(root)
    judged = []  # the caller's cue figures reach every ablation row with the row's test predictions

    def cues(subset, labels, predicted, present):
        judged.append((subset, len(labels), len(predicted), sorted(present)))
        return {"ceiling": 1.0, "cue_accuracy": 0.5}

    rows = run_fuse(fuse_config(root), cues).fusion.ablation
    assert [(r.ceiling, r.cue_accuracy) for r in rows] == [(1.0, 0.5)] * 7
    assert judged[-1] == (tuple(schema.STREAMS), 30, 30, sorted(schema.STREAMS))
    assert is_current(root)
    stale = pa.table({"video_id": ["x"], "label": ["x"], "split": ["test"], "predicted": ["x"], "scores": [[0.0]]},
                     schema=schema.PREDICTIONS_SCHEMA)
    storage.write_part(stale, f"{root}/predictions", "old-part")

    done = subprocess.run([sys.executable, "jobs/fuse.py", "--output", root, *(f"--set={s}" for s in SETTINGS)],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "Spatial+Temporal+Audio" in done.stdout and "ROC AUC" in done.stdout and "val videos" in done.stdout
    assert storage.list_parts(f"{root}/predictions") == ["fuse"]
    assert storage.list_parts(f"{root}/anomaly") == ["fuse"]
    assert ds.dataset(f"{root}/predictions").count_rows() == len(synthetic_videos())
    assert json.loads(Path(root, "reports/metrics.json").read_text())["fusion"]["top1"] >= 0.9

    before = embeddings_fingerprint(root)
    storage.write_part(embeddings_table(synthetic_videos(seed=1)[:1], ("spatial",)), f"{root}/embeddings", "part-c")
    assert embeddings_fingerprint(root) != before and not is_current(root)


def test_fuse_on_an_object_store_run_root(s3_bucket):
    root = f"{s3_bucket}/runs/one"
    rows = write_synthetic_embeddings(root)

    result = run_fuse(fuse_config(root))

    assert result.fusion.top1 >= 0.9 and result.anomaly.roc_auc > 0.8
    assert storage.read_table(f"{root}/predictions").num_rows == len(rows)
    assert storage.list_parts(f"{root}/anomaly") == ["fuse"]
    assert FusionModel.load(f"{root}/models/svm").classes == CLASSES
    assert is_current(root)


def test_load_embeddings_merges_the_rows_of_one_video(tmp_path):
    v = {s: np.full(DIM, i, np.float32) for i, s in enumerate(schema.STREAMS, start=1)}
    rows = [{"video_id": "a", "label": "A", "split": None, "spatial": v["spatial"]},
            {"video_id": "a", "label": None, "split": "test", "audio": v["audio"]},
            {"video_id": "b", "label": "B", "split": "train", "spatial": v["spatial"] + 1, "temporal": v["temporal"]}]
    storage.write_part(embeddings_table(rows, schema.STREAMS), f"{tmp_path}/embeddings", "part-0")

    data = load_embeddings(str(tmp_path))

    assert data.video_id == ["a", "b"] and data.label == ["A", "B"] and data.split == ["test", "train"]
    np.testing.assert_array_equal(data.features["spatial"], [v["spatial"], v["spatial"] + 1])
    assert np.isnan(data.features["temporal"][0]).all() and (data.features["temporal"][1] == 2).all()
    assert (data.features["audio"][0] == 3).all() and np.isnan(data.features["audio"][1]).all()


def test_fuse_without_embeddings_says_what_to_run(tmp_path):
    with pytest.raises(RuntimeError, match="train_rnn"):
        run_fuse(fuse_config(str(tmp_path / "empty")))


def _poisoned(rows: list[dict], split: str) -> list[dict]:
    """The rows with every vector of `split` moved far off (what a model choice reading that split would see)."""
    return [{**r, **{s: r[s] * 30 + 50 for s in schema.STREAMS if r.get(s) is not None}} if r["split"] == split
            else r for r in rows]


def test_no_choice_reads_the_test_split(tmp_path):
    """The SVM is fitted on train and the threshold cross-fitted on train+val: poisoning the test (and anomaly)
    embeddings changes neither, poisoning val moves the threshold but not the SVM."""
    cfg = load_config(None, [*SETTINGS, "anomaly.epochs=20"])
    rows = synthetic_videos(seed=2, train=10, val=8, test=6, anomalies=4)
    outcomes = {}
    for name, variant in (("clean", rows), ("test", _poisoned(_poisoned(rows, "test"), "anomaly")),
                          ("val", _poisoned(rows, "val"))):
        root = str(tmp_path / name)
        storage.write_part(embeddings_table(variant, schema.STREAMS), f"{root}/embeddings", "part-0")
        result = run_fuse(cfg.replace(**{"paths.output": root}))
        outcomes[name] = (result, FusionModel.load(f"{root}/models/svm"))
    (clean, svm), (test, test_svm), (val, val_svm) = outcomes["clean"], outcomes["test"], outcomes["val"]
    assert test.anomaly.threshold == clean.anomaly.threshold
    np.testing.assert_array_equal(test_svm.coef, svm.coef)
    assert test.fusion.top1 < clean.fusion.top1  # the poisoned test videos were scored, just never chosen on
    assert test.anomaly.false_positive_rate > clean.anomaly.false_positive_rate
    assert val.anomaly.threshold != clean.anomaly.threshold  # val is fitted and calibrated on
    np.testing.assert_array_equal(val_svm.coef, svm.coef)


def test_calibrating_on_val_without_a_val_split_holds_out_train_videos_and_says_so(tmp_path):
    root = str(tmp_path / "run")
    rows = synthetic_videos(seed=3, train=12, val=0, test=4, anomalies=2)
    storage.write_part(embeddings_table(rows, schema.STREAMS), f"{root}/embeddings", "part-0")

    result = run_fuse(load_config(None, [f"paths.output={root}", *SETTINGS, "anomaly.epochs=5",
                                         "anomaly.calibrate=val"]))

    assert result.anomaly.splits["calibrate"].startswith("train (held out")
    assert (result.anomaly.n_fit, result.anomaly.n_calibration) == (27, 9)  # anomaly.calibration = 0.25 of 36
    assert "train (held out" in summary_table(result)


def test_cross_fitting_without_a_val_split_calibrates_on_train_and_says_so(tmp_path, caplog):
    root = str(tmp_path / "run")
    rows = synthetic_videos(seed=3, train=12, val=0, test=4, anomalies=2)
    storage.write_part(embeddings_table(rows, schema.STREAMS), f"{root}/embeddings", "part-0")

    with caplog.at_level(logging.WARNING, logger="multistream.fuse.run"):
        result = run_fuse(load_config(None, [f"paths.output={root}", *SETTINGS, "anomaly.epochs=5"]))

    assert result.anomaly.splits["calibrate"] == "train, out-of-fold (5 folds)"
    assert (result.anomaly.n_fit, result.anomaly.n_calibration) == (36, 36)
    assert "which the RNNs were fitted on" in caplog.text


def test_the_svm_is_fitted_on_the_splits_fusion_fit_names(tmp_path):
    root = str(tmp_path / "run")
    storage.write_part(embeddings_table(synthetic_videos(seed=4, train=6, val=6, test=4, anomalies=2), schema.STREAMS),
                       f"{root}/embeddings", "part-0")
    cfg = load_config(None, [f"paths.output={root}", *SETTINGS, "anomaly.epochs=2"])
    for fit, n in (("train", 18), ("val", 18), ("train+val", 36)):
        result = run_fuse(cfg.replace(**{"fusion.fit": fit}))
        assert (result.fusion.splits["fit"], result.fusion.n_train) == (fit, n)
        assert result.anomaly.splits["fit"] == "train+val" and result.anomaly.n_fit == 36


def test_audio_tracks_come_from_the_videos_table(tmp_path):
    from multistream.fuse.data import has_audio

    root = str(tmp_path / "run")
    assert has_audio(root, ["a"]) is None
    rows = [{"video_id": v, "uri": f"/d/{v}.mp4", "label": "A", "split": "test", "status": "ok", "error": None,
             "duration_s": 2.0, "fps": 15.0, "has_audio": v != "b"} for v in ("a", "b")]
    storage.write_part(pa.Table.from_pylist(rows, schema=schema.VIDEOS_SCHEMA), f"{root}/videos", "part-0")
    assert has_audio(root, ["b", "a", "c"]).tolist() == [False, True, True]


def _relabelled(rows: list[dict], split: str) -> list[dict]:
    """`split`'s videos given the next class's label (and their vectors poisoned): wrong answers to read."""
    return [{**r, "label": CLASSES[(CLASSES.index(r["label"]) + 1) % len(CLASSES)]} if r["split"] == split else r
            for r in _poisoned(rows, split)]


def test_c_auto_chooses_on_val_and_never_reads_test(tmp_path):
    """fusion.C: auto: SVMs of fusion.C_grid fitted on train, the best val top-1 (the smallest of equals) kept and
    recorded; test videos with wrong labels and poisoned vectors leave the choice, the model and the record of
    val figures as they were, and only move the test top-1."""
    cfg = load_config(None, [*SETTINGS, "anomaly.epochs=5", "fusion.C=auto", "fusion.C_grid=[1e-5, 1e-3, 0.1, 10]"])
    rows = synthetic_videos(seed=3, train=10, val=8, test=8, anomalies=2)
    outcomes = {}
    for name, variant in (("clean", rows), ("test", _relabelled(rows, "test"))):
        root = str(tmp_path / name)
        storage.write_part(embeddings_table(variant, schema.STREAMS), f"{root}/embeddings", "part-0")
        outcomes[name] = (run_fuse(cfg.replace(**{"paths.output": root})).fusion, FusionModel.load(f"{root}/models/svm"))
    (clean, svm), (test, test_svm) = outcomes["clean"], outcomes["test"]
    assert clean.C_rule == "auto" and set(clean.C_val_top1) == {"1e-05", "0.001", "0.1", "10"}
    best = max(clean.C_val_top1.values())
    assert clean.C == min(float(c) for c, top1 in clean.C_val_top1.items() if top1 == best) == svm.c
    assert (test.C, test.C_val_top1) == (clean.C, clean.C_val_top1)
    np.testing.assert_array_equal(test_svm.coef, svm.coef)
    assert test.top1 < 0.5 < clean.top1  # the relabelled test videos were scored, never chosen on
    metrics = json.loads((tmp_path / "clean" / "reports" / "metrics.json").read_text())["fusion"]
    assert metrics["C"] == clean.C and metrics["C_val_top1"] == clean.C_val_top1
    assert f"C {clean.C:.4g} (the best val top-1 of fusion.C_grid (24 val videos))" in summary_table(
        FuseResult.from_metrics(runinfo.read_json(str(tmp_path / "clean"), runinfo.METRICS)))


def test_c_from_l2_or_given_and_auto_without_val_is_refused(tmp_path):
    root = str(tmp_path / "run")
    rows = synthetic_videos(seed=4, train=6, val=4, test=4, anomalies=2)
    storage.write_part(embeddings_table(rows, schema.STREAMS), f"{root}/embeddings", "part-0")
    derived = run_fuse(fuse_config(root).replace(**{"anomaly.epochs": 5})).fusion
    assert derived.C_rule == "fusion.l2" and derived.C == pytest.approx(1 / (2 * 18 * 0.01))
    given = run_fuse(fuse_config(root).replace(**{"anomaly.epochs": 5, "fusion.C": 0.5})).fusion
    assert (given.C_rule, given.C, FusionModel.load(f"{root}/models/svm").c) == ("fusion.C", 0.5, 0.5)
    no_val = str(tmp_path / "no_val")
    storage.write_part(embeddings_table([r for r in rows if r["split"] != "val"], schema.STREAMS),
                       f"{no_val}/embeddings", "part-0")
    with pytest.raises(ValueError, match="fusion.C: auto chooses C on the val split"):
        run_fuse(fuse_config(no_val).replace(**{"anomaly.epochs": 5, "fusion.C": "auto"}))

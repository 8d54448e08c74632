"""anomaly.fit_on: windows — the models train on whole clips, the autoencoder on the window embeddings of the normal
videos, its threshold from the val windows' out-of-fold scores, each video scored by its windows' maximum."""

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from multistream.config import load_config
from multistream.demo.dataset import generate_demo
from multistream.fuse.anomaly import THRESHOLDS, quantile_rule
from multistream.fuse.windows import videos_only
from multistream.jobs.pipeline import run_pipeline
from multistream.store import runinfo, schema, storage
from multistream.store.layout import RunRoot
from multistream.store.preflight import JobRefused, check_windows
from tests.jobs.test_pipeline import SMALL

WINDOWS = ["video.windows={length_s: 2, stride_s: 1}", "anomaly.fit_on=windows"]


def test_the_pipeline_takes_video_windows_only_to_fit_the_autoencoder_on_windows(tmp_path):
    clips = load_config(None, [f"paths.output={tmp_path}", "video.windows={length_s: 2, stride_s: 1}"])
    with pytest.raises(JobRefused, match="anomaly.fit_on=windows") as refused:
        check_windows(clips, "pipeline")
    assert "video.windows" in str(refused.value)
    check_windows(clips.replace(**{"anomaly.fit_on": "windows"}), "pipeline")
    check_windows(clips.replace(**{"anomaly.fit_on": "windows", "video.windows": None}), "pipeline")
    with pytest.raises(JobRefused, match="ray.fused"):
        check_windows(clips.replace(**{"anomaly.fit_on": "windows", "ray.fused": None}), "pipeline")


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_the_autoencoder_fits_and_calibrates_on_windows_and_the_report_draws_their_timelines(ray_session, tmp_path):
    data = generate_demo(tmp_path / "data", clips_per_class=3, n_anomalies=2)
    root = tmp_path / "run"
    cfg = load_config(None, [f"paths.input={data}", f"paths.output={root}", *SMALL, *WINDOWS])

    first = run_pipeline(cfg)

    assert [(s.step, s.status) for s in first.steps] == [
        ("extract", "ran"), ("train_motion", "ran"), ("train_rnn", "chained"), ("windows", "ran"), ("fuse", "ran"),
        ("report", "ran")], first.steps
    run = RunRoot(str(root))
    # what the models train on stays whole clips: one row per video
    clip_embeddings = storage.read_table(run.embeddings)
    assert not schema.is_windowed(clip_embeddings.schema) and clip_embeddings.num_rows == 14
    # every video of the manifest in 2 s windows every 1 s (demo clips last 2-4 s: 1 to 3 windows)
    windows = storage.read_table(run.windows.embeddings)
    assert schema.is_windowed(windows.schema)
    per_video = Counter(windows["video_id"].to_pylist())
    assert set(per_video) == set(clip_embeddings["video_id"].to_pylist())
    assert max(per_video.values()) > 1 and windows.num_rows > 14
    for video_id, count in per_video.items():
        mine = windows.filter(windows["video_id"].to_numpy(zero_copy_only=False) == video_id)
        assert sorted(mine["window"].to_pylist()) == list(range(count))
        assert all(end - start <= 2.0 + 1e-6 for start, end in zip(mine["start_s"].to_pylist(),
                                                                    mine["end_s"].to_pylist(), strict=True))

    anomaly = storage.read_table(run.anomaly)
    assert schema.is_windowed(anomaly.schema)
    own = videos_only(anomaly).to_pylist()
    assert sorted(row["video_id"] for row in own) == sorted(per_video)  # one own row per video
    window_rows = [row for row in anomaly.to_pylist() if row["window"] is not None]
    assert len(window_rows) == windows.num_rows
    for row in own:  # a video's score: its windows' max (video.windows.anomaly_score's default)
        scores = [w["score"] for w in window_rows if w["video_id"] == row["video_id"]]
        assert row["score"] == pytest.approx(max(scores))
        assert row["peak_window"] == int(np.argmax([w["score"] for w in sorted(
            (w for w in window_rows if w["video_id"] == row["video_id"]), key=lambda w: w["window"])]))

    metrics = runinfo.read_json(str(root), runinfo.METRICS)["anomaly"]
    splits = Counter(windows["split"].to_pylist())
    assert metrics["fit_on"] == "windows"
    assert metrics["n_calibration"] == splits["val"] and metrics["n_fit"] == splits["train"] + splits["val"]
    assert metrics["windows"]["windows"] == dict(splits)
    assert metrics["n_anomaly"] == 2 and metrics["roc_auc"] is not None
    # the threshold: the configured quantile of the val windows' out-of-fold scores (the window rows of anomaly/)
    val_scores = np.array([w["score"] for w in window_rows if w["split"] == "val"], np.float64)
    rule = quantile_rule(len(val_scores), cfg.anomaly.target_fpr, cfg.anomaly.quantile)
    assert metrics["quantile"] == rule
    assert metrics["threshold"] == pytest.approx(THRESHOLDS[rule](val_scores, cfg.anomaly.target_fpr), rel=1e-5)

    html = Path(first.report).read_text()
    assert "anomaly score over time of the highest-scoring videos" in html
    assert (root / "reports" / "figures" / "anomaly_timelines.png").stat().st_size > 0

    stamp = (root / "anomaly" / "fuse.parquet").stat().st_mtime_ns
    second = run_pipeline(cfg)
    assert {s.step: s.status for s in second.steps} == {
        "extract": "skipped", "train_motion": "skipped", "train_rnn": "skipped", "windows": "skipped",
        "fuse": "skipped", "report": "ran"}
    assert (root / "anomaly" / "fuse.parquet").stat().st_mtime_ns == stamp

    # windows embedded by models other than those now under models/ are refused, never mixed with new ones
    record = root / "windows" / "models.json"
    embedded_with = json.loads(record.read_text())
    assert set(embedded_with) == {f"{name}/{file}" for name in ("motion_cnn", "rnn_spatial", "rnn_temporal", "rnn_audio")
                                  for file in ("model.safetensors", "model.json")}
    record.write_text(json.dumps(embedded_with | {"motion_cnn/model.safetensors": "0" * 64}))
    with pytest.raises(RuntimeError, match="embedded by other models"):
        run_pipeline(cfg)

"""The benchmark: its pure pieces without Ray, and jobs/benchmark.py on a few tiny videos in one run."""

import dataclasses
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from multistream.bench import training
from multistream.bench.extraction import steady_rate
from multistream.bench.fresh import in_fresh_process
from multistream.bench.plain import PlainRun
from multistream.config import load_config
from tests.support.helpers import run_job_main, write_test_video


def run_benchmark(*args: str) -> int:
    return run_job_main("benchmark", *args)


def test_steady_rate_is_taken_between_the_10th_and_90th_percentile():
    # a slow start (actors starting) and a slow drain around 18 commits one second apart
    times = [10.0, 10.5, *[11.0 + i for i in range(16)], 40.0, 60.0]
    assert steady_rate(times) == pytest.approx((18 - 2) / (times[18] - times[2]))
    assert math.isnan(steady_rate(times[:9]))  # too few commits for percentiles
    assert math.isnan(steady_rate([5.0] * 40 + [15.0] * 40 + [16.0] * 4))  # 84 videos in 3 commits: no rate


def test_fresh_process_measures_import_no_ray():
    code = ("import sys, multistream.bench.fresh, multistream.bench.baselines, multistream.bench.memory; "
            "print(sorted(m for m in ('ray', 'torch') if m in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "[]"


def test_fresh_process_measure_errors_name_the_measure():
    with pytest.raises(ValueError, match="multistream.bench"):
        in_fresh_process("os:system", None, [], {})
    with pytest.raises(RuntimeError, match="baselines:sequential failed"):
        in_fresh_process("multistream.bench.baselines:sequential", "/nonexistent/config.yaml", [], {"entries": []})


def test_training_efficiency_is_the_ratio_of_epoch_throughputs_with_the_fixed_cost_apart():
    history = [{"epoch": 1, "seconds": 2.0, "val_loss": 1.0}, {"epoch": 2, "seconds": 1.0, "val_loss": 0.9}]
    plain = PlainRun(threads=1, load_s=0.5, train_samples_per_epoch=30, epoch_s=[1.0, 1.0]).to_dict()
    assert plain["samples_per_s"] == 30

    figures = training.figures(history, 30, job_s=10.0, probed=(4.0, 0.1), plain=plain)

    assert figures.ray_samples_per_s == pytest.approx(20.0)  # 2 epochs x 30 samples in 3 s
    assert figures.efficiency == pytest.approx(20.0 / 30.0)
    assert figures.efficiency_after_first_epoch == pytest.approx(1.0)  # epoch 2: 30 samples in 1 s on both
    assert figures.efficiency_with_checkpoints == pytest.approx(60 / 3.2 / 30)  # + 0.1 s per epoch
    assert figures.fixed_cost_s == pytest.approx(7.0) and figures.epochs == 2
    assert (figures.trainer_start_s, figures.checkpoint_report_s, figures.plain_load_s) == (4.0, 0.1, 0.5)
    lines = training.format_lines({"motion_cnn": dataclasses.asdict(figures)})
    assert "motion_cnn" in lines[-1] and "0.67" in lines[-1]
    with pytest.raises(KeyError, match="seconds"):
        training.figures([{"epoch": 1}], 30, 10.0, (4.0, 0.1), plain)

    faster = training.figures([dict(h, seconds=1.0) for h in history], 30, 10.0, (4.0, 0.1), plain)
    slower = training.figures([dict(h, seconds=4.0) for h in history], 30, 10.0, (4.0, 0.1), plain)
    median = training.median_run([faster, slower, figures])
    assert median["efficiency"] == figures.efficiency
    assert median["efficiency_runs"] == [faster.efficiency, slower.efficiency, figures.efficiency]
    assert training.median_run([faster, slower])["efficiency"] == slower.efficiency  # the lower middle
    assert "1.00 0.25 0.67" in training.format_lines({"rnn": median})[-1]


def test_each_ray_run_is_set_against_the_plain_runs_on_either_side(tmp_path):
    history = [{"epoch": 1, "seconds": 1.0, "val_loss": 1.0}]
    plain_rates = iter([10.0, 30.0, 20.0])  # samples/s of three plain runs in a row: the machine drifts
    calls = []

    def on_plain() -> dict:
        calls.append("plain")
        return PlainRun(threads=1, load_s=0.5, train_samples_per_epoch=30, epoch_s=[30 / next(plain_rates)]).to_dict()

    def on_ray(run_cfg) -> tuple:
        calls.append(run_cfg.paths.output)
        return history, 30, 5.0, (4.0, 0.1)

    source = tmp_path / "run"
    for table in ("videos", "flow", "features"):
        (source / table).mkdir(parents=True)
    cfg = load_config(overrides=[f"paths.output={source}"])
    runs = training.bracketed_runs(cfg, 2, on_ray, on_plain)
    assert calls[0] == calls[2] == calls[4] == "plain" and calls[1] == str(source) and calls[3] != str(source)
    assert not Path(calls[3]).exists()  # the second Ray run's copy of the tables is removed
    # plain epochs of 3 s, 1 s, 1.5 s: the Ray epoch of 1 s is set against 2 s, then 1.25 s
    assert [r.efficiency for r in runs] == [pytest.approx(2.0), pytest.approx(1.25)]
    assert [r.plain_samples_per_s for r in runs] == [pytest.approx(15.0), pytest.approx(24.0)]


def test_training_section_copies_only_an_extracted_local_run_root(tmp_path):
    source = tmp_path / "run"
    (source / "videos").mkdir(parents=True)
    with pytest.raises(ValueError, match="no flow/ table: run jobs/extract.py"):
        training.copy_tables(str(source), str(tmp_path / "scratch"))
    with pytest.raises(ValueError, match="local run root"):
        training.copy_tables("s3://bucket/run", str(tmp_path / "scratch"))
    for name in ("flow", "features"):
        (source / name).mkdir()
        (source / name / "part-0.parquet").write_bytes(b"rows")
    training.copy_tables(str(source), str(tmp_path / "scratch"))
    assert (tmp_path / "scratch" / "features" / "part-0.parquet").read_bytes() == b"rows"
    assert not (tmp_path / "scratch" / "models").exists()


def test_benchmark_reports_ratios_against_baselines_of_the_same_run(ray_session, tmp_path, capsys):
    videos = tmp_path / "videos"
    videos.mkdir()
    for i in range(12):
        write_test_video(videos / f"v{i:02d}.mp4", frames=20, audio_tone_hz=300 + 20 * i if i % 3 else None, seed=i)
    (videos / "broken.mp4").write_text("not a video")

    assert run_benchmark("--input", str(videos), "--output", str(tmp_path / "out"), "--lengths", "2,4",
                         "--no-training", "--no-kernels", "--no-windows") == 0
    report = json.loads((tmp_path / "out" / "reports" / "benchmark.json").read_text())

    assert report["videos"] == 13 and report["pipeline"]["ok"] == 12 and report["pipeline"]["errors"] == 1
    for baseline in ("sequential", "sequential_worker_env"):
        assert report[baseline]["videos_per_s"] > 0 and report[baseline]["frames_per_s"] > 0
    assert math.isclose(report["speedup_vs_sequential"],
                        report["pipeline"]["videos_per_s"] / report["sequential"]["videos_per_s"])
    steady = report["pipeline"]["steady_videos_per_s"]  # NaN where the commits came in fewer than 10 times
    assert (math.isnan(steady) and math.isnan(report["fraction_of_ceiling"])) or math.isclose(
        report["fraction_of_ceiling"], steady / report["ceiling_videos_per_s"])
    assert 0 < report["startup_s"] < report["pipeline"]["seconds"]
    assert set(report["stages"]) == {"decode", "spatial", "audio"}
    for stage in report["stages"].values():
        assert stage["standalone_core_s"] > 0 and stage["ratio"] > 0
    lengths = report["peak_rss_mb"]["per_video_length"]
    assert [row["video_s"] for row in lengths] == [2, 4]
    assert [row["n_frames"] for row in lengths] == [30, 60]  # 15 fps, all of it used
    assert all(row["peak_rss_mb"] > 50 for row in lengths)
    rates = report["peak_rss_mb"]["per_frame_rate"]  # each as long as the shortest length, 2 s
    assert [row["clip"] for row in rates] == ["25 fps", "240 fps", "bomb"] and rates[0]["ratio"] == 1
    assert rates[0]["n_frames"] == 50 and abs(rates[1]["n_frames"] - 120) <= 2 and rates[2]["n_frames"] <= 122
    assert report["peak_rss_mb"]["pipeline_tree_pss"] > lengths[0]["peak_rss_mb"]
    assert "speedup vs sequential" in capsys.readouterr().out

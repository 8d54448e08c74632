"""The benchmark: its pure pieces without Ray, and jobs/benchmark.py on a few tiny videos in one run."""

import json
import math
import subprocess
import sys

import pytest

from multistream.bench.extraction import steady_rate
from multistream.bench.fresh import in_fresh_process
from tests.helpers import run_job_main, write_test_video


def run_benchmark(*args: str) -> int:
    return run_job_main("benchmark", *args)


def test_steady_rate_is_taken_between_the_10th_and_90th_percentile():
    # a slow start (actors starting) and a slow drain around 18 commits one second apart
    times = [10.0, 10.5, *[11.0 + i for i in range(16)], 40.0, 60.0]
    assert steady_rate(times) == pytest.approx((18 - 2) / (times[18] - times[2]))
    assert math.isnan(steady_rate(times[:9]))  # too few commits for percentiles


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


def test_benchmark_reports_ratios_against_baselines_of_the_same_run(ray_session, tmp_path, capsys):
    videos = tmp_path / "videos"
    videos.mkdir()
    for i in range(12):
        write_test_video(videos / f"v{i:02d}.mp4", frames=20, audio_tone_hz=300 + 20 * i if i % 3 else None, seed=i)
    (videos / "broken.mp4").write_text("not a video")

    assert run_benchmark("--input", str(videos), "--output", str(tmp_path / "out"), "--lengths", "2,4") == 0
    report = json.loads((tmp_path / "out" / "reports" / "benchmark.json").read_text())

    assert report["videos"] == 13 and report["pipeline"]["ok"] == 12 and report["pipeline"]["errors"] == 1
    for baseline in ("sequential", "sequential_worker_env"):
        assert report[baseline]["videos_per_s"] > 0 and report[baseline]["frames_per_s"] > 0
    assert math.isclose(report["speedup_vs_sequential"],
                        report["pipeline"]["videos_per_s"] / report["sequential"]["videos_per_s"])
    assert math.isclose(report["fraction_of_ceiling"],
                        report["pipeline"]["steady_videos_per_s"] / report["ceiling_videos_per_s"])
    assert 0 < report["startup_s"] < report["pipeline"]["seconds"]
    assert set(report["stages"]) == {"decode", "spatial", "audio"}
    for stage in report["stages"].values():
        assert stage["standalone_core_s"] > 0 and stage["ratio"] > 0
    lengths = report["peak_rss_mb"]["per_video_length"]
    assert [row["video_s"] for row in lengths] == [2, 4]
    assert [row["n_frames"] for row in lengths] == [30, 60]  # 15 fps, all of it used
    assert all(row["peak_rss_mb"] > 50 for row in lengths)
    assert report["peak_rss_mb"]["pipeline_tree_pss"] > lengths[0]["peak_rss_mb"]
    assert "speedup vs sequential" in capsys.readouterr().out

"""jobs/benchmark.py on a few tiny videos: every figure of reports/benchmark.json, measured in one run."""

import json
import math

from tests.helpers import run_job_main, write_test_video


def run_benchmark(*args: str) -> int:
    return run_job_main("benchmark", *args)


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

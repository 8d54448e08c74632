"""The windows section of the benchmark (multistream.bench.windows) on two short videos at small model sizes."""

import math

import pytest

from multistream.bench.windows import format_lines, windows_cost
from multistream.ray.worker_env import worker_env

SMALL = ["flow.size=[64, 48]", "spatial.image_size=32", "sampling.max_seq_len=8", "sampling.segments=4"]
SPEC = "{length_s: 4, stride_s: 2, shot_cut: null}"  # one shot: the windows follow the clock alone


def windows_for(n_frames: int, fps: float, length: float, stride: float) -> int:
    """Window w exists once a frame lies at or past the end of window w-1."""
    last = (n_frames - 1) / fps
    return 1 + max(0, math.floor((last - length) / stride) + 1) if last >= length else 1


@pytest.fixture(scope="module")
def rows():
    return windows_cost(None, SMALL, worker_env(1), lengths=(4, 12), windows=SPEC)


def test_each_length_is_one_video_with_audio_in_as_many_windows_as_the_rule_gives(rows):
    assert [row["video_s"] for row in rows] == pytest.approx([4, 12], abs=0.1)
    assert [row["n_frames"] for row in rows] == [60, 180]  # 15 fps
    assert all(row["has_audio"] for row in rows)
    # 4 s: its last frame (3.93 s) lies in [0, 4): one window; 12 s: [0,4) [2,6) [4,8) [6,10) [8,12)
    assert [row["windows"] for row in rows] == [windows_for(row["n_frames"], 15, 4, 2) for row in rows] == [1, 5]


def test_rates_and_peaks_are_reported_against_the_shortest_video(rows):
    for row in rows:
        assert row["seconds"] > 0 and row["load_s"] > 0 and 0 < row["row_mb"] < row["peak_rss_mb"]
        assert row["video_s_per_s"] == pytest.approx(row["video_s"] / row["seconds"])
        assert row["peak_rss_mb"] > 50  # a process holding torch and two models
        assert row["ratio"] == pytest.approx(row["peak_rss_mb"] / rows[0]["peak_rss_mb"])
    assert rows[0]["ratio"] == 1.0
    lines = format_lines({"spec": SPEC, "per_length": rows})
    assert SPEC in lines[0] and len(lines) == 4 and lines[-1].split()[:2] == ["12.0", "5"]


def test_the_measure_refuses_a_config_without_windows():
    from multistream.bench.fresh import in_fresh_process

    with pytest.raises(RuntimeError, match="needs video.windows"):
        in_fresh_process("multistream.bench.baselines:windows_peak_rss", None, SMALL,
                         {"entries": [{"video_id": "v", "uri": "none.mp4", "label": None, "split": None}]})


def test_the_benchmark_job_runs_the_windows_section_alone_with_the_configs_windows(tmp_path, capsys):
    import json

    from tests.support.helpers import run_job_main

    out = tmp_path / "out"
    assert run_job_main("benchmark", "--windows", "--no-extraction", "--no-training", "--no-kernels",
                        "--window-lengths", "3", "--output", str(out),
                        "--set", "video.windows={length_s: 2, stride_s: 1, shot_cut: null}") == 0
    report = json.loads((out / "reports" / "benchmark.json").read_text())
    spec = json.loads(report["windows"]["spec"])
    assert (spec["length_s"], spec["stride_s"], spec["shot_cut"]) == (2, 1, None)
    (row,) = report["windows"]["per_length"]
    assert row["n_frames"] == 45 and row["windows"] == 2 and row["ratio"] == 1.0  # [0,2) [1,3)
    assert "training" not in report and "sequential" not in report
    assert '"length_s": 2.0, "stride_s": 1.0' in capsys.readouterr().out

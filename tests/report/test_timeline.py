import io

import numpy as np
import pytest
from matplotlib.patches import Rectangle

from multistream.fuse.anomaly import AnomalyDetector
from multistream.report.timeline import (
    clock,
    flagged_intervals,
    timeline_figure,
    timeline_text,
    top_videos,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def windows(scores, length=30.0, stride=20.0, duration=None):
    """Window rows as `anomaly/` holds them: window w over [w*stride, w*stride+length), the last cut at the end."""
    rows = []
    for w, score in enumerate(scores):
        end = w * stride + length if duration is None else min(w * stride + length, duration)
        rows.append({"video_id": "v", "window": w, "start_s": w * stride, "end_s": end, "score": score})
    return rows


def test_intervals_merge_overlapping_and_touching_and_sort():
    rows = [
        {"start_s": 100.0, "end_s": 110.0, "score": 5.0},
        {"start_s": 0.0, "end_s": 10.0, "score": 5.0},
        {"start_s": 10.0, "end_s": 20.0, "score": 5.0},  # touches the one before
        {"start_s": 15.0, "end_s": 40.0, "score": 5.0},  # overlaps
        {"start_s": 50.0, "end_s": 60.0, "score": 0.1},  # below: a gap between 40 and 100
        {"start_s": 30.0, "end_s": 35.0, "score": 5.0},  # inside the merged span
    ]
    assert flagged_intervals(rows, 1.0) == [(0.0, 40.0), (100.0, 110.0)]
    assert flagged_intervals(rows, 10.0) == []
    assert flagged_intervals([], 1.0) == []


def test_threshold_edge_matches_the_detector():
    rows = windows([0.5, 1.0, 1.0000001])
    detector = AnomalyDetector([], threshold=1.0, history=[])
    expected = detector.is_anomaly(np.array([r["score"] for r in rows]))
    assert expected.tolist() == [False, False, True]
    assert flagged_intervals(rows, 1.0) == [(40.0, 70.0)]


def test_clock_switches_to_hours():
    assert clock(0) == "00:00"
    assert clock(75.4) == "01:15"
    assert clock(3599.0) == "59:59"
    assert clock(3725.0) == "1:02:05"


def test_text_names_flagged_intervals_and_peak():
    rows = windows([0.01, 0.02, 0.5, 0.3, 0.01])
    labels = ["walk", "walk", "fall", "fall", "sit"]
    text = timeline_text("cam/7", rows, 0.1, labels=labels)
    lines = text.splitlines()
    assert lines[0].startswith("cam/7")
    window_lines = lines[1:6]
    assert [("ANOMALY" in line) for line in window_lines] == [False, False, True, True, False]
    assert window_lines[2].startswith("  00:40–01:10") and window_lines[2].endswith("fall")
    # the peak's bar is full width, the others proportional to it
    assert window_lines[2].count("█") == 30 and window_lines[3].count("█") == 18
    assert "flagged: 00:40–01:30" in lines[6]  # windows 2 and 3 overlap: one interval
    assert "peak: window 2 (00:40–01:10)" in lines[7]


def test_text_without_flags_and_past_an_hour():
    rows = windows([0.2, 0.4], length=60.0, stride=3600.0)
    text = timeline_text("long", rows, 1.0)
    assert "no window flagged" in text and "ANOMALY" not in text
    assert "1:00:00–1:01:00" in text
    assert "peak: window 1 (1:00:00–1:01:00)" in text
    with pytest.raises(ValueError, match="labels"):
        timeline_text("long", rows, 1.0, labels=["a"])


def test_figure_renders_one_axes_per_video_with_shaded_flags():
    videos = [
        ("a$b^c", windows([0.01, 0.02, 5.0, 3.0, 0.01])),  # a name mathtext would choke on; spans > 30x: log
        ("quiet", windows([0.2, 0.3, 0.25])),
        ("long", windows([0.2, 2.0, 0.3, 2.5], length=300.0, stride=240.0, duration=800.0)),
    ]
    fig = timeline_figure(videos, threshold=1.0)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=60)
    assert buffer.getvalue().startswith(PNG_MAGIC)
    axes = fig.axes
    assert len(axes) == 3
    spans = [[p for p in ax.patches if isinstance(p, Rectangle)] for ax in axes]
    assert [len(s) for s in spans] == [1, 0, 2]
    assert axes[0].get_title(loc="left") == "a$b^c"
    assert axes[0].get_yscale() == "log" and axes[1].get_yscale() == "linear"
    assert axes[2].get_xlabel() == "time (min)" and axes[0].get_xlabel() == "time (s)"
    # the shaded span of the first video covers windows 2 and 3 merged: 40 s to 90 s
    x0, x1 = spans[0][0].get_x(), spans[0][0].get_x() + spans[0][0].get_width()
    assert (x0, x1) == pytest.approx((40.0, 90.0))
    peak = [line for line in axes[0].lines if line.get_marker() == "*"]
    assert len(peak) == 1 and peak[0].get_ydata()[0] == 5.0
    with pytest.raises(ValueError):
        timeline_figure([], 1.0)


def test_top_videos_orders_by_video_score_with_window_fallback():
    def rows(video_id, video_score, window_scores):
        out = [dict(r, video_id=video_id) for r in windows(window_scores)]
        out.reverse()  # window rows arrive in any order
        if video_score is not None:
            out.insert(1, {"video_id": video_id, "window": None, "start_s": 0.0, "end_s": 90.0,
                           "score": video_score, "peak_window": 0})
        return out

    every = (rows("low", 0.1, [0.9, 0.1])  # its video row wins over a high window
             + rows("mid", 0.5, [0.5, 0.2])
             + rows("no_video_row", None, [0.3, 0.7, 0.1])  # falls back to 0.7
             + rows("high", 2.0, [1.0, 2.0]))
    top = top_videos(every, n=3)
    assert [video_id for video_id, _ in top] == ["high", "no_video_row", "mid"]
    assert [w["window"] for w in top[1][1]] == [0, 1, 2]
    assert [w["score"] for w in top[1][1]] == [0.3, 0.7, 0.1]
    assert all(w["window"] is not None for _, ws in top for w in ws)
    assert [video_id for video_id, _ in top_videos(every)] == ["high", "no_video_row", "mid", "low"]

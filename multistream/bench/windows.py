"""Cost of `video.windows` in a video's duration: time and peak memory of one whole video through the per-video
runner (`VideoProcessor`: one streaming decode, each window sampled and embedded as it closes), on videos of
growing length, each in a fresh process (`baselines.windows_peak_rss`).

The videos are demo clips (generated, or `clips`) laid end to end with their audio (`demo.longvideo`), repeated
to each length, at 160x120 and 15 fps. Linear cost: the same seconds of video per second at every length; flat
memory: only the open windows' frames, flow and audio are held, so peak RSS does not grow with the length.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

DEFAULT_WINDOWS = "{length_s: 36, stride_s: 18}"
SIZE, FPS = (160, 120), 15


@dataclass
class WindowsProbe:
    video_s: float  # the video's duration (its `videos/` row)
    windows: int  # W: rows of the merged row's "windows"
    n_frames: int
    has_audio: bool
    load_s: float  # the models loaded, before the video
    seconds: float  # the video through the runner, models loaded
    video_s_per_s: float  # video_s / seconds
    row_mb: float  # the arrays of the merged row returned (every window's sequences and positions)
    peak_rss_mb: float  # of the whole process, models included
    ratio: float  # peak RSS ÷ the shortest video's


def demo_clips(folder: str | Path) -> list[tuple[str, str]]:
    """Two clips a demo class (seed 0, no anomalies) under `folder` → [(uri, label)]."""
    import csv

    from multistream.demo.dataset import generate_demo

    root = generate_demo(folder, seed=0, clips_per_class=2, n_anomalies=0)
    with open(root / "labels.csv") as fh:
        return [(str(root / row["uri"]), row["label"]) for row in csv.DictReader(fh)]


def windows_cost(config_path: str | None, overrides: list[str], env: dict[str, str], lengths=(10, 600),
                 windows: str = DEFAULT_WINDOWS, clips: list[tuple[str, str]] | None = None) -> list[dict]:
    """[WindowsProbe] of one video of each of `lengths` seconds (with audio) through `VideoProcessor` under the
    config (`config_path` + `overrides` + video.windows=`windows`), one fresh process each with environment
    `env`; ratios against the first length's peak. `clips`: (uri, label) pairs repeated to each length (default:
    `demo_clips`)."""
    from multistream.bench.fresh import in_fresh_process
    from multistream.demo.longvideo import make_long_video

    probes = []
    with tempfile.TemporaryDirectory() as folder:
        clips = clips or demo_clips(Path(folder) / "clips")
        for seconds in lengths:
            path = Path(folder) / f"long_{seconds}s.mp4"
            # every clip is at least 1/FPS long: this many repeats always reach the length
            repeats = math.ceil(seconds * FPS / len(clips)) + 1
            make_long_video(path, clips * repeats, size=SIZE, fps=FPS, max_seconds=seconds)
            entry = {"video_id": path.stem, "uri": str(path), "label": None, "split": None}
            got = in_fresh_process("multistream.bench.baselines:windows_peak_rss", config_path,
                                   [*overrides, f"video.windows={windows}"], {"entries": [entry]}, env)
            probes.append(WindowsProbe(**got, video_s_per_s=got["video_s"] / got["seconds"], ratio=0.0))
    for probe in probes:
        probe.ratio = probe.peak_rss_mb / probes[0].peak_rss_mb
    return [asdict(probe) for probe in probes]


def format_lines(report: dict) -> list[str]:
    """The printed summary of the "windows" key of a benchmark report (as read back from JSON): {"spec": the
    video.windows value, "per_length": `windows_cost`'s rows}."""
    rows = report["per_length"]
    lines = [f"windows {report['spec']}: one whole video through the per-video runner, a fresh process each",
             f"{'video s':>9}{'windows':>9}{'frames':>8}{'seconds':>9}{'video s/s':>11}{'row MB':>8}"
             f"{'peak RSS MB':>13}{'ratio':>7}"]
    for row in rows:
        lines.append(f"{row['video_s']:>9.1f}{row['windows']:>9}{row['n_frames']:>8}{row['seconds']:>9.1f}"
                     f"{row['video_s_per_s']:>11.1f}{row['row_mb']:>8.0f}"
                     f"{row['peak_rss_mb']:>13.0f}{row['ratio']:>7.2f}")
    return lines

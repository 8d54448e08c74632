"""Memory figures: peak PSS of a process tree (Ray's workers included), peak RSS, memory vs video length and
vs frame rate."""

from __future__ import annotations

import resource
import tempfile
import threading
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np


@dataclass
class LengthProbe:
    video_s: float
    n_frames: int  # frames decoded and used
    peak_rss_mb: float


@dataclass
class RateProbe:
    clip: str  # "25 fps", "240 fps", "bomb"
    source_fps: float  # measured from its timestamps (the `videos/` row's fps)
    n_frames: int  # frames kept: ~video.max_fps a second of a faster video
    peak_rss_mb: float
    ratio: float  # peak RSS ÷ the 25 fps clip's


class TreeMemory:
    """Peak proportional set size (PSS) of this process and all its descendants (Ray's included), sampled.

    Reading PSS walks every page table of the tree, which takes CPU from the pipeline it measures: hence a
    sample every `interval` seconds, 2 by default (its cost: docs/design.md#benchmark-method)."""

    def __init__(self, interval: float = 2.0):
        self.interval, self.peak_mb = interval, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        import psutil

        root = psutil.Process()
        while not self._stop.is_set():
            total = 0
            for process in [root, *root.children(recursive=True)]:
                try:
                    total += process.memory_full_info().pss
                except (psutil.Error, AttributeError):
                    pass
            self.peak_mb = max(self.peak_mb, total / 2**20)
            self._stop.wait(self.interval)


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, MB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_long_video(path: Path, seconds: float, fps: int = 15, size: tuple[int, int] = (160, 120)) -> Path:
    """A low-resolution test video of `seconds` (moving texture), written fast with libx264."""
    import av

    rng = np.random.default_rng(0)
    texture = rng.integers(0, 256, (size[1], size[0] * 2, 3), dtype=np.uint8)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps, options={"preset": "ultrafast"})
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        for t in range(int(seconds * fps)):
            shift = (3 * t) % size[0]
            image = np.ascontiguousarray(texture[:, shift:shift + size[0]])
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())
    return path


def write_bomb(path: Path, seconds: float, fps: int = 10_000, size: tuple[int, int] = (16, 16)) -> Path:
    """`seconds` of tiny H.264 frames `1/fps` apart (mp4, 1 µs time base; 100,000 fps: 10 µs apart): a few MB
    that a reader keeping every frame holds as tens of thousands of frames."""
    import av

    time_base, spacing, frames = Fraction(1, 1_000_000), max(1, round(1e6 / fps)), round(seconds * fps)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps, options={"preset": "ultrafast"})
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        stream.codec_context.time_base = time_base
        image = np.zeros((size[1], size[0], 3), np.uint8)
        for i in range(frames):
            image[:] = 7 * i % 256
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = i * spacing, time_base
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def memory_vs_length(config_path: str | None, overrides: list[str], env: dict[str, str],
                     lengths=(10, 60, 600)) -> list[dict]:
    """[LengthProbe] of decode+flow+sampling (one fresh process each, environment `env`) on videos of `lengths` s."""
    from multistream.bench.fresh import in_fresh_process

    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for seconds in lengths:
            path = write_long_video(Path(folder) / f"long_{seconds}s.mp4", seconds)
            entry = {"video_id": f"long_{seconds}s", "uri": str(path), "label": None, "split": None}
            probe = in_fresh_process("multistream.bench.baselines:decode_peak_rss", config_path, overrides,
                                     {"entries": [entry]}, env)
            rows.append(asdict(LengthProbe(seconds, probe["n_frames"], probe["peak_rss_mb"])))
    return rows


def memory_vs_rate(config_path: str | None, overrides: list[str], env: dict[str, str],
                   seconds: float = 6.0) -> list[dict]:
    """[RateProbe] of decode+flow+sampling (one fresh process each, environment `env`) on a 25 fps and a 240 fps
    clip (320x240) and a bomb of 16x16 frames 100 µs apart, each `seconds` long: flat in frame rate (video.max_fps)."""
    from multistream.bench.fresh import in_fresh_process

    writers = {"25 fps": lambda path: write_long_video(path, seconds, fps=25, size=(320, 240)),
               "240 fps": lambda path: write_long_video(path, seconds, fps=240, size=(320, 240)),
               "bomb": lambda path: write_bomb(path, seconds)}
    probes = []
    with tempfile.TemporaryDirectory() as folder:
        for clip, write in writers.items():
            path = write(Path(folder) / f"{clip.replace(' ', '_')}.mp4")
            entry = {"video_id": path.name, "uri": str(path), "label": None, "split": None}
            probe = in_fresh_process("multistream.bench.baselines:decode_peak_rss", config_path, overrides,
                                     {"entries": [entry]}, env)
            probes.append(RateProbe(clip, probe["fps"], probe["n_frames"], probe["peak_rss_mb"], 0.0))
    for probe in probes:
        probe.ratio = probe.peak_rss_mb / probes[0].peak_rss_mb
    return [asdict(probe) for probe in probes]

"""Memory figures: peak PSS of a process tree (Ray's workers included), peak RSS, memory vs video length."""

from __future__ import annotations

import resource
import tempfile
import threading
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np


@dataclass
class LengthProbe:
    video_s: float
    n_frames: int  # frames decoded and used
    peak_rss_mb: float


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
            rows.append(asdict(LengthProbe(seconds, **probe)))
    return rows

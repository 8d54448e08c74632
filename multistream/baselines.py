"""The benchmark's baselines, each run in a fresh interpreter (`in_fresh_process`), against which the pipeline is measured.

- sequential: the plain loop (decode+flow → spatial → audio per video, default threads) over the videos;
- standalone: each stage alone on one thread over the same videos → its core-seconds (the ceiling's input);
- decode_peak_rss: peak RSS of the per-video core on one video (`memory_vs_length` on growing lengths).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from multistream.config import Config
from multistream.extract import decode_video
from multistream.manifest import VideoEntry


def _models(cfg: Config):
    from multistream.audio import AudioEmbedder
    from multistream.flow import make_flow_estimator
    from multistream.spatial import SpatialEmbedder

    return (make_flow_estimator(cfg.flow), SpatialEmbedder(cfg.spatial),
            AudioEmbedder(cfg.audio, sample_rate=cfg.video.audio_rate))


def sequential(entries: list[VideoEntry], cfg: Config) -> dict:
    """The plain loop with default threads: wall seconds, videos/s, frames/s."""
    estimator, spatial, audio = _models(cfg)
    frames, started = 0, time.perf_counter()
    for entry in entries:
        try:
            decoded = decode_video(entry.uri, cfg, estimator)
        except Exception:  # noqa: BLE001 - the pipeline skips bad videos too
            continue
        spatial(decoded.frames)
        audio(decoded.wave)
        frames += decoded.facts["n_frames"]
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "videos_per_s": len(entries) / seconds, "frames_per_s": frames / seconds}


def standalone(entries: list[VideoEntry], cfg: Config) -> dict:
    """Each stage alone on one thread: {stage: {core_s, videos_per_s}} (core-seconds = process CPU time)."""
    import cv2
    import torch

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    estimator, spatial, audio = _models(cfg)
    decoded, start = [], time.process_time()
    for entry in entries:
        try:
            decoded.append(decode_video(entry.uri, cfg, estimator))
        except Exception:  # noqa: BLE001
            pass
    core = {"decode": time.process_time() - start}
    for name, run in (("spatial", lambda d: spatial(d.frames)), ("audio", lambda d: audio(d.wave))):
        start = time.process_time()
        for video in decoded:
            run(video)
        core[name] = time.process_time() - start
    return {name: {"core_s": s, "videos_per_s": len(entries) / s} for name, s in core.items()}


def decode_peak_rss(entries: list[VideoEntry], cfg: Config) -> dict:
    """Decode+flow+sampling of the one video in `entries`: frames used and the process's peak RSS."""
    from multistream.flow import make_flow_estimator

    decoded = decode_video(entries[0].uri, cfg, make_flow_estimator(cfg.flow))
    return {"n_frames": decoded.facts["n_frames"], "peak_rss_mb": peak_rss_mb()}


MEASURES = {measure.__name__: measure for measure in (sequential, standalone, decode_peak_rss)}


def in_fresh_process(measure: str, entries: list[VideoEntry], config_path: str | None, overrides: list[str],
                     env: dict[str, str] | None = None) -> dict:
    """Run MEASURES[measure] in a new interpreter (environment `env` added to this one's), return its dict.

    A fresh process per baseline: no model, allocator or thread state leaks from one measure to the next, and
    allocator settings (read by glibc only at process start) can be those of the pipeline's workers.
    """
    payload = json.dumps({"measure": measure, "config": config_path, "overrides": overrides,
                          "entries": [asdict(entry) for entry in entries]})
    result = subprocess.run([sys.executable, "-m", "multistream.baselines"], input=payload, capture_output=True,
                            text=True, env={**os.environ, **(env or {})})
    if result.returncode != 0:
        raise RuntimeError(f"benchmark measure {measure} failed:\n{result.stderr[-4000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def _measure_from_stdin() -> None:
    from multistream.config import load_config

    request = json.load(sys.stdin)
    cfg = load_config(request["config"], request["overrides"])
    entries = [VideoEntry(**entry) for entry in request["entries"]]
    print(json.dumps(MEASURES[request["measure"]](entries, cfg)))


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_long_video(path: Path, seconds: float, fps: int = 15, size: tuple[int, int] = (160, 120)) -> Path:
    """A low-resolution test video of `seconds` (moving texture + a tone), written fast with libx264."""
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
    """Peak RSS of decode+flow+sampling (one fresh process each, environment `env`) on videos of `lengths` s."""
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for seconds in lengths:
            path = write_long_video(Path(folder) / f"long_{seconds}s.mp4", seconds)
            entry = VideoEntry(f"long_{seconds}s", str(path), None, None)
            rows.append({"video_s": seconds,
                         **in_fresh_process("decode_peak_rss", [entry], config_path, overrides, env)})
    return rows


if __name__ == "__main__":
    _measure_from_stdin()

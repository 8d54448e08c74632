"""The extraction baselines, each run in a fresh interpreter (`fresh.in_fresh_process`).

- sequential: the plain loop: the library's per-video runner (`extract.VideoProcessor`: decode+flow →
  spatial → audio, default threads) over the videos;
- standalone: each stage alone on one thread over the same videos → its core-seconds (the ceiling's input);
- decode_peak_rss: peak RSS of the per-video core on one video (`memory.memory_vs_length` on growing lengths,
  `memory.memory_vs_rate` on growing frame rates);
- windows_peak_rss: one whole video through the per-video runner with `video.windows` set: its time and the
  process's peak RSS (`windows.windows_cost` on growing lengths).

Entries travel as dicts (`dataclasses.asdict(VideoEntry)`); results come back as dicts of the dataclasses here.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

from multistream.bench.memory import peak_rss_mb
from multistream.config import Config
from multistream.dataset.manifest import VideoEntry

STAGES = ("decode", "spatial", "audio")


@dataclass
class LoopResult:
    seconds: float
    videos_per_s: float
    frames_per_s: float


@dataclass
class StageCost:
    core_s: float  # process CPU seconds of the stage alone on one thread
    videos_per_s: float


def _entries(entries: list[dict]) -> list[VideoEntry]:
    return [VideoEntry(**entry) for entry in entries]


def sequential(cfg: Config, entries: list[dict]) -> dict:
    """The library's per-video runner (`VideoProcessor`, default threads) over the videos → LoopResult."""
    from multistream.extract.processor import VideoProcessor

    process, videos = VideoProcessor(cfg), _entries(entries)
    frames, started = 0, time.perf_counter()
    for entry in videos:
        video = process(entry)["video"]
        frames += video["n_frames"] if video["status"] == "ok" else 0  # the pipeline skips bad videos too
    seconds = time.perf_counter() - started
    return asdict(LoopResult(seconds, len(videos) / seconds, frames / seconds))


def standalone(cfg: Config, entries: list[dict]) -> dict:
    """Each of the runner's stages alone on one thread over every video → {stage: StageCost} (core-seconds =
    process CPU time): decode + flow + sampling first, then the spatial CNN, then VGGish on its rows."""
    import torch

    from multistream.extract.processor import Decoder, audio_step, spatial_step

    torch.set_num_threads(1)
    steps = {"decode": Decoder(cfg, threads=1), "spatial": spatial_step(cfg), "audio": audio_step(cfg)}
    videos = _entries(entries)
    rows, core = videos, {}
    for name, step in steps.items():
        start = time.process_time()
        rows = [step(row) for row in rows]
        core[name] = time.process_time() - start
    return {name: asdict(StageCost(s, len(videos) / s)) for name, s in core.items()}


def decode_peak_rss(cfg: Config, entries: list[dict]) -> dict:
    """Decode+flow+sampling of the one video in `entries`: {n_frames, fps, peak_rss_mb} of this process."""
    from multistream.extract.processor import Decoder

    video = Decoder(cfg)(_entries(entries)[0])["video"]
    if video["status"] != "ok":
        raise ValueError(f"{video['uri']}: {video['error']}")
    return {"n_frames": video["n_frames"], "fps": video["fps"], "peak_rss_mb": peak_rss_mb()}


def windows_peak_rss(cfg: Config, entries: list[dict]) -> dict:
    """The one video in `entries` through `VideoProcessor` with `video.windows` set (decode + flow, each window's
    sampling, spatial CNN and VGGish): {video_s, windows (W), n_frames, has_audio, load_s (the models), seconds
    (the video, models loaded), row_mb (the arrays of the merged row it returns), peak_rss_mb of this process}.
    Raises ValueError without windows or for a failed video."""
    if cfg.video.windows is None:
        raise ValueError("windows_peak_rss needs video.windows set")
    from multistream.extract.processor import VideoProcessor

    started = time.perf_counter()
    process = VideoProcessor(cfg)
    loaded = time.perf_counter()
    row = process(_entries(entries)[0])
    seconds = time.perf_counter() - loaded
    video = row["video"]
    if video["status"] != "ok":
        raise ValueError(f"{video['uri']}: {video['error']}")
    return {"video_s": video["duration_s"], "windows": len(row["windows"]), "n_frames": video["n_frames"],
            "has_audio": video["has_audio"], "load_s": loaded - started, "seconds": seconds,
            "row_mb": sum(v.nbytes for v in row.values() if hasattr(v, "nbytes")) / 2**20,
            "peak_rss_mb": peak_rss_mb()}

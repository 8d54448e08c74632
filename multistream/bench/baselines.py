"""The extraction baselines, each run in a fresh interpreter (`fresh.in_fresh_process`).

- sequential: the plain loop (decode+flow → spatial → audio per video, default threads) over the videos;
- standalone: each stage alone on one thread over the same videos → its core-seconds (the ceiling's input);
- decode_peak_rss: peak RSS of the per-video core on one video (`memory.memory_vs_length` on growing lengths).

Entries travel as dicts (`dataclasses.asdict(VideoEntry)`); results come back as dicts of the dataclasses here.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

from multistream.bench.memory import peak_rss_mb
from multistream.config import Config
from multistream.extract import decode_video
from multistream.manifest import VideoEntry

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


def _models(cfg: Config):
    from multistream.audio import AudioEmbedder
    from multistream.flow import make_flow_estimator
    from multistream.spatial import SpatialEmbedder

    return (make_flow_estimator(cfg.flow), SpatialEmbedder(cfg.spatial),
            AudioEmbedder(cfg.audio, sample_rate=cfg.video.audio_rate))


def _entries(entries: list[dict]) -> list[VideoEntry]:
    return [VideoEntry(**entry) for entry in entries]


def sequential(cfg: Config, entries: list[dict]) -> dict:
    """The plain loop with default threads → LoopResult (wall seconds, videos/s, frames/s)."""
    estimator, spatial, audio = _models(cfg)
    videos = _entries(entries)
    frames, started = 0, time.perf_counter()
    for entry in videos:
        try:
            decoded = decode_video(entry.uri, cfg, estimator)
        except Exception:  # noqa: BLE001 - the pipeline skips bad videos too
            continue
        spatial(decoded.frames)
        audio(decoded.wave)
        frames += decoded.facts["n_frames"]
    seconds = time.perf_counter() - started
    return asdict(LoopResult(seconds, len(videos) / seconds, frames / seconds))


def standalone(cfg: Config, entries: list[dict]) -> dict:
    """Each stage alone on one thread → {stage: StageCost} (core-seconds = process CPU time)."""
    import cv2
    import torch

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    estimator, spatial, audio = _models(cfg)
    videos = _entries(entries)
    decoded, start = [], time.process_time()
    for entry in videos:
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
    return {name: asdict(StageCost(s, len(videos) / s)) for name, s in core.items()}


def decode_peak_rss(cfg: Config, entries: list[dict]) -> dict:
    """Decode+flow+sampling of the one video in `entries`: {n_frames, peak_rss_mb} of this process."""
    from multistream.flow import make_flow_estimator

    decoded = decode_video(_entries(entries)[0].uri, cfg, make_flow_estimator(cfg.flow))
    return {"n_frames": decoded.facts["n_frames"], "peak_rss_mb": peak_rss_mb()}

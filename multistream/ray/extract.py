"""The extraction job on Ray Data: manifest → decode+flow (CPU actors) → spatial CNN → VGGish → commit.

Each stage is a callable class for `map_batches` around a per-video core of `multistream.extract.processor`, with its
own resources from `cfg.ray`, so that decode and the model stages run in separate actors and overlap; with
`ray.fused`, one pool's actors take each video through decode → spatial → audio (`VideoProcessor`). Batches
cross stages as columns (`extract_rows.to_columns`). The write stage commits `ray.write.batch_size` videos
at a time (`multistream.store.commit`: the protocol, resume and the summary).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import replace

import numpy as np
import ray

from multistream.config import Config
from multistream.dataset.manifest import VideoEntry, build_manifest
from multistream.device import actor_device
from multistream.extract.processor import (
    Decoder,
    VideoProcessor,
    audio_step,
    check_gpu_placement,
    spatial_step,
)
from multistream.extract.rows import blocks, entries_from_columns, entries_table, from_columns, to_columns
from multistream.ray.session import init_ray, map_stage, worker_setup
from multistream.store.commit import (
    ErrorKinds,
    ExtractSummary,
    Progress,
    commit,
    drop_stray_commits,
    resume_state,
)
from multistream.store.layout import RunRoot

log = logging.getLogger(__name__)

# Small output blocks: a decode actor's videos reach the model stages one by one, not a whole input block later.
TARGET_BLOCK_BYTES = 8 * 2**20


class DecodeStage:
    """Manifest columns → decoded rows (frames, wave, flow, sampled positions)."""

    def __init__(self, cfg: Config):
        self.decode = Decoder(cfg, threads=cfg.ray.torch_threads, device=actor_device(cfg.flow.device))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return to_columns([self.decode(entry) for entry in entries_from_columns(batch)])


class SpatialStage:
    """frames (K, S, S, 3) uint8 → spatial (K, D) float16, on the ok rows."""

    def __init__(self, cfg: Config):
        worker_setup(cfg.ray.torch_threads)
        self.step = spatial_step(cfg, actor_device(cfg.spatial.device))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return to_columns([self.step(row) for row in from_columns(batch)])


class AudioStage(SpatialStage):
    """wave (N,) float32 → audio (E, 128) float16, on the ok rows."""

    def __init__(self, cfg: Config):
        worker_setup(cfg.ray.torch_threads)
        self.step = audio_step(cfg, actor_device(cfg.audio.device))


class FusedStage:
    """Manifest columns → finished rows: every model stage in one actor, video after video (`ray.fused`)."""

    def __init__(self, cfg: Config):
        worker_setup(cfg.ray.torch_threads)
        devices = {name: actor_device(getattr(cfg, name).device) for name in ("flow", "spatial", "audio")}
        self.process = VideoProcessor(cfg, threads=cfg.ray.torch_threads, devices=devices)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return to_columns([self.process(entry) for entry in entries_from_columns(batch)])


class WriteStage:
    """Finished rows → committed parts; one output row per video: its `videos/` row as JSON and its part."""

    def __init__(self, cfg: Config):
        self.run, self.clip_px = RunRoot(cfg.paths.output), cfg.flow.clip_px
        self.max_bytes = cfg.commit.max_mb * 2**20

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        committed = commit(from_columns(batch), self.run, self.clip_px, self.max_bytes)
        pairs = [(name, video) for name, videos in committed for video in videos]
        return {"part": np.array([name for name, _ in pairs], dtype=object),
                "video": np.array([json.dumps(video) for _, video in pairs], dtype=object)}


def plan(cfg: Config, todo: list[VideoEntry]) -> ray.data.Dataset:
    """The dataset of the stages over the videos still to do (commits happen as it is consumed)."""
    if cfg.ray.fused is not None:
        ds = ray.data.from_arrow(blocks(entries_table(todo), cfg.ray.fused.max_actors))
        ds = map_stage(ds, FusedStage, cfg.ray.fused, cfg=cfg)
        # the commit's I/O runs beside the fused actors, which hold the CPUs
        return map_stage(ds, WriteStage, replace(cfg.ray.write, num_cpus=0), cfg=cfg)
    widest = max(cfg.ray.decode.max_actors, cfg.ray.spatial.max_actors, cfg.ray.audio.max_actors)
    ds = ray.data.from_arrow(blocks(entries_table(todo), widest))
    for stage, resources in ((DecodeStage, cfg.ray.decode), (SpatialStage, cfg.ray.spatial),
                             (AudioStage, cfg.ray.audio), (WriteStage, cfg.ray.write)):
        ds = map_stage(ds, stage, resources, cfg=cfg)
    return ds


def run_extract(cfg: Config, entries: list[VideoEntry] | None = None,
                on_video: Callable[[dict], None] | None = None) -> ExtractSummary:
    """Extract every video of the manifest not yet committed under `cfg.paths.output`.

    `on_video` is called with each video's `videos/` row as it is committed."""
    started = time.perf_counter()
    for warning in check_gpu_placement(cfg):
        log.warning("%s", warning)
    if entries is None:
        entries = build_manifest(cfg.paths.input, cfg.paths.labels, cfg.paths.split, cfg.validation, cfg.dataset)
    run = RunRoot(cfg.paths.output)
    state = resume_state(run)
    todo = [entry for entry in entries if entry.video_id not in state.done]
    log.info("%d videos: %d already extracted, %d to do", len(entries), len(entries) - len(todo), len(todo))
    summary = ExtractSummary(len(entries), len(entries) - len(todo), errors=ErrorKinds(cfg.commit.error_examples))
    if todo:
        from multistream.weights import resolve_all

        cfg = resolve_all(cfg)  # every weights source fetched and checked (pinned) before any video
        init_ray(cfg)
        context = ray.data.DataContext.get_current()
        kept = context.enable_progress_bars, context.target_max_block_size
        context.enable_progress_bars = False  # the progress line below instead of a bar per stage
        context.target_max_block_size = TARGET_BLOCK_BYTES
        progress, written = Progress(summary, cfg.commit.progress_s), set()
        try:
            for row in plan(cfg, todo).iter_rows():
                written.add(row["part"])
                summary.parts = len(written)
                video = json.loads(row["video"])
                progress.update(video)
                if on_video is not None:
                    on_video(video)
        finally:
            context.enable_progress_bars, context.target_max_block_size = kept
        drop_stray_commits(run, state.parts | written)
        log.info("%s", progress.line())
    summary.seconds = time.perf_counter() - started
    return summary

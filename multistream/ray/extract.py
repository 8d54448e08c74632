"""The extraction job on Ray Data: manifest → decode+flow (CPU actors) → spatial CNN → VGGish → commit.

Each stage is a callable class for `map_batches` around a per-video core of `multistream.extract.processor`, with its
own resources from `cfg.ray`, so that decode and the model stages run in separate actors and overlap; with
`ray.fused`, one pool's actors take each video through decode → spatial → audio (`VideoProcessor`; on a GPU the
frames stay there from RAFT to the spatial CNN). Before any work the pools are fitted to the cluster
(`multistream.ray.pools`: refused in one message, or `max_actors: auto` resolved). Batches
cross stages as columns (`extract_rows.to_columns`). The finished blocks are committed by time and size
(`multistream.ray.commit`; the protocol and resume: `multistream.store.commit`). `jobs/predict.py` adds one
stage before the commit (`Finish`: its RNN heads), so that its commits hold embeddings instead of features.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import ray

from multistream.config import Config
from multistream.dataset.manifest import VideoEntry, build_manifest
from multistream.device import actor_device
from multistream.extract.flow.registry import flow_backend
from multistream.extract.processor import (
    Decoder,
    VideoProcessor,
    audio_step,
    check_gpu_placement,
    spatial_step,
)
from multistream.extract.rows import blocks, entries_from_columns, entries_table, from_columns, to_columns
from multistream.extract.summary import ErrorKinds, ExtractSummary, Progress
from multistream.ray.commit import commit_stream
from multistream.ray.pools import beside, fit_pools
from multistream.ray.session import init_ray, job_cluster, map_stage, worker_setup
from multistream.store.commit import (
    committed_parts,
    drop_stray_commits,
    drop_uncommitted,
    resume_state,
    twins,
)
from multistream.store.layout import RunRoot

log = logging.getLogger(__name__)

# A step's factory, called in each decoding actor: `run_extract`'s `after_decode`.
AfterDecode = Callable[[], Callable[[dict], dict]]



@dataclass(frozen=True)
class Finish:
    """A stage the finished rows pass before their commit, in the pool `ray.<pool>` (fitted with the extraction's,
    asking for no CPU beside them: `multistream.ray.pools.beside`):
    a callable class for `map_batches`, built with (cfg, **kwargs), whose batches are rows as columns
    (`to_columns`) and whose rows carry "embedding_<stream>" arrays: their commits write `embeddings/` parts,
    twins of `videos/` (`multistream.store.commit.twins`). predict's RNN heads."""

    stage: type
    pool: str
    kwargs: dict = field(default_factory=dict)


# Small output blocks: a decode actor's videos reach the model stages one by one, not a whole input block later.
TARGET_BLOCK_BYTES = 8 * 2**20


class DecodeStage:
    """Manifest columns → decoded rows (frames, wave, flow, sampled positions), each through `run_extract`'s
    `after_decode` where it gives one."""

    def __init__(self, cfg: Config, after_decode: AfterDecode | None = None):
        self.decode = Decoder(cfg, threads=cfg.ray.torch_threads, device=actor_device(cfg.flow.device))
        self.after = after_decode() if after_decode is not None else None

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = [self.decode(entry) for entry in entries_from_columns(batch)]
        return to_columns([self.after(row) for row in rows] if self.after is not None else rows)


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
    """Manifest columns → finished rows: every model stage in one actor (`ray.fused`). Given a GPU, with a GPU
    flow backend (RAFT) and the spatial CNN on it, the frames stay on the GPU from RAFT to the CNN, which
    embeds the batch's videos together (`VideoProcessor(resident=True)`); else video after video, as on CPUs."""

    def __init__(self, cfg: Config, after_decode: AfterDecode | None = None):
        worker_setup(cfg.ray.torch_threads)
        devices = {name: actor_device(getattr(cfg, name).device) for name in ("flow", "spatial", "audio")}
        self.process = VideoProcessor(cfg, threads=cfg.ray.torch_threads, devices=devices,
                                      resident=resident_on_gpu(cfg, devices),
                                      after_decode=after_decode() if after_decode is not None else None)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return to_columns(self.process.batch(entries_from_columns(batch)))


def resident_on_gpu(cfg: Config, devices: dict[str, str]) -> bool:
    """Whether a fused actor keeps the frames on its GPU: RAFT and the spatial CNN both run on CUDA there
    (`devices` as `actor_device` gives them: "auto" is already "cuda" or "cpu" in an actor)."""
    on_gpu = [str(devices[name]).startswith("cuda") for name in ("flow", "spatial")]
    return flow_backend(cfg.flow.backend).gpu and all(on_gpu)


MAX_PASSES = 3  # a video whose commit was lost with a node is extracted again, at most this many times in all


def plan(cfg: Config, todo: list[VideoEntry], after_decode: AfterDecode | None = None,
         finish: Finish | None = None) -> ray.data.Dataset:
    """The dataset of the stages over the videos still to do: rows of finished videos (`commit_stream` commits
    them as it consumes it), through `finish` last where there is one."""
    if cfg.ray.fused is not None:
        ds = ray.data.from_arrow(blocks(entries_table(todo), cfg.ray.fused.max_actors))
        ds = map_stage(ds, FusedStage, cfg.ray.fused, cfg=cfg, after_decode=after_decode)
    else:
        widest = max(cfg.ray.decode.max_actors, cfg.ray.spatial.max_actors, cfg.ray.audio.max_actors)
        ds = ray.data.from_arrow(blocks(entries_table(todo), widest))
        ds = map_stage(ds, DecodeStage, cfg.ray.decode, cfg=cfg, after_decode=after_decode)
        for stage, resources in ((SpatialStage, cfg.ray.spatial), (AudioStage, cfg.ray.audio)):
            ds = map_stage(ds, stage, resources, cfg=cfg)
    if finish is not None:
        ds = map_stage(ds, finish.stage, beside(getattr(cfg.ray, finish.pool)), cfg=cfg, **finish.kwargs)
    return ds


def run_extract(cfg: Config, entries: list[VideoEntry] | None = None,
                on_video: Callable[[dict], None] | None = None, retry_errors: bool = False,
                after_decode: AfterDecode | None = None, finish: Finish | None = None) -> ExtractSummary:
    """Extract every video of the manifest not yet committed under `cfg.paths.output`; error rows whose error
    was transient are extracted again, every error row with `retry_errors`.

    `on_video` is called with each video's `videos/` row as it is committed. `after_decode` (picklable) is
    called once in each actor that decodes (a decode or fused actor) and gives a row → row step run on each
    decoded row there, while its flow is in memory: predict's motion CNN (`multistream.ray.predict`); `finish`
    is a last stage before the commit (predict's RNN heads)."""
    started = time.perf_counter()
    for warning in check_gpu_placement(cfg):
        log.warning("%s", warning)
    skipped = Counter()
    if entries is None:
        entries = build_manifest(cfg.paths.input, cfg.paths.labels, cfg.paths.split, cfg.validation, cfg.dataset,
                                 skipped=skipped, allow_outside_input=cfg.paths.allow_outside_input)
    if skipped:
        log.warning("skipped %d file(s) of the input whose extension is not in dataset.extensions: %s",
                    sum(skipped.values()), dict(skipped.most_common(10)))
    run = RunRoot(cfg.paths.output)
    embeds = finish is not None
    state = resume_state(run, retry_errors, embeds)
    todo = [entry for entry in entries if entry.video_id not in state.done]
    log.info("%d videos: %d already extracted, %d to do", len(entries), len(entries) - len(todo), len(todo))
    summary = ExtractSummary(len(entries), len(entries) - len(todo), errors=ErrorKinds(cfg.commit.error_examples),
                             skipped_files=skipped, retried=state.retried)
    if todo:
        from multistream.weights import resolve_all

        cfg = resolve_all(cfg)  # every weights source fetched and checked (pinned) before any video
        init_ray(cfg)
        # every pool's actors fit the cluster at once (refused in one message otherwise); auto maxima resolved
        cfg, pools_line = fit_pools(cfg, job_cluster(cfg), also=(f"ray.{finish.pool}",) if embeds else ())
        log.info("%s", pools_line)
        context = ray.data.DataContext.get_current()
        kept = context.enable_progress_bars, context.target_max_block_size
        context.enable_progress_bars = False  # the progress line below instead of a bar per stage
        context.target_max_block_size = TARGET_BLOCK_BYTES
        progress, written, committed = Progress(summary, cfg.commit.progress_s), set(), set()

        def committed_video(part: str, video: dict) -> None:
            written.add(part)
            summary.parts = len(written)
            committed.add(video["video_id"])
            progress.update(video)
            if on_video is not None:
                on_video(video)

        try:
            for attempt in range(1, MAX_PASSES + 1):
                result = commit_stream(plan(cfg, todo, after_decode, finish), cfg, committed_video)
                todo = [entry for entry in todo if entry.video_id not in committed]
                if not todo:
                    break
                log.warning("%d video(s) not committed (%d commit(s) lost with a node): extracting them again "
                            "(pass %d of %d)", len(todo), result.failed, attempt + 1, MAX_PASSES)
        finally:
            context.enable_progress_bars, context.target_max_block_size = kept
        if todo:
            raise RuntimeError(f"{len(todo)} video(s) could not be committed in {MAX_PASSES} passes, e.g. "
                               f"{todo[0].video_id}: run the job again to resume")
        drop_stray_commits(run, state.parts | written, embeds)
        drop_uncommitted(committed_parts(run.videos), twins(run, embeds))  # staged leftovers of lost commits
        log.info("%s", progress.line())
    summary.seconds = time.perf_counter() - started
    return summary

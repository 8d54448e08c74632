"""`jobs/predict.py` on Ray: the extraction with the bundle's settings, the motion CNN and the RNN heads inside it,
then fusion SVM + autoencoder as a Ray Data stage over the committed `embeddings/` parts.

The motion CNN runs in the actors that compute flow (`ray.decode`, or `ray.fused`), on each video's flow in
memory (`TemporalStep`); the RNN heads in a last stage of the extraction's dataset on `ray.embed` (GPUs where it
has them), on each video's sequences (`HeadsStep`), so the extraction commits `embeddings/` and no `features/`
nor `flow/` unless `keep_flow`. Scoring each committed part without results runs on `ray.write`. Every model is
loaded once per actor (from a local path or s3://, checked against the bundle). Nothing is re-fit.
"""

from __future__ import annotations

import functools
import logging
import time

import numpy as np
import pyarrow as pa
import ray

from multistream.config import Config
from multistream.device import actor_device
from multistream.extract.rows import from_columns, to_columns
from multistream.predict.batch import (
    HeadsStep,
    PredictSummary,
    TemporalStep,
    check_predict_devices,
    check_run_root,
    score_part,
    unscored,
)
from multistream.predict.bundle import Bundle
from multistream.predict.models import Classifier, Detector, TemporalEmbedder, VideoEmbedder
from multistream.ray.extract import Finish, run_extract
from multistream.ray.session import init_ray, map_stage, worker_setup
from multistream.store import storage
from multistream.store.layout import RunRoot

log = logging.getLogger(__name__)


def temporal_step(cfg: Config, bundle: Bundle, keep_flow: bool) -> TemporalStep:
    """`run_extract`'s `after_decode`: called once in each decode (or fused) actor, which loads the motion CNN."""
    worker_setup(cfg.ray.torch_threads)
    embed = TemporalEmbedder(bundle, actor_device(cfg.motion_cnn.device), cfg.motion_cnn.embed_batch_size)
    return TemporalStep(embed, keep_flow)


class HeadsStage:
    """Finished extraction rows (as columns) → rows for the commit: each ok row's sequences → its stream
    embeddings (`HeadsStep`, each stream's RNN head); `run_extract`'s `finish`."""

    def __init__(self, cfg: Config, bundle: Bundle, keep_flow: bool):
        worker_setup(cfg.ray.torch_threads)
        self.step = HeadsStep(VideoEmbedder(bundle, actor_device(cfg.rnn.device), cfg.rnn.batch_size), keep_flow)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return to_columns(self.step(from_columns(batch)))


class ScoreStage:
    """Names of committed `embeddings/` parts without results → their `predictions/` and `anomaly/` parts."""

    def __init__(self, cfg: Config, bundle: Bundle, generation: int | None):
        worker_setup(cfg.ray.torch_threads)
        storage.set_writer_generation(generation)  # the driver's lease generation, stamped into the parts
        self.run, self.streams, self.rules = RunRoot(cfg.paths.output), bundle.streams, cfg.video.windows
        self.classifier = Classifier(bundle)
        self.detector = Detector(bundle, actor_device(cfg.anomaly.device))

    def __call__(self, items: pa.Table) -> pa.Table:
        parts = items["part"].to_pylist()
        ids = [score_part(self.run, name, self.streams, self.classifier, self.detector, self.rules) for name in parts]
        return pa.table({"video_id": [v for group in ids for v in group],
                         "part": [name for name, group in zip(parts, ids, strict=True) for _ in group]})


def run_predict(cfg: Config, bundle: Bundle, embed_only: bool = False, retry_errors: bool = False,
                keep_flow: bool = False) -> PredictSummary:
    """Extract and embed the videos under `paths.input` into `paths.output` (cfg carries the bundle's settings;
    every error row again with `retry_errors`), the motion CNN on each video's flow in memory and the RNN heads
    before the commit (`flow/` and `features/` written only with `keep_flow`); then, unless `embed_only`,
    classify and screen every embedded video that has no results yet."""
    started = time.perf_counter()
    check_predict_devices(cfg)
    run = RunRoot(cfg.paths.output)
    check_run_root(run)
    embedded: list[str] = []
    extract = run_extract(cfg, retry_errors=retry_errors,
                          on_video=lambda video: embedded.append(video["video_id"]) if video["status"] == "ok" else None,
                          after_decode=functools.partial(temporal_step, cfg, bundle, keep_flow),
                          finish=Finish(HeadsStage, "embed", {"bundle": bundle, "keep_flow": keep_flow}))
    if embed_only:
        log.info("predict: %d videos embedded", len(embedded))
        return PredictSummary(extract, len(embedded), len(embedded), time.perf_counter() - started)
    scored = unscored(run)
    todo = sum(map(len, scored.values()))
    log.info("predict: %d videos to classify and screen (%d embedded by this run)", todo, len(embedded))
    committed: set[str] = set()
    if scored:
        init_ray(cfg)
        ray.data.DataContext.get_current().enable_progress_bars = True
        ds = ray.data.from_items([{"part": name} for name in scored], override_num_blocks=len(scored))
        ds = map_stage(ds, ScoreStage, cfg.ray.write, batch_size=1, batch_format="pyarrow", cfg=cfg, bundle=bundle,
                       generation=storage.writer_generation())
        for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
            committed.update(batch["video_id"].to_pylist())
            log.info("predict: %d / %d videos classified and screened", len(committed), todo)
    return PredictSummary(extract, len(committed), todo, time.perf_counter() - started)

"""`jobs/predict.py` on Ray: extraction with the bundle's settings, the motion CNN inside it, then RNN heads →
fusion SVM + autoencoder as Ray Data stages over the extraction's commits (`multistream.predict.batch.pending`).

The motion CNN runs in the actors that compute flow (`ray.decode`, or `ray.fused`), on each video's flow in
memory (`TemporalStep`), so the extraction commits temporal sequences in `features/` and no `flow/` unless
`keep_flow`. Every model is loaded once per actor (from a local path or s3://, checked against the bundle):
the RNN heads on `ray.embed` (GPUs where it has them); reading `features/`, scoring and the commit of each
group of videos on `ray.write`. Nothing is re-fit.
"""

from __future__ import annotations

import functools
import logging
import time

import pyarrow as pa
import ray

from multistream.config import Config
from multistream.device import actor_device
from multistream.predict.batch import (
    PredictSummary,
    TemporalStep,
    check_predict_devices,
    commit_group,
    drop_used_features,
    heads_table,
    inputs_table,
    pending,
    score_part,
    unscored,
)
from multistream.predict.bundle import Bundle
from multistream.predict.models import Classifier, Detector, TemporalEmbedder, VideoEmbedder
from multistream.ray.extract import run_extract
from multistream.ray.session import init_ray, map_stage, worker_setup
from multistream.store import storage
from multistream.store.layout import RunRoot

log = logging.getLogger(__name__)


def temporal_step(cfg: Config, bundle: Bundle, keep_flow: bool) -> TemporalStep:
    """`run_extract`'s `after_decode`: called once in each decode (or fused) actor, which loads the motion CNN."""
    worker_setup(cfg.ray.torch_threads)
    embed = TemporalEmbedder(bundle, actor_device(cfg.motion_cnn.device), cfg.motion_cnn.embed_batch_size)
    return TemporalStep(embed, keep_flow)


class InputsStage:
    """Work items (one extraction commit each) → per video: its spatial, audio and temporal sequences."""

    def __init__(self, cfg: Config):
        self.run = RunRoot(cfg.paths.output)

    def __call__(self, items: pa.Table) -> pa.Table:
        return pa.concat_tables([inputs_table(self.run, item) for item in items.to_pylist()])


class HeadsStage:
    """Per video: spatial, temporal, audio sequences → `embeddings/` rows (each stream's RNN head)."""

    def __init__(self, cfg: Config, bundle: Bundle):
        worker_setup(cfg.ray.torch_threads)
        self.embed = VideoEmbedder(bundle, actor_device(cfg.rnn.device), cfg.rnn.batch_size)

    def __call__(self, table: pa.Table) -> pa.Table:
        return heads_table(table, self.embed)


class CommitStage:
    """`embeddings/` rows → scores, then the group's `embeddings/`, `predictions/` and `anomaly/` parts."""

    def __init__(self, cfg: Config, bundle: Bundle, embed_only: bool, generation: int | None):
        worker_setup(cfg.ray.torch_threads)
        storage.set_writer_generation(generation)  # the driver's lease generation, stamped into the parts
        self.run, self.streams = RunRoot(cfg.paths.output), bundle.streams
        self.classifier = None if embed_only else Classifier(bundle)
        self.detector = None if embed_only else Detector(bundle, actor_device(cfg.anomaly.device))

    def __call__(self, table: pa.Table) -> pa.Table:
        name = commit_group(self.run, table, self.streams, self.classifier, self.detector)
        return pa.table({"video_id": table["video_id"], "part": [name] * table.num_rows})


class ScoreStage(CommitStage):
    """Names of `embeddings/` parts an --embed-only run committed → their `predictions/` and `anomaly/` parts."""

    def __init__(self, cfg: Config, bundle: Bundle, generation: int | None):
        super().__init__(cfg, bundle, embed_only=False, generation=generation)

    def __call__(self, items: pa.Table) -> pa.Table:
        parts = items["part"].to_pylist()
        ids = [score_part(self.run, name, self.streams, self.classifier, self.detector) for name in parts]
        return pa.table({"video_id": [v for group in ids for v in group],
                         "part": [name for name, group in zip(parts, ids, strict=True) for _ in group]})


def run_predict(cfg: Config, bundle: Bundle, embed_only: bool = False, retry_errors: bool = False,
                keep_flow: bool = False) -> PredictSummary:
    """Extract the videos under `paths.input` into `paths.output` (cfg carries the bundle's settings; every error
    row again with `retry_errors`) with the motion CNN on each video's flow in memory (`flow/` written only with
    `keep_flow`), then embed, classify and screen every ok video that has no results yet."""
    started = time.perf_counter()
    check_predict_devices(cfg)
    extract = run_extract(cfg, retry_errors=retry_errors,
                          after_decode=functools.partial(temporal_step, cfg, bundle, keep_flow))
    run = RunRoot(cfg.paths.output)
    items = pending(run, embed_only)
    scored = {} if embed_only else unscored(run)  # embedded by an --embed-only run: classified and screened
    todo = sum(len(item["video_id"]) for item in items) + sum(map(len, scored.values()))
    log.info("predict: %d videos to embed%s%s", todo, "" if embed_only else ", classify and screen",
             f" ({sum(map(len, scored.values()))} embedded already)" if scored else "")
    committed: set[str] = set()
    if items or scored:
        init_ray(cfg)
        ray.data.DataContext.get_current().enable_progress_bars = True
    datasets = []
    if scored:
        ds = ray.data.from_items([{"part": name} for name in scored], override_num_blocks=len(scored))
        datasets.append(map_stage(ds, ScoreStage, cfg.ray.write, batch_size=1, batch_format="pyarrow", cfg=cfg,
                                  bundle=bundle, generation=storage.writer_generation()))
    if items:
        ds = ray.data.from_items(items, override_num_blocks=len(items))
        ds = map_stage(ds, InputsStage, cfg.ray.write, batch_size=1, batch_format="pyarrow", cfg=cfg)
        ds = map_stage(ds, HeadsStage, cfg.ray.embed, batch_size=cfg.rnn.batch_size, batch_format="pyarrow", cfg=cfg,
                       bundle=bundle)
        datasets.append(map_stage(ds, CommitStage, cfg.ray.write, batch_format="pyarrow", cfg=cfg, bundle=bundle,
                                  embed_only=embed_only, generation=storage.writer_generation()))
    for ds in datasets:
        for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
            committed.update(batch["video_id"].to_pylist())
            log.info("predict: %d / %d videos committed", len(committed), todo)
    drop_used_features(run, {item["part"] for item in items if not committed.issuperset(item["video_id"])})
    return PredictSummary(extract, len(committed), todo, time.perf_counter() - started)

"""`jobs/predict.py` on Ray: extraction with the bundle's settings, then motion CNN → RNN heads → fusion SVM +
autoencoder as Ray Data stages over the extraction's commits (`multistream.predict.batch.pending`).

Every stage is an actor pool that loads its models once per actor (from a local path or s3://): the motion
CNN and the RNN heads on `ray.embed` (GPUs where it has them), scoring and the commit of each group of
videos on `ray.write`. Nothing is re-fit.
"""

from __future__ import annotations

import logging
import time

import pyarrow as pa
import ray

from multistream.config import Config
from multistream.device import actor_device
from multistream.predict.batch import (
    PredictSummary,
    check_predict_devices,
    commit_group,
    heads_table,
    pending,
    temporal_table,
)
from multistream.predict.bundle import Bundle
from multistream.predict.models import Classifier, Detector, TemporalEmbedder, VideoEmbedder
from multistream.ray.extract import run_extract
from multistream.ray.session import init_ray, map_stage, worker_setup
from multistream.store import storage
from multistream.store.layout import RunRoot

log = logging.getLogger(__name__)


class TemporalStage:
    """Work items (one extraction commit each) → per video: spatial, audio and the new temporal sequence."""

    def __init__(self, cfg: Config, bundle: Bundle):
        worker_setup(cfg.ray.torch_threads)
        self.run = RunRoot(cfg.paths.output)
        self.embed = TemporalEmbedder(bundle, actor_device(cfg.motion_cnn.device), cfg.motion_cnn.embed_batch_size)

    def __call__(self, items: pa.Table) -> pa.Table:
        return pa.concat_tables([temporal_table(self.run, item, self.embed) for item in items.to_pylist()])


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


def run_predict(cfg: Config, bundle: Bundle, embed_only: bool = False, retry_errors: bool = False) -> PredictSummary:
    """Extract the videos under `paths.input` into `paths.output` (cfg carries the bundle's settings; every error
    row again with `retry_errors`), then embed, classify and screen every ok video that has no results yet."""
    started = time.perf_counter()
    check_predict_devices(cfg)
    extract = run_extract(cfg, retry_errors=retry_errors)
    run = RunRoot(cfg.paths.output)
    items = pending(run, embed_only)
    todo = sum(len(item["video_id"]) for item in items)
    log.info("predict: %d videos to embed%s", todo, "" if embed_only else ", classify and screen")
    done = 0
    if items:
        init_ray(cfg)
        ray.data.DataContext.get_current().enable_progress_bars = True
        ds = ray.data.from_items(items, override_num_blocks=len(items))
        ds = map_stage(ds, TemporalStage, cfg.ray.embed, batch_size=1, batch_format="pyarrow", cfg=cfg, bundle=bundle)
        ds = map_stage(ds, HeadsStage, cfg.ray.embed, batch_size=cfg.rnn.batch_size, batch_format="pyarrow", cfg=cfg,
                       bundle=bundle)
        ds = map_stage(ds, CommitStage, cfg.ray.write, batch_format="pyarrow", cfg=cfg, bundle=bundle,
                       embed_only=embed_only, generation=storage.writer_generation())
        for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
            done += batch.num_rows
            log.info("predict: %d / %d videos committed", done, todo)
    return PredictSummary(extract, done, todo, time.perf_counter() - started)

"""`jobs/predict.py` on Ray: extraction with the bundle's settings, then motion CNN → RNN heads → fusion SVM +
autoencoder as Ray Data stages over the extraction's commits (`multistream.predict.pending`).

Every stage is an actor pool that loads its models once per actor (from a local path or s3://): the motion
CNN and the RNN heads on `ray.embed` (GPUs where it has them), scoring and the commit of each group of
videos on `ray.write`. Nothing is re-fit.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import ray

from multistream import schema, storage
from multistream.bundle import Bundle
from multistream.config import Config, ConfigError
from multistream.device import actor_device
from multistream.extract import part_name
from multistream.inference import Classifier, Detector, TemporalEmbedder, VideoEmbedder
from multistream.layout import RunRoot
from multistream.predict import (
    anomaly_table,
    embeddings_table,
    pending,
    predictions_table,
    read_inputs,
    stream_inputs,
)
from multistream.ray.extract import run_extract
from multistream.ray.session import init_ray, map_stage, worker_setup

log = logging.getLogger(__name__)


class TemporalStage:
    """Work items (one extraction commit each) → per video: spatial, audio and the new temporal sequence."""

    def __init__(self, cfg: Config, bundle: Bundle):
        worker_setup(cfg.ray.torch_threads)
        self.run = RunRoot(cfg.paths.output)
        self.embed = TemporalEmbedder(bundle, actor_device(cfg.motion_cnn.device), cfg.motion_cnn.embed_batch_size)

    def __call__(self, items: pa.Table) -> pa.Table:
        tables = []
        for item in items.to_pylist():
            features, flows = read_inputs(self.run, item)
            positions = features["frame_index"].to_pylist()
            temporal = [self.embed(flows[v], np.asarray(p, np.int64)) for v, p in zip(item["video_id"], positions,
                                                                                        strict=True)]
            text = {key: pa.array(item[key], pa.string()) for key in ("video_id", "label", "split")}
            tables.append(pa.table({**text, "spatial": features["spatial"], "audio": features["audio"],
                                    "temporal": schema.sequence_array(temporal, schema.MOTION_DIM)}))
        return pa.concat_tables(tables)


class HeadsStage:
    """Per video: spatial, temporal, audio sequences → `embeddings/` rows (each stream's RNN head)."""

    def __init__(self, cfg: Config, bundle: Bundle):
        worker_setup(cfg.ray.torch_threads)
        self.embed = VideoEmbedder(bundle, actor_device(cfg.rnn.device), cfg.rnn.batch_size)

    def __call__(self, table: pa.Table) -> pa.Table:
        temporal = schema.column_to_sequences(table["temporal"])
        vectors = self.embed(stream_inputs(table, temporal))
        return embeddings_table(table["video_id"].to_pylist(), table["label"].to_pylist(),
                                table["split"].to_pylist(), vectors)


class CommitStage:
    """`embeddings/` rows → scores, then the group's `embeddings/`, `predictions/` and `anomaly/` parts."""

    def __init__(self, cfg: Config, bundle: Bundle, embed_only: bool):
        worker_setup(cfg.ray.torch_threads)
        self.run, self.streams, self.embed_only = RunRoot(cfg.paths.output), bundle.streams, embed_only
        if not embed_only:
            self.classifier, self.detector = Classifier(bundle), Detector(bundle, actor_device(cfg.anomaly.device))

    def __call__(self, table: pa.Table) -> pa.Table:
        ids, splits = table["video_id"].to_pylist(), table["split"].to_pylist()
        name = part_name(ids)
        table = table.cast(schema.embeddings_schema(table.schema.field(schema.STREAMS[0]).type.list_size))
        storage.write_part(table, self.run.embeddings, name)
        if not self.embed_only:
            vectors = {s: table[s].combine_chunks().flatten().to_numpy(zero_copy_only=False).reshape(len(ids), -1)
                       for s in self.streams}
            scores = self.classifier(vectors)
            storage.write_part(predictions_table(ids, table["label"].to_pylist(), splits, scores, self.classifier),
                               self.run.predictions, name)
            storage.write_part(anomaly_table(ids, splits, *self.detector(vectors)), self.run.anomaly, name)
        return pa.table({"video_id": ids, "part": [name] * len(ids)})


@dataclass
class PredictSummary:
    extract: object  # the extraction's ExtractSummary
    predicted: int  # videos given results by this run
    pending: int  # videos that had none when it started
    seconds: float


def check_placement(cfg: Config) -> None:
    """Refuse a model that must run on CUDA in a pool given no GPU, before any work starts."""
    for key, section, pool in (("motion_cnn", cfg.motion_cnn, "embed"), ("rnn", cfg.rnn, "embed"),
                               ("anomaly", cfg.anomaly, "write")):
        if section.device == "cuda" and not getattr(cfg.ray, pool).num_gpus:
            raise ConfigError(f"{key}.device: cuda, but ray.{pool}.num_gpus is 0: its actors are given no GPU")


def run_predict(cfg: Config, bundle: Bundle, embed_only: bool = False) -> PredictSummary:
    """Extract the videos under `paths.input` into `paths.output` (cfg carries the bundle's settings), then
    embed, classify and screen every ok video that has no results yet."""
    started = time.perf_counter()
    check_placement(cfg)
    extract = run_extract(cfg)
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
                       embed_only=embed_only)
        for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
            done += batch.num_rows
            log.info("predict: %d / %d videos committed", done, todo)
    return PredictSummary(extract, done, todo, time.perf_counter() - started)

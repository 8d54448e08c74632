"""The extraction job on Ray Data: manifest → decode+flow (CPU actors) → spatial CNN → VGGish → Parquet.

Stages are callable classes for `map_batches`, each with its own resources from `cfg.ray`, so that decode
and the model stages run in separate actors and overlap. Rows carry arrays as `.npy` bytes: sequences of
different lengths per video travel through Arrow without ragged-tensor conversions.

Commit protocol (resume after a crash or kill -9 loses at most the videos in flight):
  1. the decode stage writes `flow/<part>` for its video (part name derived from the video id);
  2. the write stage writes `features/<part>` then `videos/<part>` for a batch of videos (same part name).
A `videos/` part is the commit: on start, `features/` parts without a `videos/` twin and `flow/` parts of
videos that are not committed ok are deleted, and committed videos are skipped. At the end of a run, `videos/`
parts it neither found nor wrote (late commits of a killed run's surviving workers) are deleted.
"""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import pyarrow as pa
import ray

from multistream import schema, storage
from multistream.config import Config, ConfigError
from multistream.extract import (
    decode_video,
    error_message,
    flow_table,
    part_name,
    video_row,
)
from multistream.manifest import VideoEntry, build_manifest
from multistream.ray.session import actor_device, init_ray, map_stage, worker_setup

log = logging.getLogger(__name__)

ENTRY_COLUMNS = ("video_id", "uri", "label", "split")


def pack(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def unpack(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


def _rows(batch: dict[str, np.ndarray]) -> list[dict]:
    """Batch columns → row dicts; the `videos/` row travels as JSON in column "video"."""
    names = list(batch)
    rows = [dict(zip(names, values, strict=True)) for values in zip(*(batch[n] for n in names), strict=True)]
    for row in rows:
        if "video" in row:
            row["video"] = json.loads(row["video"])
    return rows


def _columns(rows: list[dict]) -> dict[str, np.ndarray]:
    for row in rows:
        if isinstance(row.get("video"), dict):
            row["video"] = json.dumps(row["video"])
    return {name: np.array([row[name] for row in rows], dtype=object) for name in rows[0]}


class DecodeStage:
    """Batch of manifest rows → decoded rows (frames, wave, sampling) and each video's `flow/` part."""

    def __init__(self, cfg: Config):
        from multistream.flow import make_flow_estimator

        self.cfg = cfg
        flow = replace(cfg.flow, device=actor_device(cfg.flow.device))
        self.estimator = make_flow_estimator(flow, threads=cfg.ray.torch_threads)
        self.flow_root = storage.join(cfg.paths.output, schema.FLOW)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return _columns([self.process(row) for row in _rows(batch)])

    def process(self, row: dict) -> dict:
        entry = VideoEntry(**{name: row[name] or None for name in ENTRY_COLUMNS})
        started = time.perf_counter()
        try:
            decoded = decode_video(entry.uri, self.cfg, self.estimator)
            storage.write_part(flow_table(entry.video_id, decoded.flow, self.cfg.flow.clip_px),
                               self.flow_root, part_name([entry.video_id]))
        except Exception as error:  # noqa: BLE001 - a bad video is data, not a crash
            log.warning("%s: %s", entry.uri, error_message(error))
            seconds = {"decode_s": time.perf_counter() - started}
            return {"video": video_row(entry, "error", error_message(error), seconds=seconds),
                    **dict.fromkeys(("positions", "timestamps", "magnitudes", "frames", "wave"), b"")}
        return {
            "video": video_row(entry, facts=decoded.facts, seconds=decoded.seconds),
            "positions": pack(decoded.positions),
            "timestamps": pack(decoded.timestamps),
            "magnitudes": pack(decoded.magnitudes),
            "frames": pack(decoded.frames),
            "wave": pack(decoded.wave),
        }


class _ModelStage:
    """Applies a model to one packed column of the ok rows, replacing it with packed float16 embeddings."""

    source: str
    target: str
    seconds: str

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = _rows(batch)
        for row in rows:
            data = row.pop(self.source)
            if row["video"]["status"] != "ok":
                row[self.target] = b""
                continue
            started = time.perf_counter()
            try:
                row[self.target] = pack(self.embed(unpack(data)).astype(np.float16))
            except Exception as error:  # noqa: BLE001
                log.warning("%s: %s stage failed: %s", row["video"]["uri"], self.target, error_message(error))
                row["video"] = row["video"] | {"status": "error", "error": f"{self.target}: {error_message(error)}"}
                row[self.target] = b""
            row["video"] = row["video"] | {self.seconds: time.perf_counter() - started}
        return _columns(rows)


class SpatialStage(_ModelStage):
    """frames (K, S, S, 3) uint8 → spatial (K, D) float16."""

    source, target, seconds = "frames", "spatial", "spatial_s"

    def __init__(self, cfg: Config):
        from multistream.spatial import SpatialEmbedder

        worker_setup(cfg.ray.torch_threads)
        self.embed = SpatialEmbedder(replace(cfg.spatial, device=actor_device(cfg.spatial.device)))


class AudioStage(_ModelStage):
    """wave (N,) float32 → audio (E, 128) float16."""

    source, target, seconds = "wave", "audio", "audio_s"

    def __init__(self, cfg: Config):
        from multistream.audio import AudioEmbedder

        worker_setup(cfg.ray.torch_threads)
        audio = replace(cfg.audio, device=actor_device(cfg.audio.device))
        self.embed = AudioEmbedder(audio, sample_rate=cfg.video.audio_rate)


class WriteStage:
    """A batch of finished rows → one `features/` part, then the `videos/` part that commits it."""

    def __init__(self, cfg: Config):
        self.root = cfg.paths.output

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = _rows(batch)
        videos = [row["video"] for row in rows]
        name = part_name([video["video_id"] for video in videos])
        ok = [row for row in rows if row["video"]["status"] == "ok"]
        if ok:
            storage.write_part(features_table(ok),
                               storage.join(self.root, schema.FEATURES), name)
        storage.write_part(pa.Table.from_pylist(videos, schema=schema.VIDEOS_SCHEMA),
                           storage.join(self.root, schema.VIDEOS), name)
        return {"video_id": np.array([v["video_id"] for v in videos], dtype=object),
                "status": np.array([v["status"] for v in videos], dtype=object),
                "error": np.array([v["error"] or "" for v in videos], dtype=object),
                "part": np.array([name] * len(videos), dtype=object)}


class FusedStage:
    """Every stage in one actor, on each batch in turn: decode → spatial → audio → write (`ray.fused`)."""

    def __init__(self, cfg: Config):
        self.stages = [DecodeStage(cfg), SpatialStage(cfg), AudioStage(cfg), WriteStage(cfg)]

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        for stage in self.stages:
            batch = stage(batch)
        return batch


def features_table(rows: list[dict]) -> pa.Table:
    spatial = [unpack(row["spatial"]) for row in rows]  # (K, D) float16 each
    spatial_dim = spatial[0].shape[1]
    return pa.table({
        "video_id": [row["video"]["video_id"] for row in rows],
        "frame_index": [unpack(row["positions"]).tolist() for row in rows],
        "timestamp_s": [unpack(row["timestamps"]).tolist() for row in rows],
        "flow_magnitude": [unpack(row["magnitudes"]).tolist() for row in rows],
        "spatial": schema.sequence_array(spatial, spatial_dim),
        "audio": schema.sequence_array([unpack(row["audio"]) for row in rows], schema.AUDIO_DIM),
    }, schema=schema.features_schema(spatial_dim))


def check_gpu_placement(cfg: Config) -> None:
    """Raise where a model must run on CUDA but its actors ask for no GPU; warn where RAFT runs on the CPU
    for that reason ("auto" is the GPU only in actors that Ray gave one: `session.actor_device`)."""
    raft = cfg.flow.backend.startswith("raft")
    for name, device, pool in (("flow", cfg.flow.device if raft else "cpu", "decode"),
                               ("spatial", cfg.spatial.device, "spatial"), ("audio", cfg.audio.device, "audio")):
        pool = pool if cfg.ray.fused is None else "fused"
        if getattr(cfg.ray, pool).num_gpus:
            continue
        if device == "cuda":
            raise ConfigError(f"{name}.device: cuda, but ray.{pool}.num_gpus is 0: its actors are given no GPU")
        if name == "flow" and device == "auto":
            log.warning("flow.backend=%s runs on the CPU: ray.%s.num_gpus is 0, so its actors are given no GPU",
                        cfg.flow.backend, pool)


@dataclass
class ExtractSummary:
    total: int
    skipped: int
    ok: int
    errors: dict[str, str]
    seconds: float


def resume_state(root: str) -> tuple[set[str], set[str]]:
    """Drop uncommitted parts of an interrupted run; return (ids of the videos already committed, the names of
    the `videos/` parts that commit them)."""
    videos_root, features_root, flow_root = (storage.join(root, t) for t in
                                             (schema.VIDEOS, schema.FEATURES, schema.FLOW))
    committed = set(storage.list_parts(videos_root))
    for name in set(storage.list_parts(features_root)) - committed:
        log.info("removing uncommitted part %s/%s", schema.FEATURES, name)
        storage.delete_part(features_root, name)
    videos = storage.read_table(videos_root, columns=["video_id", "status"], schema=schema.VIDEOS_SCHEMA)
    ok_parts = {part_name([vid]) for vid, status in zip(videos["video_id"].to_pylist(),
                                                         videos["status"].to_pylist(), strict=True)
                if status == "ok"}
    for name in set(storage.list_parts(flow_root)) - ok_parts:
        storage.delete_part(flow_root, name)
    return set(videos["video_id"].to_pylist()), committed


def drop_stray_commits(root: str, known_parts: set[str]) -> None:
    """Delete `videos/` parts (and their `features/`) that neither were there when this run started nor were
    written by it: the late commits of an interrupted run's workers (a kill -9 of a local run can leave them
    running for a moment), whose videos this run extracted again."""
    videos_root, features_root = storage.join(root, schema.VIDEOS), storage.join(root, schema.FEATURES)
    stray = set(storage.list_parts(videos_root)) - known_parts
    for name in stray:
        storage.delete_part(videos_root, name)
        storage.delete_part(features_root, name)
    if stray:
        log.warning("dropped %d part(s) committed late by an interrupted run's workers; their videos were "
                    "extracted again by this run", len(stray))


def run_extract(cfg: Config, entries: list[VideoEntry] | None = None,
                on_video: Callable[[dict], None] | None = None) -> ExtractSummary:
    """Extract every video of the manifest not yet committed under `cfg.paths.output`.

    `on_video` is called with {video_id, status, error} as each video is committed.
    """
    started = time.perf_counter()
    check_gpu_placement(cfg)
    if entries is None:
        entries = build_manifest(cfg.paths.input, cfg.paths.labels, cfg.paths.split)
    done, known_parts = resume_state(cfg.paths.output)
    todo = [entry for entry in entries if entry.video_id not in done]
    log.info("%d videos: %d already extracted, %d to do", len(entries), len(entries) - len(todo), len(todo))
    summary = ExtractSummary(len(entries), len(entries) - len(todo), 0, {}, 0.0)
    if todo:
        from multistream.weights import resolve_all

        cfg = resolve_all(cfg)  # every weights source fetched and checked (pinned) before any video
        init_ray(cfg)
        ray.data.DataContext.get_current().enable_progress_bars = True
        items = [{name: getattr(entry, name) or "" for name in ENTRY_COLUMNS} for entry in todo]
        ds = ray.data.from_items(items, override_num_blocks=len(items))
        if cfg.ray.fused is not None:
            ds = map_stage(ds, FusedStage, cfg.ray.fused, cfg=cfg)
        else:
            ds = map_stage(ds, DecodeStage, cfg.ray.decode, cfg=cfg)
            ds = map_stage(ds, SpatialStage, cfg.ray.spatial, cfg=cfg)
            ds = map_stage(ds, AudioStage, cfg.ray.audio, cfg=cfg)
            ds = map_stage(ds, WriteStage, cfg.ray.write, cfg=cfg)
        for row in ds.iter_rows():
            known_parts.add(row.pop("part"))
            if on_video is not None:
                on_video(row)
            if row["status"] == "ok":
                summary.ok += 1
            else:
                summary.errors[row["video_id"]] = row["error"]
        drop_stray_commits(cfg.paths.output, known_parts)
    summary.seconds = time.perf_counter() - started
    return summary

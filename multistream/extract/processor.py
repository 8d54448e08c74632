"""The per-video extraction core (no Ray): decode → optical flow → adaptive sampling, then the rows it writes.

One streaming pass over the first `max_seconds` of a video keeps only what the later stages need:
the quantized flow (P, H, W, 2) uint8 at `flow.size`, every frame at the spatial size (so that positions
can be sampled once the whole motion profile is known), and the 16 kHz mono waveform.

Resident (the fused GPU path, `VideoProcessor(resident=True)`): frames are decoded at `flow.size` only and go
to the spatial CNN's device once; flow (RAFT) runs on them there, the sampled ones are resized there (bilinear
with antialias, `resize_on_device`) and the CNN embeds them in batches across the videos of a call.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace

import numpy as np

from multistream.config import Config
from multistream.dataset.manifest import VideoEntry
from multistream.device import check_gpu_given
from multistream.extract.budgets import Budget
from multistream.extract.errors import error_kind
from multistream.extract.flow.base import (
    FLOW_CHUNK,
    FlowEstimator,
    check_consecutive,
    encode_flow,
    video_estimator,
)
from multistream.extract.flow.registry import flow_backend, make_flow_estimator
from multistream.extract.rows import error_message, fail, stop_on_program_error, video_row
from multistream.extract.sampling import frame_motion, sample_positions
from multistream.extract.video import VideoError, open_video
from multistream.extract.windows import EmbeddedFrames, WindowedDecode, merge_windows
from multistream.store.members import readable_uri
from multistream.store.storage import open_input

log = logging.getLogger(__name__)



@dataclass
class DecodedVideo:
    """Everything the embedding stages need from one video.

    positions/timestamps/magnitudes: (K,) int32 / float32 / float32, K ≤ max_seq_len
    frames: (K, S, S, 3) uint8 RGB at spatial.image_size;  wave: (N,) float32 mono at audio_rate
    flow: (P, H, W, 2) uint8 quantized flow, P = n_frames - 1, (W, H) = flow.size
    """

    facts: dict
    positions: np.ndarray
    timestamps: np.ndarray
    magnitudes: np.ndarray
    frames: np.ndarray
    wave: np.ndarray
    flow: np.ndarray
    seconds: dict = field(default_factory=dict)


def decode_video(uri: str, cfg: Config, estimator: FlowEstimator, video_id: str | None = None,
                 resident=None) -> DecodedVideo:
    """Decode, compute flow and sample positions for one video; raises VideoError for unreadable input.

    A backend that reads each video's own flow (`for_video`, e.g. precomputed) gets `video_id` (default: `uri`).
    `resident` (a torch device): frames decoded at flow.size only go there once per flow chunk (`DeviceFrames`),
    and `frames` is the sampled ones resized there, a (K, 3, S, S) uint8 tensor on that device."""
    size = cfg.spatial.image_size
    estimator, per_video = video_estimator(estimator, video_id or uri)
    started = time.perf_counter()
    flow_seconds = 0.0
    spatial_frames, times, flows, pair_magnitudes = [], [], [], []
    pending: list[np.ndarray] = []
    device_frames = None if resident is None else DeviceFrames(resident, estimator)
    sizes = {"flow": cfg.flow.size} if resident is not None else {"flow": cfg.flow.size, "spatial": (size, size)}

    def flush(keep_last: bool) -> None:
        nonlocal flow_seconds, pending
        if device_frames is not None:
            device_frames.add(pending[1:] if device_frames.carried else pending)
        if len(pending) >= 2:
            t0 = time.perf_counter()
            if device_frames is None:
                stored, magnitudes = encode_flow(estimator, np.stack(pending), cfg.flow.clip_px, scale)
            else:
                stored, magnitudes = device_frames.encode(pending, cfg.flow.clip_px, scale)
            pair_magnitudes.append(magnitudes)  # (len-1,) float32
            flows.append(stored)  # (len-1, H, W, 2) uint8
            flow_seconds += time.perf_counter() - t0
        pending = pending[-1:] if keep_last else []
        if device_frames is not None:
            device_frames.carried = keep_last and bool(pending)

    with open_input(uri) as handle, open_video(handle, max_seconds=cfg.video.max_seconds,
                                               audio_rate=cfg.video.audio_rate, budget=Budget.of(cfg.video)) as reader:
        info = reader.info
        scale = (info.width / cfg.flow.size[0], info.height / cfg.flow.size[1])
        for frame in reader.frames(sizes):
            if device_frames is None:
                spatial_frames.append(frame.images["spatial"])
            times.append(frame.time_s)
            pending.append(frame.images["flow"])
            if len(pending) > FLOW_CHUNK:
                flush(keep_last=True)
        flush(keep_last=False)
        wave = reader.audio()
        n_frames = reader.n_frames
        if per_video:
            check_consecutive(uri, cfg.flow.backend, reader.n_decoded, n_frames)
        facts = reader.facts
    if n_frames == 0:
        raise VideoError(f"{uri}: no frame decodes within the first {cfg.video.max_seconds:g} s")

    width, height = cfg.flow.size
    flow = np.concatenate(flows) if flows else np.zeros((0, height, width, 2), np.uint8)
    per_pair = np.concatenate(pair_magnitudes) if pair_magnitudes else np.zeros(0, np.float32)
    motion = frame_motion(per_pair)
    positions = sample_positions(motion, cfg.sampling).astype(np.int32)
    decode_seconds = time.perf_counter() - started - flow_seconds
    return DecodedVideo(
        facts=facts | {"n_samples": len(positions)},
        positions=positions,
        timestamps=np.asarray(times, np.float32)[positions],
        magnitudes=motion.astype(np.float32)[positions],
        frames=(np.stack([spatial_frames[i] for i in positions]) if device_frames is None
                else device_frames.sampled(positions, size)),
        wave=np.asarray(wave, np.float32),
        flow=flow,
        seconds={"decode_s": decode_seconds, "flow_s": flow_seconds},
    )


class DeviceFrames:
    """One video's frames (at flow.size) on a torch device, uploaded once as uint8 as they are decoded.

    Flow runs on them there where the estimator is RAFT on that device (`RAFTFlow.encode`), else on the CPU
    copy the decoder already holds; `sampled` resizes the sampled frames there to the spatial size."""

    def __init__(self, device, estimator: FlowEstimator):
        import torch

        from multistream.extract.flow.raft import RAFTFlow

        self.device, self.estimator, self.chunks = torch.device(device), estimator, []
        self.on_device = isinstance(estimator, RAFTFlow) and estimator.device == self.device
        self.carried = False  # the last uploaded frame is the first of the next flow chunk

    def add(self, frames: list[np.ndarray]) -> None:
        import torch

        if frames:
            self.chunks.append(torch.from_numpy(np.stack(frames)).to(self.device))

    def encode(self, pending: list[np.ndarray], clip_px: float,
               scale: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
        """`encode_flow` of `pending` (the frames of the chunks added last, the carried one first): on the uploaded
        frames where the estimator is RAFT on this device, else on the decoder's host copy."""
        if not self.on_device:
            return encode_flow(self.estimator, np.stack(pending), clip_px, scale)
        import torch

        last = self.chunks[-1]
        frames = last if len(last) == len(pending) else torch.cat([self.chunks[-2][-1:], last])
        return self.estimator.encode(frames, clip_px, scale)

    def sampled(self, positions: np.ndarray, size: int):
        """(K, 3, size, size) uint8 on the device: the frames at `positions`, resized there."""
        import torch

        index = torch.from_numpy(np.asarray(positions, np.int64)).to(self.device)
        frames = torch.cat(self.chunks).index_select(0, index)
        self.chunks = []
        return resize_on_device(frames, size)


def resize_on_device(frames, size: int):
    """(K, H, W, 3) uint8 tensor → (K, 3, size, size) uint8 on its device: bilinear with antialias (a wider
    kernel where it shrinks, as swscale's scalers do), rounded. The CPU path resizes each frame from its
    native size in swscale (video.py); the difference in spatial features: tests/extract/test_resident.py."""
    import torch
    import torch.nn.functional as F

    if len(frames) == 0:
        return torch.zeros((0, 3, size, size), dtype=torch.uint8, device=frames.device)
    x = frames.permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x.round_().clamp_(0, 255).to(torch.uint8)


class Decoder:
    """entry → row: decode + flow + sampling of one video (an error row for unreadable input).

    `resident` (a torch device): the frames go there (`decode_video`), "frames" is a tensor there."""

    def __init__(self, cfg: Config, threads: int | None = None, device: str | None = None, resident=None):
        self.cfg, self.resident = cfg, resident
        self.estimator = make_flow_estimator(replace(cfg.flow, device=device or cfg.flow.device), threads=threads)

    def __call__(self, entry: VideoEntry) -> dict:
        started = time.perf_counter()
        try:
            decoded = decode_video(entry.uri, self.cfg, self.estimator, entry.video_id, self.resident)
        except Exception as error:  # noqa: BLE001 - a bad video is data, not a crash
            stop_on_program_error(error, entry.uri, "decode")
            return {"video": video_row(entry, "error", error_message(error, readable_uri(entry.uri)), kind=error_kind(error),
                                       seconds={"decode_s": time.perf_counter() - started})}
        return {"video": video_row(entry, facts=decoded.facts, seconds=decoded.seconds),
                "positions": decoded.positions, "timestamps": decoded.timestamps,
                "magnitudes": decoded.magnitudes, "frames": decoded.frames, "wave": decoded.wave,
                "flow": decoded.flow}


class ModelStep:
    """row → row: `embed` applied to the row's `source` array, replaced by `target` (T, D) float16.

    Error rows pass through; a failing model makes the row an error row naming `target`."""

    def __init__(self, embed, source: str, target: str):
        self.embed, self.source, self.target = embed, source, target

    def __call__(self, row: dict) -> dict:
        data = row.pop(self.source, None)
        if row["video"]["status"] != "ok":
            return row
        started = time.perf_counter()
        try:
            row[self.target] = np.asarray(self.embed(data)).astype(np.float16)
        except Exception as error:  # noqa: BLE001
            row = fail(row, self.target, error)
        row["video"][f"{self.target}_s"] = time.perf_counter() - started
        return row


def spatial_step(cfg: Config, device: str | None = None) -> ModelStep:
    """frames (K, S, S, 3) uint8 → spatial (K, D) float16."""
    from multistream.extract.spatial import SpatialEmbedder

    return ModelStep(SpatialEmbedder(replace(cfg.spatial, device=device or cfg.spatial.device)), "frames", "spatial")


def audio_step(cfg: Config, device: str | None = None) -> ModelStep:
    """wave (N,) float32 → audio (E, 128) float16."""
    from multistream.extract.vggish import AudioEmbedder

    audio = replace(cfg.audio, device=device or cfg.audio.device)
    return ModelStep(AudioEmbedder(audio, sample_rate=cfg.video.audio_rate), "wave", "audio")


class VideoProcessor:
    """The per-video stages without Ray: `VideoProcessor(cfg)(entry) -> row` (see `extract_rows`) takes one
    video through decode + flow + sampling → spatial → audio; a bad video gives an error row, never raises.

    `devices` maps "flow" / "spatial" / "audio" to the device each model runs on (default: its config's).
    `resident` (the fused GPU path): the frames go to the spatial CNN's device once and stay there (`Decoder`),
    and `batch(entries)` embeds the sampled frames of all its videos in shared batches of spatial.batch_size.
    `after_decode`, a row → row step, runs on each decoded row before the models (predict's motion CNN on the
    flow in memory: `multistream.predict.batch.TemporalStep`).
    """

    def __init__(self, cfg: Config, threads: int | None = None, devices: dict[str, str] | None = None,
                 resident: bool = False, after_decode=None):
        devices = devices or {}
        resident = resident and cfg.video.windows is None  # a window's frames are sampled before they move
        spatial = spatial_step(cfg, devices.get("spatial"))
        self.decoder = Decoder(cfg, threads, devices.get("flow"), resident=spatial.embed.device if resident else None)
        self.decode = [self.decoder, *([after_decode] if after_decode else [])]
        self.steps = [*self.decode, spatial, audio_step(cfg, devices.get("audio"))]
        self.resident = resident
        if resident:  # the same model, fed the device's frames
            self.on_device = ModelStep(DeviceEmbedder(spatial.embed), "frames", "spatial")

    def __call__(self, entry: VideoEntry) -> dict:
        if self.resident:
            return self.batch([entry])[0]
        if self.decoder.cfg.video.windows is not None:
            return self.windowed(entry)
        row = self.steps[0](entry)
        for step in self.steps[1:]:
            row = step(row)
        return row

    def windowed(self, entry: VideoEntry) -> dict:
        """The row of one whole video in windows (`multistream.extract.windows`): each window through the
        steps after decode as it is cut (the spatial CNN on the frames no earlier window embedded: `EmbeddedFrames`),
        their rows merged (`merge_windows`); the first failure is the video's."""
        started, video = time.perf_counter(), video_row(entry)
        decoded = WindowedDecode(entry.uri, self.decoder.cfg, self.decoder.estimator, entry.video_id)
        done, seconds, embedded = [], {}, EmbeddedFrames()
        try:
            for window in decoded:
                new = embedded.keep_new(window)
                row = {"video": dict(video), **window}
                for step in self.steps[1:]:
                    row = step(row)
                if row["video"]["status"] != "ok":
                    return row
                embedded.fill(row, new)
                row.pop("flow", None)  # used by the window's models (predict's motion CNN), never stored
                for name in ("spatial_s", "audio_s"):
                    seconds[name] = seconds.get(name, 0.0) + row["video"].get(name, 0.0)
                done.append(row)
        except Exception as error:  # noqa: BLE001 - a bad video is data, not a crash
            stop_on_program_error(error, entry.uri, "decode")
            return {"video": video_row(entry, "error", error_message(error, readable_uri(entry.uri)),
                                       kind=error_kind(error), seconds={"decode_s": time.perf_counter() - started})}
        return merge_windows(video_row(entry, facts=decoded.facts, seconds=decoded.seconds | seconds), done)

    def batch(self, entries: list[VideoEntry]) -> list[dict]:
        """The rows of `entries`, in order; resident, the spatial CNN runs once over all their frames."""
        if not self.resident:
            return [self(entry) for entry in entries]
        rows = []
        for entry in entries:
            row = self.decode[0](entry)
            for step in self.decode[1:]:
                row = step(row)
            rows.append(row)
        return [self.steps[-1](row) for row in self._spatial(rows)]

    def _spatial(self, rows: list[dict]) -> list[dict]:
        import torch

        ok = [row for row in rows if "frames" in row]  # an error row holds only "video"
        if not ok:
            return rows
        started = time.perf_counter()
        try:
            vectors = self.on_device.embed(torch.cat([row["frames"] for row in ok]))
        except Exception as error:  # noqa: BLE001 - each video again alone: one video's failure is its own
            stop_on_program_error(error, ok[0]["video"]["uri"], "spatial")
            return [self.on_device(row) for row in rows]
        seconds, start = time.perf_counter() - started, 0
        for row in ok:
            count = len(row.pop("frames"))
            row["spatial"] = vectors[start:start + count].astype(np.float16)
            row["video"]["spatial_s"] = seconds * count / len(vectors)  # the shared batches' time, by frames
            start += count
        return rows


class DeviceEmbedder:
    """`SpatialEmbedder.__call__` on frames already on its device: (N, 3, S, S) uint8 tensor → (N, dim)
    float32, normalised and run in chunks of spatial.batch_size as it does."""

    def __init__(self, embedder):
        self.embedder = embedder

    def __call__(self, frames) -> np.ndarray:
        import torch

        from multistream.device import autocast

        e = self.embedder
        out = np.empty((len(frames), e.dim), np.float32)
        with torch.inference_mode():
            for start in range(0, len(frames), e.cfg.batch_size):
                x = frames[start:start + e.cfg.batch_size].to(e.device)
                x = ((x.float() - e.mean) / e.std).contiguous(memory_format=e.memory_format)
                with autocast(e.device, e.cfg.amp):
                    features = e.model(x)
                out[start:start + len(x)] = features.float().cpu().numpy()
        return out


def check_gpu_placement(cfg: Config) -> list[str]:
    """Refuse (ConfigError, `check_gpu_given`) a model that must run on CUDA in a pool that is given no GPU;
    return the warnings for a GPU flow backend (RAFT) falling back to the CPU for that reason ("auto" is the
    GPU only in actors Ray gave one). A CPU flow backend leaves flow.device unused."""
    models = ("flow", "decode"), ("spatial", "spatial"), ("audio", "audio")
    warnings = []
    for name, pool in models if flow_backend(cfg.flow.backend).gpu else models[1:]:
        pool = pool if cfg.ray.fused is None else "fused"
        check_gpu_given(cfg, name, f"ray.{pool}.num_gpus")
        if name == "flow" and cfg.flow.device == "auto" and not getattr(cfg.ray, pool).num_gpus:
            warnings.append(f"flow.backend={cfg.flow.backend} runs on the CPU: ray.{pool}.num_gpus is 0, "
                            "so its actors are given no GPU")
    return warnings

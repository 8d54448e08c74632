"""The per-video extraction core (no Ray): decode → optical flow → adaptive sampling, then the rows it writes.

One streaming pass over the first `max_seconds` of a video keeps only what the later stages need:
the quantized flow (P, H, W, 2) uint8 at `flow.size`, every frame at the spatial size (so that positions
can be sampled once the whole motion profile is known), and the 16 kHz mono waveform.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from multistream import schema
from multistream.config import Config
from multistream.flow import FlowEstimator, mean_magnitude, quantize
from multistream.manifest import VideoEntry
from multistream.sampling import frame_motion, sample_positions
from multistream.storage import open_input
from multistream.video import VideoError, open_video

FLOW_CHUNK = 32  # frame pairs per flow call: bounds memory and lets RAFT batch on a GPU


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


def decode_video(uri: str, cfg: Config, estimator: FlowEstimator) -> DecodedVideo:
    """Decode, compute flow and sample positions for one video; raises VideoError for unreadable input."""
    size = cfg.spatial.image_size
    started = time.perf_counter()
    flow_seconds = 0.0
    spatial_frames, times, flows, pair_magnitudes = [], [], [], []
    pending: list[np.ndarray] = []

    def flush(keep_last: bool) -> None:
        nonlocal flow_seconds, pending
        if len(pending) >= 2:
            t0 = time.perf_counter()
            pairs = estimator(np.stack(pending))  # (len-1, H, W, 2) float32
            pair_magnitudes.append(mean_magnitude(pairs, scale))
            flows.append(quantize(pairs, cfg.flow.clip_px))
            flow_seconds += time.perf_counter() - t0
        pending = pending[-1:] if keep_last else []

    with open_input(uri) as handle, open_video(handle, max_seconds=cfg.video.max_seconds,
                                               audio_rate=cfg.video.audio_rate) as reader:
        info = reader.info
        scale = (info.width / cfg.flow.size[0], info.height / cfg.flow.size[1])
        for frame in reader.frames({"flow": cfg.flow.size, "spatial": (size, size)}):
            spatial_frames.append(frame.images["spatial"])
            times.append(frame.time_s)
            pending.append(frame.images["flow"])
            if len(pending) > FLOW_CHUNK:
                flush(keep_last=True)
        flush(keep_last=False)
        wave = reader.audio()
        n_frames = reader.n_frames
        facts = {"duration_s": float(reader.duration_s), "fps": float(reader.measured_fps),
                 "width": info.width, "height": info.height, "n_frames": n_frames, "has_audio": info.has_audio}
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
        frames=np.stack([spatial_frames[i] for i in positions]),
        wave=np.asarray(wave, np.float32),
        flow=flow,
        seconds={"decode_s": decode_seconds, "flow_s": flow_seconds},
    )


def part_name(video_ids: list[str]) -> str:
    """A stable part name for a set of videos: re-processing the same videos overwrites, never duplicates."""
    digest = hashlib.sha1("\n".join(sorted(video_ids)).encode()).hexdigest()
    return f"part-{digest[:20]}"


def flow_table(video_id: str, flow: np.ndarray, clip_px: float) -> pa.Table:
    """One `flow/` row: shape (P, H, W, 2) and the quantized bytes."""
    return pa.table({
        "video_id": [video_id],
        "shape": [list(flow.shape)],
        "data": pa.array([flow.tobytes()], pa.large_binary()),
        "clip_px": pa.array([clip_px], pa.float32()),
    }, schema=schema.FLOW_SCHEMA)


def read_flow(row: dict) -> np.ndarray:
    """(P, H, W, 2) uint8 from a `flow/` row as a Python dict."""
    return np.frombuffer(row["data"], np.uint8).reshape(row["shape"])


def video_row(entry: VideoEntry, status: str = "ok", error: str | None = None,
              facts: dict | None = None, seconds: dict | None = None) -> dict:
    """A `videos/` row; the facts of a failed video stay null."""
    row = {name: None for name in schema.VIDEOS_SCHEMA.names}
    row |= {"video_id": entry.video_id, "uri": entry.uri, "label": entry.label, "split": entry.split,
            "status": status, "error": error}
    row |= facts or {}
    row |= seconds or {}
    return row


def error_message(error: BaseException) -> str:
    text = str(error) or type(error).__name__
    return text if isinstance(error, VideoError) else f"{type(error).__name__}: {text}"

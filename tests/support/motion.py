"""A toy two-class run root for the motion CNN: `videos/`, `flow/` and `features/` as extraction writes them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from multistream.config import load_config
from multistream.dataset.manifest import VideoEntry
from multistream.extract.flow.codec import quantize
from multistream.extract.rows import flow_table, video_row
from multistream.store import schema, storage
from multistream.store.commit import part_name

SIZE = (72, 64)  # (W, H): the motion CNN takes 57 px a side at the least
OVERRIDES = [f"flow.size=[{SIZE[0]}, {SIZE[1]}]", "motion_cnn.width=0.125", "motion_cnn.stack_length=4",
             "motion_cnn.stacks_per_video=12", "motion_cnn.batch_size=16", "motion_cnn.patience=50",
             "ray.train.max_failures=2", "ray.train.checkpoint_every_s=0"]
SPLITS = ("val", "test", "train", "train")  # of video i: SPLITS[i % 4]


def synthetic_flow(label: int, pairs: int, rng: np.random.Generator) -> np.ndarray:
    """(P, H, W, 2) uint8: an object moving right (class 0) or down (class 1) on a still, noisy background."""
    flow = rng.normal(0, 1.0, (pairs, SIZE[1], SIZE[0], 2)).astype(np.float32)
    flow[:, 16:48, 20:52, label] += 4.0  # local motion: the stacks' mean subtraction keeps it
    return quantize(flow, 20.0)


def toy_videos(videos_per_class: int, seed: int = 0) -> tuple[list[dict], dict[str, np.ndarray]]:
    """`videos/` rows (split by SPLITS) and {video_id: flow} of the two-class set."""
    rng = np.random.default_rng(seed)
    rows, flows = [], {}
    for label in (0, 1):
        for i in range(videos_per_class):
            video_id = f"c{label}/v{i}.mp4"
            flows[video_id] = synthetic_flow(label, int(rng.integers(6, 20)), rng)
            entry = VideoEntry(video_id, f"/x/{video_id}", f"class{label}", SPLITS[i % len(SPLITS)])
            rows.append(video_row(entry, facts={"n_frames": len(flows[video_id]) + 1, "n_samples": 5}))
    return rows, flows


def make_run_root(root: Path, videos_per_class: int = 6, seed: int = 0) -> list[str]:
    """Writes the toy set's videos/, flow/ (one part per video) and features/ (5 positions per video)."""
    rows, flows = toy_videos(videos_per_class, seed)
    for video_id, flow in flows.items():
        storage.write_part(flow_table(video_id, flow, 20.0), str(root / "flow"), part_name([video_id]))
        positions = np.linspace(0, len(flow), 5).round().astype(int)
        storage.write_part(pa.table({
            "video_id": [video_id], "frame_index": [positions.tolist()],
            "timestamp_s": [(positions / 15).tolist()], "flow_magnitude": [[1.0] * 5],
            "spatial": schema.sequence_array([np.zeros((5, 8))], 8),
            "audio": schema.sequence_array([np.zeros((1, 128))], 128)}, schema=schema.features_schema(8)),
            str(root / "features"), part_name([video_id]))
    storage.write_part(pa.Table.from_pylist(rows, schema=schema.VIDEOS_SCHEMA), str(root / "videos"), "part-0")
    return list(flows)


def config(root: Path | str = "unused", epochs: int = 2, *overrides: str):
    return load_config(overrides=[*OVERRIDES, f"motion_cnn.epochs={epochs}", f"paths.output={root}", *overrides])

"""The benchmark's videos: `sets` seeds of the demo set (84 clips each), generated once, or any input."""

from __future__ import annotations

from dataclasses import replace

from multistream.config import Config
from multistream.dataset.manifest import VideoEntry, build_manifest
from multistream.store import storage

DATA_ROOT = "runs/benchmark-data"


def demo_entries(sets: int, root: str = DATA_ROOT) -> list[VideoEntry]:
    """The clips of demo seeds 0..sets-1 (generated under `root/seed-<n>` where missing), ids made unique."""
    from multistream.demo.dataset import generate_demo

    entries = []
    for seed in range(sets):
        folder = storage.join(root, f"seed-{seed}")
        if not storage.exists(storage.join(folder, "labels.csv")):
            generate_demo(folder, seed=seed)
        entries += build_manifest(folder)
    return [replace(entry, video_id=f"{i:04d}/{entry.video_id}") for i, entry in enumerate(entries)]


def benchmark_entries(cfg: Config, demo_sets: int) -> list[VideoEntry]:
    """Demo clips when the config asks for the demo, else the videos of `paths.input`."""
    if cfg.paths.demo:
        return demo_entries(demo_sets)
    return build_manifest(cfg.paths.input, cfg.paths.labels, cfg.paths.split, limits=cfg.dataset)

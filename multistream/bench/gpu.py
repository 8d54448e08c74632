"""The benchmark's GPU figures (where CUDA is at hand), each against a baseline measured in the same run.

- spatial: the `SpatialEmbedder` core (uint8 frames from host memory, AMP + channels_last, features back to
  the host) vs the same timm model's plain fp32 forward on a batch already on the GPU, and that forward
  under autocast + channels_last alone;
- flow: the RAFT core (small and large, the configured flow size and batch) in pairs/s, beside the CPU
  backend DIS on one thread;
- audio: the VGGish core's examples/s on the GPU vs on one CPU thread.

Weights do not change speed: every model is randomly initialised here, so no weight file is needed.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np

from multistream.config import Config, FlowConfig


def measure(cfg: Config, images: int = 1024, pairs: int = 128, audio_seconds: float = 120.0) -> dict | None:
    """{device, spatial: {...}, flow: {...}, audio: {...}} in items/s; None without CUDA."""
    import torch

    if not torch.cuda.is_available():
        return None
    return {"device": torch.cuda.get_device_name(), "spatial": spatial(cfg, images), "flow": flow(cfg, pairs),
            "audio": audio(cfg, audio_seconds)}


def items_per_s(run: Callable[[], int], minimum: int) -> float:
    """Items/s of `run` (which returns how many items it did), after one warm-up call, over ≥ `minimum` items."""
    import torch

    run()
    torch.cuda.synchronize()
    start, done = time.perf_counter(), 0
    while done < minimum:
        done += run()
    torch.cuda.synchronize()
    return done / (time.perf_counter() - start)


def spatial(cfg: Config, images: int) -> dict:
    import timm
    import torch

    from multistream.device import amp_dtype, autocast
    from multistream.extract.spatial import SpatialEmbedder

    cuda = torch.device("cuda")
    batch, size = cfg.spatial.batch_size, cfg.spatial.image_size
    embed = SpatialEmbedder(replace(cfg.spatial, weights=None, device="cuda", amp=True))
    model = timm.create_model(cfg.spatial.model, pretrained=False, num_classes=0).cuda().eval()
    x = torch.randn(batch, 3, size, size, device="cuda")

    @torch.inference_mode()
    def forward() -> int:
        return len(model(x))

    @torch.inference_mode()
    def forward_amp() -> int:
        with autocast(cuda):
            return len(model(x))

    timm_fp32 = items_per_s(forward, images)
    model.to(memory_format=torch.channels_last)
    x = x.contiguous(memory_format=torch.channels_last)
    timm_amp = items_per_s(forward_amp, images)
    frames = np.random.default_rng(0).integers(0, 256, (4 * batch, size, size, 3), dtype=np.uint8)
    embedder = items_per_s(lambda: len(embed(frames)), images)
    return {"model": cfg.spatial.model, "image_size": size, "batch_size": batch,
            "amp_dtype": str(amp_dtype(cuda)).removeprefix("torch."),
            "timm_fp32_img_s": timm_fp32, "timm_amp_channels_last_img_s": timm_amp, "embedder_img_s": embedder,
            "embedder_vs_timm_fp32": embedder / timm_fp32}


def flow(cfg: Config, pairs: int) -> dict:
    import torch
    from torchvision.models.optical_flow import raft_large, raft_small

    from multistream.extract.flow.registry import make_flow_estimator

    width, height = cfg.flow.size
    video = np.random.default_rng(0).integers(0, 256, (pairs + 1, height, width, 3), dtype=np.uint8)
    figures = {"size": [width, height], "batch_size": cfg.flow.batch_size}
    with tempfile.TemporaryDirectory() as scratch:
        for name, build in (("raft_small", raft_small), ("raft_large", raft_large)):
            weights = str(Path(scratch) / f"{name}.pth")
            torch.save(build(weights=None, progress=False).state_dict(), weights)
            estimate = make_flow_estimator(replace(cfg.flow, backend=name, weights=weights, device="cuda"))
            figures[f"{name}_pairs_s"] = items_per_s(lambda run=estimate: len(run(video)), pairs)
    dis = make_flow_estimator(FlowConfig(backend="dis"), threads=1)
    start = time.perf_counter()
    figures["dis_cpu_1_thread_pairs_s"] = len(dis(video[:33])) / (time.perf_counter() - start)
    return figures


def audio(cfg: Config, seconds: float) -> dict:
    import torch

    from multistream.extract.vggish import AudioEmbedder

    wave = np.random.default_rng(0).uniform(-0.5, 0.5, int(seconds * cfg.video.audio_rate)).astype(np.float32)
    rates = {}
    for device in ("cuda", "cpu"):
        embed = AudioEmbedder(replace(cfg.audio, weights=None, device=device), sample_rate=cfg.video.audio_rate)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            rates[device] = items_per_s(lambda run=embed: len(run(wave)), 1)
        finally:
            torch.set_num_threads(threads)
    return {"vggish_cuda_examples_s": rates["cuda"], "vggish_cpu_1_thread_examples_s": rates["cpu"],
            "cuda_vs_cpu_1_thread": rates["cuda"] / rates["cpu"]}


def format_lines(gpu: dict) -> list[str]:
    """The benchmark table's lines for `measure`'s figures."""
    spatial, flow, audio = gpu["spatial"], gpu["flow"], gpu["audio"]
    return [
        f"gpu: {gpu['device']}",
        f"  spatial {spatial['model']}@{spatial['image_size']} batch {spatial['batch_size']}: embedder "
        f"({spatial['amp_dtype']} AMP, channels_last, uint8 in) {spatial['embedder_img_s']:.0f} img/s vs timm fp32 "
        f"forward {spatial['timm_fp32_img_s']:.0f} → {spatial['embedder_vs_timm_fp32']:.2f}x "
        f"(timm AMP+channels_last alone {spatial['timm_amp_channels_last_img_s']:.0f})",
        f"  flow at {flow['size'][0]}x{flow['size'][1]} batch {flow['batch_size']}: raft_small "
        f"{flow['raft_small_pairs_s']:.0f} pairs/s, raft_large {flow['raft_large_pairs_s']:.0f} pairs/s "
        f"(DIS on one CPU thread {flow['dis_cpu_1_thread_pairs_s']:.0f})",
        f"  audio VGGish: {audio['vggish_cuda_examples_s']:.0f} examples/s vs "
        f"{audio['vggish_cpu_1_thread_examples_s']:.0f} on one CPU thread → {audio['cuda_vs_cpu_1_thread']:.1f}x",
    ]

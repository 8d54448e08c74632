"""`jobs/benchmark.py --gpu-paper`: the paper's settings (`configs/ucf101.yaml`) on one GPU, in minutes.

A UCF101-shaped archive is generated (the demo's four classes drawn at 320x240, 25 fps, `seconds` long, with
16 kHz audio; a third of each class val, a third test), then, each stage against itself alone on the same
device:
- extraction: the extraction job (`run_extract`: decode, RAFT, the spatial CNN, VGGish) → videos/s; alone:
  each model's throughput on device-resident inputs of the same shapes (RAFT pairs/s, spatial images/s,
  VGGish examples/s), summed over what one video needs → the videos/s the models alone allow;
- motion CNN training: its loop (`fit_motion_cnn`) over the extracted flow → stacks/s; alone: forward +
  backward + step on a batch already on the device;
- embedding pass: every video's sampled positions through the trained motion CNN (`embed_video`) → stacks/s;
  alone: `embed` on a device-resident batch;
- RNN heads: each stream's head (`train_head`) → sequences/s; alone: forward + backward + step on a resident
  padded batch.
A stage's GPU-busy share is its rate over its rate alone: the share of its wall the models' own work
accounts for (the rest is the data path, the host, the framework). Weights do not change speed: every model
is randomly initialised, so the benchmark needs no download (GPU machines are often offline).
"""

from __future__ import annotations

import csv
import logging
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np

from multistream.config import Config, load_config

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test", "train", "train", "val", "test", "train", "train")  # by round over the classes
AUDIO_RATE = 16_000


def _write_clip(job: tuple[str, str, int, int, float, tuple[int, int], int]) -> None:
    from multistream.demo.dataset import CUES, write_clip
    from multistream.demo.render import ClipSpec, render_class_audio, render_class_video

    path, label, index, seed, seconds, size, fps = job
    spec = ClipSpec(uri=Path(path).name, label=label, split="", key=(seed, 100, index), ext="mp4",
                    video_codec="libx264", audio_codec="aac", audio_rate=AUDIO_RATE, width=size[0],
                    height=size[1], fps=fps, n_frames=round(seconds * fps))
    appearance, motion, sound = CUES[label]
    write_clip(Path(path), spec, render_class_video(spec, appearance, motion), render_class_audio(spec, sound))


def make_archive(root: str | Path, clips: int, seconds: float = 7.0, size: tuple[int, int] = (320, 240),
                 fps: int = 25, seed: int = 0, workers: int | None = None) -> Path:
    """`clips` labelled clips (the demo's classes in turn) under `root/<Class>/`, and `root/labels.csv`
    (uri,label,split). Written by `workers` processes (default: every core)."""
    from multistream.demo.dataset import DEMO_CLASSES

    root = Path(root)
    rows, jobs = [], []
    for i in range(clips):
        label = DEMO_CLASSES[i % len(DEMO_CLASSES)]
        uri = f"{label}/{label.lower()}_{i:05d}.mp4"
        (root / label).mkdir(parents=True, exist_ok=True)
        rows.append((uri, label, SPLITS[(i // len(DEMO_CLASSES)) % len(SPLITS)]))
        jobs.append((str(root / uri), label, i, seed, seconds, size, fps))
    with ProcessPoolExecutor(workers) as pool:
        list(pool.map(_write_clip, jobs, chunksize=4))
    with open(root / "labels.csv", "w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["uri", "label", "split"])
        writer.writerows(rows)
    return root


def paper_config(config_path: str, overrides: list[str], archive: Path, output: Path, device: str,
                 gpus: float, flow_weights: str | None) -> Config:
    """The paper config on this machine: the archive in, `output` out, random weights, every model on
    `device` (with a GPU, the config's extraction pools as `ray.pools` fits them to this node; without, one fused
    actor per core), one epoch of each training (a benchmark times steps, not convergence)."""
    cfg = load_config(config_path, [
        f"paths.input={archive}", f"paths.labels={archive / 'labels.csv'}", f"paths.output={output}",
        "paths.demo=false", "spatial.weights=null", "audio.weights=null",
        "audio.pca_params=null", "audio.postprocess=raw", f"flow.weights={flow_weights or 'null'}",
        *(f"{section}.device={device}" for section in ("flow", "spatial", "audio", "motion_cnn", "rnn")),
        # on a GPU the config's own pools (fitted to this node by `ray.pools`); on a CPU one actor per core
        *([] if gpus else ["ray.fused={num_cpus: 1, num_gpus: 0, max_actors: auto, batch_size: 1}"]),
        "motion_cnn.epochs=1", "motion_cnn.patience=2", "rnn.epochs=1", "rnn.patience=2",
        "ray.train.num_workers=1", f"ray.train.use_gpu={str(device == 'cuda').lower()}",
        *overrides,
    ])
    return cfg


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def _rate(step, items: int, device, repeats: int = 5) -> float:
    """Items/s of `step()` (which does `items` items), after one warm-up call."""
    step()
    _sync(device)
    started = time.perf_counter()
    for _ in range(repeats):
        step()
    _sync(device)
    return items * repeats / (time.perf_counter() - started)


def models_alone(cfg: Config, device) -> dict[str, float]:
    """Each extraction model's throughput on inputs in memory: the flow core's pairs/s (uint8 frames of the
    flow size), the spatial network's images/s (a device-resident batch), VGGish examples/s (0.96 s each)."""
    import timm
    import torch

    from multistream.extract.flow.registry import make_flow_estimator
    from multistream.extract.vggish import AudioEmbedder

    width, height = cfg.flow.size
    flow = make_flow_estimator(cfg.flow)
    frames = np.random.default_rng(0).integers(0, 256, (4 * cfg.flow.batch_size + 1, height, width, 3), np.uint8)
    size = cfg.spatial.image_size
    spatial = timm.create_model(cfg.spatial.model, pretrained=False, num_classes=0).eval().to(device)
    images = torch.rand(cfg.spatial.batch_size, 3, size, size, device=device)
    audio = AudioEmbedder(replace(cfg.audio, weights=None, pca_params=None, device=str(device)),
                          sample_rate=cfg.video.audio_rate)
    wave = np.random.default_rng(0).uniform(-0.5, 0.5, int(30 * cfg.video.audio_rate)).astype(np.float32)
    examples = len(audio(wave))
    with torch.inference_mode():
        return {"flow_pairs_s": _rate(lambda: flow(frames), len(frames) - 1, device, repeats=2),
                "spatial_images_s": _rate(lambda: spatial(images), len(images), device),
                "vggish_examples_s": _rate(lambda: audio(wave), examples, device, repeats=2)}


def extraction(cfg: Config, device) -> dict:
    from multistream.ray.extract import run_extract
    from multistream.ray.session import init_ray
    from multistream.store import storage
    from multistream.store.layout import RunRoot

    init_ray(cfg)
    started = time.perf_counter()
    summary = run_extract(cfg)
    wall = time.perf_counter() - started
    videos = storage.read_table(RunRoot(cfg.paths.output).videos).to_pandas()
    ok = videos[videos.status == "ok"]
    alone = models_alone(cfg, device)
    pairs, images = float(ok.n_frames.sum() - len(ok)), float(ok.n_samples.sum())
    examples = float(ok.duration_s.sum() / 0.96)
    model_s = pairs / alone["flow_pairs_s"] + images / alone["spatial_images_s"] + examples / alone["vggish_examples_s"]
    return {"videos": summary.total, "ok": summary.ok, "seconds": wall, "videos_per_s": summary.total / wall,
            "alone": alone, "alone_videos_per_s": len(ok) / model_s, "gpu_busy_share": model_s / wall}


def motion(cfg: Config, device) -> tuple[dict, dict]:
    """(training figures, embedding-pass figures) of the motion CNN on the extracted flow."""
    import torch

    from multistream.store.layout import RunRoot
    from multistream.train.motion.data import (
        FlowSource,
        embed_video,
        epoch_stacks,
        pending_positions,
        read_plan,
    )
    from multistream.train.motion.model import model_meta
    from multistream.train.motion.recipe import fit_motion_cnn, new_model
    from multistream.train.steps import motion_optimizer

    run, mc = RunRoot(cfg.paths.output), cfg.motion_cnn
    plan = read_plan(run)
    source = FlowSource(run.flow)
    fit = fit_motion_cnn(source, plan, cfg, device)
    epoch_s = fit.training.history[0]["seconds"]
    # the epoch's training stacks (its seconds also hold the val videos' scoring, forward only)
    stacks = sum(epoch_stacks(plan.pairs[v], mc.stacks_per_video, mc.stack_length, mc.epoch == "whole_flow")
                 for v in plan.train)
    width, height = cfg.flow.size
    batch = torch.rand(mc.batch_size, 2 * mc.stack_length, height, width, device=device) - 0.5
    targets = torch.zeros(mc.batch_size, dtype=torch.int64, device=device)
    model = new_model(plan, cfg).to(device).train()
    optimizer = motion_optimizer(model, mc)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(batch), targets).backward()
        optimizer.step()

    train_alone = _rate(step, mc.batch_size, device)
    meta = model_meta(list(plan.classes), mc, tuple(cfg.flow.size), cfg.flow.clip_px)
    positions = pending_positions(run)
    ids = sorted(positions)
    fitted = fit.model.eval().to(device)
    started = time.perf_counter()
    embedded = 0
    for video_id, flow in zip(ids, source.get(ids), strict=True):
        embedded += len(embed_video(fitted, flow, positions[video_id], meta, mc.embed_batch_size, device))
    _sync(device)
    embed_s = time.perf_counter() - started
    with torch.inference_mode():
        embed_alone = _rate(lambda: fitted.embed(batch[: mc.embed_batch_size]), min(mc.embed_batch_size, len(batch)),
                            device)
    training = {"stacks": stacks, "stacks_per_s": stacks / epoch_s, "alone_stacks_per_s": train_alone,
                "gpu_busy_share": stacks / epoch_s / train_alone}
    embedding = {"stacks": embedded, "stacks_per_s": embedded / embed_s, "videos_per_s": len(ids) / embed_s,
                 "alone_stacks_per_s": embed_alone, "gpu_busy_share": embedded / embed_s / embed_alone}
    return training, embedding


def heads(cfg: Config, device) -> dict:
    """Each stream's RNN head for one epoch: sequences/s against a resident batch's step alone."""
    import torch

    from multistream.store.layout import RunRoot
    from multistream.train.rnn.data import ok_videos, read_sequences, stream_data
    from multistream.train.rnn.recipe import batches, train_head

    run, figures = RunRoot(cfg.paths.output), {}
    videos = ok_videos(run)
    for stream in ("spatial", "audio"):  # the temporal stream's sequences come from the motion CNN's pass
        data = stream_data(run, stream, videos)
        train, val = read_sequences(data, data.train_ids), read_sequences(data, data.val_ids)
        head = train_head(train, val, cfg.rnn, len(data.classes), str(device))
        epoch_s = head.loop.history[0]["seconds"]
        (x, lengths), y = next(iter(batches(train, cfg.rnn.batch_size)))
        x, y = x.to(device), y.to(device)
        model, optimizer = head.model.train(), head.loop.optimizer

        def step(model=model, optimizer=optimizer, x=x, y=y, lengths=lengths) -> None:
            optimizer.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(model(x, lengths), y).backward()
            optimizer.step()

        alone = _rate(step, len(y), device)
        figures[stream] = {"sequences_per_s": len(train) / epoch_s, "alone_sequences_per_s": alone,
                           "gpu_busy_share": len(train) / epoch_s / alone}
    return figures


def run(config_path: str, overrides: list[str], clips: int, seconds: float, device: str | None = None) -> dict:
    """Every figure of the module docstring, on a fresh archive of `clips` clips of `seconds` s."""
    import torch
    from torchvision.models import optical_flow

    device = device or ("cuda" if torch.cuda.is_available() else None)
    if device is None:
        raise SystemExit("benchmark --gpu-paper: no CUDA device here (--paper-device cpu runs it on the CPU, "
                         "at a size the CPU can finish)")
    torch_device = torch.device(device)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="benchmark-paper-") as scratch:
        archive = make_archive(Path(scratch) / "archive", clips, seconds)
        archive_s = time.perf_counter() - started
        backend = load_config(config_path, overrides).flow.backend
        flow_weights = None
        if backend.startswith("raft_"):
            flow_weights = str(Path(scratch) / f"{backend}.pth")
            torch.save(getattr(optical_flow, backend)(weights=None).state_dict(), flow_weights)
        gpus = float(torch.cuda.device_count()) if device == "cuda" else 0.0
        cfg = paper_config(config_path, overrides, archive, Path(scratch) / "run", device,
                           gpus, flow_weights)
        figures = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "clips": clips,
                   "seconds_per_clip": seconds, "flow_size": list(cfg.flow.size), "archive_s": archive_s,
                   "extraction": extraction(cfg, torch_device)}
        figures["motion_cnn_training"], figures["motion_cnn_embedding"] = motion(cfg, torch_device)
        figures["rnn_heads"] = heads(cfg, torch_device)
    figures["wall_s"] = time.perf_counter() - started
    return figures


def format_lines(report: dict) -> list[str]:
    """The printed table of `run`'s figures."""
    ext, train, embed = report["extraction"], report["motion_cnn_training"], report["motion_cnn_embedding"]
    lines = [
        f"paper config on {report['device']}: {report['clips']} clips of {report['seconds_per_clip']:.0f} s at "
        f"{report['flow_size'][0]}x{report['flow_size'][1]} ({report['wall_s']:.0f} s in all)",
        f"{'stage':26}{'rate':>16}{'alone':>16}{'GPU-busy':>10}",
        f"{'extraction':26}{ext['videos_per_s']:>10.2f} vid/s{ext['alone_videos_per_s']:>10.2f} vid/s"
        f"{ext['gpu_busy_share']:>10.0%}",
        f"{'motion CNN training':26}{train['stacks_per_s']:>7.0f} stacks/s{train['alone_stacks_per_s']:>7.0f} "
        f"stacks/s{train['gpu_busy_share']:>10.0%}",
        f"{'motion CNN embedding':26}{embed['stacks_per_s']:>7.0f} stacks/s{embed['alone_stacks_per_s']:>7.0f} "
        f"stacks/s{embed['gpu_busy_share']:>10.0%}",
    ]
    for stream, head in report["rnn_heads"].items():
        lines.append(f"{'RNN head ' + stream:26}{head['sequences_per_s']:>10.0f} seq/s{head['alone_sequences_per_s']:>10.0f}"
                     f" seq/s{head['gpu_busy_share']:>10.0%}")
    alone = ext["alone"]
    lines.append(f"  models alone: flow {alone['flow_pairs_s']:.0f} pairs/s, spatial {alone['spatial_images_s']:.0f} "
                 f"img/s, VGGish {alone['vggish_examples_s']:.0f} examples/s")
    return lines

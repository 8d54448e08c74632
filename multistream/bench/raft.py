"""RAFT flow: `RAFTFlow`'s own forward against torchvision's model call, in speed and in flow.

`raft_speed` measures, in one process with the same torch threads, on `pairs` consecutive pairs of a real clip
resized to `size` (320x240: UCF101's, configs/ucf101.yaml's flow.size), in chunks of `batch_size` pairs:

- baseline: what `RAFTFlow` ran before (`torchvision_flow`): torchvision's `model(image1, image2)[-1]` per chunk
  (each frame's features computed twice, all 12 iterations upsampled), float32 flow copied to the host;
- new: `RAFTFlow.__call__` (each frame encoded once, only the last iteration upsampled, ...: see
  `multistream.extract.flow.raft`), float32 flow to the host; and `RAFTFlow.encode`, what the decoder calls:
  uint8 flow and per-pair magnitudes computed on the device;

each call timed `repeats` times, the two alternating, after one warm-up call each (not counted): seconds per
pair, the fastest and the median of each (the fastest is the least disturbed by other work on the machine), and
baseline / new. Then the flow: mean end-point error (px) of the new flow against torchvision's on the first
`epe_pairs` pairs of each real clip at `size`, and the clips' mean flow length for scale. With `bf16`, the same
for `precision: bf16` (bf16 autocast of encoders and update block, correlation in float32) against torchvision's
float32 flow, on `bf16_pairs` pairs per clip (on a CPU bf16 is slow).

Weights: `weights` as `flow.weights` takes it (a path, a URI, "torchvision" where its URL can be reached). None:
torchvision's architecture with a seeded random init — not the published weights, so the error figures are those
of an untrained network (speed does not depend on the weights).

    python -m multistream.bench.raft [--backend raft_large] [--threads 2] [--bf16]   # prints the dict as JSON
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

CLIPS = Path(__file__).resolve().parents[2] / "tests" / "data" / "clips"  # real clips of a source checkout
_EXTENSIONS = {".avi", ".mp4", ".mkv", ".webm", ".mov"}


def clip_frames(path: str | Path, count: int, size: tuple[int, int] = (320, 240)) -> np.ndarray:
    """The first `count` frames of a video resized to `size` (width, height): (≤ count, H, W, 3) uint8 RGB."""
    from multistream.extract.video import open_video

    frames = []
    with open_video(str(path), max_seconds=1e9) as reader:
        for frame in reader.frames({"flow": size}):
            frames.append(frame.images["flow"])
            if len(frames) == count:
                break
    return np.stack(frames)


def torchvision_flow(model, frames: np.ndarray, batch_size: int, device) -> np.ndarray:
    """`RAFTFlow.__call__` as it was: torchvision's model call on each chunk's (frames[i], frames[i+1]) pairs."""
    import torch
    import torch.nn.functional as F

    n, h, w, _ = frames.shape
    pad_h, pad_w = max(-h % 8, 128 - h), max(-w % 8, 128 - w)
    out = np.empty((n - 1, h, w, 2), np.float32)
    with torch.inference_mode():
        for start in range(0, n - 1, batch_size):
            stop = min(start + batch_size, n - 1)
            x = torch.from_numpy(frames[start:stop + 1]).to(device).permute(0, 3, 1, 2).float()
            x = F.pad(x / 127.5 - 1.0, (0, pad_w, 0, pad_h), mode="replicate")
            flow = model(x[:-1], x[1:])[-1]
            out[start:stop] = flow[:, :, :h, :w].permute(0, 2, 3, 1).cpu().numpy()
    return out


def end_point_error(flow: np.ndarray, reference: np.ndarray) -> float:
    """Mean over pixels (and pairs) of the length of flow - reference, in px."""
    return float(np.sqrt(((flow.astype(np.float64) - reference) ** 2).sum(-1)).mean())


def _clips(clips) -> list[Path]:
    if clips is None:
        clips = [CLIPS]
    found = []
    for item in map(Path, clips):
        found += sorted(p for p in item.iterdir() if p.suffix in _EXTENSIONS) if item.is_dir() else [item]
    return found


def _timed(run, frames: np.ndarray) -> float:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    run(frames)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def raft_speed(backend: str = "raft_small", size: tuple[int, int] = (320, 240), pairs: int = 32,
               batch_size: int = 32, repeats: int = 3, threads: int | None = None, weights: str | None = None,
               device: str = "cpu", clips: list[str | Path] | None = None, epe_pairs: int = 3,
               bf16: bool = False, bf16_pairs: int = 2, clip_px: float = 20.0) -> dict:
    """Seconds per pair of torchvision's model call and of `RAFTFlow` (fastest and median of `repeats`, warm-up
    excluded), their ratio, and the new flow's end-point error against torchvision's on real clips (see the
    module's doc). `clips`: video files or folders (default: tests/data/clips of this checkout)."""
    import torch

    from multistream.config import FlowConfig
    from multistream.device import resolve_device
    from multistream.extract.flow.raft import RAFTFlow, build_raft
    from multistream.weights import load_state_dict

    if threads is not None:
        torch.set_num_threads(threads)
    cfg = FlowConfig(backend=backend, size=size, weights=weights, batch_size=batch_size, device=device, clip_px=clip_px)
    torch.manual_seed(0)
    state = load_state_dict(weights, "flow.weights", cfg) if weights else build_raft(backend).state_dict()
    run_on = resolve_device(device)
    baseline_model = build_raft(backend, state).to(run_on)
    with tempfile.TemporaryDirectory() as scratch:  # RAFTFlow reads its weights as the pipeline does: from a file
        path = str(Path(scratch) / f"{backend}.pth")
        torch.save(state, path)
        new = RAFTFlow(FlowConfig(backend=backend, weights=path, batch_size=batch_size, device=device))
        new_bf16 = RAFTFlow(FlowConfig(backend=backend, weights=path, batch_size=batch_size, device=device),
                            precision="bf16") if bf16 else None
    video = _clips(clips)
    if not video:
        raise FileNotFoundError(f"no clips in {clips or CLIPS}")
    frames = clip_frames(video[0], pairs + 1, size)
    pairs = len(frames) - 1

    runs = {"baseline": lambda f: torchvision_flow(baseline_model, f, batch_size, run_on),
            "new": new, "new_encode": lambda f: new.encode(f, clip_px)}
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    for run in runs.values():
        run(frames)  # warm-up
    for _ in range(repeats):
        for name, run in runs.items():
            seconds[name].append(_timed(run, frames) / pairs)
    result = {"backend": backend, "device": str(run_on), "size": list(size), "batch_size": batch_size,
              "pairs": pairs, "threads": torch.get_num_threads(), "repeats": repeats, "timed_clip": video[0].name,
              "weights": weights or "seeded random init (torch.manual_seed(0)): not the published weights"}
    for name, values in seconds.items():
        result[f"{name}_s_per_pair"] = min(values)
        result[f"{name}_s_per_pair_median"] = float(np.median(values))
    result["speedup"] = result["baseline_s_per_pair"] / result["new_s_per_pair"]
    result["speedup_median"] = result["baseline_s_per_pair_median"] / result["new_s_per_pair_median"]
    result["speedup_encode"] = result["baseline_s_per_pair"] / result["new_encode_s_per_pair"]

    epe, flow_px, epe_bf16 = {}, {}, {}
    bf16_seconds = []
    names = [clip.name for clip in video]
    for clip in video:
        name = clip.name if names.count(clip.name) == 1 else str(clip)
        clip_pairs = clip_frames(clip, epe_pairs + 1, size)
        reference = torchvision_flow(baseline_model, clip_pairs, batch_size, run_on)
        epe[name] = end_point_error(new(clip_pairs), reference)
        flow_px[name] = float(np.sqrt((reference.astype(np.float64) ** 2).sum(-1)).mean())
        if new_bf16 is not None:
            few = clip_pairs[:bf16_pairs + 1]
            start = time.perf_counter()
            flow = new_bf16(few)
            bf16_seconds.append((time.perf_counter() - start) / (len(few) - 1))
            epe_bf16[name] = end_point_error(flow, reference[:len(few) - 1])
    result.update(epe_px=epe, epe_px_mean=float(np.mean(list(epe.values()))), epe_px_max=max(epe.values()),
                  epe_pairs_per_clip=epe_pairs, flow_px_mean=flow_px)
    if new_bf16 is not None:
        result["bf16"] = {"epe_px": epe_bf16, "epe_px_mean": float(np.mean(list(epe_bf16.values()))),
                          "epe_px_max": max(epe_bf16.values()), "pairs_per_clip": bf16_pairs,
                          # the first clip's call includes bf16's warm-up: the median of the clips
                          "s_per_pair_median": float(np.median(bf16_seconds))}
    return result


def format_lines(figures: dict) -> list[str]:
    """The benchmark table's lines for `raft_speed`'s figures."""
    return [f"RAFT {figures['backend']} at {figures['size'][0]}x{figures['size'][1]} on {figures['device']} "
            f"({figures['threads']} threads, chunks of {figures['batch_size']}): torchvision's call "
            f"{figures['baseline_s_per_pair']:.3f} s/pair, shared features + last-only upsampling "
            f"{figures['new_s_per_pair']:.3f} → {figures['speedup']:.2f}x ({figures['speedup_median']:.2f}x median); "
            f"with device quantisation {figures['speedup_encode']:.2f}x; flow within {figures['epe_px_max']:.1e} px "
            f"mean end-point error on {len(figures['epe_px'])} real clips ({figures['weights']})"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m multistream.bench.raft", description=__doc__.split("\n")[0])
    parser.add_argument("--backend", default="raft_small", choices=["raft_small", "raft_large"])
    parser.add_argument("--size", type=int, nargs=2, default=[320, 240], metavar=("W", "H"))
    parser.add_argument("--pairs", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--weights", default=None, help="flow.weights (default: a seeded random init)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--clips", nargs="*", default=None, help="video files or folders (default: tests/data/clips)")
    parser.add_argument("--epe-pairs", type=int, default=3)
    parser.add_argument("--bf16", action="store_true", help="also measure precision bf16's error")
    parser.add_argument("--bf16-pairs", type=int, default=2)
    args = parser.parse_args(argv)
    print(json.dumps(raft_speed(args.backend, tuple(args.size), args.pairs, args.batch_size, args.repeats, args.threads,
                                args.weights, args.device, args.clips, args.epe_pairs, args.bf16, args.bf16_pairs),
                     indent=1))


if __name__ == "__main__":
    main()

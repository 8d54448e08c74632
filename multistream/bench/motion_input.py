"""The motion CNN's host-side input work per stack, on one thread: today's numpy `flow_stacks` (gather, cast,
deinterleave, mean, scale: float32 out) against the uint8 host gather that feeds the device (`gather_batch`: a copy
of each stack's contiguous pair range into the batch's buffer), and, for information, the device conversion
(`pairs_to_stacks`) timed on the CPU.

    python -m multistream.bench.motion_input          # 320x240, L=10: prints the dict
"""

from __future__ import annotations

import json
import time

import numpy as np


def _rates(work, stacks: int, min_s: float) -> tuple[float, float]:
    """(stacks per CPU second of this thread, stacks per wall second) of `work()`, which makes `stacks` stacks,
    repeated for at least `min_s` of wall time after one warm-up run."""
    work()
    runs, cpu, wall = 0, time.thread_time(), time.perf_counter()
    while True:
        work()
        runs += 1
        if time.perf_counter() - wall >= min_s:
            return runs * stacks / (time.thread_time() - cpu), runs * stacks / (time.perf_counter() - wall)


def motion_input_speed(width: int = 320, height: int = 240, stack_length: int = 10, pairs: int = 250,
                       batch_size: int = 32, clip_px: float = 20.0, min_s: float = 2.0, seed: int = 0) -> dict:
    """Host-side input work per stack at `width` x `height`, L = `stack_length`, on one thread (torch's too), in
    one run: stacks/s of numpy `flow_stacks` (one call per stack, as the batches were made, its float32 batch
    copy not counted) and of the uint8 host gather (`gather_batch` into the batch's buffer, reused from batch to
    batch as the training reuses it: a ring of buffers on the CPU, torch's pinned-memory cache for a GPU), their
    ratio ("speedup"), and for information the gather into a new (page-faulting, unpinned) buffer each batch and
    the CPU's stacks/s of `pairs_to_stacks` (the conversion the training device does). Rates are per second of
    the thread's CPU time ("_per_s"), unmoved by other load on the machine, and of wall time ("_wall_per_s").
    The flow: `pairs` random uint8 pairs (larger than the CPU's caches at the default size), `batch_size` random
    centres a batch."""
    import torch

    from multistream.train.motion.data import gather_batch
    from multistream.train.motion.model import flow_stacks, pairs_to_stacks

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rng = np.random.default_rng(seed)
        flow = rng.integers(0, 256, (pairs, height, width, 2), dtype=np.uint8)
        centers = rng.integers(0, pairs + 1, batch_size).tolist()
        items = [(flow, c, 0) for c in centers]
        buffer = torch.empty((batch_size, stack_length, height, width, 2), dtype=torch.uint8)
        gathered, _ = gather_batch(items, stack_length)
        work = {
            "numpy_flow_stacks": lambda: [flow_stacks(flow, [c], stack_length, clip_px) for c in centers],
            "host_gather": lambda: gather_batch(items, stack_length, out=buffer),
            "host_gather_new_buffer": lambda: gather_batch(items, stack_length),
            "cpu_pairs_to_stacks": lambda: pairs_to_stacks(gathered, clip_px),
        }
        rates = {name: _rates(run, batch_size, min_s) for name, run in work.items()}
    finally:
        torch.set_num_threads(threads)
    out = {"width": width, "height": height, "stack_length": stack_length, "batch_size": batch_size, "threads": 1}
    for name, (cpu, wall) in rates.items():
        out[f"{name}_per_s"], out[f"{name}_wall_per_s"] = round(cpu, 1), round(wall, 1)
    out["speedup"] = round(rates["host_gather"][0] / rates["numpy_flow_stacks"][0], 2)
    out["speedup_wall"] = round(rates["host_gather"][1] / rates["numpy_flow_stacks"][1], 2)
    out["uint8_mb_per_stack"] = round(stack_length * height * width * 2 / 1e6, 3)
    out["float32_mb_per_stack"] = round(stack_length * height * width * 2 * 4 / 1e6, 3)
    return out


def format_lines(figures: dict) -> list[str]:
    """The benchmark table's lines for `motion_input_speed`'s figures."""
    return [f"motion CNN input at {figures['width']}x{figures['height']}, L={figures['stack_length']}, one thread: "
            f"uint8 host gather {figures['host_gather_per_s']:.0f} stacks/s vs numpy flow_stacks "
            f"{figures['numpy_flow_stacks_per_s']:.0f} → {figures['speedup']:.1f}x per CPU second "
            f"({figures['speedup_wall']:.1f}x wall); {figures['uint8_mb_per_stack']:.2f} MB to the device a stack "
            f"instead of {figures['float32_mb_per_stack']:.2f} (device conversion on a CPU: "
            f"{figures['cpu_pairs_to_stacks_per_s']:.0f} stacks/s)"]


if __name__ == "__main__":
    print(json.dumps(motion_input_speed(), indent=1))

"""The environment of every Ray worker process of a job (and of the benchmark's one-process baselines, which
must run under the same settings to be compared with it)."""

from __future__ import annotations

# glibc's default malloc returns large buffers to the OS after every free, so every batch of CPU inference
# page-faults its buffers back in. Keep them mapped instead; and keep every thread on the main heap: Ray Data
# calls a map actor's function from a non-main thread, whose own malloc arena would be unmapped and faulted
# back in on every batch whatever the thresholds (figures: docs/design.md#malloc-settings).
WORKER_ENV = {
    "MALLOC_MMAP_THRESHOLD_": "4000000000",
    "MALLOC_TRIM_THRESHOLD_": "100000000000",
    "MALLOC_ARENA_MAX": "1",
    "PYTHONWARNINGS": "ignore::DeprecationWarning",
}


def worker_env(torch_threads: int) -> dict[str, str]:
    """The environment of every worker of a local Ray (and of the benchmark's baselines beside it)."""
    return {**WORKER_ENV, "OMP_NUM_THREADS": str(torch_threads)}


def train_worker_threads(torch_threads: int, cpus_per_worker: float) -> int:
    """A Ray Train worker's torch threads: every CPU it holds, `ray.torch_threads` the floor (the plain-loop
    baselines run on as many)."""
    return max(torch_threads, int(cpus_per_worker))

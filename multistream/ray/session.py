"""Starting or joining Ray: a job joins the cluster it was submitted to, or starts a local one."""

from __future__ import annotations

import logging
import os

import ray

from multistream.config import Config

log = logging.getLogger(__name__)

# glibc's default malloc returns large buffers to the OS after every free, so every batch of CPU inference
# page-faults its buffers back in (25-29% of inference time measured here). Keep them mapped instead.
WORKER_ENV = {
    "MALLOC_MMAP_THRESHOLD_": "4000000000",
    "MALLOC_TRIM_THRESHOLD_": "100000000000",
    "PYTHONWARNINGS": "ignore::DeprecationWarning",
}


def init_ray(cfg: Config) -> None:
    """Join `ray.address` / $RAY_ADDRESS / a cluster started with `ray start`, else start a local Ray.

    The address "local" always starts a new local Ray, even where a cluster runs on the machine.
    """
    if ray.is_initialized():
        return
    address = cfg.ray.address or os.environ.get("RAY_ADDRESS")
    if address and address != "local":
        ray.init(address=address, log_to_driver=True)
        log.info("joined Ray cluster at %s: %s", address, ray.cluster_resources())
        return
    if not address:
        try:
            ray.init(address="auto", log_to_driver=True)
            log.info("joined the running Ray cluster: %s", ray.cluster_resources())
            return
        except ConnectionError:
            pass
    ray.init(num_cpus=cfg.ray.num_cpus, include_dashboard=False,
             runtime_env={"env_vars": {**WORKER_ENV, "OMP_NUM_THREADS": str(cfg.ray.torch_threads)}})
    log.info("started a local Ray: %s", ray.cluster_resources())


def worker_setup(torch_threads: int) -> None:
    """Call at the start of every actor/worker: Ray gives torch one thread unless told otherwise."""
    import torch

    torch.set_num_threads(max(1, torch_threads))


def read_parquet(table_uri: str, video_ids=None, columns: list[str] | None = None, num_cpus: float = 0.25):
    """A Ray Dataset over a table of the run root (local or s3://), optionally only some videos' rows.

    Reading is I/O: its tasks ask for a fraction of a CPU, so that they never wait for the CPUs that
    training workers or model actors hold."""
    from ray.data.expressions import col

    from multistream import storage

    path, filesystem = storage.arrow_location(table_uri)
    ds = ray.data.read_parquet(path, columns=columns, num_cpus=num_cpus, filesystem=filesystem)
    if video_ids is not None:  # pushed down to the Parquet reader
        ds = ds.filter(expr=col("video_id").is_in(sorted(video_ids)))
    return ds

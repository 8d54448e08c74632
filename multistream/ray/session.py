"""Starting or joining Ray: a job joins the cluster it was submitted to, or starts a local one."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import ray

from multistream.cli import setup_logging
from multistream.config import Config, StageResources
from multistream.ray.pools import Cluster, Node, from_cluster_file, largest
from multistream.ray.worker_env import WORKER_ENV, worker_env
from multistream.store import s3config

log = logging.getLogger(__name__)

# Every worker logs like the driver (INFO, same format) and quiets Ray's lines as the driver does; Ray forwards
# its output to the driver's.
WORKER_RUNTIME_ENV = {"env_vars": WORKER_ENV, "worker_process_setup_hook": "multistream.ray.session.setup_worker"}

# Ray's own lines a healthy run does without, by logger (Ray's log files under its session folder keep them):
QUIET_LOGGERS = {
    # (Ray Data's start, plan and end of each dataset: its console level, in multistream/ray/ray_data_logging.yaml)
    "ray.data._internal.progress": logging.ERROR,  # "Progress bars disabled": the job's own line replaces them
    "ray._private.authentication.authentication_token_setup": logging.ERROR,  # the local Ray's default auth mode
    "ray.train._internal.storage": logging.WARNING,  # "Checkpoint successfully created" of every Tune trial
    # a local Ray has no dashboard, hence no state API: its placement-group cleaner warns every few seconds
    "ray.train.v2._internal.execution.controller.placement_group_cleaner": logging.ERROR,
}
# A local Ray runs no preemption watcher (spot-instance notices, which a laptop never gets); its actor's creation
# logs an error line of Ray's core (arguments in the object store of an actor that may restart).
LOCAL_ENV = {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}


def quiet_ray_logs() -> None:
    """Quiet Ray's lines in this process as QUIET_LOGGERS says (and Ray Train's "Reporting training result")."""
    for name, level in QUIET_LOGGERS.items():
        logging.getLogger(name).setLevel(level)
    # Ray Train names this logger by its file; where Train is not imported (decode actors) there is none
    context = sys.modules.get("ray.train.v2._internal.execution.context")
    if context is not None:
        logging.getLogger(context.__file__).setLevel(logging.WARNING)


def setup_worker() -> None:
    """The setup hook of every worker process of a local Ray and of every Ray Data actor of a job."""
    setup_logging()
    quiet_ray_logs()


def _init(**kwargs) -> None:
    """`ray.init` with Ray's driver-side logger at WARNING and QUIET_LOGGERS applied (before: it logs some)."""
    quiet_ray_logs()
    ray.init(logging_level=logging.WARNING, **kwargs)
    quiet_ray_logs()


_started_local = False  # True once this process started its own local Ray (whose resources cannot grow)


def join_cluster(cfg: Config) -> bool:
    """Join `ray.address` / $RAY_ADDRESS / a cluster started with `ray start`; False where there is none to
    join (no address and no running cluster, or the address "local"): a local Ray would be started."""
    if ray.is_initialized():
        return True
    address = cfg.ray.address or os.environ.get("RAY_ADDRESS")
    from multistream.weights import fetch as weights_fetch

    # a cluster's workers do not inherit the driver's environment: the S3 settings and the weights' download
    # limits travel with the job
    joined_env = {"env_vars": {**s3config.env(s3config.current()), **weights_fetch.env(weights_fetch.current())}}
    if address and address != "local":
        _init(address=address, log_to_driver=True, runtime_env=joined_env)
        log.info("joined Ray cluster at %s: %s", address, ray.cluster_resources())
        return True
    if not address:
        try:
            _init(address="auto", log_to_driver=True, runtime_env=joined_env)
            log.info("joined the running Ray cluster: %s", ray.cluster_resources())
            return True
        except ConnectionError:
            pass
    return False


def init_ray(cfg: Config) -> None:
    """Join a cluster (`join_cluster`), else start a local Ray. The address "local" always starts a new local
    Ray, even where a cluster runs on the machine."""
    global _started_local
    if join_cluster(cfg):
        return
    for name, value in LOCAL_ENV.items():
        os.environ.setdefault(name, value)
    _init(num_cpus=cfg.ray.num_cpus, include_dashboard=False,
          runtime_env={**WORKER_RUNTIME_ENV, "env_vars": worker_env(cfg.ray.torch_threads)})
    _started_local = True
    log.info("started a local Ray: %s", ray.cluster_resources())


def fixed_size() -> bool:
    """Whether the Ray of this process is a local one it started: its resources are all there will be."""
    return _started_local and ray.is_initialized()


# The autoscaler's config on the head of a `ray up` cluster, where a submitted job's driver runs
BOOTSTRAP_CONFIG = "~/ray_bootstrap_config.yaml"


def job_cluster(cfg: Config) -> Cluster:
    """The cluster this job's pools are judged against (`multistream.ray.pools`): the cluster file `ray.cluster`
    at its largest; else the live nodes, grown to each node group's max count where Ray reports the autoscaler's
    config, or where this node holds the config of a `ray up` autoscaler; else the live nodes as they are."""
    if cfg.ray.cluster:
        return from_cluster_file(cfg.ray.cluster)
    live = [Node(float(node["Resources"].get("CPU", 0)), int(node["Resources"].get("GPU", 0)))
            for node in ray.nodes() if node["Alive"]]
    if fixed_size():
        return Cluster(tuple(live), "the local Ray this job started")
    groups = _autoscaler_groups()
    if groups:
        return largest(groups, live, "the largest cluster its autoscaler can grow to (Ray's cluster config)")
    bootstrap = Path(BOOTSTRAP_CONFIG).expanduser()
    if bootstrap.is_file():
        return from_cluster_file(bootstrap)
    return Cluster(tuple(live), "the live cluster (no autoscaler's maximum is known here: an autoscaling "
                                "cluster's file goes in ray.cluster)")


def _autoscaler_groups() -> list[tuple[Node, int]] | None:
    """Each node group's shape and max count (-1: none) from the autoscaler's config in Ray's GCS, where the
    autoscaler reported one (Ray's private state API, as Ray Data's and Ray Train's autoscaling read it)."""
    try:
        from ray._private.state import state

        config = state.get_cluster_config()
    except Exception as error:  # noqa: BLE001 - an API of Ray's internals: without it, the live nodes
        log.debug("no cluster config from Ray: %s", error)
        return None
    if config is None:
        return None
    return [(Node(float(group.resources.get("CPU", 0)), int(group.resources.get("GPU", 0)), group.name),
             int(group.max_count)) for group in config.node_group_configs if group.resources]


def map_stage(ds: ray.data.Dataset, stage: type, resources: StageResources, *, batch_size: int | None = None,
              batch_format: str = "numpy", **constructor_kwargs) -> ray.data.Dataset:
    """`ds.map_batches` through a pool of `stage` actors (built with `constructor_kwargs`) as `resources` say.

    The actors get WORKER_ENV even where the job joined a cluster that was started without it."""
    if not isinstance(resources.max_actors, int):  # auto, N/gpu, N/node: `multistream.ray.pools.fit_pools`
        raise ValueError(f"max_actors {resources.max_actors!r} is not resolved against the cluster yet")
    return ds.map_batches(
        stage, fn_constructor_kwargs=constructor_kwargs, batch_size=batch_size or resources.batch_size,
        batch_format=batch_format, num_cpus=resources.num_cpus, num_gpus=resources.num_gpus or None,
        compute=ray.data.ActorPoolStrategy(min_size=resources.min_actors, max_size=resources.max_actors),
        runtime_env=WORKER_RUNTIME_ENV)


def worker_setup(torch_threads: int) -> None:
    """Call at the start of every actor/worker: Ray gives torch one thread unless told otherwise (and Ray Train's
    loggers exist by then, to be quieted)."""
    import torch

    quiet_ray_logs()
    torch.set_num_threads(max(1, torch_threads))


def read_parquet(table_uri: str, video_ids=None, columns: list[str] | None = None, num_cpus: float = 0.25):
    """A Ray Dataset over a table of the run root (local or s3://), optionally only some videos' rows.

    Reading is I/O: its tasks ask for a fraction of a CPU, so that they never wait for the CPUs that
    training workers or model actors hold."""
    from ray.data.expressions import col

    from multistream.store import storage

    path, filesystem = storage.arrow_location(table_uri)
    ds = ray.data.read_parquet(path, columns=columns, num_cpus=num_cpus, filesystem=filesystem)
    if video_ids is not None:  # pushed down to the Parquet reader
        ds = ds.filter(expr=col("video_id").is_in(sorted(video_ids)))
    return ds

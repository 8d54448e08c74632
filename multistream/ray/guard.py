"""A job's start on Ray: the checks of `multistream.store.preflight` around the Ray session.

    with start_job(cfg, "extract", reads_input=True):
        run_extract(cfg)

In order: the config's S3 retry settings are applied (and travel to the workers: `s3config`); `--input` must
be readable; a running Ray cluster is joined (a local Ray is started later, by the job, if it has work); on a
cluster of several nodes a local `--input`/`--output` is refused unless `paths.shared_filesystem` says every
node sees it; the lease of `--output` is taken, which is also the check that `--output` is writable.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager

import ray

from multistream.config import Config
from multistream.ray.session import join_cluster
from multistream.store import preflight, s3config
from multistream.store.layout import absolute


def _ray_job() -> str | None:
    if not ray.is_initialized():
        return None
    job_id = ray.get_runtime_context().get_job_id()
    submitted = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR", "{}")).get("metadata", {})
    submission = submitted.get("job_submission_id")
    return f"{job_id} ({submission})" if submission else job_id


@contextmanager
def start_job(cfg: Config, job: str, *, reads_input: bool = False, uses_ray: bool = True):
    """Run the block as `job` on `cfg.paths.output`: checks first, the lease held throughout (yields it).

    reads_input: check `--input` too (extraction). uses_ray: False for a job that runs in its own process only
    (fusion): Ray is neither started nor asked about its nodes."""
    if not preflight.holds(absolute(cfg.paths.output)):
        s3config.configure(cfg.storage)
        preflight.check_windows(cfg, job)
        if reads_input:
            preflight.check_input(cfg, job)
        # a cluster is joined now, to count its nodes; a local Ray (one node) is started only where the job
        # has work for it, so that a re-run with nothing to do never waits for one
        if uses_ray and join_cluster(cfg):
            nodes = sum(1 for node in ray.nodes() if node["Alive"])
            preflight.check_shared_paths(cfg, job, reads_input, nodes)
    with preflight.hold_run_root(cfg, job, _ray_job()) as lease:
        yield lease

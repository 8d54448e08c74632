"""What a job checks before any work, and the run root's lease it holds while it works (no Ray here).

`multistream.ray.guard.start_job` runs these in order around a job; each failure stops the job with one line
naming the path and the reason (`JobRefused`, a SystemExit: no traceback). While the job runs, an error of the
output's storage (disk full, read-only, access denied) is reported the same way; what was committed before it
stays readable, and running the job again resumes. Nested holds of one run root (a pipeline running each job
in turn) share the outer hold's lease.
"""

from __future__ import annotations

import errno
from contextlib import contextmanager

from multistream.config import Config
from multistream.store import schema, storage
from multistream.store.layout import RunRoot, absolute
from multistream.store.lease import Lease, LeaseHeld, this_process
from multistream.store.uris import redact, scrub

STORAGE_ERRNOS = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
                  errno.EROFS: "read-only filesystem", errno.EACCES: "permission denied",
                  errno.EPERM: "operation not permitted", errno.EFBIG: "file too large"}

_held: dict[str, list] = {}  # run root → [lease, depth]


class JobRefused(SystemExit):
    """A job stopped before (or instead of) doing harm; the message names the path and the reason."""


def is_local(uri: str) -> bool:
    return "://" not in uri or uri.startswith("file://")


def check_input(cfg: Config, job: str) -> None:
    uri = cfg.paths.input
    from multistream.dataset.sources import expand_braces

    try:
        found = any(storage.exists(name) for name in expand_braces(uri)[:1] + expand_braces(uri)[-1:])
    except (PermissionError, OSError) as error:
        raise JobRefused(f"{job}: cannot read --input {redact(uri)}: {scrub(str(error), uri)}") from None
    if not found:
        raise JobRefused(f"{job}: --input {redact(uri)} does not exist (or its bucket does not)")


TRAINING_JOBS = ("train_motion", "train_rnn", "tune_rnn")


def check_windows(cfg: Config, job: str) -> None:
    """Refuse video.windows in the pipeline unless anomaly.fit_on is windows (the models train on whole clips; the
    windows are then those the autoencoder is fitted on), video.windows or anomaly.fit_on windows without
    `ray.fused` (a window's models run in the actor that decodes it), and a training job on a run root whose
    features/ or flow/ were extracted in windows."""
    if cfg.video.windows is not None and job == "pipeline" and cfg.anomaly.fit_on != "windows":
        raise JobRefused("pipeline: the models train on whole clips (a clip is one window): video.windows is for "
                         "jobs/predict.py, jobs/extract.py where windowed tables are wanted, and the pipeline with "
                         "anomaly.fit_on=windows (the windows the anomaly autoencoder is fitted on)")
    windowed = cfg.video.windows is not None and job in ("extract", "predict") or (
        cfg.anomaly.fit_on == "windows" and job == "pipeline")
    if windowed and cfg.ray.fused is None:
        raise JobRefused(f"{job}: windows run each window's models in the actor that decodes the video "
                         "(video.windows, anomaly.fit_on=windows): they need ray.fused (configs/demo.yaml's), not null")
    if job in TRAINING_JOBS:
        run = RunRoot(absolute(cfg.paths.output))
        for table in (run.features, run.flow):
            names = storage.list_parts(table)
            found = storage.part_schema(table, names[0]) if names else None
            if found is not None and schema.is_windowed(found):
                raise JobRefused(f"{job}: {redact(table)} was extracted in time windows (video.windows): the models "
                                 "train on whole clips; extract the training videos without video.windows")


def check_shared_paths(cfg: Config, job: str, reads_input: bool, nodes: int) -> None:
    """Refuse local paths on a cluster of `nodes` alive nodes (more than one), unless declared shared."""
    if cfg.paths.shared_filesystem or nodes <= 1:
        return
    paths = [("--input", cfg.paths.input)] if reads_input else []
    for flag, uri in [*paths, ("--output", cfg.paths.output)]:
        if is_local(uri):
            raise JobRefused(
                f"{job}: {flag} {uri} is a local path, but the Ray cluster has {nodes} nodes, each of which "
                f"would use its own disk: give an s3:// URI, or --set paths.shared_filesystem=true where "
                f"every node mounts it at the same path (NFS, EFS)")


def storage_error(error: BaseException) -> str | None:
    """The reason when `error` (or one it wraps, Ray's task errors included) is an error of the storage."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in STORAGE_ERRNOS:
            return f"{STORAGE_ERRNOS[error.errno]} ({error})"
        if isinstance(error, PermissionError):
            return f"access denied ({error})"
        for code, reason in STORAGE_ERRNOS.items():
            if f"[Errno {code}]" in str(error):
                return reason
        error = getattr(error, "cause", None) or error.__cause__ or error.__context__
    return None


def holds(uri: str) -> bool:
    """Whether this process holds run root `uri` (a job nested in another, as in the pipeline)."""
    return absolute(uri) in _held


def check_lease(uri: str) -> None:
    """Raise where this process holds run root `uri` and has lost its lease since: call it before a step that
    must not race another job, such as the end-of-run removal of stray commits."""
    held = _held.get(absolute(uri))
    if held is not None:
        held[0].check()


@contextmanager
def hold_run_root(cfg: Config, job: str, ray_job: str | None = None):
    """Run the block as `job` holding the lease of `cfg.paths.output` (yields the lease); `ray_job` names the
    Ray job in the lease, for the message a second job gets."""
    root = RunRoot(absolute(cfg.paths.output))
    if root.uri in _held:
        _held[root.uri][1] += 1
        try:
            yield _held[root.uri][0]
        finally:
            _held[root.uri][1] -= 1
        return
    lease = Lease(root.lease, this_process(job, ray_job), ttl_s=cfg.storage.lease_ttl_s,
                  wait_s=cfg.storage.lease_wait_s)
    try:
        lease.acquire()
    except LeaseHeld as error:
        raise JobRefused(f"{job}: {error}") from error
    except OSError as error:  # the first write under --output
        reason = storage_error(error) or error
        raise JobRefused(f"{job}: cannot write --output {root.uri}: {reason}") from error
    _held[root.uri] = [lease, 0]
    try:
        yield lease
    except Exception as error:
        reason = storage_error(error)
        if reason is None:
            raise
        raise JobRefused(f"{job}: writing under --output {root.uri} failed: {reason}. What was committed "
                         f"before stays; run the job again to resume once the output is writable") from error
    finally:
        del _held[root.uri]
        lease.release()

"""A job's start: S3 settings applied, paths checked, the run root's lease taken; storage errors told.

Without Ray (`uses_ray=False`): the refusal of local paths on a multi-node cluster is in test_faults_cluster."""

from __future__ import annotations

import errno
import os

import pytest

from multistream.config import load_config
from multistream.ray.guard import start_job
from multistream.store import s3config, storage
from multistream.store.layout import RunRoot
from multistream.store.lease import Lease, this_process
from multistream.store.preflight import JobRefused, check_lease, check_shared_paths, storage_error


def config(tmp_path, output: str | None = None, *overrides: str):
    return load_config(overrides=[f"paths.input={tmp_path}", f"paths.output={output or tmp_path / 'run'}",
                                  "paths.demo=false", *overrides])


def test_storage_errors_are_found_inside_the_errors_that_wrap_them():
    class TaskError(RuntimeError):  # as Ray's task errors keep the worker's exception
        def __init__(self, cause):
            super().__init__("task failed")
            self.cause = cause

    full = OSError(errno.ENOSPC, "No space left on device")
    assert storage_error(TaskError(full)).startswith("no space left on the device")
    try:
        try:
            raise PermissionError("Access Denied")
        except PermissionError as error:
            raise RuntimeError("write failed") from error
    except RuntimeError as wrapped:
        assert storage_error(wrapped).startswith("access denied")
    read_only = RuntimeError("OSError: [Errno 30] Read-only file system: '/x'")  # as text only
    assert storage_error(read_only) == "read-only filesystem"
    assert storage_error(ValueError("bad video")) is None


def test_the_config_s_s3_settings_reach_new_clients(tmp_path, s3_bucket, monkeypatch):
    for key, value in s3config.env(s3config.DEFAULTS).items():  # undone after the test
        monkeypatch.setenv(key, value)
    assert s3config.current() == s3config.DEFAULTS
    cfg = config(tmp_path, f"{s3_bucket}/run", "storage.retries=4", "storage.retry_mode=standard",
                 "storage.read_timeout=7")
    with start_job(cfg, "extract", uses_ray=False):
        fs, _ = storage.filesystem(f"{s3_bucket}/run")
        retries = fs.config_kwargs["retries"]  # botocore turns max_attempts (retries) into total attempts
        assert retries["mode"] == "standard" and retries.get("total_max_attempts", 0) in (0, 5)
        assert retries.get("max_attempts", 4) == 4
        assert fs.config_kwargs["read_timeout"] == 7.0 and fs.retries == 4
        assert os.environ["MULTISTREAM_S3_RETRY_MODE"] == "standard"  # and so in a local Ray's workers


def test_a_missing_bucket_or_input_stops_the_job_before_any_work(tmp_path, s3_server):
    with pytest.raises(JobRefused, match="cannot write --output s3://no-such-bucket/run: The specified"):
        with start_job(config(tmp_path, "s3://no-such-bucket/run"), "train_rnn", uses_ray=False):
            raise AssertionError("the job ran")
    cfg = load_config(overrides=[f"paths.input={tmp_path / 'nothing'}", f"paths.output={tmp_path / 'run'}"])
    with pytest.raises(JobRefused, match=f"--input {tmp_path / 'nothing'} does not exist"):
        with start_job(cfg, "extract", reads_input=True, uses_ray=False):
            raise AssertionError("the job ran")
    assert not (tmp_path / "run").exists()


def test_a_held_run_root_is_refused_and_nested_jobs_share_the_lease(tmp_path):
    cfg = config(tmp_path)
    other = Lease(RunRoot(cfg.paths.output).lease, this_process("train_motion"), ttl_s=60)
    other.acquire()
    try:
        with pytest.raises(JobRefused, match=r"extract: .* is held by train_motion \(host "):
            with start_job(cfg, "extract", uses_ray=False):
                raise AssertionError("the job ran")
    finally:
        other.release()
    with start_job(cfg, "pipeline", uses_ray=False) as outer:
        with start_job(cfg, "extract", uses_ray=False) as inner:
            assert inner is outer and not outer.lost
        check_lease(cfg.paths.output)
        outer.lost = True  # as its heartbeat finds after another job took over
        with pytest.raises(RuntimeError, match="no longer holds the lease"):
            check_lease(cfg.paths.output)
        outer.lost = False
    assert storage.list_files(RunRoot(cfg.paths.output).lease, (".json",)) == []


def test_an_output_storage_error_mid_job_is_one_clear_line_and_other_errors_pass(tmp_path):
    cfg = config(tmp_path)
    with pytest.raises(JobRefused, match="no space left on the device.*run the job again to resume"):
        with start_job(cfg, "extract", uses_ray=False):
            raise OSError(errno.ENOSPC, "No space left on device")
    with pytest.raises(ValueError, match="not a storage error"):
        with start_job(cfg, "extract", uses_ray=False):
            raise ValueError("not a storage error")
    assert storage.list_files(RunRoot(cfg.paths.output).lease, (".json",)) == []


def test_local_paths_are_refused_on_several_nodes_unless_declared_shared(tmp_path):
    local = config(tmp_path)
    check_shared_paths(local, "extract", reads_input=True, nodes=1)
    with pytest.raises(JobRefused, match=r"extract: --input .* is a local path, but the Ray cluster has 3 nodes"):
        check_shared_paths(local, "extract", reads_input=True, nodes=3)
    with pytest.raises(JobRefused, match="fuse: --output .* is a local path"):
        check_shared_paths(local, "fuse", reads_input=False, nodes=3)
    check_shared_paths(config(tmp_path, None, "paths.shared_filesystem=true"), "extract", True, nodes=3)
    check_shared_paths(config(tmp_path, "s3://bucket/run"), "train_rnn", reads_input=False, nodes=3)


def test_a_job_with_no_cluster_to_join_starts_no_ray_until_it_has_work(tmp_path):
    """Joining happens at the start (to count a cluster's nodes); a local Ray is the job's to start, so that a
    re-run with nothing to do never waits for one."""
    import subprocess
    import sys

    script = ("import ray\nfrom multistream.config import load_config\nfrom multistream.ray.guard import start_job\n"
              f"cfg = load_config(overrides=['paths.input={tmp_path}', 'paths.output={tmp_path / 'run'}', "
              "'paths.demo=false'])\nwith start_job(cfg, 'extract', reads_input=True):\n"
              "    print('ray started:', ray.is_initialized())\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "RAY_ADDRESS": "local"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "ray started: False" in done.stdout

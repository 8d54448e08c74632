"""A job whose lease heartbeat stalls stops before its next write or delete; the job that takes over keeps the
first one's committed parts. The run root is on S3 (moto) behind the fault proxy, which stalls the first job's
lease requests; the first job runs in a process of its own."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import pyarrow as pa

from multistream.store import commit, storage
from multistream.store.layout import RunRoot
from multistream.store.lease import Lease, this_process
from tests.support.helpers import ROOT
from tests.support.s3_proxy import FaultPlan, FaultProxy

TTL_S = 4.0

FIRST_JOB = textwrap.dedent("""
    import sys, time
    import pyarrow as pa
    from multistream.config import load_config
    from multistream.store import commit, storage
    from multistream.store.layout import RunRoot
    from multistream.store.lease import LeaseLost
    from multistream.store.preflight import hold_run_root

    root = sys.argv[1]
    cfg = load_config(None, [f"paths.output={{root}}", "storage.lease_ttl_s={ttl}", "storage.retries=1"])
    run = RunRoot(root)
    table = pa.table({{"video_id": ["a1", "a2"]}})
    with hold_run_root(cfg, "extract") as lease:
        commit.write_group("part-a", [(table, run.features), (table, run.videos)])
        print("committed", flush=True)
        while not lease.lost:  # the test stalls the heartbeat now
            time.sleep(0.1)
        print("lease lost", flush=True)
        time.sleep(2 * {ttl})  # meanwhile the second job takes over and commits
        try:  # what an end-of-run clean-up of a stale view would do: delete what it did not write
            commit.drop_stray_commits(run, {{"part-a"}})
        except LeaseLost as error:
            print("stopped:", error, flush=True)
            sys.exit(3)
        print("deleted", flush=True)
""").format(ttl=TTL_S)


def wait_for(process: subprocess.Popen, marker: str) -> list[str]:
    """The process's output lines up to the line `marker` (log lines come between)."""
    lines = []
    for line in process.stdout:
        lines.append(line.rstrip("\n"))
        if lines[-1] == marker:
            return lines
    raise AssertionError(f"no {marker!r} line:\n" + "\n".join(lines))


def test_a_stalled_heartbeat_stops_the_job_before_it_deletes_the_next_job_s_commits(s3_server, s3_bucket, tmp_path):
    root = f"{s3_bucket}/run"
    run = RunRoot(root)
    proxy = FaultProxy(s3_server).start()
    script = tmp_path / "first_job.py"
    script.write_text(FIRST_JOB)
    env = {**os.environ, "AWS_ENDPOINT_URL": proxy.endpoint, "PYTHONPATH": str(ROOT)}
    first = subprocess.Popen([sys.executable, str(script), root], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(first, "committed")
        # every lease request of the first job hangs from now on, as a stalled connection would
        proxy.set_plan(FaultPlan(slow=1.0, slow_s=60.0, only=("run/lease/",)))
        started = time.monotonic()
        before = wait_for(first, "lease lost")
        assert time.monotonic() - started < TTL_S, "the lease was not given up before another job may take it"
        # the second job (straight to S3) takes over once the first's heartbeat is older than the TTL
        second = Lease(run.lease, this_process("pipeline"), ttl_s=TTL_S, wait_s=4 * TTL_S)
        second.acquire()
        try:
            table = pa.table({"video_id": ["b1"]})
            commit.write_group("part-b", [(table, run.features), (table, run.videos)])
            output, _ = first.communicate(timeout=60)
        finally:
            second.release()
    finally:
        if first.poll() is None:
            first.kill()
        proxy.stop()
    assert any("lost the lease of" in line and "no heartbeat for" in line for line in before), before
    assert first.returncode == 3 and "stopped: this job lost the lease" in output, output
    assert "deleted" not in output
    assert set(storage.list_parts(run.videos)) == {"part-a", "part-b"}  # neither job's commit was touched
    assert set(storage.list_parts(run.features)) == {"part-a", "part-b"}

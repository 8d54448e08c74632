"""The run root's lease on a local folder and on S3 (moto): one holder at a time, a dead one never blocks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, replace

import psutil
import pytest

from multistream.store import storage
from multistream.store.layout import RunRoot
from multistream.store.lease import Lease, LeaseHeld, this_process
from tests.support.helpers import ROOT


@pytest.fixture(params=["local", "s3"])
def run_root(request, tmp_path):
    if request.param == "local":
        return RunRoot(str(tmp_path / "run"))
    return RunRoot(request.getfixturevalue("s3_bucket") + "/run")


def test_second_holder_is_refused_with_the_first_named_then_takes_over_after_release(run_root):
    first = Lease(run_root.lease, this_process("extract", "01000000"), ttl_s=30)
    first.acquire()
    with pytest.raises(LeaseHeld) as refused:
        Lease(run_root.lease, this_process("train_rnn"), ttl_s=30).acquire()
    message = str(refused.value)
    holder = first.holder
    day = time.strftime("%Y-%m-%d", time.gmtime(holder.started))
    facts = ("extract", holder.host, f"pid {holder.pid}", "Ray job 01000000", day)
    assert all(fact in message for fact in facts)
    first.release()
    with Lease(run_root.lease, this_process("train_rnn"), ttl_s=30) as second:
        assert second.generation == 1  # the released generation was removed
        assert storage.list_files(run_root.lease, (".json",))[-1].endswith("0000000001.json")
    assert storage.list_files(run_root.lease, (".json",)) == []  # released: nothing left behind


def test_a_waiting_job_takes_the_lease_once_the_holder_releases_it(run_root):
    first = Lease(run_root.lease, this_process("extract"), ttl_s=30)
    first.acquire()
    threading.Timer(1.0, first.release).start()
    started = time.monotonic()
    with Lease(run_root.lease, this_process("extract"), ttl_s=30, wait_s=20, poll_s=0.2):
        assert 0.9 < time.monotonic() - started < 10


def test_concurrent_takers_get_exactly_one_winner(run_root):
    barrier = threading.Barrier(6)
    outcomes = []

    def take():
        lease = Lease(run_root.lease, this_process("extract"), ttl_s=30)
        barrier.wait()
        try:
            lease.acquire()
            outcomes.append(lease)
        except LeaseHeld:
            outcomes.append(None)

    threads = [threading.Thread(target=take) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    winners = [lease for lease in outcomes if lease is not None]
    assert len(outcomes) == 6 and len(winners) == 1
    winners[0].release()


def _foreign(run_root: RunRoot, generation: int, *, age_s: float, ttl_s: float = 5.0) -> None:
    holder = replace(this_process("extract"), host="another-host", pid=1)
    record = {"holder": asdict(holder), "heartbeat": time.time() - age_s, "ttl_s": ttl_s, "released": False}
    storage.write_text(run_root.join("lease", f"{generation:010d}.json"), json.dumps(record))


def test_a_silent_holder_on_another_host_expires_after_its_ttl(run_root):
    _foreign(run_root, 7, age_s=1.0)
    with pytest.raises(LeaseHeld, match="another-host"):
        Lease(run_root.lease, this_process("extract")).acquire()
    _foreign(run_root, 7, age_s=6.0)  # its last heartbeat now older than its ttl
    with Lease(run_root.lease, this_process("extract")) as lease:
        assert lease.generation == 8
        names = [os.path.basename(p) for p in storage.list_files(run_root.lease, (".json",))]
        assert names == ["0000000008.json"]


def test_a_killed_holder_on_this_host_frees_the_lease_at_once(tmp_path):
    run_root = RunRoot(str(tmp_path / "run"))
    code = ("import sys, time; from multistream.store.lease import Lease, this_process; "
            "Lease(sys.argv[1], this_process('extract'), ttl_s=600).acquire(); print('held', flush=True); "
            "time.sleep(600)")
    holder = subprocess.Popen([sys.executable, "-c", code, run_root.lease], stdout=subprocess.PIPE, text=True,
                              cwd=ROOT)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(LeaseHeld, match=f"pid {holder.pid}"):
            Lease(run_root.lease, this_process("extract"), ttl_s=600).acquire()
        os.kill(holder.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while psutil.Process(holder.pid).status() != psutil.STATUS_ZOMBIE and time.monotonic() < deadline:
            time.sleep(0.05)
        started = time.monotonic()  # dead but not yet reaped: its pid still exists
        with Lease(run_root.lease, this_process("extract"), ttl_s=600):
            assert time.monotonic() - started < 5  # not the 600 s of its ttl
        holder.wait(10)
    finally:
        holder.kill()


def test_a_holder_overtaken_after_a_stall_knows_it_lost_the_lease(run_root):
    lease = Lease(run_root.lease, this_process("extract"), ttl_s=0.4)
    lease.acquire()
    try:
        lease.check()
        _foreign(run_root, lease.generation + 1, age_s=0.0, ttl_s=60)  # another job took over
        deadline = time.monotonic() + 10
        while not lease.lost and time.monotonic() < deadline:
            time.sleep(0.05)
        assert lease.lost
        with pytest.raises(RuntimeError, match="no longer holds the lease"):
            lease.check()
    finally:
        lease.release()
    assert storage.exists(run_root.join("lease", "0000000002.json"))  # the new holder's stays

"""The run root's lease: one job at a time writes under a run root, and a crashed job never blocks the next.

The lease is a folder of generation files, `<run root>/lease/<generation>.json`; the highest generation is the
lease in force. A job takes the lease by creating the next generation exclusively — `O_EXCL`-like on a local
or shared filesystem (a hard link of a finished temporary file), a conditional PUT (`If-None-Match: *`) on
S3 — so of two jobs only one can create it, and the winner checks that no higher generation appeared
meanwhile.
The holder rewrites its own file every `ttl_s / 4` seconds (the heartbeat), each write given at most
`ttl_s / 4` to finish. A generation is free when its holder released it, when its heartbeat is older than
`ttl_s` (a crashed or killed job: no one removes its file), or at once when its holder was a process of this
host and PID namespace (container) that is gone. A holder has lost the lease (`lost`) when its heartbeat finds
a higher generation or another job's record in its own file, or when no heartbeat succeeded for `ttl_s / 2`
(any error: storage, network, credentials, a hung call) — well before another job may take over. From then on
every write and delete of this process under the run root raises LeaseLost (`storage`'s write guard, set
while the lease is held), so a job that lost its lease stops before it can touch another job's files.

Heartbeat ages compare wall clocks: the hosts sharing a run root must agree on the time within `ttl_s`.
On an S3-compatible store that ignores `If-None-Match`, two jobs racing for the same generation would both
write it; the re-read of the file after the write and on every heartbeat then leaves one of them `lost`
(best effort there; AWS S3, MinIO and moto honour the condition).
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass

import psutil

from multistream.store import storage

log = logging.getLogger(__name__)


class LeaseLost(RuntimeError):
    """This job no longer holds its run root's lease: it must stop before writing or deleting anything there."""


class LeaseHeld(RuntimeError):
    """The run root is held by another live job; `holder` describes it."""

    def __init__(self, message: str, holder: Holder):
        super().__init__(message)
        self.holder = holder


@dataclass(frozen=True)
class Holder:
    job: str
    host: str
    pid: int
    started: float  # epoch seconds
    token: str  # unique per acquisition
    process_started: float | None = None  # psutil create_time: tells a reused pid from the holder
    ray_job: str | None = None
    pid_namespace: str | None = None  # e.g. "pid:[4026531836]": a pid means a process only within it

    def describe(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.started))
        ray_job = f", Ray job {self.ray_job}" if self.ray_job else ""
        return f"{self.job} (host {self.host}, pid {self.pid}{ray_job}, started {when})"


def _pid_namespace() -> str | None:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:  # not Linux
        return None


def this_process(job: str, ray_job: str | None = None) -> Holder:
    pid = os.getpid()
    return Holder(job, socket.gethostname(), pid, time.time(), uuid.uuid4().hex,
                  psutil.Process(pid).create_time(), ray_job, _pid_namespace())


def _attempt(call) -> tuple[str, object]:
    try:
        return "ok", call()
    except Exception as error:  # noqa: BLE001 - any failure of a heartbeat is reported the same way
        return "error", f"{type(error).__name__}: {error}"


def _delete(uri: str) -> None:
    fs, path = storage.filesystem(uri)
    try:
        fs.rm(path)
    except FileNotFoundError:
        pass


def _process_gone(holder: Holder) -> bool:
    """Whether `holder` was a process of this host and PID namespace that no longer runs (a holder in another
    container of the same host, or of a record without its namespace, is left to its heartbeat's age)."""
    if holder.host != socket.gethostname() or holder.pid_namespace is None \
            or holder.pid_namespace != _pid_namespace():
        return False
    try:
        process = psutil.Process(holder.pid)
        created = process.create_time()
        if process.status() == psutil.STATUS_ZOMBIE:  # killed, not yet reaped by its parent
            return True
    except psutil.NoSuchProcess:
        return True
    return holder.process_started is not None and abs(created - holder.process_started) > 1.0


class Lease:
    """`with Lease(run.lease, holder, ttl_s=60):` holds the run root for the block, heartbeating meanwhile."""

    def __init__(self, directory: str, holder: Holder, *, ttl_s: float = 60.0, wait_s: float = 0.0,
                 poll_s: float | None = None):
        self.directory, self.holder, self.ttl_s, self.wait_s = directory, holder, ttl_s, wait_s
        self.poll_s = poll_s if poll_s is not None else min(5.0, ttl_s / 4)
        self.generation: int | None = None
        self.lost = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # the files
    def _path(self, generation: int) -> str:
        return storage.join(self.directory, f"{generation:010d}.json")

    def _generations(self) -> list[int]:
        try:
            names = [posixpath.basename(p) for p in storage.list_files(self.directory, (".json",))]
        except FileNotFoundError:
            return []
        return sorted(int(n[:-5]) for n in names if n[:-5].isdigit())

    def _read(self, generation: int) -> dict | None:
        try:
            return json.loads(storage.read_text(self._path(generation)))
        except FileNotFoundError:
            return None

    def _record(self, released: bool = False) -> bytes:
        return json.dumps({"holder": asdict(self.holder), "heartbeat": time.time(), "ttl_s": self.ttl_s,
                           "released": released}).encode()

    def _create(self, generation: int) -> bool:
        """Create `generation` unless it exists; True when this holder's record is the one stored."""
        uri = self._path(generation)
        fs, path = storage.filesystem(uri)
        data = self._record()
        try:
            if "s3" in fs.protocol:
                bucket, key = path.split("/", 1)
                fs.call_s3("put_object", Bucket=bucket, Key=key, Body=data, IfNoneMatch="*")
            else:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                tmp = posixpath.join(os.path.dirname(path), f".{uuid.uuid4().hex}.tmp")
                with open(tmp, "wb") as f:
                    f.write(data)
                try:
                    os.link(tmp, path)  # atomic, fails where the name exists
                finally:
                    os.remove(tmp)
        except FileExistsError:
            pass  # also what a retried PUT whose first answer was lost gets: the re-read below tells
        record = self._read(generation)
        return record is not None and record["holder"]["token"] == self.holder.token

    # the current state
    def current(self) -> tuple[int, dict | None]:
        """(highest generation, its record or None); (0, None) when there is none."""
        while True:
            generations = self._generations()
            if not generations:
                return 0, None
            record = self._read(generations[-1])
            if record is not None:
                return generations[-1], record

    def _free(self, record: dict) -> bool:
        holder = Holder(**record["holder"])
        if record["released"]:
            return True
        if time.time() - record["heartbeat"] > record["ttl_s"]:
            log.warning("the lease of %s expired (no heartbeat for %.0f s): taking over",
                        holder.describe(), time.time() - record["heartbeat"])
            return True
        if _process_gone(holder):
            log.warning("the lease holder %s is no longer running: taking over", holder.describe())
            return True
        return False

    # taking, keeping and giving back
    def acquire(self) -> None:
        """Take the lease, waiting up to `wait_s` for a live holder; raise LeaseHeld naming it after that."""
        deadline, announced = time.monotonic() + self.wait_s, False
        while True:
            generation, record = self.current()
            if record is None or self._free(record):
                if self._create(generation + 1):
                    if self.current()[0] == generation + 1:
                        self.generation = generation + 1
                        break
                    _delete(self._path(generation + 1))  # a later generation won meanwhile
                continue
            holder = Holder(**record["holder"])
            left = deadline - time.monotonic()
            if left <= 0:
                raise LeaseHeld(f"{self.directory} is held by {holder.describe()}: one job at a time writes "
                                f"a run root (storage.lease_wait_s sets how long to wait for it)", holder)
            if not announced:
                log.info("waiting up to %.0f s for %s to release %s", self.wait_s, holder.describe(),
                         self.directory)
                announced = True
            time.sleep(min(self.poll_s, left))
        for old in self._generations():
            if old < self.generation:
                _delete(self._path(old))
        storage.add_write_guard(self.guard)
        storage.set_writer_generation(self.generation)
        self._thread = threading.Thread(target=self._beat, name="lease-heartbeat", daemon=True)
        self._thread.start()

    def _heartbeat(self) -> str | None:
        """One heartbeat: None when written, else why the lease is another job's now."""
        generation, record = self.current()
        token = record["holder"]["token"] if record else None
        if generation != self.generation or token != self.holder.token:
            return f"generation {generation} is {record['holder']['job'] if record else 'nobody'}'s (ours {self.generation})"
        storage.write_bytes(self._path(self.generation), self._record())
        return None

    def _beat(self) -> None:
        last_ok = time.monotonic()
        while not self._stop.wait(self.ttl_s / 4):
            # each heartbeat in a thread of its own, waited for ttl_s / 4: a call that hangs (a stalled
            # connection whose retries outlast the TTL) counts as failed instead of stopping the clock
            outcome: list = []
            beat = threading.Thread(target=lambda into=outcome: into.append(_attempt(self._heartbeat)), daemon=True)
            beat.start()
            beat.join(self.ttl_s / 4)
            if outcome and outcome[0][0] == "ok" and outcome[0][1] is None:
                last_ok = time.monotonic()
                continue
            if outcome and outcome[0][0] == "ok":
                self._lose(outcome[0][1])
                return
            log.warning("lease heartbeat of %s failed: %s", self.directory,
                        outcome[0][1] if outcome else f"no answer in {self.ttl_s / 4:.0f} s")
            if time.monotonic() - last_ok > self.ttl_s / 2:
                self._lose(f"no heartbeat for {time.monotonic() - last_ok:.0f} s (half its {self.ttl_s:.0f} s "
                           "time to live)")
                return

    def _lose(self, why: str) -> None:
        self.lost = True
        log.error("lost the lease of %s: %s; this job stops before its next write there", self.directory, why)

    def guard(self, uri: str) -> None:
        """storage's write guard while the lease is held: raise LeaseLost for a write or delete under the run
        root once the lease is lost (the lease's own files excepted)."""
        root = posixpath.dirname(self.directory.rstrip("/"))
        if self.lost and uri.startswith(root + "/") and not uri.startswith(self.directory.rstrip("/") + "/"):
            raise LeaseLost(f"this job lost the lease of {root} (another job may hold it now): it stops before "
                            f"writing or deleting {uri}; run it again to resume")

    def check(self) -> None:
        """Raise LeaseLost when the lease was lost (before a step that must not race another job)."""
        if self.lost or self.generation is None:
            raise LeaseLost(f"this job no longer holds the lease of {self.directory}")

    def release(self) -> None:
        storage.remove_write_guard(self.guard)
        storage.set_writer_generation(None)
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.generation is not None and not self.lost:
            generation, record = self.current()
            if generation == self.generation and record and record["holder"]["token"] == self.holder.token:
                _delete(self._path(self.generation))
        self.generation = None

    def __enter__(self) -> Lease:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

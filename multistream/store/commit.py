"""The commit protocol of every table written incrementally, and committing extracted videos under it
(docs/design.md#commit-protocol).

A group of videos is written as one part per table under ONE part name (`part_name`): every table but the
last is staged (`<table>/_staged/<part>.parquet`, skipped by pyarrow, pandas and a duckdb `*.parquet` glob),
then the last table's part, the group's marker, is written in place: that is the commit; then the staged parts
are moved into place (`write_group`). So a plain reader of any table never sees a row of a group whose commit
did not complete. Whoever resumes lists the marker's parts (`committed_parts`), publishes the staged parts of
committed groups and deletes the others (`drop_uncommitted`), and skips the committed videos. A table
rewritten whole is one part, written before any other part is deleted (`replace_table`). Users:
- extraction: `flow/<part>` and `features/<part>` (its ok videos) staged, the marker `videos/<part>` (every
  video of the group), then both published. The driver gathers finished videos for a commit until the first
  is `commit.every_s` old or they pass `commit.max_mb` (`CommitClock`): a kill -9 loses at most `every_s` of
  work plus the commits in flight. On start (`resume_state`) `video_id`, `status` and `error_kind` of
  `videos/` are read; transient error rows (all with --retry-errors) are withdrawn and extracted again. At
  the end of a run (`drop_stray_commits`), `videos/` parts it neither found nor wrote (late commits of a
  killed run's surviving workers, whose videos this run extracted again) are deleted with their twins;
- predict (`multistream.ray.predict`): the same commits of its extraction, whose rows carry each stream's
  embedding (its RNN heads run before the commit): `embeddings/<part>` staged, the marker `videos/<part>`, and
  no `features/` nor `flow/` (both as extraction writes them with --keep-flow); the ok videos of a committed
  `videos/` part are embedded. Then (not with --embed-only) each `embeddings/` part without an `anomaly/` twin
  is scored: `predictions/<part>` staged, the marker `anomaly/<part>`;
- fuse: `predictions/` and `anomaly/`, each replaced as the one part "fuse".
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute  # noqa: F401 - pa.compute

from multistream.extract.errors import TRANSIENT
from multistream.extract.rows import (
    EMBEDDINGS,
    embedded_table,
    features_table,
    flow_table,
    row_bytes,
    videos_table,
)
from multistream.store import schema, storage
from multistream.store.layout import RunRoot
from multistream.store.lease import LeaseLost

log = logging.getLogger(__name__)


def part_name(video_ids: list[str]) -> str:
    """A stable part name for a set of videos: re-processing the same videos overwrites, never duplicates."""
    digest = hashlib.sha1("\n".join(sorted(video_ids)).encode()).hexdigest()
    return f"part-{digest[:20]}"


def write_group(name: str, parts: Sequence[tuple[pa.Table, str]]) -> None:
    """One group's parts, each (table, table URI) as `<table URI>/<name>`: every table but the last staged
    (`<table URI>/_staged/<name>`, which readers skip), then the last, the marker, written in place: that is the
    commit; then the staged parts moved into place. A kill before the marker leaves nothing a reader sees; one
    after it leaves staged parts that resume publishes (`drop_uncommitted`). Writing a group again is harmless."""
    *data, (marker, marker_uri) = parts
    for table, table_uri in data:
        storage.write_part(table, table_uri, name, staged=True)
    storage.write_part(marker, marker_uri, name)
    for _, table_uri in data:
        storage.publish_part(table_uri, name)


def committed_parts(marker: str) -> set[str]:
    """The names of the committed groups: the parts of the `marker` table."""
    return set(storage.list_parts(marker))


def check_deletable(table_uri: str, name: str, staged: bool = False) -> None:
    """Raise LeaseLost unless this job may delete the part: one written under its own lease generation or an
    earlier one (whose holder the lease has passed on from: provably stale), or without a lease. A part of a
    later generation is a later job's: this job's lease was taken over, and it stops."""
    own = storage.writer_generation()
    if own is None:
        return
    written = storage.part_generation(table_uri, name, staged)
    if written is not None and written > own:
        raise LeaseLost(f"{storage.join(table_uri, storage.STAGED if staged else '', name)} was written by lease "
                        f"generation {written}, after this job's {own}: another job holds the run root now; this "
                        "job stops without deleting it")


def delete_part(table_uri: str, name: str, staged: bool = False) -> None:
    """Delete a part (the write guards, then `check_deletable`)."""
    storage.check_write(storage.join(table_uri, storage.STAGED if staged else "", name))
    check_deletable(table_uri, name, staged)
    (storage.delete_staged if staged else storage.delete_part)(table_uri, name)


def drop_uncommitted(committed: set[str], tables: Iterable[str]) -> None:
    """Finish the commits of a killed job in `tables`: publish the staged parts of `committed` groups, delete
    every other staged part, and every part whose marker was never written (run roots written before parts
    were staged). Only this job's parts and its predecessors' are deleted (`check_deletable`)."""
    for table_uri in tables:
        for name in storage.list_staged(table_uri):
            if name in committed:
                storage.publish_part(table_uri, name)
            else:
                log.info("removing uncommitted part %s", storage.join(table_uri, storage.STAGED, name))
                delete_part(table_uri, name, staged=True)
        for name in set(storage.list_parts(table_uri)) - committed:
            log.info("removing uncommitted part %s", storage.join(table_uri, name))
            delete_part(table_uri, name)


def replace_table(table: pa.Table, table_uri: str, name: str) -> None:
    """Write `table` as the one part `name` of `table_uri` (atomically), then delete any other parts."""
    storage.write_part(table, table_uri, name)
    for other in storage.list_parts(table_uri):
        if other != name:
            delete_part(table_uri, other)


class CommitClock:
    """Which finished items go into one commit: those gathered until the first of them is `every_s` seconds old
    or their bytes reach `max_bytes` (0 s: each item is its own commit). A kill -9 loses at most the items of
    the group being gathered, `every_s` of work, plus the commits in flight.

        clock = CommitClock(every_s=10, max_bytes=512 * 2**20)
        group = clock.add(item, nbytes)   # a full group (list) or None
        if clock.due(): group = clock.take()
    """

    def __init__(self, every_s: float, max_bytes: float, now: Callable[[], float] = time.monotonic):
        self.every_s, self.max_bytes, self.now = every_s, max_bytes, now
        self.items: list = []
        self.nbytes, self.since = 0, 0.0

    def add(self, item, nbytes: int) -> list | None:
        if not self.items:
            self.since = self.now()
        self.items.append(item)
        self.nbytes += nbytes
        return self.take() if self.nbytes >= self.max_bytes or self.due() else None

    def due(self) -> bool:
        return bool(self.items) and self.now() - self.since >= self.every_s

    def wait_s(self) -> float | None:
        """Seconds until the group being gathered is due (None: no group)."""
        return max(0.0, self.since + self.every_s - self.now()) if self.items else None

    def take(self) -> list:
        items, self.items, self.nbytes = self.items, [], 0
        return items


def groups_by_bytes(rows: list[dict], max_bytes: float) -> list[list[dict]]:
    """Consecutive groups of `rows`, each as long as its rows' bytes stay within `max_bytes` (≥ 1 row)."""
    groups, size = [[]], 0
    for row in rows:
        nbytes = row_bytes(row)
        if groups[-1] and size + nbytes > max_bytes:
            groups.append([])
            size = 0
        groups[-1].append(row)
        size += nbytes
    return [group for group in groups if group]


def commit(rows: list[dict], run: RunRoot, clip_px: float, max_bytes: float) -> list[tuple[str, list[dict]]]:
    """Write finished rows (see `extract_rows`) as committed parts; returns [(part name, its `videos/` rows)].
    The ok rows' arrays give the staged parts: "flow" a `flow/` part, "spatial" and "audio" a `features/` one,
    "embedding_<stream>" (predict's) an `embeddings/` one; every row is in the marker, `videos/<part>`."""
    committed = []
    for group in groups_by_bytes(rows, max_bytes):
        name = part_name([row["video"]["video_id"] for row in group])
        ok = [row for row in group if row["video"]["status"] == "ok"]
        with_flow = [row for row in ok if "flow" in row]
        parts = [(pa.concat_tables([flow_table(row["video"]["video_id"], row["flow"], clip_px) for row in with_flow]),
                  run.flow)] if with_flow else []
        if any("spatial" in row for row in ok):
            parts.append((features_table(ok), run.features))
        if any(key in row for row in ok for key in EMBEDDINGS.values()):
            parts.append((embedded_table(ok), run.embeddings))
        write_group(name, [*parts, (videos_table(group), run.videos)])
        committed.append((name, [row["video"] for row in group]))
    return committed


@dataclass
class ResumeState:
    done: set[str]  # ids of the videos committed and not to be tried again
    parts: set[str]  # names of the `videos/` parts that commit them
    retried: int = 0  # error rows withdrawn to be extracted again


def twins(run: RunRoot, embeds: bool = False) -> list[str]:
    """The tables whose parts a `videos/` part commits: `features/`, `flow/`, and `embeddings/` where the
    extraction `embeds` (predict's; a training run's `embeddings/` is one table written whole, no twin)."""
    return [run.features, run.flow, *([run.embeddings] if embeds else [])]


def resume_state(run: RunRoot, retry_errors: bool = False, embeds: bool = False) -> ResumeState:
    """Finish or drop the commits of an interrupted run (`twins`); what is committed already. An error row whose
    `error_kind` is transient (every error row with `retry_errors`) is withdrawn from its part, so that its
    video is extracted again and has one row in every reader's view, the new one once committed."""
    parts = committed_parts(run.videos)
    drop_uncommitted(parts, twins(run, embeds))
    videos = storage.read_columns(run.videos, ["video_id", "status", "error_kind"], schema.VIDEOS_SCHEMA,
                                  with_part=True)
    retry: dict[str, set[str]] = {}
    for video_id, status, kind, part in zip(*(videos[c].to_pylist() for c in ("video_id", "status", "error_kind",
                                                                           "part")), strict=True):
        if status == "error" and (retry_errors or kind == TRANSIENT):
            retry.setdefault(part, set()).add(video_id)
    for part, ids in retry.items():
        if not withdraw(run, part, ids):
            parts.discard(part)
    retried = {video_id for ids in retry.values() for video_id in ids}
    if retried:
        log.info("%d error row(s) to extract again (%s)", len(retried),
                 "--retry-errors" if retry_errors else "their errors were transient")
    return ResumeState(set(videos["video_id"].to_pylist()) - retried, parts, len(retried))


def withdraw(run: RunRoot, part: str, video_ids: set[str]) -> bool:
    """Rewrite the `videos/` part `part` without the rows of `video_ids` (error rows: no twin holds them),
    atomically; a part left empty is deleted (False)."""
    table = storage.read_part(run.videos, part)
    keep = table.filter(pa.compute.invert(pa.compute.is_in(table["video_id"], pa.array(sorted(video_ids)))))
    if keep.num_rows:
        storage.write_part(keep, run.videos, part)
        return True
    delete_part(run.videos, part)
    return False


def drop_stray_commits(run: RunRoot, known_parts: set[str], embeds: bool = False) -> int:
    """Delete `videos/` parts (and their `twins`) that are not in `known_parts`; returns how many."""
    stray = set(storage.list_parts(run.videos)) - known_parts
    for name in stray:
        delete_part(run.videos, name)
        for table in twins(run, embeds):
            delete_part(table, name)
            delete_part(table, name, staged=True)
    if stray:
        log.warning("dropped %d part(s) committed late by an interrupted run's workers; their videos were "
                    "extracted again by this run", len(stray))
    return len(stray)

"""The commit protocol of every table written incrementally, and committing extracted videos under it.

A group of videos is written as one part per table under ONE part name (`part_name`), in order: the last table
written is the group's marker and its part the commit (`write_group`). Whoever resumes lists the marker's
parts (`committed_parts`), deletes the parts of the other tables without a twin there (`drop_uncommitted`:
a group killed before its marker) and skips the committed videos. A table rewritten whole is one part,
written before any other part is deleted (`replace_table`). Users:
- extraction: `flow/<part>`, then `features/<part>` (its ok videos), then the marker `videos/<part>` (every
  video of the group); a group is at most `ray.write.batch_size` videos, split further where their
  features + flow pass `commit.max_mb` (a kill -9 loses at most the videos not yet committed). On start
  (`resume_state`) only `video_id` of `videos/` is read. At the end of a run
  (`drop_stray_commits`), `videos/` parts it neither found nor wrote (late commits of a killed run's
  surviving workers, whose videos this run extracted again) are deleted with their twins;
- predict (`multistream.predict.batch`): `embeddings/<part>`, `predictions/<part>`, then the marker
  `anomaly/<part>` (`embeddings/` alone with --embed-only);
- fuse: `predictions/` and `anomaly/`, each replaced as the one part "fuse".
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import pyarrow as pa

from multistream.extract.rows import features_table, flow_table, row_bytes, videos_table
from multistream.store import schema, storage
from multistream.store.layout import RunRoot

log = logging.getLogger(__name__)


def part_name(video_ids: list[str]) -> str:
    """A stable part name for a set of videos: re-processing the same videos overwrites, never duplicates."""
    digest = hashlib.sha1("\n".join(sorted(video_ids)).encode()).hexdigest()
    return f"part-{digest[:20]}"


def write_group(name: str, parts: Sequence[tuple[pa.Table, str]]) -> None:
    """One group's parts: each (table, table URI) written as `<table URI>/<name>` in order; the last is the
    marker, whose part commits the group."""
    for table, table_uri in parts:
        storage.write_part(table, table_uri, name)


def committed_parts(marker: str) -> set[str]:
    """The names of the committed groups: the parts of the `marker` table."""
    return set(storage.list_parts(marker))


def drop_uncommitted(committed: set[str], tables: Iterable[str]) -> None:
    """Delete every part of `tables` that is not one of the `committed` groups (its marker was never written)."""
    for table_uri in tables:
        for name in set(storage.list_parts(table_uri)) - committed:
            log.info("removing uncommitted part %s", storage.join(table_uri, name))
            storage.delete_part(table_uri, name)


def replace_table(table: pa.Table, table_uri: str, name: str) -> None:
    """Write `table` as the one part `name` of `table_uri` (atomically), then delete any other parts."""
    storage.write_part(table, table_uri, name)
    for other in storage.list_parts(table_uri):
        if other != name:
            storage.delete_part(table_uri, other)


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
    """Write finished rows (see `extract_rows`) as committed parts; returns [(part name, its `videos/` rows)]."""
    committed = []
    for group in groups_by_bytes(rows, max_bytes):
        name = part_name([row["video"]["video_id"] for row in group])
        ok = [row for row in group if row["video"]["status"] == "ok"]
        flow = [(pa.concat_tables([flow_table(row["video"]["video_id"], row["flow"], clip_px) for row in ok]),
                 run.flow), (features_table(ok), run.features)] if ok else []
        write_group(name, [*flow, (videos_table(group), run.videos)])
        committed.append((name, [row["video"] for row in group]))
    return committed


@dataclass
class ResumeState:
    done: set[str]  # ids of the videos committed (ok or error)
    parts: set[str]  # names of the `videos/` parts that commit them


def resume_state(run: RunRoot) -> ResumeState:
    """Drop the uncommitted parts of an interrupted run; what is committed already."""
    parts = committed_parts(run.videos)
    drop_uncommitted(parts, [run.features, run.flow])
    videos = storage.read_columns(run.videos, ["video_id"], schema.VIDEOS_SCHEMA)
    return ResumeState(set(videos["video_id"].to_pylist()), parts)


def drop_stray_commits(run: RunRoot, known_parts: set[str]) -> int:
    """Delete `videos/` parts (and their twins) that are not in `known_parts`; returns how many."""
    stray = set(storage.list_parts(run.videos)) - known_parts
    for name in stray:
        storage.delete_part(run.videos, name)
        storage.delete_part(run.features, name)
        storage.delete_part(run.flow, name)
    if stray:
        log.warning("dropped %d part(s) committed late by an interrupted run's workers; their videos were "
                    "extracted again by this run", len(stray))
    return len(stray)


def error_kind(message: str, uri: str | None = None) -> str:
    """The message without what differs from video to video (its URI, numbers): failures of one cause share it."""
    if uri:
        message = message.replace(uri, "<video>")
    message = re.sub(r"\S+\.(?:avi|mp4|mkv|mov|webm|m4v|mpg|mpeg|flv|wmv)\b", "<video>", message, flags=re.I)
    return re.sub(r"\d+(?:\.\d+)?", "#", message)[:160]


@dataclass
class ErrorKinds:
    """Failed videos counted by kind of error, with the first few of each kind; len() is how many failed."""

    examples: int = 3
    kinds: dict[str, list] = field(default_factory=dict)  # kind -> [count, [(video_id, message), ...]]

    def add(self, video_id: str, message: str, uri: str | None = None) -> None:
        entry = self.kinds.setdefault(error_kind(message or "", uri), [0, []])
        entry[0] += 1
        if len(entry[1]) < self.examples:
            entry[1].append((video_id, message))

    def __len__(self) -> int:
        return sum(count for count, _ in self.kinds.values())

    def lines(self) -> list[str]:
        """A few lines per kind, the commonest first."""
        out = []
        for kind, (count, examples) in sorted(self.kinds.items(), key=lambda item: -item[1][0]):
            out.append(f"  {count} × {kind}")
            out += [f"      e.g. {video_id}: {message}" for video_id, message in examples]
        return out


@dataclass
class ExtractSummary:
    total: int  # videos in the manifest
    skipped: int  # committed before this run
    ok: int = 0
    errors: ErrorKinds = field(default_factory=ErrorKinds)
    parts: int = 0  # commits this run wrote
    seconds: float = 0.0


class Progress:
    """Counts committed videos; logs one progress line at most every `every_s` seconds."""

    def __init__(self, summary: ExtractSummary, every_s: float):
        self.summary, self.every_s = summary, every_s
        self.started = self.last = time.perf_counter()

    def update(self, video: dict) -> None:
        if video["status"] == "ok":
            self.summary.ok += 1
        else:
            self.summary.errors.add(video["video_id"], video["error"], video.get("uri"))
        if time.perf_counter() - self.last >= self.every_s:
            self.last = time.perf_counter()
            log.info("%s", self.line())

    def line(self) -> str:
        s = self.summary
        done, todo = s.ok + len(s.errors), s.total - s.skipped
        elapsed = time.perf_counter() - self.started
        rate = done / elapsed if elapsed > 0 else 0.0
        eta = f", ~{(todo - done) / rate:.0f} s left" if rate > 0 and done < todo else ""
        return (f"extract: {done}/{todo} committed ({s.ok} ok, {len(s.errors)} errors) in {s.parts} parts, "
                f"{rate:.1f} videos/s{eta}")

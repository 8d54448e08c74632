"""Committing extracted videos under the run root, resuming an interrupted extraction, and its summary.

Commit protocol (docs/design.md#commit-protocol; a kill -9 loses at most the videos not yet committed):
  a group of finished rows (at most `ray.write.batch_size` videos, split further where their features + flow
  pass `commit.max_mb`) is written as `flow/<part>`, then `features/<part>` (its ok videos), then
  `videos/<part>` (every video of the group) under one part name. The `videos/` part is the commit.
On start (`resume_state`), `features/` and `flow/` parts without a `videos/` twin are deleted (except flow
parts whose videos are all committed ok: run roots that hold one flow part per video), and
committed videos are skipped; only `video_id` and `status` of `videos/` are read. At the end of a run
(`drop_stray_commits`), `videos/` parts it neither found nor wrote (late commits of a killed run's
surviving workers, whose videos this run extracted again) are deleted with their twins.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field

import pyarrow as pa

from multistream.extract.processor import part_name
from multistream.extract.rows import features_table, flow_table, row_bytes, videos_table
from multistream.store import schema, storage
from multistream.store.layout import RunRoot

log = logging.getLogger(__name__)


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
        if ok:
            storage.write_part(pa.concat_tables([flow_table(row["video"]["video_id"], row["flow"], clip_px)
                                                 for row in ok]), run.flow, name)
            storage.write_part(features_table(ok), run.features, name)
        storage.write_part(videos_table(group), run.videos, name)
        committed.append((name, [row["video"] for row in group]))
    return committed


@dataclass
class ResumeState:
    done: set[str]  # ids of the videos committed (ok or error)
    parts: set[str]  # names of the `videos/` parts that commit them


def resume_state(run: RunRoot) -> ResumeState:
    """Drop the uncommitted parts of an interrupted run; what is committed already."""
    parts = set(storage.list_parts(run.videos))
    videos = storage.read_columns(run.videos, ["video_id", "status"], schema.VIDEOS_SCHEMA)
    ids, statuses = videos["video_id"].to_pylist(), videos["status"].to_pylist()
    for name in set(storage.list_parts(run.features)) - parts:
        log.info("removing uncommitted part %s/%s", schema.FEATURES, name)
        storage.delete_part(run.features, name)
    orphans = set(storage.list_parts(run.flow)) - parts
    if orphans:
        ok = {vid for vid, status in zip(ids, statuses, strict=True) if status == "ok"}
        for name in orphans:
            flow_ids = storage.read_part(run.flow, name, columns=["video_id"])["video_id"].to_pylist()
            if not set(flow_ids) <= ok:
                storage.delete_part(run.flow, name)
    return ResumeState(set(ids), parts)


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

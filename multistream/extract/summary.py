"""Extraction's summary: failed videos counted by kind (the message less what differs per video), the files the
listing skipped by extension, and the driver's progress line."""

from __future__ import annotations

import logging
import re
import time
from collections import Counter
from dataclasses import dataclass, field

log = logging.getLogger(__name__)


def error_kind(message: str, uri: str | None = None) -> str:
    """The message without what differs from video to video (its URI, numbers): failures of one cause share it."""
    if uri:
        message = message.replace(uri, "<video>")
    message = re.sub(r"\S+\.(?:avi|mp4|mkv|mov|webm|m4v|mpg|mpeg|flv|wmv|ts|m2ts|mts|3gp|ogv|mxf|vob|tar)\b",
                     "<video>", message, flags=re.I)
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
    skipped_files: Counter = field(default_factory=Counter)  # files of the input left out, by extension
    retried: int = 0  # error rows of earlier runs extracted again

    def skipped_line(self) -> str | None:
        """"skipped N files by extension (.txt 3, .srt 1)", or None when nothing was skipped."""
        if not self.skipped_files:
            return None
        counts = ", ".join(f"{ext or '(none)'} {n}" for ext, n in sorted(self.skipped_files.items(),
                                                                          key=lambda item: (-item[1], item[0])))
        return (f"skipped {sum(self.skipped_files.values())} files by extension ({counts}): not in "
                f"dataset.extensions")


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

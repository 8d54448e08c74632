"""What `--input` names, listed in one pass: a folder, an `s3://` prefix, one file, a brace pattern of files
(`s3://bucket/shards/train-{0000..0099}.tar`), or a manifest file (`.jsonl`, `.csv`, `.parquet`) of URIs.

    listing = Listing("s3://bucket/archive/", extensions=(".mp4", ".ts"), skipped=Counter())
    for uri in listing.videos(): ...        # the video files, streamed (a prefix page by page)
    listing.shards                          # the WebDataset shards (`.tar`) met on the way (after videos())
    entries = manifest_entries("list.jsonl")   # a manifest file: one entry per row

A manifest file has a column `uri` (or `url`, `path`, `file`): a local path (relative to the manifest's folder
or absolute), an `s3://` URI or an `http(s)://` URL; optional `video_id` (else the URI relative to the
manifest's folder, or the whole URI less its query), `label`, `split`, `group`. The driver reads it as a
stream, one request for the file (never one per row): the videos themselves are opened by the workers, and a
missing or unreadable one is its own error row. Files whose extension is not one of `extensions` are counted
in `skipped`, by extension.
"""

from __future__ import annotations

import csv
import itertools
import json
import logging
import os
import posixpath
import re
from collections import Counter
from collections.abc import Iterator

from multistream.dataset.entry import VideoEntry
from multistream.dataset.splits import SPLITS
from multistream.store import storage
from multistream.store.uris import redact

log = logging.getLogger(__name__)

MANIFEST_SUFFIXES = (".jsonl", ".ndjson", ".csv", ".parquet")
SHARD_SUFFIX = ".tar"
URI_COLUMNS = ("uri", "url", "path", "file")
ID_COLUMNS = ("video_id", "key", "id")
# the files that label a folder of videos (`multistream.dataset.manifest`): not counted as skipped
SIDE_FILES = re.compile(r"^(?:labels\.csv|classInd\.txt|(?:train|test)list0\d\.txt)$", re.I)
_BRACE = re.compile(r"\{([^{}]*)\}")
_RANGE = re.compile(r"^(-?\d+)\.\.(-?\d+)$")


def is_manifest_file(uri: str) -> bool:
    return uri.lower().endswith(MANIFEST_SUFFIXES)


def is_pattern(uri: str) -> bool:
    return _BRACE.search(uri) is not None


def expand_braces(pattern: str) -> list[str]:
    """Every name a brace pattern stands for, in order: `{a,b}` alternatives and `{0000..0099}` ranges (the
    width of the first bound is kept), as WebDataset and the shell spell shards."""
    match = _BRACE.search(pattern)
    if match is None:
        return [pattern]
    body = match[1]
    if (bounds := _RANGE.match(body)) is not None:
        low, high = int(bounds[1]), int(bounds[2])
        width = len(bounds[1]) if bounds[1].startswith("0") else 0
        step = 1 if high >= low else -1
        choices = [f"{i:0{width}d}" for i in range(low, high + step, step)]
    else:
        choices = body.split(",")
    head, tail = pattern[:match.start()], pattern[match.end():]
    return [name for choice in choices for name in expand_braces(head + choice + tail)]


def input_root(pattern: str) -> str:
    """The folder a brace pattern's ids are relative to: the fixed folder before its first brace."""
    return posixpath.dirname(pattern[:_BRACE.search(pattern).start()])


class Listing:
    """The files under `--input` in one listing: video files streamed by `videos()`, shards gathered aside."""

    def __init__(self, input_uri: str, extensions: tuple[str, ...], skipped: Counter | None = None):
        self.input_uri, self.skipped = input_uri, skipped if skipped is not None else Counter()
        self.extensions = tuple(e.lower() for e in extensions)
        self.shards: list[str] = []

    def videos(self) -> Iterator[str]:
        for root in expand_braces(self.input_uri):
            for uri in storage.iter_files(root, (*self.extensions, SHARD_SUFFIX), self._skip):
                if uri.lower().endswith(SHARD_SUFFIX) and SHARD_SUFFIX not in self.extensions:
                    self.shards.append(uri)
                else:
                    yield uri

    def _skip(self, path: str) -> None:
        if not SIDE_FILES.match(posixpath.basename(path)):
            self.skipped[posixpath.splitext(path)[1].lower()] += 1


def manifest_entries(uri: str) -> list[VideoEntry]:
    """The entries of a manifest file (see the module's doc), read as a stream."""
    folder = posixpath.dirname(uri)
    rows = _rows(uri)
    header = next(rows, None)
    if header is None:
        return []
    column = next((c for c in URI_COLUMNS if c in header), None)
    if column is None:
        raise ValueError(f"{uri}: needs a column named one of {URI_COLUMNS}, found {sorted(header)}")
    id_column = next((c for c in ID_COLUMNS if c in header), None)
    entries, seen = [], set()
    for line, row in enumerate(itertools.chain([header], rows), start=1):
        name = str(row.get(column) or "").strip()
        if not name:
            continue
        target = name if "://" in name or os.path.isabs(name) else storage.join(folder, name)
        video_id = str(row.get(id_column) or "").strip() if id_column else ""
        video_id = video_id or _manifest_id(target, folder)
        split = (str(row.get("split") or "").strip().lower()) or None
        if split is not None and split not in SPLITS:
            raise ValueError(f"{uri} row {line}: split must be one of {SPLITS} or empty, got {split!r}")
        if video_id in seen:
            log.warning("%s row %d: %s listed twice, kept the first", uri, line, video_id)
            continue
        seen.add(video_id)
        entries.append(VideoEntry(video_id, target, _text(row.get("label")), split, _text(row.get("group"))))
    return entries


def _text(value) -> str | None:
    return None if value is None or str(value).strip() == "" else str(value).strip()


def _manifest_id(uri: str, folder: str) -> str:
    """A URI inside the manifest's folder: its relative path; any other URI: itself without credentials, query
    and fragment (`multistream.store.uris.redact`: a re-signed URL keeps its id, and no signature is in it)."""
    uri, prefix = redact(uri), redact(folder).rstrip("/") + "/"
    if uri.startswith(prefix):
        return uri[len(prefix):]
    return uri


def _rows(uri: str) -> Iterator[dict]:
    """The rows of a manifest file as dicts with lowercase keys; the first row's keys name every column."""
    lower = uri.lower()
    if lower.endswith(".parquet"):
        yield from _parquet_rows(uri)
    elif lower.endswith(".csv"):
        yield from _csv_rows(uri)
    else:
        with storage.open_input(uri, "rt") as handle:
            for number, line in enumerate(handle, start=1):
                if line.strip():
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError as error:
                        raise ValueError(f"{uri} line {number}: not a JSON object ({error.msg})") from None
                    if not isinstance(row, dict):
                        raise ValueError(f"{uri} line {number}: not a JSON object")
                    yield {str(k).lower(): v for k, v in row.items()}


def _csv_rows(uri: str) -> Iterator[dict]:
    with storage.open_input(uri, "rt") as handle:
        reader = csv.reader(line.lstrip("\ufeff") if number == 0 else line for number, line in enumerate(handle))
        try:
            header = [(name or "").strip().lower() for name in next(reader, [])]
            for values in reader:
                yield dict(zip(header, values, strict=False))
        except csv.Error as error:  # one line, not a traceback
            raise ValueError(f"{uri} line {reader.line_num}: not a readable CSV row ({error})") from None


def _parquet_rows(uri: str) -> Iterator[dict]:
    import pyarrow.parquet as pq

    with storage.open_input(uri) as handle:
        for batch in pq.ParquetFile(handle).iter_batches(batch_size=10_000):
            for row in batch.to_pylist():
                yield {str(k).lower(): v for k, v in row.items()}

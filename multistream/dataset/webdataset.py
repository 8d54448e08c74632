"""WebDataset shards (`.tar`) as inputs: every member with a video extension is a video.

A shard groups members by key (the member's path up to the first "." of its name: `clips/000123.mp4` and
`clips/000123.json` share the key `clips/000123`). A video member's `video_id` is its name inside the shard
(`clips/000123.mp4`): the id it would get if the shards were unpacked into one folder and that folder were the
input. Its label and split come from the key's `.json` member (`{"label": ..., "split": ..., "group": ...}`)
or its `.cls` member (the label as text), else from the name as for a file (`name_labels`). Keys are expected
unique across the archive, as WebDataset's writers make them: a video id met again is logged and skipped.

Only the tar headers are read to index a shard (one small ranged read per member on an object store; a bounded
pool of threads reads several shards at once); each video is then read by byte range on the worker that
decodes it (`multistream.store.members`), so no video crosses the driver and the members of one shard
decode in parallel. A shard that cannot be read (to its end) is one warning line naming it.
"""

from __future__ import annotations

import json
import logging
import posixpath
import tarfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from multistream.dataset.entry import VideoEntry
from multistream.dataset.splits import SPLITS
from multistream.store import storage
from multistream.store.members import member_uri

log = logging.getLogger(__name__)

LABEL_SUFFIXES = (".json", ".cls")
MAX_LABEL_BYTES = 64 * 1024  # a label member larger than this is not read
INDEX_BLOCK = 64 * 1024  # bytes fetched per header read on an object store
INDEX_THREADS = 8


@dataclass(frozen=True)
class Member:
    name: str  # path inside the shard
    offset: int  # of its data in the shard
    size: int


@dataclass
class ShardIndex:
    videos: list[Member]
    labels: dict[str, dict]  # key -> {"label", "split", "group"} from its .json / .cls member
    skipped: Counter  # other members by extension
    error: str | None = None  # why the shard could not be read (to its end)


def split_key(name: str) -> tuple[str, str]:
    """(key, extension) of a member name as WebDataset splits it: at the first "." of the last path piece."""
    folder, base = posixpath.split(name)
    stem, dot, ext = base.partition(".")
    return posixpath.join(folder, stem), (dot + ext).lower()


def index_shard(uri: str, extensions: tuple[str, ...]) -> ShardIndex:
    """The video members of one shard (from its tar headers), its label members' contents, what else it holds."""
    index = ShardIndex([], {}, Counter())
    suffixes = tuple(e.lower() for e in extensions)
    try:
        fs, path = storage.filesystem(uri)
        local = "file" in fs.protocol or "local" in fs.protocol
        with (fs.open(path, "rb") if local else fs.open(path, "rb", block_size=INDEX_BLOCK)) as handle, \
                tarfile.open(fileobj=handle, mode="r:") as tar:
            while (info := tar.next()) is not None:
                if not info.isfile() or any(p.startswith(".") for p in info.name.split("/")):
                    continue
                key, ext = split_key(info.name)
                if ext.endswith(suffixes):
                    index.videos.append(Member(info.name, info.offset_data, info.size))
                elif ext in LABEL_SUFFIXES and info.size <= MAX_LABEL_BYTES:
                    index.labels[key] = _label(tar.extractfile(info).read(), ext, f"{uri} member {info.name}")
                elif ext not in LABEL_SUFFIXES:
                    index.skipped["." + ext.rsplit(".", 1)[-1] if ext else ""] += 1
    except (tarfile.TarError, OSError, EOFError) as error:
        index.error = f"{type(error).__name__}: {' '.join(str(error).split())}"
    return index


def _label(data: bytes, ext: str, where: str) -> dict:
    text = data.decode("utf-8", errors="replace").strip()
    if ext == ".cls":
        return {"label": text or None}
    try:
        meta = json.loads(text)
    except json.JSONDecodeError:
        log.warning("%s: not JSON, its label is ignored", where)
        return {}
    if not isinstance(meta, dict):
        return {}
    label = meta.get("label", meta.get("class"))
    group = meta.get("group")
    return {"label": None if label is None else str(label), "split": meta.get("split"),
            "group": None if group is None else str(group)}


def shard_entries(shards: Iterable[str], extensions: tuple[str, ...],
                  name_labels: Callable[[str], tuple[str | None, str | None]], skipped: Counter | None = None,
                  threads: int = INDEX_THREADS) -> Iterator[VideoEntry]:
    """The video entries of every shard, in shard order (shards indexed `threads` at a time); `name_labels`
    gives (label, split) from a video id where the shard has no label member for it."""
    skipped = skipped if skipped is not None else Counter()
    seen: set[str] = set()
    shards = list(shards)
    if not shards:
        return
    with ThreadPoolExecutor(max(1, min(threads, len(shards)))) as pool:
        for shard, index in zip(shards, pool.map(lambda uri: index_shard(uri, extensions), shards), strict=True):
            skipped.update(index.skipped)
            if index.error is not None:
                log.warning("shard %s: not a readable tar after %d video member(s) (%s): the members past that "
                            "point are not listed", shard, len(index.videos), index.error)
            for member in index.videos:
                if member.name in seen:
                    log.warning("shard %s: %s met before in another shard, skipped", shard, member.name)
                    continue
                seen.add(member.name)
                yield _entry(shard, member, index.labels.get(split_key(member.name)[0]), name_labels)


def _entry(shard: str, member: Member, meta: dict | None, name_labels) -> VideoEntry:
    uri = member_uri(shard, member.name, member.offset, member.size)
    if meta is None:
        label, split = name_labels(member.name)
        return VideoEntry(member.name, uri, label, split)
    split = str(meta.get("split") or "").strip().lower() or None
    if split is not None and split not in SPLITS:
        log.warning("shard %s: %s has split %r, not one of %s: none used", shard, member.name, split, SPLITS)
        split = None
    return VideoEntry(member.name, uri, meta.get("label"), split, meta.get("group"))

"""Extraction's commits on Ray, by time and size: the driver gathers the finished blocks of the extraction
dataset (`CommitClock`: until the first is `commit.every_s` old or they pass `commit.max_mb`) and hands each
group to a commit task by reference, so no video's arrays cross the driver; at most `ray.write.max_actors`
commits run at once (the driver stops taking blocks meanwhile, which holds Ray Data back). A commit task
whose blocks were lost with a node is counted in `failed`: its videos are not committed, and the caller
extracts them again. docs/design.md#commit-protocol.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import ray

from multistream.config import Config
from multistream.extract.rows import from_columns
from multistream.store import storage
from multistream.store.commit import CommitClock, commit
from multistream.store.layout import RunRoot

log = logging.getLogger(__name__)

_DONE = object()
POLL_S = 0.5  # the driver's longest wait between looks at the clock and the commits in flight
# what a node lost meanwhile gives a commit task: its blocks (or its worker) are gone, its videos are extracted again
LOST = tuple(getattr(ray.exceptions, name) for name in ("ObjectLostError", "WorkerCrashedError", "NodeDiedError",
                                                       "ObjectFetchTimedOutError", "ActorDiedError")
             if hasattr(ray.exceptions, name))


@dataclass
class CommitResult:
    parts: set[str] = field(default_factory=set)  # the `videos/` parts written
    videos: set[str] = field(default_factory=set)  # the ids committed
    failed: int = 0  # commit tasks lost with a node


def _pieces(bundle) -> list[tuple[tuple, int]]:
    """[((block ref, (start, end) or None), bytes)] of a Ray Data RefBundle (both the entry and the tuple forms)."""
    out, rows = [], 0
    slices = getattr(bundle, "slices", None) or [None] * len(bundle.blocks)
    for entry, piece in zip(bundle.blocks, slices, strict=True):
        ref, meta = (entry.ref, entry.metadata) if hasattr(entry, "ref") else entry
        span = None if piece is None else (piece.start_offset, piece.end_offset)
        rows += span[1] - span[0] if span is not None else int(meta.num_rows or 0)
        out.append(((ref, span), int(meta.size_bytes or 0)))
    log.debug("finished: %d video(s) at %.3f", rows, time.time())  # what a kill -9 now could lose (-v)
    return out


@ray.remote(max_retries=3)
def commit_blocks(run_uri: str, clip_px: float, max_bytes: float, generation: int | None, spans: list,
                  *blocks) -> list[tuple[str, str]]:
    """Commit the finished rows of `blocks` (each cut to its span) under the driver's lease `generation`;
    [(part name, `videos/` row as JSON)]."""
    from ray.data.block import BlockAccessor

    storage.set_writer_generation(generation)

    rows = []
    for block, span in zip(blocks, spans, strict=True):
        accessor = BlockAccessor.for_block(block)
        if span is not None:
            accessor = BlockAccessor.for_block(accessor.slice(span[0], span[1], copy=False))
        columns = accessor.to_numpy()
        rows += from_columns(columns if isinstance(columns, dict) else {accessor.column_names()[0]: columns})
    committed = commit(rows, RunRoot(run_uri), clip_px, max_bytes)
    return [(name, json.dumps(video)) for name, videos in committed for video in videos]


def _feed(ds: ray.data.Dataset, out: queue.Queue, stop: threading.Event) -> None:
    try:
        for bundle in ds.iter_internal_ref_bundles():
            if stop.is_set():
                return
            out.put(_pieces(bundle))
        out.put(_DONE)
    except BaseException as error:  # noqa: BLE001 - handed to the driver's thread, raised there
        out.put(error)


def commit_stream(ds: ray.data.Dataset, cfg: Config, on_video: Callable[[str, dict], None]) -> CommitResult:
    """Consume `ds` (rows of finished videos) into commits; `on_video(part, videos/ row)` for each committed video."""
    clock = CommitClock(cfg.commit.every_s, cfg.commit.max_mb * 2**20)
    cpus = 0 if cfg.ray.fused is not None else cfg.ray.write.num_cpus  # beside the fused actors, which hold the CPUs
    task = commit_blocks.options(num_cpus=cpus, num_gpus=0)
    limit, result = cfg.ray.write.max_actors, CommitResult()
    inflight: dict[ray.ObjectRef, int] = {}
    args = (RunRoot(cfg.paths.output).uri, cfg.flow.clip_px, cfg.commit.max_mb * 2**20, storage.writer_generation())

    def collect(wait: bool) -> None:
        ready, _ = ray.wait(list(inflight), num_returns=1, timeout=None if wait else 0)
        for ref in ready:
            blocks = inflight.pop(ref)
            try:
                committed = ray.get(ref)
            except LOST as error:
                result.failed += 1
                log.warning("a commit of %d block(s) was lost (%s): its videos are extracted again", blocks,
                            type(error).__name__)
                continue
            for name, text in committed:
                video = json.loads(text)
                result.parts.add(name)
                result.videos.add(video["video_id"])
                on_video(name, video)

    def submit(group: list) -> None:
        while len(inflight) >= limit:
            collect(wait=True)
        inflight[task.remote(*args, [span for _, span in group], *[ref for ref, _ in group])] = len(group)

    feed, stop = queue.Queue(maxsize=4), threading.Event()
    threading.Thread(target=_feed, args=(ds, feed, stop), name="extract-blocks", daemon=True).start()
    try:
        while True:
            wait = clock.wait_s()
            try:
                item = feed.get(timeout=POLL_S if wait is None else min(wait, POLL_S))
            except queue.Empty:
                item = None
            if item is _DONE:
                break
            if isinstance(item, BaseException):
                raise item
            for piece, nbytes in item or []:
                if (group := clock.add(piece, nbytes)) is not None:
                    submit(group)
            if clock.due():
                submit(clock.take())
            if inflight:
                collect(wait=False)
        if clock.items:
            submit(clock.take())
        while inflight:
            collect(wait=True)
    finally:
        stop.set()
    return result

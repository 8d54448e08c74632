"""The temporal stream's data, without Ray: which videos the motion CNN learns from, their flow in memory,
the stacks it is fed, and the `motion/` table of every video's embedded positions.

Splits (docs/design.md#splits): the motion CNN fits on `train`; `val` chooses its best epoch and stops it (a run
without val trains `motion_cnn.epochs` epochs and keeps the last); `test` is scored once, at the end. Stacks
(paper §IV.C) of L flow fields: an epoch (`motion_cnn.epoch`) is `stacks_per_video` stacks per video centred at
random positions, or ("whole_flow") every video's pairs once, tiled by stacks; in random order, drawn from a
seeded generator (the same seed gives the same stacks). Validation and test take `stacks_per_video` stacks at
evenly spaced positions, so that their figures compare across epochs.

Flow is read from `flow/` once per node: each video's uint8 flow is stored as a file of the node's local disk
(`NodeFlowCache`, `motion_cnn.flow_cache_dir` up to `motion_cnn.flow_cache_disk_gb`) that every worker of the
node maps (np.memmap); what does not fit is kept in the worker's memory up to `motion_cnn.flow_cache_gb`, and
beyond it each epoch re-reads it window by window. Batches leave the host as uint8 pairs (`gather_pairs`: a
copy of each stack's contiguous pair range, into pinned memory for a GPU), gathered on a background thread
(`Prefetch`); the device turns them into float32 stacks (`model.pairs_to_stacks`, `flow_stacks`' semantics).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import math
import os
import queue
import shutil
import tempfile
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import torch

from multistream.device import autocast
from multistream.extract.rows import read_flow
from multistream.store import schema, storage
from multistream.store.commit import part_name
from multistream.store.layout import RunRoot
from multistream.train.motion.model import (
    EMBEDDING_DIM,
    MotionCNN,
    pairs_to_stacks,
    stack_pairs,
    stack_starts,
)

WINDOW = 256  # videos whose stacks are shuffled together (and whose flow is read together when not kept)
PREFETCH = 3  # batches gathered ahead of the training step (`Prefetch`)
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class MotionPlan:
    """The videos of each split the motion CNN uses (sorted ids) and their class indices."""

    classes: tuple[str, ...]
    train: tuple[str, ...]
    val: tuple[str, ...]
    test: tuple[str, ...]
    targets: dict[str, int] = field(repr=False)
    pairs: dict[str, int] = field(default_factory=dict, repr=False)  # flow pairs per video, where known

    def shard(self, rank: int, world: int) -> MotionPlan:
        """Worker `rank` of `world`: every world-th video of each split."""
        return MotionPlan(self.classes, self.train[rank::world], self.val[rank::world], self.test[rank::world],
                          self.targets, self.pairs)


def make_plan(videos: list[dict], pairs: Mapping[str, int]) -> MotionPlan:
    """`videos/` rows (video_id, label, split, status) and flow pairs per video → the plan.

    Classes are the labels of the train split; a video takes part when it is ok, its label is a class, its
    split is train, val or test, and it has at least one flow pair (a one-frame video has no stack)."""
    ok = [v for v in videos if v["status"] == "ok" and pairs.get(v["video_id"], 0) > 0]
    classes = tuple(sorted({v["label"] for v in ok if v["split"] == "train" and v["label"]}))
    index = {label: i for i, label in enumerate(classes)}
    chosen = [v for v in ok if v["label"] in index and v["split"] in SPLITS]
    ids = {split: tuple(sorted(v["video_id"] for v in chosen if v["split"] == split)) for split in SPLITS}
    return MotionPlan(classes, ids["train"], ids["val"], ids["test"],
                      {v["video_id"]: index[v["label"]] for v in chosen},
                      {v["video_id"]: int(pairs[v["video_id"]]) for v in chosen})


def read_plan(run: RunRoot) -> MotionPlan:
    """The plan of a run root, from `videos/` and the shapes in `flow/`; raises ValueError where the motion CNN
    cannot be trained (fewer than two classes, or no train videos). Without val videos it trains
    `motion_cnn.epochs` epochs (`recipe.fit_motion_cnn`)."""
    videos = storage.read_table(run.videos, schema=schema.VIDEOS_SCHEMA,
                                columns=["video_id", "label", "split", "status"]).to_pylist()
    shapes = storage.read_table(run.flow, columns=["video_id", "shape"], schema=schema.FLOW_SCHEMA)
    plan = make_plan(videos, {v: s[0] for v, s in zip(shapes["video_id"].to_pylist(),
                                                      shapes["shape"].to_pylist(), strict=True)})
    if len(plan.classes) < 2:
        raise ValueError(f"{run.uri}: the motion CNN needs at least 2 labelled classes in the train split with "
                         f"flow, found {list(plan.classes)}")
    if not plan.train:
        raise ValueError(f"{run.uri}: no train-split videos with flow to fit the motion CNN on")
    return plan


def read_flows(flow_uri: str, video_ids, parts_of: Mapping[str, str] | None = None) -> dict[str, np.ndarray]:
    """{video_id: (P, H, W, 2) uint8} of these videos from `flow/`, in one read: of every part, or with
    `parts_of` ({video_id: part name}, `storage.part_index`) of only the parts that hold them; raises
    ValueError for a video without a flow row."""
    wanted = sorted(set(video_ids))
    parts = None if parts_of is None else sorted({parts_of[v] for v in wanted if v in parts_of})
    table = storage.read_table(flow_uri, columns=["video_id", "shape", "data"], schema=schema.FLOW_SCHEMA,
                               filter=pads.field("video_id").isin(wanted), parts=parts)
    flows = {video_id: read_flow({"shape": shape, "data": data.as_buffer()}) for video_id, shape, data in
             zip(table["video_id"].to_pylist(), table["shape"].to_pylist(), table["data"], strict=True)}
    missing = [v for v in wanted if v not in flows]
    if missing:
        raise ValueError(f"{flow_uri}: no flow row for {len(missing)} video(s), e.g. {missing[:3]}")
    return flows


def _digest(*parts: object) -> str:
    return hashlib.sha256("\0".join(map(str, parts)).encode()).hexdigest()


def default_cache_dir() -> str:
    """The node's flow cache when `motion_cnn.flow_cache_dir` is empty: multistream-flow in its temp dir."""
    return os.path.join(tempfile.gettempdir(), "multistream-flow")


class NodeFlowCache:
    """Videos' uint8 flow stored once per node, as .npy files of local disk that every process of the node maps
    (np.memmap, pages shared through the OS page cache): the Ray Train workers of a node read each video from
    `flow/` once between them.

    A run's files live in `directory`/<digest of the flow table's URI>/, one per video, named by a digest of
    (video id, its `flow/` part's name, size and version): a part written again is a new file. A file is written
    to a temporary name and renamed (atomic: a reader sees a whole file or none), under a per-video lock
    (flock): a worker that finds the video being read by another waits for it instead of reading it too. Files
    are added while the run's files stay within `budget_bytes` and the disk keeps `min_free_bytes` free;
    `clear` removes the run's files (the end of the run)."""

    def __init__(self, flow_uri: str, directory: str | None = None, budget_bytes: float = math.inf,
                 min_free_bytes: float = 2**30):
        self.root = os.path.join(directory or default_cache_dir(), _digest(flow_uri)[:24])
        self.budget, self.min_free = budget_bytes, min_free_bytes
        self.full = False  # a file was refused for want of room
        self.written = 0  # files this process wrote

    def path(self, video_id: str, version: str) -> str:
        return os.path.join(self.root, _digest(video_id, version)[:40] + ".npy")

    def load(self, path: str) -> np.ndarray | None:
        """The video's flow mapped read-only, or None where the node does not hold it."""
        try:
            return np.load(path, mmap_mode="r")
        except FileNotFoundError:
            return None

    def _room(self, nbytes: int) -> bool:
        if self.budget <= 0:
            return False
        used = sum(entry.stat().st_size for entry in os.scandir(self.root) if entry.is_file())
        return used + nbytes <= self.budget and shutil.disk_usage(self.root).free - nbytes >= self.min_free

    def store(self, path: str, flow: np.ndarray) -> np.ndarray:
        """Write `flow` to `path` (temporary file, then rename) and map it; `flow` itself where the node has no
        room for it (or it is empty: nothing to map)."""
        if flow.nbytes == 0 or not self._room(flow.nbytes + 128):
            self.full = self.full or flow.nbytes > 0
            return flow
        handle, temporary = tempfile.mkstemp(dir=self.root, prefix=".tmp-", suffix=".npy")
        try:
            with os.fdopen(handle, "wb") as file:
                np.save(file, np.ascontiguousarray(flow), allow_pickle=False)
            os.replace(temporary, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise
        self.written += 1
        return np.load(path, mmap_mode="r")

    @contextlib.contextmanager
    def _locked(self, path: str, wait: bool = True):
        """The video's lock (flock on `path`.lock): yields True when held, False when another process holds it
        and `wait` is False."""
        fd = os.open(path + ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                yield False
                return
            yield True
        finally:
            os.close(fd)  # releases the lock

    def fetch(self, paths: Mapping[str, str], read: Callable[[list[str]], dict[str, np.ndarray]]
              ) -> dict[str, np.ndarray]:
        """{video_id: flow} of the videos of `paths` ({video_id: `path`}): mapped where the node holds them,
        else read with `read(ids)` (one call for the videos no other process is reading, one per video for
        those another was reading and did not store) and stored. Locks are taken without waiting while any is
        held, so two processes never wait on each other."""
        os.makedirs(self.root, exist_ok=True)
        found = {v: flow for v, p in paths.items() if (flow := self.load(p)) is not None}
        todo = [v for v in paths if v not in found]
        busy = []
        with contextlib.ExitStack() as held:
            mine = []
            for video_id in todo:
                if held.enter_context(self._locked(paths[video_id], wait=False)):
                    flow = self.load(paths[video_id])  # stored by another since the first look
                    if flow is None:
                        mine.append(video_id)
                    else:
                        found[video_id] = flow
                else:
                    busy.append(video_id)
            if mine:
                read_now = read(mine)
                for video_id in mine:  # in the order asked: which fit the budget does not depend on part order
                    found[video_id] = self.store(paths[video_id], read_now[video_id])
        for video_id in busy:  # read by another process: wait for it, then map its file
            with self._locked(paths[video_id]):
                flow = self.load(paths[video_id])
                found[video_id] = flow if flow is not None else self.store(paths[video_id],
                                                                           read([video_id])[video_id])
        return found

    def clear(self) -> None:
        """Remove this run's files (processes that still map one keep their pages until they unmap it)."""
        shutil.rmtree(self.root, ignore_errors=True)


def _part_versions(flow_uri: str) -> dict[str, str]:
    """{part name: its size and version (ETag, mtime or LastModified, where the store gives one)}, from one
    listing of `flow/`."""
    fs, path = storage.filesystem(flow_uri)
    if not fs.isdir(path):
        return {}
    versions = {}
    for info in fs.ls(path, detail=True):
        name = os.path.basename(str(info["name"]).rstrip("/"))
        if name.endswith(".parquet"):
            stamp = next((info[k] for k in ("ETag", "etag", "mtime", "LastModified") if info.get(k) is not None), "")
            versions[name[:-len(".parquet")]] = f"{info.get('size')}:{stamp}"
    return versions


class FlowSource:
    """Videos' flow by id: read from `flow/` and kept, or given in memory (`FlowSource.of`). With a
    `NodeFlowCache`, a video read is stored on the node's disk and kept as a read-only np.memmap of it (as long
    as the cache has room); else, or beyond that, in memory while `budget_bytes` allows; the rest is read again
    whenever asked. A read opens only the parts holding the videos asked for (an index of `flow/`'s video ids
    is read at the first read, and again for a video it lacks): on an archive larger than the budget, an epoch
    reads each video's part about once, not the whole table per window. `get` is safe from several threads
    (the prefetching one and the training one)."""

    def __init__(self, flow_uri: str | None, budget_bytes: float = math.inf, cache: NodeFlowCache | None = None):
        self.uri, self.budget, self.cache = flow_uri, budget_bytes, cache
        self.kept: dict[str, np.ndarray] = {}
        self.kept_bytes = 0  # in this process's memory
        self.mapped_bytes = 0  # mapped from the node's cache
        self._parts_of: dict[str, str] | None = None
        self._versions: dict[str, str] = {}
        self._lock = threading.Lock()

    @classmethod
    def of(cls, flows: Mapping[str, np.ndarray]) -> FlowSource:
        source = cls(None)
        source.kept = dict(flows)
        return source

    def get(self, ids: list[str]) -> list[np.ndarray]:
        """(P, H, W, 2) uint8 flow of each of `ids`, in order (np.memmap views where the node's cache holds them)."""
        with self._lock:
            return self._get(ids)

    def _get(self, ids: list[str]) -> list[np.ndarray]:
        missing = list(dict.fromkeys(v for v in ids if v not in self.kept))
        if missing and self.uri is None:
            raise KeyError(f"no flow given for {missing[:3]}")
        if missing and (self._parts_of is None or not self._parts_of.keys() >= set(missing)):
            self._parts_of = storage.part_index(self.uri, "video_id")  # read again for a video written since
            self._versions = _part_versions(self.uri) if self.cache is not None else {}
        if not missing:
            read = {}
        elif self.cache is None:
            read = read_flows(self.uri, missing, self._parts_of)
        else:
            def version(video_id: str) -> str:
                part = self._parts_of.get(video_id, "")
                return f"{part}:{self._versions.get(part, '')}"

            read = self.cache.fetch({v: self.cache.path(v, version(v)) for v in missing},
                                    lambda wanted: read_flows(self.uri, wanted, self._parts_of))
        for video_id in missing:  # in the order asked: which videos are kept does not depend on part order
            flow = read[video_id]
            if isinstance(flow, np.memmap):
                self.kept[video_id] = flow
                self.mapped_bytes += flow.nbytes
            elif self.kept_bytes + flow.nbytes <= self.budget:
                self.kept[video_id] = flow
                self.kept_bytes += flow.nbytes
        return [self.kept[v] if v in self.kept else read[v] for v in ids]

    @property
    def room(self) -> bool:
        """Whether a video read now would be kept (in the node's cache or in memory)."""
        return self.kept_bytes < self.budget or (self.cache is not None and not self.cache.full)

    def preload(self, ids, chunk: int = 256) -> int:
        """Read `ids`' flow, `chunk` videos a read, until neither the node's cache nor the memory budget has
        room (a training worker reads its data before the first epoch, as the plain loop does); returns how
        many videos are kept."""
        todo = [v for v in dict.fromkeys(ids) if v not in self.kept] if self.uri is not None else []
        for start in range(0, len(todo), chunk):
            if not self.room:
                break
            self.get(todo[start:start + chunk])
        return len(self.kept)


def stack_centers(pairs: int, count: int, rng: np.random.Generator | None) -> np.ndarray:
    """(count,) int centres in [0, pairs]: random with `rng`, evenly spaced without it."""
    if rng is not None:
        return rng.integers(0, pairs + 1, count)
    return np.linspace(0, pairs, count + 2)[1:-1].round().astype(int)


def tiled_centers(pairs: int, stack_length: int) -> np.ndarray:
    """The centres of ceil(pairs / L) stacks that hold each of `pairs` pairs at least once: windows from 0 in
    steps of L, the last one shifted back inside (`flow_stacks`)."""
    return np.arange(0, max(pairs, 1), stack_length) + stack_length // 2


def epoch_stacks(pairs: int, count: int, stack_length: int, whole_flow: bool) -> int:
    """The stacks a video of `pairs` flow pairs gives a training epoch (see `epoch_batches`)."""
    return len(tiled_centers(pairs, stack_length)) if whole_flow else count


def epoch_batches(source: FlowSource, ids, targets: Mapping[str, int], count: int, batch_size: int,
                  stack_length: int, rng: np.random.Generator | None = None, pad_to: int | None = None,
                  whole_flow: bool = False, pin_memory: bool = False, ring: int = 0
                  ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One pass over `ids`: `count` stacks per video → (B, L, H, W, 2) uint8 pairs of each stack
    (`gather_pairs`; `model.pairs_to_stacks` makes them the (B, 2L, H, W) float32 stacks), (B,) int64 targets;
    both in pinned memory with `pin_memory` (a copy to a GPU that does not wait; torch's pinned-memory cache
    recycles a buffer once the copy from it is done). `ring` > 0: the pairs are written into `ring` buffers in
    turn (a new buffer is a page fault per 4 KiB: as slow as the copy), so a consumer must be done with a batch
    before `ring` more are made (`Prefetch` of depth d: ring ≥ d + 2).

    With `rng`: videos in random order, random centres (`whole_flow`: the video's pairs tiled by stacks,
    `tiled_centers`), stacks shuffled within each window of WINDOW videos. Without: `count` evenly spaced centres
    in id order. `pad_to` repeats stacks of the last window until that many were given (every Ray Train worker
    must take the same number of steps)."""
    ids = list(ids)
    order = rng.permutation(len(ids)) if rng is not None else np.arange(len(ids))
    windows = [order[start:start + WINDOW] for start in range(0, len(ids), WINDOW)]
    pending, given, made, buffers = [], 0, 0, []
    for number, window in enumerate(windows):
        window_ids = [ids[i] for i in window]
        items = [(flow, int(c), targets[v]) for v, flow in zip(window_ids, source.get(window_ids), strict=True)
                 if len(flow) for c in (tiled_centers(len(flow), stack_length) if whole_flow and rng is not None
                                        else stack_centers(len(flow), count, rng))]
        if rng is not None:
            items = [items[i] for i in rng.permutation(len(items))]
        last = number == len(windows) - 1
        if last and pad_to is not None and items:
            items += [items[i % len(items)] for i in range(max(pad_to - given - len(pending) - len(items), 0))]
        pending += items
        while len(pending) >= batch_size or (last and pending):
            chunk, pending = pending[:batch_size], pending[batch_size:]
            given += len(chunk)
            out = None
            if ring:
                if len(buffers) < ring:
                    buffers.append(torch.empty((batch_size, stack_length, *chunk[0][0].shape[1:]), dtype=torch.uint8,
                                               pin_memory=pin_memory))
                out = buffers[made % ring][:len(chunk)]
            made += 1
            yield gather_batch(chunk, stack_length, pin_memory, out)


def gather_pairs(flow: np.ndarray, centers, stack_length: int, out: np.ndarray | None = None) -> np.ndarray:
    """(N, L, H, W, 2) uint8: the pairs of the stack at each of `centers` (`model.stack_pairs`), each stack a
    copy of its contiguous pair range (and of the last pair, repeated, in a video of fewer than L pairs),
    written into `out` where given. `model.pairs_to_stacks` of it equals `flow_stacks(flow, centers, ...)`."""
    pairs = len(flow)
    if pairs == 0:
        raise ValueError("flow holds no frame pairs")
    starts = stack_starts(pairs, centers, stack_length)
    if out is None:
        out = np.empty((len(starts), stack_length, *flow.shape[1:]), np.uint8)
    taken = min(stack_length, pairs)
    for i, start in enumerate(starts.tolist()):
        out[i, :taken] = flow[start:start + taken]
        if taken < stack_length:
            out[i, taken:] = flow[pairs - 1]
    return out


def gather_batch(items: list, stack_length: int, pin_memory: bool = False, out: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """[(flow, centre, target), ...] → (B, L, H, W, 2) uint8 pairs (written into `out` where given, else a new
    tensor, pinned with `pin_memory`), (B,) int64 targets (pinned with `pin_memory`)."""
    size = items[0][0].shape[1:]
    pairs = out if out is not None else torch.empty((len(items), stack_length, *size), dtype=torch.uint8,
                                                    pin_memory=pin_memory)
    host = pairs.numpy()
    for i, (flow, center, _) in enumerate(items):
        gather_pairs(flow, [center], stack_length, out=host[i:i + 1])
    targets = torch.tensor([target for _, _, target in items], dtype=torch.int64)
    return pairs, targets.pin_memory() if pin_memory else targets


class Prefetch:
    """Iterates `items` on a background thread, up to `depth` ahead, in order; an exception of the thread is
    raised where the item would have come. Use as a context manager: leaving it (at the end of an epoch, or on
    an error) stops the thread and waits for it."""

    _END = object()

    def __init__(self, items: Iterable, depth: int = PREFETCH):
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._done = False
        self._thread = threading.Thread(target=self._run, args=(iter(items),), name="motion-prefetch", daemon=True)
        self._thread.start()

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, items: Iterator) -> None:
        try:
            for item in items:
                if not self._put((item, None)):
                    return
            self._put((self._END, None))
        except BaseException as error:  # noqa: B902 - handed to the consumer
            self._put((self._END, error))
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()

    def __iter__(self):
        return self

    def __next__(self):
        if self._done:
            raise StopIteration
        item, error = self._queue.get()
        if error is not None:
            self.close()
            raise error
        if item is self._END:
            self.close()
            raise StopIteration
        return item

    def close(self) -> None:
        self._done = True
        self._stop.set()
        while self._thread.is_alive():
            with contextlib.suppress(queue.Empty):
                while True:
                    self._queue.get_nowait()
            self._thread.join(timeout=0.05)

    def __enter__(self) -> Prefetch:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def device_batches(batches: Iterable[tuple[torch.Tensor, torch.Tensor]], device: torch.device, clip_px: float
                   ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(uint8 pairs, targets) on the host → (float32 stacks, targets) on `device` (a copy that does not wait
    where the host tensors are pinned, then `pairs_to_stacks` there)."""
    for pairs, targets in batches:
        yield (pairs_to_stacks(pairs.to(device, non_blocking=True), clip_px),
               targets.to(device, non_blocking=True))


def _as_tensor(flow: np.ndarray) -> torch.Tensor:
    with warnings.catch_warnings():  # a read-only np.memmap: never written through the tensor
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(np.ascontiguousarray(flow))


@torch.no_grad()
def embed_video(model: MotionCNN, flow: np.ndarray, positions, meta: dict, batch_size: int,
                device: torch.device) -> np.ndarray:
    """(P, H, W, 2) uint8 flow, K positions → (K, 2048) float16: full7 of the stack centred at each position
    (`model` in eval mode on `device`; `meta` its model.json). A video without flow pairs has zero motion.

    The pairs the stacks take go to `device` once, as uint8 (the whole flow where the stacks cover it, else
    only those pairs: a long video's flow need not fit the device); each batch's stacks are gathered there."""
    positions = [int(p) for p in positions]
    length, clip_px = meta["stack_length"], meta["clip_px"]
    height, width = flow.shape[1:3] if flow.ndim == 4 else tuple(meta["flow_size"])[::-1]
    if not positions:
        return np.zeros((0, EMBEDDING_DIM), np.float16)
    out = []
    if len(flow):
        index = stack_pairs(len(flow), positions, length)  # (K, L)
        needed = np.unique(index)
        host = flow if len(needed) == len(flow) else flow[needed]
        on_device = _as_tensor(host).to(device)  # (U, H, W, 2) uint8
        local = torch.from_numpy(np.searchsorted(needed, index)).to(device)
    for start in range(0, len(positions), batch_size):
        count = min(batch_size, len(positions) - start)
        stacks = (pairs_to_stacks(on_device[local[start:start + count]], clip_px) if len(flow)
                  else torch.zeros((count, 2 * length, height, width), dtype=torch.float32, device=device))
        with autocast(device, meta.get("amp", True)):
            out.append(model.embed(stacks).float())
    return torch.cat(out).cpu().numpy().astype(np.float16)


def motion_table(ids: list[str], sequences: list[np.ndarray]) -> pa.Table:
    """`motion/` rows: video_id, temporal (K, 2048) float16 per video."""
    return pa.table({"video_id": list(ids), "temporal": schema.sequence_array(sequences, EMBEDDING_DIM)},
                    schema=schema.motion_schema())


def write_motion(run: RunRoot, ids: list[str], sequences: list[np.ndarray]) -> str:
    """One `motion/` part for these videos (named by them: writing the same videos again overwrites it)."""
    return storage.write_part(motion_table(ids, sequences), run.motion, part_name(ids))


def pending_positions(run: RunRoot) -> dict[str, list[int]]:
    """{video_id: sampled frame positions (`features/`.frame_index)} of the videos not yet in `motion/`."""
    features = storage.read_table(run.features, columns=["video_id", "frame_index"])
    if features.num_rows == 0:
        return {}
    done = set(storage.read_table(run.motion, columns=["video_id"],
                                  schema=schema.motion_schema())["video_id"].to_pylist())
    return {v: p for v, p in zip(features["video_id"].to_pylist(), features["frame_index"].to_pylist(),
                                 strict=True) if v not in done}


def embed_videos(model: MotionCNN, meta: dict, source: FlowSource, positions: Mapping[str, list[int]],
                 run: RunRoot, device: torch.device, batch_size: int, part_videos: int) -> int:
    """Embed these videos' positions and write them to `motion/`, `part_videos` videos a part; returns how
    many videos were written."""
    ids = sorted(positions)
    for start in range(0, len(ids), part_videos):
        chunk = ids[start:start + part_videos]
        sequences = [embed_video(model, flow, positions[v], meta, batch_size, device)
                     for v, flow in zip(chunk, source.get(chunk), strict=True)]
        write_motion(run, chunk, sequences)
    return len(ids)

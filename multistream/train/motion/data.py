"""The temporal stream's data, without Ray: which videos the motion CNN learns from, their flow in memory,
the stacks it is fed, and the `motion/` table of every video's embedded positions.

Splits (docs/design.md#splits): the motion CNN fits on `train`; `val` chooses its best epoch and stops it (a run
without val trains `motion_cnn.epochs` epochs and keeps the last); `test` is scored once, at the end. Stacks
(paper §IV.C) of L flow fields: an epoch (`motion_cnn.epoch`) is `stacks_per_video` stacks per video centred at
random positions, or ("whole_flow") every video's pairs once, tiled by stacks; in random order, drawn from a
seeded generator (the same seed gives the same stacks). Validation and test take `stacks_per_video` stacks at
evenly spaced positions, so that their figures compare across epochs. Flow is read from `flow/` once and kept in memory up to a budget; beyond it, each epoch re-reads
it window by window.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
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
from multistream.train.motion.model import EMBEDDING_DIM, MotionCNN, flow_stacks

WINDOW = 256  # videos whose stacks are shuffled together (and whose flow is read together when not kept)
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


class FlowSource:
    """Videos' flow by id: read from `flow/` and kept in memory while `budget_bytes` allows (the rest is
    read again whenever asked), or given in memory (`FlowSource.of`). A read opens only the parts holding
    the videos asked for (an index of `flow/`'s video ids is read at the first read, and again for a video it lacks): on an archive
    larger than the budget, an epoch reads each video's part about once, not the whole table per window."""

    def __init__(self, flow_uri: str | None, budget_bytes: float = math.inf):
        self.uri, self.budget = flow_uri, budget_bytes
        self.kept: dict[str, np.ndarray] = {}
        self.kept_bytes = 0
        self._parts_of: dict[str, str] | None = None

    @classmethod
    def of(cls, flows: Mapping[str, np.ndarray]) -> FlowSource:
        source = cls(None)
        source.kept = dict(flows)
        return source

    def get(self, ids: list[str]) -> list[np.ndarray]:
        """(P, H, W, 2) uint8 flow of each of `ids`, in order."""
        missing = [v for v in ids if v not in self.kept]
        if missing and self.uri is None:
            raise KeyError(f"no flow given for {missing[:3]}")
        if missing and (self._parts_of is None or not self._parts_of.keys() >= set(missing)):
            self._parts_of = storage.part_index(self.uri, "video_id")  # read again for a video written since
        read = read_flows(self.uri, missing, self._parts_of) if missing else {}
        for video_id in missing:  # in the order asked: which videos are kept does not depend on part order
            flow = read[video_id]
            if video_id not in self.kept and self.kept_bytes + flow.nbytes <= self.budget:
                self.kept[video_id] = flow
                self.kept_bytes += flow.nbytes
        return [self.kept[v] if v in self.kept else read[v] for v in ids]

    def preload(self, ids, chunk: int = 256) -> int:
        """Read `ids`' flow into memory, `chunk` videos a read, until the budget is full (a training worker
        reads its data before the first epoch, as the plain loop does); returns how many videos are kept."""
        todo = [v for v in dict.fromkeys(ids) if v not in self.kept] if self.uri is not None else []
        for start in range(0, len(todo), chunk):
            if self.kept_bytes >= self.budget:
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
                  stack_length: int, clip_px: float, rng: np.random.Generator | None = None,
                  pad_to: int | None = None, whole_flow: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One pass over `ids`: `count` stacks per video → (B, 2L, H, W) float32 stacks, (B,) int64 targets.

    With `rng`: videos in random order, random centres (`whole_flow`: the video's pairs tiled by stacks,
    `tiled_centers`), stacks shuffled within each window of WINDOW videos. Without: `count` evenly spaced centres
    in id order. `pad_to` repeats stacks of the last window until that many were given (every Ray Train worker
    must take the same number of steps)."""
    ids = list(ids)
    order = rng.permutation(len(ids)) if rng is not None else np.arange(len(ids))
    windows = [order[start:start + WINDOW] for start in range(0, len(ids), WINDOW)]
    pending, given = [], 0
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
            yield _batch(chunk, stack_length, clip_px)


def _batch(items: list, stack_length: int, clip_px: float) -> tuple[torch.Tensor, torch.Tensor]:
    stacks = np.stack([flow_stacks(flow, [center], stack_length, clip_px)[0] for flow, center, _ in items])
    return torch.from_numpy(stacks), torch.tensor([target for _, _, target in items], dtype=torch.int64)


@torch.no_grad()
def embed_video(model: MotionCNN, flow: np.ndarray, positions, meta: dict, batch_size: int,
                device: torch.device) -> np.ndarray:
    """(P, H, W, 2) uint8 flow, K positions → (K, 2048) float16: full7 of the stack centred at each position
    (`model` in eval mode on `device`; `meta` its model.json). A video without flow pairs has zero motion."""
    positions = [int(p) for p in positions]
    length, clip_px = meta["stack_length"], meta["clip_px"]
    height, width = flow.shape[1:3] if flow.ndim == 4 else tuple(meta["flow_size"])[::-1]
    out = []
    for start in range(0, len(positions), batch_size):
        centers = positions[start:start + batch_size]
        stacks = (flow_stacks(flow, centers, length, clip_px) if len(flow)
                  else np.zeros((len(centers), 2 * length, height, width), np.float32))
        with autocast(device, meta.get("amp", True)):
            out.append(model.embed(torch.from_numpy(stacks).to(device)).float().cpu().numpy())
    return np.concatenate(out).astype(np.float16) if out else np.zeros((0, EMBEDDING_DIM), np.float16)


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

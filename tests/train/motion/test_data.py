"""The motion CNN's data without Ray: the plan of splits, flow in memory, stacks, embeddings, motion/."""

import numpy as np
import pyarrow as pa
import pytest
import torch

from multistream.store import schema, storage
from multistream.store.layout import RunRoot
from multistream.train.motion import data as motion
from multistream.train.motion.data import (
    FlowSource,
    embed_video,
    embed_videos,
    epoch_batches,
    epoch_stacks,
    make_plan,
    pending_positions,
    read_flows,
    read_plan,
    stack_centers,
    tiled_centers,
)
from multistream.train.motion.model import MotionCNN, flow_stacks, model_meta, pairs_to_stacks
from tests.support.motion import SIZE, config, make_run_root, toy_videos


def _row(video_id, label, split, status="ok"):
    return {"video_id": video_id, "label": label, "split": split, "status": status}


def test_plan_takes_classes_from_train_and_keeps_val_and_test_apart():
    videos = [_row("a", "run", "train"), _row("b", "walk", "train"), _row("c", "run", "val"),
              _row("d", "walk", "test"), _row("e", "swim", "test"), _row("f", "run", "train", "error"),
              _row("g", "walk", "train"), _row("h", "anomaly", "anomaly"), _row("i", "run", "val")]
    pairs = {v["video_id"]: 5 for v in videos} | {"g": 0}  # g: one frame, no stack
    plan = make_plan(videos, pairs)
    assert plan.classes == ("run", "walk")
    assert (plan.train, plan.val, plan.test) == (("a", "b"), ("c", "i"), ("d",))
    assert plan.targets == {"a": 0, "b": 1, "c": 0, "i": 0, "d": 1}
    shard = plan.shard(1, 2)
    assert (shard.train, shard.val, shard.test) == (("b",), ("i",), ())


def test_read_plan_takes_a_run_without_val_videos(tmp_path):
    """validation.fraction 0: the plan has no val videos (training then runs its epoch budget: test_recipe)."""
    make_run_root(tmp_path, videos_per_class=4)
    plan = read_plan(RunRoot(str(tmp_path)))
    assert len(plan.val) == 2 and plan.pairs == {v: plan.pairs[v] for v in plan.targets} and min(plan.pairs.values()) > 0
    rows = storage.read_table(str(tmp_path / "videos")).to_pylist()
    for row in rows:
        row["split"] = "train" if row["split"] == "val" else row["split"]
    storage.write_part(pa.Table.from_pylist(rows, schema=schema.VIDEOS_SCHEMA), str(tmp_path / "videos"), "part-0")
    plan = read_plan(RunRoot(str(tmp_path)))
    assert plan.val == () and len(plan.train) == 6


def test_flow_is_read_by_video_and_kept_within_the_budget(tmp_path, monkeypatch):
    ids = make_run_root(tmp_path, videos_per_class=2)
    _, flows = toy_videos(2)
    uri = str(tmp_path / "flow")
    read = read_flows(uri, ids[:3])
    assert sorted(read) == sorted(ids[:3])
    np.testing.assert_array_equal(read[ids[1]], flows[ids[1]])
    with pytest.raises(ValueError, match="no flow row for 1 video"):
        read_flows(uri, [ids[0], "nope"])

    reads = []
    monkeypatch.setattr(motion, "read_flows", lambda u, v, p=None: reads.append(list(v)) or read_flows(u, v, p))
    kept = FlowSource(uri)
    for _ in range(2):
        assert [f.shape for f in kept.get(ids)] == [flows[v].shape for v in ids]
    assert len(reads) == 1 and kept.kept_bytes == sum(f.nbytes for f in flows.values())
    reads.clear()
    small = FlowSource(uri, budget_bytes=flows[ids[0]].nbytes)
    small.get(ids)
    small.get(ids)
    assert list(small.kept) == [ids[0]] and reads == [ids, ids[1:]]
    with pytest.raises(KeyError):
        FlowSource.of({}).get(["x"])

    reads.clear()
    ahead = FlowSource(uri)
    assert ahead.preload(ids, chunk=3) == len(ids) and reads == [ids[:3], ids[3:]]
    ahead.get(ids)
    assert sum(map(len, reads)) == len(ids)  # the epochs read nothing more
    reads.clear()
    full = FlowSource(uri, budget_bytes=flows[ids[0]].nbytes)
    assert full.preload(ids, chunk=1) == 1 and reads == [ids[:1]]  # stops once the budget is full
    assert FlowSource.of(flows).preload(ids) == len(flows)


def test_a_flow_read_opens_only_the_parts_holding_its_videos(tmp_path):
    uri = str(tmp_path / "flow")
    rng = np.random.default_rng(0)
    flows = {f"v{i}": rng.integers(0, 255, (3, 4, 5, 2), dtype=np.uint8) for i in range(6)}
    for part in range(3):  # two videos a part
        storage.write_part(pa.Table.from_pylist(
            [{"video_id": v, "shape": list(flows[v].shape), "data": flows[v].tobytes()}
             for v in (f"v{2 * part}", f"v{2 * part + 1}")], schema=schema.FLOW_SCHEMA), uri, f"part-{part}")
    assert storage.part_index(uri, "video_id") == {f"v{i}": f"part-{i // 2}" for i in range(6)}
    source = FlowSource(uri, budget_bytes=0)  # keeps nothing: every get reads
    np.testing.assert_array_equal(source.get(["v3"])[0], flows["v3"])  # the index is read here
    late = rng.integers(0, 255, (3, 4, 5, 2), dtype=np.uint8)  # a part written after the index was read
    storage.write_part(pa.Table.from_pylist([{"video_id": "v6", "shape": list(late.shape), "data": late.tobytes()}],
                                            schema=schema.FLOW_SCHEMA), uri, "part-3")
    np.testing.assert_array_equal(source.get(["v6"])[0], late)  # the index is read again
    (tmp_path / "flow" / "part-0.parquet").write_bytes(b"not parquet")  # a part the next reads must not open
    assert [f.tobytes() for f in source.get(["v5", "v2"])] == [flows["v5"].tobytes(), flows["v2"].tobytes()]
    with pytest.raises(Exception):  # noqa: B017 (pyarrow's error for a file that is not Parquet)
        source.get(["v0"])


def test_stack_centers():
    assert stack_centers(10, 4, None).tolist() == [2, 4, 6, 8]
    drawn = stack_centers(10, 50, np.random.default_rng(1))
    assert drawn.min() >= 0 and drawn.max() <= 10 and len(set(drawn.tolist())) > 5
    assert np.array_equal(drawn, stack_centers(10, 50, np.random.default_rng(1)))


def _batches(flows, targets, rng=None, **kwargs):
    """epoch_batches' uint8 pairs made stacks (`pairs_to_stacks`, as the training device does)."""
    batches = epoch_batches(FlowSource.of(flows), sorted(flows), targets, kwargs.pop("count", 3),
                            kwargs.pop("batch_size", 4), 4, rng, **kwargs)
    return [(pairs_to_stacks(pairs, 20.0), y) for pairs, y in batches]


def test_epoch_batches_are_seeded_and_cover_every_video(monkeypatch):
    rows, flows = toy_videos(3)
    targets = {r["video_id"]: int(r["label"][-1]) for r in rows}
    monkeypatch.setattr(motion, "WINDOW", 4)  # two windows of videos
    first = _batches(flows, targets, np.random.default_rng([0, 1]))
    assert [len(y) for _, y in first] == [4, 4, 4, 4, 2]  # 6 videos x 3 stacks, batches cross windows
    x, _ = first[0]
    assert x.shape == (4, 8, SIZE[1], SIZE[0]) and x.dtype == torch.float32
    assert sorted(torch.cat([y for _, y in first]).tolist()) == [0] * 9 + [1] * 9
    again = _batches(flows, targets, np.random.default_rng([0, 1]))
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, again, strict=True))
    other = _batches(flows, targets, np.random.default_rng([1, 1]))
    assert not torch.equal(first[0][0], other[0][0])

    fixed = _batches(flows, targets, count=2, batch_size=100)  # no rng: id order, evenly spaced centres
    ids = sorted(flows)
    expected = np.concatenate([flow_stacks(flows[v], stack_centers(len(flows[v]), 2, None), 4, 20.0) for v in ids])
    np.testing.assert_allclose(fixed[0][0].numpy(), expected, rtol=0, atol=1e-5)  # float32 rounding
    assert fixed[0][1].tolist() == [targets[v] for v in ids for _ in range(2)]


def test_epoch_batches_pad_to_equal_steps():
    rows, flows = toy_videos(1)
    targets = {r["video_id"]: 0 for r in rows}
    padded = _batches(flows, targets, np.random.default_rng(0), count=3, pad_to=9)
    assert [len(y) for _, y in padded] == [4, 4, 1]
    flows[sorted(flows)[0]] = flows[sorted(flows)[0]][:0]  # a video without pairs gives no stack
    assert sum(len(y) for _, y in _batches(flows, targets, count=3)) == 3


def test_embed_video_is_the_full7_of_each_positions_stack():
    torch.manual_seed(0)
    model = MotionCNN(2, stack_length=4, width=0.125, flow_size=SIZE).eval()
    meta = model_meta(["a", "b"], config().motion_cnn, SIZE, 20.0)
    _, flows = toy_videos(1)
    flow = next(iter(flows.values()))
    out = embed_video(model, flow, [0, 3, 5], meta, batch_size=2, device=torch.device("cpu"))
    assert out.shape == (3, 2048) and out.dtype == np.float16
    with torch.no_grad():
        expected = model.embed(torch.from_numpy(flow_stacks(flow, [0, 3, 5], 4, 20.0))).numpy()
    np.testing.assert_allclose(out, expected, rtol=1e-2, atol=1e-3)
    empty = embed_video(model, np.zeros((0, SIZE[1], SIZE[0], 2), np.uint8), [0, 0], meta, 2, torch.device("cpu"))
    with torch.no_grad():
        zero = model.embed(torch.zeros(1, 8, SIZE[1], SIZE[0])).numpy()[0]
    assert empty.shape == (2, 2048)
    np.testing.assert_allclose(empty[1], zero, rtol=1e-2, atol=1e-3)


def test_motion_parts_are_written_for_pending_videos_only(tmp_path):
    ids = make_run_root(tmp_path, videos_per_class=3)
    run = RunRoot(str(tmp_path))
    positions = pending_positions(run)
    assert sorted(positions) == sorted(ids) and all(len(p) == 5 for p in positions.values())
    model = MotionCNN(2, stack_length=4, width=0.125, flow_size=SIZE).eval()
    meta = model_meta(["a", "b"], config().motion_cnn, SIZE, 20.0)
    first = {v: positions[v] for v in ids[:4]}
    assert embed_videos(model, meta, FlowSource(run.flow), first, run, torch.device("cpu"), 8, 3) == 4
    assert len(storage.list_parts(run.motion)) == 2  # 3 + 1 videos
    assert sorted(pending_positions(run)) == sorted(ids[4:])
    table = storage.read_table(run.motion)
    assert table.schema.field("temporal").type == schema.vectors(2048)
    assert [s.shape for s in schema.column_to_sequences(table["temporal"])] == [(5, 2048)] * 4


def test_a_whole_flow_epoch_takes_every_pair_once():
    """motion_cnn.epoch: whole_flow: ceil(P / L) stacks a video whose windows cover each of its P pairs."""
    assert tiled_centers(10, 4).tolist() == [2, 6, 10] and tiled_centers(3, 4).tolist() == [2]
    assert [epoch_stacks(p, 5, 4, True) for p in (1, 4, 5, 12)] == [1, 1, 2, 3] and epoch_stacks(12, 5, 4, False) == 5
    rows, flows = toy_videos(2)
    targets = {r["video_id"]: 0 for r in rows}
    batches = _batches(flows, targets, np.random.default_rng(0), batch_size=1000, whole_flow=True)
    stacks = batches[0][0].numpy()
    assert len(stacks) == sum(epoch_stacks(len(f), 3, 4, True) for f in flows.values())
    expected = [flow_stacks(f, tiled_centers(len(f), 4), 4, 20.0) for f in flows.values()]
    covered = {tuple(np.round(s[:, 0, 0], 4)) for e in expected for s in e}
    assert {tuple(np.round(s[:, 0, 0], 4)) for s in stacks} == covered  # the same stacks, shuffled
    val = _batches(flows, targets, count=2, batch_size=1000, whole_flow=True)  # no rng: count evenly spaced
    assert len(val[0][1]) == 2 * len(flows)

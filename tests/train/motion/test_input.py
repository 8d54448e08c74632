"""The motion CNN's uint8 input path: the host gather and the device conversion against numpy `flow_stacks`,
the prefetching thread, the passes without a host sync per step, the node-shared flow cache, the embedding."""

import threading
import time

import numpy as np
import pyarrow as pa
import pytest
import torch

from multistream.store import schema, storage
from multistream.store.commit import part_name
from multistream.store.layout import RunRoot
from multistream.train.motion import data as motion
from multistream.train.motion.data import (
    FlowSource,
    NodeFlowCache,
    Prefetch,
    embed_video,
    embed_videos,
    epoch_batches,
    gather_batch,
    gather_pairs,
    make_plan,
    pending_positions,
)
from multistream.train.motion.model import MotionCNN, flow_stacks, model_meta, pairs_to_stacks
from multistream.train.motion.recipe import MotionTrainer, fit_motion_cnn, flow_source
from multistream.train.steps import motion_optimizer
from tests.support.motion import SIZE, config, make_run_root, toy_videos

CUDA = pytest.param("cuda", marks=[pytest.mark.gpu,
                                   pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")])


def _device_stacks(flow, centers, length, clip_px, device="cpu"):
    pairs = torch.from_numpy(gather_pairs(flow, centers, length)).to(device)
    return pairs_to_stacks(pairs, clip_px).cpu().numpy()


@pytest.mark.parametrize("device", ["cpu", CUDA])
@pytest.mark.parametrize("norm", ["cnn_m", "paper"])
@pytest.mark.parametrize("clip_px", [20.0, 7.5])
def test_device_conversion_equals_numpy_flow_stacks(device, norm, clip_px):
    """Random centres and the edges (the first and last stack of a video, of one shorter than L, of one pair):
    the same stacks as `flow_stacks`, and so the same logits from the network under each norm mode."""
    rng = np.random.default_rng(3)
    length, (width, height) = 4, SIZE
    long = rng.integers(0, 256, (23, height, width, 2), dtype=np.uint8)
    short = rng.integers(0, 256, (3, height, width, 2), dtype=np.uint8)
    single = rng.integers(0, 256, (1, height, width, 2), dtype=np.uint8)
    cases = [(long, [*rng.integers(0, 24, 6).tolist(), 0, 1, 22, 23, 40]), (short, [0, 1, 2, 3]), (single, [0, 1])]
    model = MotionCNN(2, stack_length=length, width=0.125, flow_size=SIZE, norm=norm).eval().to(device)
    for flow, centers in cases:
        expected = flow_stacks(flow, centers, length, clip_px)
        got = _device_stacks(flow, centers, length, clip_px, device)
        assert got.shape == expected.shape and got.dtype == np.float32
        np.testing.assert_array_equal(got, expected)  # sums below 2^24: exact in any order
        with torch.no_grad():
            logits = model(torch.from_numpy(got).to(device)).cpu()
            reference = model(torch.from_numpy(expected).to(device)).cpu()
        torch.testing.assert_close(logits, reference, rtol=0, atol=0)


@pytest.mark.parametrize("device", ["cpu", CUDA])
def test_device_conversion_at_the_papers_size_agrees_to_float32_rounding(device):
    """320x240: a channel's sum may pass 2^24, where float32 sums round; a bright flow forces it."""
    rng = np.random.default_rng(4)
    flow = rng.integers(200, 256, (12, 240, 320, 2), dtype=np.uint8)
    expected = flow_stacks(flow, [0, 6, 12], 10, 20.0)
    got = _device_stacks(flow, [0, 6, 12], 10, 20.0, device)
    np.testing.assert_allclose(got, expected, rtol=0, atol=4 * np.spacing(np.float32(20.0)))


def test_gather_pairs_copies_each_window_and_repeats_the_last_pair():
    flow = np.arange(5, dtype=np.uint8)[:, None, None, None] * np.ones((5, 2, 3, 2), np.uint8)
    assert gather_pairs(flow, [0, 2, 5], 3)[:, :, 0, 0, 0].tolist() == [[0, 1, 2], [1, 2, 3], [2, 3, 4]]
    assert gather_pairs(flow[:2], [0, 2], 4)[:, :, 0, 0, 0].tolist() == [[0, 1, 1, 1], [0, 1, 1, 1]]
    with pytest.raises(ValueError, match="no frame pairs"):
        gather_pairs(flow[:0], [0], 3)
    pairs, targets = gather_batch([(flow, 1, 7), (flow, 4, 8)], 3)
    assert pairs.dtype == torch.uint8 and pairs.shape == (2, 3, 2, 3, 2) and targets.tolist() == [7, 8]


def test_a_ring_of_buffers_gives_the_same_batches():
    rows, flows = toy_videos(2)
    targets = {r["video_id"]: 0 for r in rows}

    def epoch(ring):
        batches = epoch_batches(FlowSource.of(flows), sorted(flows), targets, 3, 4, 4, np.random.default_rng(1),
                                ring=ring)
        return [pairs.clone() for pairs, _ in batches]  # each taken before the next is made

    fresh, ringed = epoch(0), epoch(2)
    assert len(fresh) == len(ringed) == 3 and all(torch.equal(a, b) for a, b in zip(fresh, ringed, strict=True))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_batches_for_a_gpu_are_pinned():
    _, flows = toy_videos(1)
    flow = next(iter(flows.values()))
    pairs, targets = gather_batch([(flow, 2, 0)], 4, pin_memory=True)
    assert pairs.is_pinned() and targets.is_pinned()


def test_prefetch_keeps_order_and_stays_bounded():
    made = []

    def items():
        for i in range(20):
            made.append(i)
            yield i

    with Prefetch(items(), depth=2) as ahead:
        got = []
        for item in ahead:
            time.sleep(0.002)
            assert len(made) - len(got) <= 2 + 2  # queued, one being put, the one just taken
            got.append(item)
    assert got == list(range(20))


def test_prefetch_raises_the_threads_error_where_its_item_would_come():
    def items():
        yield 1
        yield 2
        raise OSError("flow/ part lost")

    ahead = Prefetch(items())
    assert next(ahead) == 1 and next(ahead) == 2
    with pytest.raises(OSError, match="part lost"):
        next(ahead)
    assert not ahead._thread.is_alive() and list(ahead) == []


def test_leaving_a_prefetch_early_stops_its_thread():
    closed = threading.Event()

    def items():
        try:
            yield from range(1000)
        finally:
            closed.set()

    with Prefetch(items(), depth=1) as ahead:
        assert next(ahead) == 0
    assert not ahead._thread.is_alive() and closed.is_set()


class _HostReads(torch.overrides.TorchFunctionMode):
    """Counts the reads of a tensor's value to the host (item, tolist, float, ...), an optimizer's own step
    counters (CPU tensors of torch.optim) aside."""

    NAMES = {"item", "tolist", "__float__", "__int__", "__bool__", "numpy", "cpu"}

    def __init__(self, optimizer):
        super().__init__()
        self.optimizer, self.count = optimizer, 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        steps = [s["step"] for s in self.optimizer.state.values() if "step" in s]
        if name in self.NAMES and args and not any(args[0] is step for step in steps):
            self.count += 1
        return func(*args, **(kwargs or {}))


def test_an_epochs_host_reads_do_not_grow_with_its_steps():
    """Losses and hits are summed on the device and read once a pass: an epoch of 8 steps reads the device as
    often as one of 2."""
    rows, flows = toy_videos(6)
    plan = make_plan(rows, {v: len(f) for v, f in flows.items()})
    reads = {}
    for batch_size in (16, 4):
        cfg = config("unused", 1, "motion_cnn.stacks_per_video=4", f"motion_cnn.batch_size={batch_size}")
        model = MotionCNN.from_config(cfg.motion_cnn, 2, cfg.flow.size)
        optimizer = motion_optimizer(model, cfg.motion_cnn)
        trainer = MotionTrainer(model, optimizer, FlowSource.of(flows), plan, cfg, torch.device("cpu"))
        with _HostReads(optimizer) as mode:
            figures = trainer.epoch(1, np.random.default_rng(0))
        reads[batch_size] = mode.count
        assert set(figures) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert reads[16] == reads[4] <= 4


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_cuda_epoch_does_not_synchronize_per_step():
    rows, flows = toy_videos(6)
    plan = make_plan(rows, {v: len(f) for v, f in flows.items()})
    cfg = config("unused", 1, "motion_cnn.stacks_per_video=4", "motion_cnn.batch_size=4", "motion_cnn.amp=auto")
    model = MotionCNN.from_config(cfg.motion_cnn, 2, cfg.flow.size).cuda()
    trainer = MotionTrainer(model, motion_optimizer(model, cfg.motion_cnn), FlowSource.of(flows), plan, cfg,
                            torch.device("cuda"))
    trainer.epoch(1, np.random.default_rng(0))  # warm-up: cuDNN, the pinned-memory cache
    batches = list(trainer.batches(plan.train, np.random.default_rng(1)))
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        sums = trainer._train(iter(batches))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert sums.device.type == "cuda" and sums[2].item() == sum(len(y) for _, y in batches)


# the node-shared flow cache


@pytest.fixture
def counted_reads(monkeypatch):
    """Every video FlowSource reads from `flow/` (the real read, counted)."""
    reads, lock, real = [], threading.Lock(), motion.read_flows

    def read_flows(uri, ids, parts_of=None):
        with lock:
            reads.extend(ids)
        time.sleep(0.02)  # a read takes a while: racing workers overlap
        return real(uri, ids, parts_of)

    monkeypatch.setattr(motion, "read_flows", read_flows)
    return reads


def _epoch(source, ids, seed):
    targets = dict.fromkeys(ids, 0)
    return sum(len(y) for _, y in epoch_batches(source, ids, targets, 2, 8, 4, np.random.default_rng(seed)))


def test_after_the_first_epoch_no_flow_is_read_from_storage(tmp_path, counted_reads):
    ids = make_run_root(tmp_path / "run", videos_per_class=3)
    _, flows = toy_videos(3)
    uri = str(tmp_path / "run" / "flow")
    cache = NodeFlowCache(uri, str(tmp_path / "cache"))
    source = FlowSource(uri, budget_bytes=0, cache=cache)  # no memory: only the node's disk keeps flow
    assert _epoch(source, ids, 1) == 2 * len(ids)
    assert sorted(counted_reads) == sorted(ids)
    for seed in (2, 3):
        _epoch(source, ids, seed)
    assert len(counted_reads) == len(ids), "later epochs read nothing from flow/"
    got = source.get(ids)
    assert all(isinstance(f, np.memmap) and not f.flags.writeable for f in got)
    assert all(np.array_equal(f, flows[v]) for v, f in zip(ids, got, strict=True))
    assert source.kept_bytes == 0 and source.mapped_bytes == sum(f.nbytes for f in flows.values())


def test_two_workers_of_a_node_read_each_video_once_in_all(tmp_path, counted_reads):
    ids = make_run_root(tmp_path / "run", videos_per_class=4)
    uri = str(tmp_path / "run" / "flow")
    cache_dir = str(tmp_path / "cache")
    first = FlowSource(uri, 0, NodeFlowCache(uri, cache_dir))
    first.preload(ids[::2])  # worker 0's shard
    second = FlowSource(uri, 0, NodeFlowCache(uri, cache_dir))
    second.get(ids)  # worker 1: its own shard, then (embedding) videos worker 0 read
    first.get(ids)
    assert sorted(counted_reads) == sorted(ids)

    counted_reads.clear()  # racing: both ask for every video at once, in opposite orders
    other = tmp_path / "other-cache"
    workers = [FlowSource(uri, 0, NodeFlowCache(uri, str(other))) for _ in range(2)]
    start, errors = threading.Barrier(2), []

    def work(source, order):
        try:
            start.wait()
            for chunk in range(0, len(order), 3):
                source.get(order[chunk:chunk + 3])
        except BaseException as error:  # noqa: B902
            errors.append(error)

    threads = [threading.Thread(target=work, args=(w, o)) for w, o in zip(workers, (ids, ids[::-1]), strict=True)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and sorted(counted_reads) == sorted(ids)
    a, b = (w.get(ids) for w in workers)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not [p for p in next(iter(other.iterdir())).iterdir() if p.name.startswith(".tmp-")]


def test_beyond_the_node_budget_flow_is_kept_in_memory_or_read_again(tmp_path, counted_reads):
    ids = make_run_root(tmp_path / "run", videos_per_class=3)
    _, flows = toy_videos(3)
    uri = str(tmp_path / "run" / "flow")
    room = sum(flows[v].nbytes + 256 for v in ids[:2])  # two videos' files
    source = FlowSource(uri, budget_bytes=flows[ids[2]].nbytes, cache=NodeFlowCache(uri, str(tmp_path / "c"), room))
    source.get(ids)
    assert source.cache.full and sum(isinstance(source.kept.get(v), np.memmap) for v in ids) == 2
    assert source.kept_bytes == flows[ids[2]].nbytes  # the third in memory, the rest read again each time
    counted_reads.clear()
    source.get(ids)
    assert sorted(counted_reads) == sorted(ids[3:])
    assert not source.room and source.preload(ids) == 3
    none = NodeFlowCache(uri, str(tmp_path / "d"), budget_bytes=0)
    assert not isinstance(FlowSource(uri, 0, none).get(ids[:1])[0], np.memmap)
    assert not list((tmp_path / "d").rglob("*.npy"))


def test_a_rewritten_flow_part_is_read_again_and_clear_removes_the_runs_files(tmp_path, counted_reads):
    ids = make_run_root(tmp_path / "run", videos_per_class=2)
    uri = str(tmp_path / "run" / "flow")
    cache_dir = str(tmp_path / "cache")
    FlowSource(uri, 0, NodeFlowCache(uri, cache_dir)).get(ids)
    video = ids[0]
    rewritten = np.full((7, SIZE[1], SIZE[0], 2), 9, np.uint8)
    storage.write_part(pa.Table.from_pylist([{"video_id": video, "shape": list(rewritten.shape),
                                              "data": rewritten.tobytes()}], schema=schema.FLOW_SCHEMA),
                       uri, part_name([video]))
    counted_reads.clear()
    cache = NodeFlowCache(uri, cache_dir)
    got = FlowSource(uri, 0, cache).get(ids)
    assert counted_reads == [video] and np.array_equal(got[0], rewritten)
    elsewhere = NodeFlowCache(str(tmp_path / "other" / "flow"), cache_dir)
    assert elsewhere.root != cache.root  # another run root: other files
    cache.clear()
    assert not (tmp_path / "cache" / cache.root.rsplit("/", 1)[-1]).exists()
    assert np.array_equal(got[1], toy_videos(2)[1][ids[1]])  # a mapped view outlives the files


def test_the_node_cache_on_an_object_store(s3_bucket, tmp_path, counted_reads):
    _, flows = toy_videos(1)
    uri = f"{s3_bucket}/run/flow"
    for video_id, flow in flows.items():
        storage.write_part(pa.Table.from_pylist([{"video_id": video_id, "shape": list(flow.shape),
                                                  "data": flow.tobytes()}], schema=schema.FLOW_SCHEMA),
                           uri, part_name([video_id]))
    versions = motion._part_versions(uri)
    assert sorted(versions) == sorted(part_name([v]) for v in flows) and all(":" in v for v in versions.values())
    ids = sorted(flows)
    for _ in range(2):  # two workers of a node, one after the other
        got = FlowSource(uri, 0, NodeFlowCache(uri, str(tmp_path / "cache"))).get(ids)
    assert sorted(counted_reads) == ids and all(np.array_equal(g, flows[v]) for g, v in zip(got, ids, strict=True))


def test_a_workers_flow_source_follows_the_config(tmp_path):
    run = RunRoot(str(tmp_path))
    cfg = config(tmp_path, 1, f"motion_cnn.flow_cache_dir={tmp_path / 'node'}", "motion_cnn.flow_cache_disk_gb=2")
    source = flow_source(run, cfg)
    assert source.cache.root.startswith(str(tmp_path / "node")) and source.cache.budget == 2 * 2**30
    assert source.budget == cfg.motion_cnn.flow_cache_gb * 2**30
    assert flow_source(run, config(tmp_path, 1, "motion_cnn.flow_cache_disk_gb=0")).cache is None
    assert flow_source(run, config(tmp_path, 1)).cache.root.startswith(motion.default_cache_dir())


def test_training_on_the_node_cache_gives_the_same_model(tmp_path, counted_reads):
    ids = make_run_root(tmp_path / "run", videos_per_class=6)
    run = RunRoot(str(tmp_path / "run"))
    rows, flows = toy_videos(6)
    plan = make_plan(rows, {v: len(f) for v, f in flows.items()})
    cfg = config(tmp_path / "run", 2, "motion_cnn.stacks_per_video=4", f"motion_cnn.flow_cache_dir={tmp_path / 'n'}",
                 "motion_cnn.flow_cache_gb=0")
    cached = fit_motion_cnn(flow_source(run, cfg), plan, cfg, "cpu")
    assert sorted(counted_reads) == sorted(ids)
    plain = fit_motion_cnn(flows, plan, cfg, "cpu")
    assert all(torch.equal(cached.state[k], plain.state[k]) for k in plain.state)
    assert cached.training.history[-1]["loss"] == plain.training.history[-1]["loss"]


# the embedding pass


def _reference_embedding(model, flow, positions, length, clip_px, batch_size, device="cpu"):
    """The embedding before the uint8 path: numpy stacks of `batch_size` positions sent to `device`, float32
    full7, float16."""
    out = []
    with torch.no_grad():
        for start in range(0, len(positions), batch_size):
            stacks = flow_stacks(flow, positions[start:start + batch_size], length, clip_px)
            out.append(model.embed(torch.from_numpy(stacks).to(device)).float().cpu().numpy())
    return np.concatenate(out).astype(np.float16)


@pytest.mark.parametrize("device", ["cpu", CUDA])
def test_embeddings_equal_the_numpy_stacks_within_float16_rounding(device):
    torch.manual_seed(0)
    model = MotionCNN(2, stack_length=4, width=0.125, flow_size=SIZE).eval()
    meta = model_meta(["a", "b"], config().motion_cnn, SIZE, 20.0) | {"amp": False}
    rng = np.random.default_rng(2)
    long = rng.integers(0, 256, (40, SIZE[1], SIZE[0], 2), dtype=np.uint8)
    short = long[:3]
    for flow, positions in [(long, [0, 5, 5, 17, 40]), (long, list(range(0, 41, 2))), (short, [0, 1, 3])]:
        model.to(device)
        expected = _reference_embedding(model, flow, positions, 4, 20.0, batch_size=2, device=device)
        got = embed_video(model, flow, positions, meta, batch_size=2, device=torch.device(device))
        model.cpu()
        assert got.dtype == np.float16 and got.shape == expected.shape
        ulp = np.spacing(np.maximum(np.abs(expected), np.abs(got))).astype(np.float32)
        assert (np.abs(got.astype(np.float32) - expected.astype(np.float32)) <= ulp).all()  # float16 rounding
        if device == "cpu":  # the same stacks through the same network: the same numbers
            np.testing.assert_array_equal(got, expected)
    assert embed_video(model, long, [], meta, 2, torch.device("cpu")).shape == (0, 2048)


def test_embed_videos_reads_the_node_cache(tmp_path, counted_reads):
    ids = make_run_root(tmp_path, videos_per_class=2)
    run = RunRoot(str(tmp_path))
    positions = pending_positions(run)
    _, flows = toy_videos(2)
    model = MotionCNN(2, stack_length=4, width=0.125, flow_size=SIZE).eval()
    meta = model_meta(["a", "b"], config().motion_cnn, SIZE, 20.0)
    source = FlowSource(run.flow, 0, NodeFlowCache(run.flow, str(tmp_path / "node")))
    source.preload(ids)
    counted_reads.clear()
    assert embed_videos(model, meta, source, positions, run, torch.device("cpu"), 4, 3) == len(ids)
    assert counted_reads == []
    table = storage.read_table(run.motion)
    for video_id, sequence in zip(table["video_id"].to_pylist(), schema.column_to_sequences(table["temporal"]),
                                  strict=True):
        np.testing.assert_array_equal(sequence, _reference_embedding(model, flows[video_id], positions[video_id],
                                                                     4, 20.0, batch_size=4))


def test_the_input_benchmark_runs():
    from multistream.bench.motion_input import motion_input_speed

    threads = torch.get_num_threads()
    out = motion_input_speed(width=80, height=64, pairs=30, batch_size=4, min_s=0.05)
    assert torch.get_num_threads() == threads
    assert {"numpy_flow_stacks_per_s", "host_gather_per_s", "speedup", "cpu_pairs_to_stacks_per_s"} <= set(out)
    assert out["speedup"] > 0 and out["threads"] == 1

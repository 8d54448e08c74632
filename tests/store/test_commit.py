"""Grouped commits, resume bookkeeping and the extraction summary, without Ray."""

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pds
import pytest

from multistream.dataset.manifest import VideoEntry
from multistream.extract.rows import flow_table, read_flow, video_row
from multistream.store import storage
from multistream.store.commit import (
    ErrorKinds,
    ExtractSummary,
    Progress,
    commit,
    committed_parts,
    drop_stray_commits,
    drop_uncommitted,
    error_kind,
    groups_by_bytes,
    part_name,
    replace_table,
    resume_state,
    write_group,
)
from multistream.store.layout import RunRoot


def ok_row(video_id: str, frames: int = 5) -> dict:
    rng = np.random.default_rng(len(video_id))
    entry = VideoEntry(video_id, f"/in/{video_id}", "walk", "train")
    return {"video": video_row(entry, facts={"n_samples": 3}),
            "positions": np.array([0, 2, 4], np.int32), "timestamps": np.array([0, .1, .2], np.float32),
            "magnitudes": np.ones(3, np.float32), "spatial": rng.random((3, 16)).astype(np.float16),
            "audio": rng.random((2, 128)).astype(np.float16),
            "flow": rng.integers(0, 255, (frames - 1, 6, 8, 2), dtype=np.uint8)}


def error_row(video_id: str, message: str = "empty file") -> dict:
    entry = VideoEntry(video_id, f"/in/{video_id}", None, None)
    return {"video": video_row(entry, "error", f"/in/{video_id}: {message}")}


def test_groups_split_by_bytes_and_keep_order():
    rows = [ok_row(f"v{i}") for i in range(5)]
    one = sum(row[k].nbytes for k in ("positions", "timestamps", "magnitudes", "spatial", "audio", "flow")
              for row in rows[:1])
    assert [len(g) for g in groups_by_bytes(rows, 2.5 * one)] == [2, 2, 1]
    assert [len(g) for g in groups_by_bytes(rows, 1)] == [1] * 5  # a row larger than the limit still commits
    assert [r for g in groups_by_bytes(rows, 1e9) for r in g] == rows


def test_commit_writes_one_part_per_table_readable_per_video(tmp_path):
    run = RunRoot(str(tmp_path))
    rows = [ok_row("a"), error_row("b"), ok_row("c", frames=9)]
    (name, videos), = commit(rows, run, 20.0, 1e9)
    assert name == part_name(["a", "b", "c"]) and [v["video_id"] for v in videos] == ["a", "b", "c"]
    for table in (run.videos, run.features, run.flow):
        assert storage.list_parts(table) == [name]
    assert storage.read_table(run.videos)["video_id"].to_pylist() == ["a", "b", "c"]
    assert storage.read_table(run.features)["video_id"].to_pylist() == ["a", "c"]
    flow = pds.dataset(run.flow).to_table(filter=pds.field("video_id") == "c").to_pylist()
    np.testing.assert_array_equal(read_flow(flow[0]), rows[2]["flow"])


def test_resume_drops_uncommitted_parts_and_keeps_committed(tmp_path):
    run = RunRoot(str(tmp_path))
    (done, _), = commit([ok_row("a"), error_row("b")], run, 20.0, 1e9)
    # a killed commit: features and flow written, videos not
    (killed, _), = commit([ok_row("c")], run, 20.0, 1e9)
    storage.delete_part(run.videos, killed)
    storage.write_part(flow_table("z", ok_row("z")["flow"], 20.0), run.flow, part_name(["z"]))
    state = resume_state(run)
    assert state.done == {"a", "b"} and state.parts == {done}
    assert storage.list_parts(run.features) == [done]
    assert storage.list_parts(run.flow) == [done]


def test_a_group_commits_with_its_marker_and_a_replaced_table_keeps_one_part(tmp_path):
    tables = {name: str(tmp_path / name) for name in ("a", "b", "marker")}
    rows = pa.table({"video_id": ["v"]})
    write_group("one", [(rows, tables["a"]), (rows, tables["b"]), (rows, tables["marker"])])
    write_group("two", [(rows, tables["a"]), (rows, tables["b"])])  # killed before its marker
    done = committed_parts(tables["marker"])
    assert done == {"one"} and storage.list_parts(tables["a"]) == ["one", "two"]
    drop_uncommitted(done, [tables["a"], tables["b"]])
    assert storage.list_parts(tables["a"]) == storage.list_parts(tables["b"]) == ["one"]
    assert committed_parts(str(tmp_path / "none")) == set()

    replace_table(pa.table({"video_id": ["w"]}), tables["a"], "whole")
    assert storage.list_parts(tables["a"]) == ["whole"]
    assert storage.read_table(tables["a"])["video_id"].to_pylist() == ["w"]


def test_stray_commits_are_dropped_with_their_twins(tmp_path):
    run = RunRoot(str(tmp_path))
    (keep, _), = commit([ok_row("a")], run, 20.0, 1e9)
    (late, _), = commit([ok_row("a"), ok_row("b")], run, 20.0, 1e9)
    assert drop_stray_commits(run, {keep}) == 1
    for table in (run.videos, run.features, run.flow):
        assert storage.list_parts(table) == [keep]
    assert late != keep


def test_errors_are_counted_by_kind_with_a_few_examples():
    assert error_kind("/in/x/v1.mp4: empty file") == error_kind("/in/y/v22.avi: empty file") == "<video>: empty file"
    assert error_kind("spatial: RuntimeError: 3 != 4") == "spatial: RuntimeError: # != #"
    kinds = ErrorKinds(examples=2)
    for i in range(2500):
        kinds.add(f"v{i}.mp4", f"/in/v{i}.mp4: empty file", f"/in/v{i}.mp4")
    kinds.add("odd.mp4", "audio: ValueError: bad wave", "/in/odd.mp4")
    assert len(kinds) == 2501
    lines = kinds.lines()
    assert lines[0] == "  2500 × <video>: empty file" and len(lines) == 1 + 2 + 1 + 1  # kind, 2 examples, kind, 1 example
    assert "odd.mp4" in lines[-1]


def test_progress_counts_and_rate(caplog):
    summary = ExtractSummary(total=10, skipped=4)
    progress = Progress(summary, every_s=0.0)
    with caplog.at_level("INFO", logger="multistream.store.commit"):
        progress.update({"video_id": "a", "status": "ok", "error": None})
        progress.update({"video_id": "b", "status": "error", "error": "x: empty file", "uri": "x"})
    assert summary.ok == 1 and len(summary.errors) == 1
    assert "extract: 2/6 committed (1 ok, 1 errors)" in caplog.text


@pytest.mark.parametrize("n,actors", [(1, 1), (10, 2), (2500, 2), (216, 2)])
def test_manifest_blocks(n, actors):
    from multistream.extract.rows import blocks, entries_table

    table = entries_table([VideoEntry(f"v{i}", f"/in/v{i}", None, None) for i in range(n)])
    parts = blocks(table, actors)
    assert sum(p.num_rows for p in parts) == n
    assert all(p.num_rows <= 64 for p in parts)
    assert len(parts) >= min(n, 4 * actors)
    assert [v for p in parts for v in p["video_id"].to_pylist()] == [f"v{i}" for i in range(n)]

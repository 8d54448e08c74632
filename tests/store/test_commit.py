"""Grouped commits, resume bookkeeping and the extraction summary, without Ray."""

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pds
import pytest

from multistream.dataset.manifest import VideoEntry
from multistream.extract.rows import EMBEDDINGS, flow_table, read_flow, video_row
from multistream.store import schema, storage
from multistream.store.commit import (
    CommitClock,
    commit,
    committed_parts,
    drop_stray_commits,
    drop_uncommitted,
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


def test_rows_with_embeddings_commit_an_embeddings_part_and_resume_keeps_it(tmp_path):
    """predict's extraction (`multistream.predict.batch.HeadsStep`): embeddings/ and videos/, no features/ nor flow/."""
    run = RunRoot(str(tmp_path))
    rows = [{"video": ok_row(v)["video"], EMBEDDINGS["spatial"]: np.full(4, i, np.float32),
             EMBEDDINGS["audio"]: np.full(4, -i, np.float32)} for i, v in enumerate("ac")] + [error_row("b")]
    (name, _), = commit(rows, run, 20.0, 1e9)
    assert storage.list_parts(run.flow) == storage.list_parts(run.features) == []
    assert storage.list_parts(run.embeddings) == storage.list_parts(run.videos) == [name]
    embeddings = storage.read_table(run.embeddings)
    assert embeddings.schema.equals(schema.embeddings_schema(4)) and embeddings["temporal"].null_count == 2
    assert embeddings["video_id"].to_pylist() == ["a", "c"] and embeddings["label"].to_pylist() == ["walk"] * 2
    assert embeddings["audio"].to_pylist() == [[0.0] * 4, [-1.0] * 4]
    # resume: the embeddings/ part is a twin of videos/ in predict's extraction, a lone table in a training run's
    storage.write_part(embeddings, run.embeddings, "whole")
    assert resume_state(run).done == {"a", "b", "c"} and "whole" in storage.list_parts(run.embeddings)
    resume_state(run, embeds=True)
    assert storage.list_parts(run.embeddings) == [name]
    assert drop_stray_commits(run, set(), embeds=True) == 1 and storage.list_parts(run.embeddings) == []


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


@pytest.mark.parametrize("n,actors", [(1, 1), (10, 2), (2500, 2), (216, 2)])
def test_manifest_blocks(n, actors):
    from multistream.extract.rows import blocks, entries_table

    table = entries_table([VideoEntry(f"v{i}", f"/in/v{i}", None, None) for i in range(n)])
    parts = blocks(table, actors)
    assert sum(p.num_rows for p in parts) == n
    assert all(p.num_rows <= 64 for p in parts)
    assert len(parts) >= min(n, 4 * actors)
    assert [v for p in parts for v in p["video_id"].to_pylist()] == [f"v{i}" for i in range(n)]


class Killed(BaseException):
    """A kill -9 in the middle of a commit, as far as the files are concerned."""


def readers_see(table_uri: str) -> dict[str, list[str]]:
    """The video ids pyarrow, pandas and duckdb read from a table directory (or its *.parquet glob)."""
    import duckdb
    import pandas as pd

    if not storage.list_parts(table_uri):
        return {"pyarrow": [], "pandas": [], "duckdb": []}
    glob = storage.join(table_uri, "*.parquet")
    return {"pyarrow": sorted(pds.dataset(table_uri).to_table(columns=["video_id"])["video_id"].to_pylist()),
            "pandas": sorted(pd.read_parquet(table_uri, columns=["video_id"]).video_id),
            "duckdb": sorted(v for (v,) in duckdb.sql(f"select video_id from read_parquet('{glob}')").fetchall())}


@pytest.mark.parametrize("dies_in", ["marker", "publish"])
def test_a_commit_killed_midway_shows_plain_readers_only_committed_videos(tmp_path, monkeypatch, dies_in):
    run = RunRoot(str(tmp_path))
    commit([ok_row("a")], run, 20.0, 1e9)
    real_write, real_publish = storage.write_part, storage.publish_part

    def write_part(table, table_uri, name, staged=False):
        if dies_in == "marker" and table_uri == run.videos:
            raise Killed
        return real_write(table, table_uri, name, staged)

    def publish_part(table_uri, name):
        if dies_in == "publish" and table_uri == run.flow:
            raise Killed  # features/ published, flow/ not yet
        return real_publish(table_uri, name)

    monkeypatch.setattr(storage, "write_part", write_part)
    monkeypatch.setattr(storage, "publish_part", publish_part)
    with pytest.raises(Killed):
        commit([ok_row("b"), error_row("c")], run, 20.0, 1e9)
    monkeypatch.undo()
    assert storage.list_staged(run.flow)  # written, not visible
    committed = ["a"] if dies_in == "marker" else ["a", "b", "c"]
    assert set(readers_see(run.videos)["pandas"]) == set(committed)
    for table in (run.videos, run.features, run.flow):
        for reader, ids in readers_see(table).items():
            assert set(ids) <= set(committed) and len(ids) == len(set(ids)), (table, reader, ids)

    state = resume_state(run)  # the next run finishes the commit or drops it
    assert state.done == set(committed)
    assert storage.list_staged(run.flow) == storage.list_staged(run.features) == []
    assert readers_see(run.features)["duckdb"] == [c for c in committed if c != "c"]
    assert readers_see(run.flow)["pyarrow"] == [c for c in committed if c != "c"]


def test_staged_parts_are_invisible_on_s3_too(s3_bucket):
    import duckdb
    import pandas as pd

    run = RunRoot(f"{s3_bucket}/run")
    commit([ok_row("a")], run, 20.0, 1e9)
    storage.write_part(pa.table({"video_id": ["b"]}), run.features, "part-b", staged=True)
    fs, _ = storage.filesystem(run.uri)
    connection = duckdb.connect()
    connection.register_filesystem(fs)
    assert pd.read_parquet(run.features, columns=["video_id"]).video_id.tolist() == ["a"]
    assert pds.dataset(run.features.removeprefix("s3://"), filesystem=fs).to_table()["video_id"].to_pylist() == ["a"]
    rows = connection.sql(f"select video_id from read_parquet('{run.features}/*.parquet')").fetchall()
    assert rows == [("a",)]
    assert storage.publish_part(run.features, "part-b") and not storage.publish_part(run.features, "part-b")
    assert sorted(pd.read_parquet(run.features, columns=["video_id"]).video_id) == ["a", "b"]


def test_transient_error_rows_are_withdrawn_and_extracted_again(tmp_path):
    run = RunRoot(str(tmp_path))
    rows = [ok_row("a"), error_row("b"), error_row("c")]
    rows[1]["video"]["error_kind"] = "transient"
    (mixed, _), = commit(rows, run, 20.0, 1e9)
    (lonely, _), = commit([error_row("d") | {"video": error_row("d")["video"] | {"error_kind": "transient"}}],
                          run, 20.0, 1e9)
    state = resume_state(run)
    assert state.done == {"a", "c"} and state.retried == 2 and state.parts == {mixed}
    assert storage.list_parts(run.videos) == [mixed]  # d's part held only d: gone
    assert sorted(storage.read_table(run.videos)["video_id"].to_pylist()) == ["a", "c"]
    assert storage.read_table(run.features)["video_id"].to_pylist() == ["a"]  # untouched
    again = resume_state(run, retry_errors=True)  # every error row
    assert again.done == {"a"} and again.retried == 1
    assert storage.read_table(run.videos)["video_id"].to_pylist() == ["a"]


def test_the_commit_clock_gathers_by_time_and_size():
    now = [0.0]
    clock = CommitClock(every_s=10, max_bytes=100, now=lambda: now[0])
    assert clock.add("a", 30) is None and clock.wait_s() == 10
    now[0] = 4
    assert clock.add("b", 30) is None and not clock.due() and clock.wait_s() == 6
    assert clock.add("c", 50) == ["a", "b", "c"]  # 110 bytes: full
    assert clock.wait_s() is None and not clock.due()
    assert clock.add("d", 1) is None
    now[0] = 14.5
    assert clock.due() and clock.take() == ["d"]
    assert CommitClock(every_s=0, max_bytes=100).add("e", 1) == ["e"]  # 0 s: each item its own commit


@pytest.mark.fast
def test_deletions_spare_the_parts_of_a_later_lease_generation(tmp_path):
    from multistream.store.lease import LeaseLost

    run = RunRoot(str(tmp_path / "run"))
    table = pa.table({"video_id": ["a"]})
    try:
        storage.set_writer_generation(3)  # a killed job: one committed group and a staged leftover
        write_group("part-old", [(table, run.features), (table, run.videos)])
        storage.write_part(table, run.features, "part-lost", staged=True)
        assert storage.part_generation(run.features, "part-old") == 3
        assert storage.part_generation(run.features, "part-lost", staged=True) == 3

        storage.set_writer_generation(5)  # its successor: the leftover is provably stale, and goes
        drop_uncommitted(committed_parts(run.videos), [run.features])
        assert storage.list_staged(run.features) == [] and storage.list_parts(run.features) == ["part-old"]
        write_group("part-new", [(table, run.features), (table, run.videos)])
        storage.write_part(table, run.features, "part-next", staged=True)  # a commit in flight
        storage.write_part(table, run.predictions, "part-new")

        storage.set_writer_generation(4)  # a stale job whose lease passed on to generation 5 deletes none of it
        with pytest.raises(LeaseLost, match="written by lease generation 5, after this job's 4"):
            drop_uncommitted(committed_parts(run.videos), [run.features])
        with pytest.raises(LeaseLost):
            drop_stray_commits(run, {"part-old"})
        with pytest.raises(LeaseLost):
            replace_table(table, run.predictions, "fuse")
        assert storage.list_staged(run.features) == ["part-next"]
        assert storage.list_parts(run.videos) == storage.list_parts(run.features) == ["part-new", "part-old"]
        assert storage.list_parts(run.predictions) == ["fuse", "part-new"]
    finally:
        storage.set_writer_generation(None)

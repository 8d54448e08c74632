import os

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from multistream.extract.video import open_video
from multistream.store import storage
from tests.support.helpers import write_test_video

SCHEMA = pa.schema([("video_id", pa.string()), ("score", pa.float32()), ("note", pa.string())])


def table(ids, scores):
    return pa.table({"video_id": ids, "score": pa.array(scores, pa.float32())})


def test_join_relative_and_text(tmp_path):
    assert storage.join("s3://bucket/run/", "features", "/part.parquet") == "s3://bucket/run/features/part.parquet"
    assert storage.join(str(tmp_path), "a", "") == f"{tmp_path}/a"
    assert storage.relative("s3://bucket/in/Class/v.avi", "s3://bucket/in/") == "Class/v.avi"
    uri = storage.join(str(tmp_path), "deep", "dir", "notes.txt")
    assert not storage.exists(uri)
    storage.write_text(uri, "héllo\n")
    assert storage.exists(uri) and storage.read_text(uri) == "héllo\n"
    storage.write_bytes(uri, b"\x00\x01")
    assert storage.read_bytes(uri) == b"\x00\x01"
    assert os.listdir(tmp_path / "deep" / "dir") == ["notes.txt"]  # no temporary file left behind
    assert storage.relative(uri, str(tmp_path)) == "deep/dir/notes.txt"


def test_list_files_local(tmp_path):
    for name in ("b/v2.MP4", "a/v1.avi", "a/deeper/v3.mkv", "top.webm", "notes.txt", ".hidden/x.avi", "a/.x.avi"):
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    found = storage.list_files(str(tmp_path))
    assert [storage.relative(f, str(tmp_path)) for f in found] == [
        "a/deeper/v3.mkv", "a/v1.avi", "b/v2.MP4", "top.webm"]
    assert storage.list_files(str(tmp_path), extensions=(".txt",)) == [str(tmp_path / "notes.txt")]
    assert storage.list_files(str(tmp_path / "a" / "v1.avi")) == [str(tmp_path / "a" / "v1.avi")]
    assert storage.list_files(str(tmp_path / "missing")) == []


def test_parts_round_trip_local(tmp_path):
    uri = str(tmp_path / "run" / "scores")
    assert storage.list_parts(uri) == []
    empty = storage.read_table(uri, schema=SCHEMA)
    assert empty.num_rows == 0 and empty.schema == SCHEMA
    assert storage.read_table(uri, columns=["score"], schema=SCHEMA).column_names == ["score"]

    part = storage.write_part(table(["b1", "b2"], [2.0, 3.0]), uri, "part-b")
    storage.write_part(table(["a1"], [1.0]), uri, "part-a")
    assert part == f"{uri}/part-b.parquet"
    assert pq.read_metadata(part).row_group(0).column(0).compression == "ZSTD"
    (tmp_path / "run" / "scores" / ".part-c.parquet.tmp").write_bytes(b"half-written")  # a crashed writer
    assert storage.list_parts(uri) == ["part-a", "part-b"]

    read = storage.read_table(uri, schema=SCHEMA)  # parts without `note` read it as null
    assert read.column("video_id").to_pylist() == ["a1", "b1", "b2"] and read.column("note").null_count == 3
    assert ds.dataset(uri).to_table().num_rows == 3  # plain pyarrow reads the same directory
    assert storage.read_table(uri, columns=["video_id"], filter=ds.field("score") > 1.5).column(0).to_pylist() \
        == ["b1", "b2"]

    storage.write_part(table(["b9"], [9.0]), uri, "part-b")  # rewriting a part replaces it
    assert storage.read_table(uri).column("video_id").to_pylist() == ["a1", "b9"]
    storage.delete_part(uri, "part-a")
    storage.delete_part(uri, "never-written")
    assert storage.list_parts(uri) == ["part-b"]


def test_failed_write_leaves_previous_part(tmp_path, monkeypatch):
    uri = str(tmp_path / "scores")
    storage.write_part(table(["old"], [1.0]), uri, "p")

    def broken_write(table, where, **kwargs):
        with open(where, "wb") as f:
            f.write(b"PAR1 partial")
        raise OSError("disk full")

    monkeypatch.setattr(storage.pq, "write_table", broken_write)
    with pytest.raises(OSError, match="disk full"):
        storage.write_part(table(["new"], [2.0]), uri, "p")
    monkeypatch.undo()
    assert os.listdir(uri) == ["p.parquet"]
    assert storage.read_table(uri).column("video_id").to_pylist() == ["old"]


def test_s3_list_decode_and_tables(s3_bucket, tmp_path):
    clip = write_test_video(tmp_path / "clip.mp4", frames=20, audio_tone_hz=440)
    prefix = storage.join(s3_bucket, "videos")
    for name in ("Walk/v_Walk_g01_c01.mp4", "Run/v_Run_g09_c02.mp4", "readme.txt"):
        storage.write_bytes(storage.join(prefix, name), clip.read_bytes() if name.endswith(".mp4") else b"hi")
    storage.write_bytes(storage.join(s3_bucket, "videos-other", "x.mp4"), b"not under the prefix")

    found = storage.list_files(prefix + "/")
    assert found == [f"{prefix}/Run/v_Run_g09_c02.mp4", f"{prefix}/Walk/v_Walk_g01_c01.mp4"]
    assert storage.relative(found[0], prefix) == "Run/v_Run_g09_c02.mp4"
    assert storage.exists(found[0]) and not storage.exists(storage.join(prefix, "nope.mp4"))
    assert storage.read_text(storage.join(prefix, "readme.txt")) == "hi"

    with storage.open_input(found[1]) as f, open_video(f) as reader:
        assert sum(1 for _ in reader.frames({"x": (32, 24)})) == 20
        assert reader.info.has_audio and reader.audio().std() > 0.1
        assert reader.name == found[1]

    tables = storage.join(s3_bucket, "run", "scores")
    assert storage.list_parts(tables) == [] and storage.read_table(tables, schema=SCHEMA).num_rows == 0
    storage.write_part(table(["x1", "x2"], [1.0, 2.0]), tables, "p1")
    storage.write_part(table(["y1"], [3.0]), tables, "p0")
    assert storage.list_parts(tables) == ["p0", "p1"]
    read = storage.read_table(tables, columns=["video_id"], filter=ds.field("score") >= 2.0)
    assert read.column("video_id").to_pylist() == ["y1", "x2"]
    storage.delete_part(tables, "p0")
    assert storage.list_parts(tables) == ["p1"] and storage.read_table(tables).num_rows == 2


def test_small_parts_are_read_with_one_request_each_on_s3(s3_bucket, tmp_path):
    import pyarrow as pa

    from multistream.store import schema

    names = {"a": ["v1", "v2"], "b": ["v3"]}
    for root in (str(tmp_path / "videos"), storage.join(s3_bucket, "run", "videos")):
        for part, ids in names.items():
            table = pa.Table.from_pylist([{"video_id": v, "status": "ok"} for v in ids], schema=schema.VIDEOS_SCHEMA)
            storage.write_part(table, root, part)
        # a part of an older layout that lacks a column reads it as null
        storage.write_part(pa.table({"video_id": ["v4"]}), root, "c")
        got = storage.read_columns(root, ["video_id", "status"], schema.VIDEOS_SCHEMA)
        assert got.column_names == ["video_id", "status"]
        assert got.to_pylist() == [{"video_id": "v1", "status": "ok"}, {"video_id": "v2", "status": "ok"},
                                   {"video_id": "v3", "status": "ok"}, {"video_id": "v4", "status": None}]
    assert storage.read_columns(storage.join(s3_bucket, "none"), ["video_id"], schema.VIDEOS_SCHEMA).num_rows == 0


def test_s3_listing_streams_page_by_page(s3_bucket):
    for i in range(1003):  # more than a page of 1,000 keys
        storage.write_bytes(storage.join(s3_bucket, "big", f"c{i % 3}", f"v{i:05d}.mp4"), b"")
    storage.write_bytes(storage.join(s3_bucket, "big", ".hidden", "x.mp4"), b"")
    listed = list(storage.iter_files(storage.join(s3_bucket, "big")))
    assert len(listed) == 1003 and all(uri.startswith(s3_bucket + "/big/c") for uri in listed)
    assert storage.list_files(storage.join(s3_bucket, "big")) == sorted(listed)

"""Inputs as users hold them: brace patterns, WebDataset shards, manifest files of URIs, and what is skipped."""

import io
import json
import tarfile
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from multistream.dataset import sources, webdataset
from multistream.dataset.manifest import build_manifest
from multistream.store import members, storage


def write_shard(path, members_: dict[str, bytes]) -> str:
    """A tar shard of `members_` (name → bytes), in order."""
    with tarfile.open(path, "w") as tar:
        for name, data in members_.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return str(path)


def test_brace_patterns_expand_as_webdataset_spells_shards():
    assert sources.expand_braces("s3://b/train-{000..002}.tar") == [f"s3://b/train-{i:03d}.tar" for i in range(3)]
    assert sources.expand_braces("a-{x,y}-{1..2}") == ["a-x-1", "a-x-2", "a-y-1", "a-y-2"]
    assert sources.expand_braces("plain/path") == ["plain/path"]
    assert sources.input_root("s3://b/shards/train-{0..9}.tar") == "s3://b/shards"


def test_shard_members_are_videos_labelled_by_their_json_or_cls(tmp_path):
    video = b"\x00" * 700
    shard = write_shard(tmp_path / "train-0000.tar", {
        "000001.mp4": video, "000001.json": json.dumps({"label": "jump", "split": "train"}).encode(),
        "000002.ts": video + b"\x01", "000002.cls": b"wave\n",
        "v_Run_g03_c01.MTS": video,  # no label member: the UCF101 name gives label and split
        "000004.txt": b"caption", "000004.srt": b"1\n",
    })
    index = webdataset.index_shard(shard, (".mp4", ".ts", ".mts"))
    assert [m.name for m in index.videos] == ["000001.mp4", "000002.ts", "v_Run_g03_c01.MTS"]
    assert index.skipped == Counter({".txt": 1, ".srt": 1}) and index.error is None
    with members.open_member(members.member_uri(shard, "000002.ts", index.videos[1].offset, 701)) as f:
        assert f.read() == video + b"\x01" and f.seek(0, 2) == 701
    entries = build_manifest(shard, skipped=(skipped := Counter()))
    assert {e.video_id: (e.label, e.split) for e in entries} == {
        "000001.mp4": ("jump", "train"), "000002.ts": ("wave", None), "v_Run_g03_c01.MTS": ("Run", "test")}
    assert skipped == Counter({".txt": 1, ".srt": 1})
    assert entries[0].uri == f"{shard}::000001.mp4@512:700"  # read by byte range on the worker


def test_a_folder_of_shards_and_files_is_one_listing(tmp_path):
    (tmp_path / "shards").mkdir()
    write_shard(tmp_path / "shards" / "a-0.tar",
                {"k1.mp4": b"x" * 10, "k2.webm": b"y" * 10})
    write_shard(tmp_path / "shards" / "a-1.tar", {"k3.mp4": b"z" * 10, "k1.mp4": b"again"})  # k1 met before
    storage.write_bytes(str(tmp_path / "shards" / "loose.m2ts"), b"v")
    storage.write_bytes(str(tmp_path / "shards" / "notes.docx"), b"n")
    storage.write_bytes(str(tmp_path / "shards" / "broken.tar"), b"not a tar at all" * 100)
    skipped = Counter()
    entries = build_manifest(str(tmp_path / "shards"), skipped=skipped)
    assert [e.video_id for e in entries] == ["k1.mp4", "k2.webm", "k3.mp4", "loose.m2ts"]
    assert skipped == Counter({".docx": 1})
    pattern = build_manifest(str(tmp_path / "shards" / "a-{0..1}.tar"))
    assert [e.video_id for e in pattern] == ["k1.mp4", "k2.webm", "k3.mp4"]


def test_every_default_extension_is_listed_and_others_are_counted(tmp_path):
    names = ["clip.ts", "cam/clip.MTS", "disc.m2ts", "phone.3gp", "web.ogv", "broadcast.mxf", "dvd.VOB",
             "sub.srt", "readme.txt", "classInd.txt"]
    for name in names:
        storage.write_bytes(str(tmp_path / name), b"bytes")
    skipped = Counter()
    entries = build_manifest(str(tmp_path), skipped=skipped)
    assert sorted(e.video_id for e in entries) == sorted(names[:7])
    assert skipped == Counter({".srt": 1, ".txt": 1})  # classInd.txt labels a folder: not counted


@pytest.mark.parametrize("kind", ["jsonl", "csv", "parquet"])
def test_manifest_files_of_uris(tmp_path, kind):
    rows = [{"uri": "clips/a.mp4", "label": "jump", "split": "train"},
            {"uri": "http://127.0.0.1:9/v/b.webm?X-Amz-Signature=abc", "label": "wave", "split": "test"},
            {"uri": "s3://bucket/c", "label": "", "split": ""},
            {"uri": "clips/a.mp4", "label": "again", "split": ""}]
    path = tmp_path / f"list.{kind}"
    if kind == "jsonl":
        path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    elif kind == "csv":
        path.write_text("uri,label,split\n" + "".join(f"{r['uri']},{r['label']},{r['split']}\n" for r in rows))
    else:
        pq.write_table(pa.Table.from_pylist(rows), path)
    entries = build_manifest(str(path))
    assert [(e.video_id, e.uri, e.label, e.split) for e in entries] == [
        ("clips/a.mp4", f"{tmp_path}/clips/a.mp4", "jump", "train"),  # nothing is looked up on the driver
        ("http://127.0.0.1:9/v/b.webm", rows[1]["uri"], "wave", "test"),  # a re-signed URL keeps its id
        ("s3://bucket/c", "s3://bucket/c", None, None)]


def test_manifest_files_are_refused_in_one_line(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"uri": "a.mp4"}\nnot json\n')
    with pytest.raises(ValueError, match=r"bad.jsonl line 2: not a JSON object"):
        build_manifest(str(tmp_path / "bad.jsonl"))
    (tmp_path / "nouri.jsonl").write_text('{"name": "a.mp4"}\n')
    with pytest.raises(ValueError, match=r"needs a column named one of \('uri', 'url', 'path', 'file'\)"):
        build_manifest(str(tmp_path / "nouri.jsonl"))
    (tmp_path / "split.jsonl").write_text('{"uri": "a.mp4", "split": "holdout"}\n')
    with pytest.raises(ValueError, match="split must be one of"):
        build_manifest(str(tmp_path / "split.jsonl"))

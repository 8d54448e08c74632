"""Inputs as users hold them, end to end on Ray: WebDataset shards on S3, a JSONL of http(s) URLs, broadcast
containers, files skipped by extension; transient read failures retried by a plain re-run."""

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import boto3
import numpy as np
import pytest

from multistream.store import storage
from tests.support.files_server import FilesServer
from tests.support.helpers import ROOT, SMALL_EXTRACTION, run_job_main, write_test_video
from tests.support.s3_proxy import FaultPlan, FaultProxy


def videos_of(root: str) -> dict[str, dict]:
    rows = storage.read_table(storage.join(root, "videos")).to_pylist()
    ids = [row["video_id"] for row in rows]
    assert len(ids) == len(set(ids)), ids  # exactly one row per video
    return {row["video_id"]: row for row in rows}


def tar_bytes(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, bytes]:
    folder = tmp_path_factory.mktemp("clips")
    made = {"a.mp4": write_test_video(folder / "a.mp4", frames=20, audio_tone_hz=300),
            "b.mkv": write_test_video(folder / "b.mkv", frames=16, seed=1),
            # a broadcast archive's MPEG-TS: MPEG-2 video; and a camera's .MTS (MPEG-TS too)
            "broadcast.ts": write_test_video(folder / "broadcast.ts", frames=20, codec="mpeg2video", seed=2,
                                             audio_tone_hz=500),
            "cam.ts": write_test_video(folder / "cam.ts", frames=18, seed=3)}
    return {name: Path(path).read_bytes() for name, path in made.items()}


def test_webdataset_shards_on_s3_with_a_bad_member_and_broadcast_clips(ray_session, s3_bucket, clips, tmp_path,
                                                                      capsys):
    bucket = s3_bucket.removeprefix("s3://")
    client = boto3.client("s3")
    noise = np.random.default_rng(0).integers(0, 255, 5000, dtype=np.uint8).tobytes()
    shards = {
        "shards/train-0000.tar": tar_bytes({"000001.mp4": clips["a.mp4"],
                                            "000001.json": json.dumps({"label": "jump", "split": "train"}).encode(),
                                            "000002.mp4": noise, "000002.cls": b"jump"}),
        "shards/train-0001.tar": tar_bytes({"000003.mkv": clips["b.mkv"], "000003.cls": b"wave",
                                            "000003.txt": b"a caption"}),
    }
    for key, data in shards.items():
        client.put_object(Bucket=bucket, Key=key, Body=data)
    client.put_object(Bucket=bucket, Key="shards/broadcast.ts", Body=clips["broadcast.ts"])
    client.put_object(Bucket=bucket, Key="shards/cam/clip.MTS", Body=clips["cam.ts"])
    client.put_object(Bucket=bucket, Key="shards/notes.xyz", Body=b"not a video")
    out = str(tmp_path / "run")
    assert run_job_main("extract", "--input", f"{s3_bucket}/shards/", "--output", out) == 0
    videos = videos_of(out)
    assert set(videos) == {"000001.mp4", "000002.mp4", "000003.mkv", "broadcast.ts", "cam/clip.MTS"}
    bad = videos.pop("000002.mp4")
    assert bad["status"] == "error" and bad["error_kind"] == "video", bad
    assert bad["error"].startswith(f"{s3_bucket}/shards/train-0000.tar member 000002.mp4: ") and "\n" not in bad["error"]
    assert all(row["status"] == "ok" and row["error_kind"] is None for row in videos.values()), videos
    assert (videos["000001.mp4"]["label"], videos["000001.mp4"]["split"]) == ("jump", "train")
    assert videos["000003.mkv"]["label"] == "wave" and videos["broadcast.ts"]["has_audio"]
    assert videos["000001.mp4"]["uri"].startswith(f"{s3_bucket}/shards/train-0000.tar::000001.mp4@")
    features = storage.read_table(storage.join(out, "features"), columns=["video_id"])["video_id"].to_pylist()
    assert sorted(features) == sorted(videos)
    printed = capsys.readouterr().out
    assert "skipped 2 files by extension (.txt 1, .xyz 1): not in dataset.extensions" in printed, printed


def test_a_jsonl_of_http_urls_with_a_missing_one(ray_session, clips, tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    for name in ("a.mp4", "b.mkv"):
        (served / name).write_bytes(clips[name])
    with FilesServer(served) as server:
        listing = tmp_path / "list.jsonl"
        rows = [{"uri": server.url("a.mp4"), "label": "jump", "split": "train"},
                {"uri": server.url("b.mkv") + "?token=abc", "label": "wave", "split": "test"},
                {"uri": server.url("gone.mp4"), "label": "wave"}]
        listing.write_text("".join(json.dumps(row) + "\n" for row in rows))
        out = str(tmp_path / "run")
        assert run_job_main("extract", "--input", str(listing), "--output", out) == 0
    videos = videos_of(out)
    assert set(videos) == {server.url("a.mp4"), server.url("b.mkv"), server.url("gone.mp4")}
    gone = videos[server.url("gone.mp4")]
    assert gone["status"] == "error" and gone["error_kind"] == "input", gone
    assert server.url("gone.mp4") in gone["error"] and "\n" not in gone["error"]
    assert [videos[server.url(n)]["status"] for n in ("a.mp4", "b.mkv")] == ["ok", "ok"]
    assert videos[server.url("b.mkv")]["label"] == "wave"
    assert server.requests < 200  # ranged reads of two small clips, not a request per byte block of the archive


@pytest.mark.slow
def test_transient_read_failures_are_retried_by_a_plain_rerun(s3_server, s3_bucket, clips, tmp_path):
    """Reads of two videos fail (S3 503 SlowDown past the retries) in the first run: transient error rows; a
    plain re-run extracts them again and leaves one ok row per video."""
    bucket = s3_bucket.removeprefix("s3://")
    client = boto3.client("s3")
    names = [f"c{i}/v{i}.mp4" for i in range(5)]
    for i, name in enumerate(names):
        client.put_object(Bucket=bucket, Key=f"in/{name}", Body=clips["a.mp4" if i % 2 else "b.mkv"])
    proxy = FaultProxy(s3_server).start()
    out = str(tmp_path / "run")
    command = [sys.executable, str(ROOT / "jobs" / "extract.py"), "--input", f"{s3_bucket}/in/", "--output", out,
               "--set", "storage.retries=1", *SMALL_EXTRACTION]
    env = {**os.environ, "RAY_ADDRESS": "local", "AWS_ENDPOINT_URL": proxy.endpoint}  # its own Ray, via the proxy
    try:
        proxy.set_plan(FaultPlan(slow_down=1.0, only=("in/c1/v1.mp4", "in/c3/v3.mp4")))
        first = subprocess.run(command, env=env, capture_output=True, text=True, timeout=400)
        counts = dict(proxy.counts)
        assert first.returncode == 0, first.stderr[-3000:]
        videos = videos_of(out)
        transient = sorted(v for v, row in videos.items() if row["error_kind"] == "transient")
        assert transient == ["c1/v1.mp4", "c3/v3.mp4"] and counts["slow_down"] >= 2, (videos, counts)
        assert all(videos[v]["status"] == "ok" for v in videos if v not in transient)

        proxy.set_plan(FaultPlan())
        second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=400)
    finally:
        proxy.stop()
    assert second.returncode == 0, second.stderr[-3000:]
    assert "(2 error rows retried), 2 ok, 0 errors" in second.stdout, second.stdout
    videos = videos_of(out)
    assert sorted(videos) == sorted(names) and all(row["status"] == "ok" for row in videos.values())
    features = storage.read_table(storage.join(out, "features"), columns=["video_id"])["video_id"].to_pylist()
    assert sorted(features) == sorted(names)

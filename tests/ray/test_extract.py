"""jobs/extract.py end to end on Ray Data: tables, bad input as error rows, resume, kill -9, S3."""

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.dataset as pds
import pytest

from multistream.store import schema, storage
from tests.support.helpers import ROOT, SMALL_EXTRACTION, run_job_main, write_test_video


def run_job(*args: str) -> int:
    return run_job_main("extract", *args)


def table(root, name):
    return pds.dataset(str(Path(root) / name)).to_table().to_pandas()


@pytest.fixture(scope="module")
def mixed_inputs(tmp_path_factory):
    """Good clips of three containers (with and without audio) beside empty, truncated and non-video files."""
    folder = tmp_path_factory.mktemp("mixed")
    (folder / "walk").mkdir()
    (folder / "run").mkdir()
    write_test_video(folder / "walk" / "a.mp4", frames=24, audio_tone_hz=300)
    write_test_video(folder / "walk" / "b.avi", frames=20, codec="mpeg4", seed=1)
    write_test_video(folder / "run" / "c.mkv", frames=30, audio_tone_hz=600, seed=2)
    write_test_video(folder / "run" / "d.mp4", frames=16, seed=3)
    (folder / "run" / "empty.mp4").write_bytes(b"")
    whole = (folder / "walk" / "a.mp4").read_bytes()
    (folder / "walk" / "truncated.mp4").write_bytes(whole[: len(whole) // 3])
    (folder / "run" / "notes.avi").write_text("this is not a video\n" * 50)
    return folder


def assert_mixed_run(out: Path) -> None:
    """Every table of a run over `mixed_inputs`: complete rows for the good clips, error rows for the rest."""
    videos = table(out, "videos").set_index("video_id")
    assert len(videos) == 7 and videos.index.is_unique
    bad = {"run/empty.mp4", "walk/truncated.mp4", "run/notes.avi"}
    assert set(videos.index[videos.status == "error"]) == bad
    assert videos.loc[list(bad), "error"].str.len().gt(5).all()
    good = videos[videos.status == "ok"]
    assert good.error.isna().all() and set(good.label) == {"walk", "run"}
    assert good.loc["walk/a.mp4", "n_frames"] == 24 and good.loc["walk/a.mp4", "has_audio"]
    assert not good.loc["run/d.mp4", "has_audio"]
    assert (good.n_samples == 8).all() and (good[["decode_s", "flow_s", "spatial_s", "audio_s"]] > 0).all().all()

    features = pds.dataset(str(out / "features")).to_table()
    assert sorted(features["video_id"].to_pylist()) == sorted(good.index)
    spatial = schema.column_to_sequences(features["spatial"])
    audio = schema.column_to_sequences(features["audio"])
    assert all(s.shape == (8, 1280) and np.isfinite(s).all() for s in spatial)
    assert all(a.shape[1] == 128 and len(a) >= 1 for a in audio)
    assert features.schema.field("spatial").type == schema.vectors(1280)
    flow = table(out, "flow").set_index("video_id")
    assert sorted(flow.index) == sorted(good.index)
    assert list(flow.loc["run/c.mkv", "shape"]) == [29, 48, 64, 2]


def test_extract_writes_every_table_and_error_rows(ray_session, mixed_inputs, tmp_path):
    out = tmp_path / "run"
    assert run_job("--input", str(mixed_inputs), "--output", str(out)) == 0  # the demo config: fused stages
    assert_mixed_run(out)
    # the commit tasks stamp every part with the job's lease generation (the first on a new run root)
    assert {storage.part_generation(str(out / table), name) for table in ("videos", "features", "flow")
            for name in storage.list_parts(str(out / table))} == {1}

    # a second run is a no-op: nothing rewritten, nothing duplicated
    parts = {t: storage.list_parts(str(out / t)) for t in ("videos", "features", "flow")}
    assert run_job("--input", str(mixed_inputs), "--output", str(out)) == 0
    assert parts == {t: storage.list_parts(str(out / t)) for t in ("videos", "features", "flow")}


def test_extract_with_a_pool_per_stage(ray_session, mixed_inputs, tmp_path):
    # the GPU-cluster layout: decode, spatial, audio and write each in their own actors
    out = tmp_path / "run"
    assert run_job("--input", str(mixed_inputs), "--output", str(out), "--set", "ray.fused=null") == 0
    assert_mixed_run(out)


def test_resume_after_kill_completes_the_set(ray_session, tmp_path):
    inputs = tmp_path / "many"
    for i in range(2):
        (inputs / f"class{i}").mkdir(parents=True)
    for i in range(10):
        write_test_video(inputs / f"class{i % 2}" / f"v{i}.mp4", frames=60, size=(96, 72), seed=i)
    out = tmp_path / "run"
    command = [sys.executable, str(ROOT / "jobs" / "extract.py"), "--input", str(inputs), "--output", str(out),
               "--set", "ray.fused.batch_size=1", "--set", "commit.every_s=0", *SMALL_EXTRACTION]
    env = {**os.environ, "RAY_ADDRESS": "local"}  # its own Ray, killed with it
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                               start_new_session=True)
    deadline = time.time() + 240
    while time.time() < deadline and len(storage.list_parts(str(out / "videos"))) < 2 and process.poll() is None:
        time.sleep(0.2)
    # kill -9 the job and every process of its local Ray, so that no worker outlives it (the late commit of
    # one that does is test_late_commits_of_an_interrupted_run_are_dropped)
    import psutil

    started = psutil.Process(process.pid).children(recursive=True)
    os.killpg(process.pid, signal.SIGKILL)
    for child in started:
        with contextlib.suppress(psutil.Error):
            child.kill()
    process.wait()
    psutil.wait_procs(started, timeout=30)
    committed = len(storage.list_parts(str(out / "videos")))
    assert committed >= 2, "the run should have committed some videos before it was killed"

    assert run_job("--input", str(inputs), "--output", str(out)) == 0
    videos = table(out, "videos")
    assert sorted(videos.video_id) == sorted(f"class{i % 2}/v{i}.mp4" for i in range(10))
    assert (videos.status == "ok").all()
    for name in ("features", "flow"):
        ids = table(out, name).video_id
        assert ids.is_unique and sorted(ids) == sorted(videos.video_id)


def test_late_commits_of_an_interrupted_run_are_dropped(ray_session, mixed_inputs, tmp_path):
    """A worker of a killed run can commit its in-flight video after a re-run has read what is committed. The
    re-run extracts that video again, so it drops the late part: no video has two rows."""
    import shutil

    from multistream.config import load_config
    from multistream.ray.extract import run_extract

    out = tmp_path / "run"
    overrides = [f"paths.input={mixed_inputs}", f"paths.output={out}", "paths.demo=false", *SMALL_EXTRACTION[1::2]]
    late = []

    def commit_late_copy(row):  # as the killed run's worker would: the same video under its own part name
        if not late:
            first = storage.list_parts(str(out / "videos"))[0]
            for name in ("videos", "features"):
                if (out / name / f"{first}.parquet").exists():
                    shutil.copy(out / name / f"{first}.parquet", out / name / "part-late.parquet")
            late.append(first)

    summary = run_extract(load_config(overrides=overrides), on_video=commit_late_copy)
    assert late and summary.ok + len(summary.errors) == 7
    assert "part-late" not in storage.list_parts(str(out / "videos")) + storage.list_parts(str(out / "features"))
    assert_mixed_run(out)
    assert table(out, "videos").video_id.is_unique and table(out, "features").video_id.is_unique


def test_extract_from_and_to_s3(ray_session, s3_bucket, tmp_path):
    import boto3

    client = boto3.client("s3")
    bucket = s3_bucket.removeprefix("s3://")
    for name, frames in (("jump/x.mp4", 20), ("sit/y.mp4", 16)):
        path = write_test_video(tmp_path / name.replace("/", "_"), frames=frames, audio_tone_hz=500)
        client.upload_file(str(path), bucket, f"archive/{name}")
    out = f"{s3_bucket}/runs/one"
    assert run_job("--input", f"{s3_bucket}/archive/", "--output", out) == 0
    videos = storage.read_table(f"{out}/videos").to_pandas()
    assert sorted(videos.video_id) == ["jump/x.mp4", "sit/y.mp4"] and (videos.status == "ok").all()
    assert videos.uri.str.startswith("s3://").all()
    assert storage.read_table(f"{out}/features").num_rows == 2
    assert storage.read_table(f"{out}/flow").num_rows == 2


def test_auto_is_the_gpu_only_where_ray_gave_one(ray_session):
    import ray

    from multistream.device import actor_device

    device = ray.remote(num_gpus=0)(actor_device)
    assert ray.get([device.remote("auto"), device.remote("cpu"), device.remote("cuda")]) == ["cpu", "cpu", "cuda"]


@pytest.mark.slow
def test_a_kill_9_loses_at_most_every_s_of_work_and_readers_see_only_committed_videos(tmp_path):
    """kill -9 at a random moment after the first commit: every video finished more than commit.every_s (plus
    one commit's writing) before the kill is committed, and pandas, pyarrow and duckdb read no row of a video
    whose commit did not complete."""
    import random
    import re

    import duckdb
    import psutil

    # enough videos that a loaded machine's first commit still comes well before the end
    inputs, every_s, slack_s, TOTAL = tmp_path / "many", 2.0, 3.0, 80  # noqa: N806
    for i in range(2):
        (inputs / f"c{i}").mkdir(parents=True)
    for i in range(TOTAL):
        write_test_video(inputs / f"c{i % 2}" / f"v{i:02d}.mp4", frames=90, size=(96, 72), seed=i)
    out, log_path = tmp_path / "run", tmp_path / "job.log"
    command = [sys.executable, str(ROOT / "jobs" / "extract.py"), "-v", "--input", str(inputs), "--output", str(out),
               "--set", "ray.fused.batch_size=1", "--set", f"commit.every_s={every_s}", *SMALL_EXTRACTION]
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                   env={**os.environ, "RAY_ADDRESS": "local"})
        deadline = time.time() + 300
        while time.time() < deadline and not storage.list_parts(str(out / "videos")) and process.poll() is None:
            time.sleep(0.1)
        time.sleep(random.Random().uniform(0.5, every_s))
        killed_at = time.time()
        started = psutil.Process(process.pid).children(recursive=True)
        os.killpg(process.pid, signal.SIGKILL)
        for child in started:
            with contextlib.suppress(psutil.Error):
                child.kill()
        process.wait()
        psutil.wait_procs(started, timeout=30)
    finished = [(float(t), int(n)) for n, t in re.findall(r"finished: (\d+) video\(s\) at ([0-9.]+)",
                                                          log_path.read_text())]
    videos = table(out, "videos")
    assert 0 < len(videos) < TOTAL, "the kill should fall after a commit and before the end"
    owed = sum(n for t, n in finished if t <= killed_at - every_s - slack_s)
    done = sum(n for t, n in finished if t <= killed_at)
    assert len(videos) >= owed, (len(videos), owed, done)
    print(f"\nkill -9: {done} videos finished, {len(videos)} committed, {owed} finished > {every_s + slack_s} s "
          "before the kill")

    ids = set(videos.video_id)
    connection = duckdb.connect()
    for name in ("videos", "features", "flow"):
        import pandas as pd

        seen = {"pandas": list(pd.read_parquet(out / name, columns=["video_id"]).video_id),
                "pyarrow": pds.dataset(str(out / name)).to_table(columns=["video_id"])["video_id"].to_pylist(),
                "duckdb": [v for (v,) in connection.sql(
                    f"select video_id from read_parquet('{out / name}/*.parquet')").fetchall()]}
        for reader, read in seen.items():
            assert set(read) <= ids and len(read) == len(set(read)), (name, reader)
    assert run_job("--input", str(inputs), "--output", str(out)) == 0  # resume finishes the set
    assert sorted(table(out, "videos").video_id) == sorted(f"c{i % 2}/v{i:02d}.mp4" for i in range(TOTAL))
    assert not storage.list_staged(str(out / "features")) and not storage.list_staged(str(out / "flow"))

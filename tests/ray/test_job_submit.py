"""A job runs unchanged under `ray job submit` against a cluster started with `ray start --head`."""

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.dataset as pds
import pytest

from tests.support.helpers import write_test_video

ROOT = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).with_name("ray"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def cluster(tmp_path):
    """A one-node Ray cluster of this machine, on loopback, torn down afterwards."""
    if not Path(RAY).exists():
        pytest.skip("the ray command is not installed beside this Python")
    dashboard = free_port()
    temp = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))  # Ray's socket paths must stay short
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"  # as in an activated venv
    # Every port of its own: the test session's local Ray may already hold the fixed defaults (the job
    # agent's 52365 above all, without which no job can be submitted).
    ports = [f"--{name}={free_port()}" for name in ("port", "dashboard-agent-listen-port", "dashboard-agent-grpc-port",
                                                    "metrics-export-port", "runtime-env-agent-port",
                                                    "ray-client-server-port")]
    subprocess.run([RAY, "start", "--head", *ports, "--num-cpus=2", "--node-ip-address=127.0.0.1",
                    "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}", f"--temp-dir={temp}",
                    "--include-dashboard=true"], check=True, env=env, capture_output=True, timeout=180)
    try:
        yield f"http://127.0.0.1:{dashboard}", env
    finally:
        stop_processes_under(temp)
        shutil.rmtree(temp, ignore_errors=True)


def stop_processes_under(temp: Path) -> None:
    """Stop this cluster's processes only (`ray stop` would stop every Ray on the machine)."""
    import psutil

    processes = []
    for process in psutil.process_iter(["cmdline"]):
        if str(temp) in " ".join(process.info["cmdline"] or []):
            processes.append(process)
            process.terminate()
    _, alive = psutil.wait_procs(processes, timeout=5)
    for process in alive:
        process.kill()


@pytest.mark.slow
def test_extract_under_ray_job_submit(cluster, tmp_path):
    address, env = cluster
    inputs = tmp_path / "videos" / "wave"
    inputs.mkdir(parents=True)
    write_test_video(inputs / "a.mp4", frames=20, audio_tone_hz=440)
    write_test_video(inputs / "b.mp4", frames=16, seed=1)
    out = tmp_path / "run"
    command = [RAY, "job", "submit", f"--address={address}", "--working-dir", str(ROOT), "--",
               "python", "jobs/extract.py", "--input", str(inputs.parent), "--output", str(out),
               "--set", "flow.size=[64, 48]", "--set", "spatial.image_size=32", "--set", "sampling.max_seq_len=8"]
    for _ in range(30):  # the node's job agent comes up a few seconds after `ray start` returns
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
        if "No available agent" not in result.stderr + result.stdout:
            break
        time.sleep(2)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "joined Ray cluster" in result.stdout + result.stderr
    videos = pds.dataset(str(out / "videos")).to_table().to_pandas()
    assert sorted(videos.video_id) == ["wave/a.mp4", "wave/b.mp4"] and (videos.status == "ok").all()


@pytest.mark.slow
@pytest.mark.cluster
def test_a_driver_killed_under_ray_job_submit_resumes_when_submitted_again(cluster, tmp_path):
    """kill -9 of the job's driver process on the cluster; submitting the job again resumes (no video twice)."""
    import re

    import psutil

    from multistream.store import storage
    from tests.support.helpers import SMALL_EXTRACTION

    address, env = cluster
    inputs = tmp_path / "videos"
    for i in range(8):
        (inputs / f"c{i % 2}").mkdir(parents=True, exist_ok=True)
        write_test_video(inputs / f"c{i % 2}" / f"v{i}.mp4", frames=20, seed=i, audio_tone_hz=300 + 50 * i)
    out = tmp_path / "run"

    def submit(*extra: str) -> subprocess.CompletedProcess:
        command = [RAY, "job", "submit", f"--address={address}", "--working-dir", str(ROOT), *extra, "--",
                   "python", "jobs/extract.py", "--input", str(inputs), "--output", str(out),
                   "--set", "ray.fused.batch_size=1", "--set", "commit.every_s=0", *SMALL_EXTRACTION]
        for _ in range(30):  # the node's job agent comes up a few seconds after `ray start` returns
            result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
            if "No available agent" not in result.stderr + result.stdout:
                return result
            time.sleep(2)
        return result

    started = time.monotonic()
    first = submit("--no-wait")
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    deadline = time.monotonic() + 400
    while len(storage.list_parts(str(out / "videos"))) < 2:
        assert time.monotonic() < deadline, "the submitted job committed nothing"
        time.sleep(0.2)
    drivers = [p for p in psutil.process_iter(["cmdline"])
               if "jobs/extract.py" in " ".join(p.info["cmdline"] or []) and str(out) in p.info["cmdline"]]
    assert drivers, "no driver process found"
    for process in drivers:
        process.kill()
    at_kill = len(storage.list_parts(str(out / "videos")))
    psutil.wait_procs(drivers, timeout=30)
    again = submit()
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    done = re.search(r"(\d+) already done", again.stdout)
    assert done and int(done.group(1)) >= at_kill, again.stdout[-3000:]  # resumed, not started over
    videos = pds.dataset(str(out / "videos")).to_table().to_pandas()
    assert sorted(videos.video_id) == sorted(f"c{i % 2}/v{i}.mp4" for i in range(8))
    assert (videos.status == "ok").all()
    features = pds.dataset(str(out / "features")).to_table(columns=["video_id"]).to_pandas().video_id
    assert features.is_unique and sorted(features) == sorted(videos.video_id)
    print(f"\nFAULT driver killed under ray job submit: {at_kill}/8 committed at the kill, resubmitted to "
          f"8/8; {time.monotonic() - started:.0f} s")

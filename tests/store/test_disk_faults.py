"""An output disk that fills up mid-extraction or turns read-only: a clear error, what was committed stays
readable, and the next run resumes. The disk is a small tmpfs mounted for the test (needs root; skipped
where mounting is not allowed). The jobs run in their own process with a local Ray."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import pyarrow.dataset as pds
import pytest

from multistream.store import storage
from tests.support.helpers import ROOT, SMALL_EXTRACTION, write_test_video

pytestmark = pytest.mark.slow
N = 8
DRIVER_TRACEBACK = f'File "{ROOT / "multistream" / "jobs" / "extract.py"}"'  # the job's own (its workers' may be logged)


@pytest.fixture
def small_disk(tmp_path):
    mount = tmp_path / "disk"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def remount(mount, options: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{options}", str(mount)], check=True)


def extract(inputs, out) -> subprocess.CompletedProcess:
    command = [sys.executable, str(ROOT / "jobs" / "extract.py"), "--input", str(inputs),
               "--output", str(out), "--set", "ray.fused={num_cpus: 1, min_actors: 1, max_actors: 1, batch_size: 1}",
               "--set", "commit.every_s=0", *SMALL_EXTRACTION]  # a commit per video
    return subprocess.run(command, env={**os.environ, "RAY_ADDRESS": "local"}, cwd=ROOT, capture_output=True,
                          text=True, timeout=400)


def committed(out) -> list[str]:
    if not (out / "videos").is_dir():
        return []
    return pds.dataset(str(out / "videos")).to_table(columns=["video_id"])["video_id"].to_pylist()


def test_a_full_then_read_only_output_disk_stops_the_job_clearly_and_keeps_what_was_committed(small_disk,
                                                                                              tmp_path):
    inputs = tmp_path / "videos" / "wave"
    inputs.mkdir(parents=True)
    for i in range(N):
        write_test_video(inputs / f"v{i}.mp4", frames=20, seed=i, audio_tone_hz=440)
    out = small_disk / "run"
    started = time.monotonic()
    # room for part of the run only: what a whole run writes is measured first, on the test's own disk
    probe = extract(inputs.parent, tmp_path / "probe")
    assert probe.returncode == 0, (probe.stdout + probe.stderr)[-4000:]
    whole = sum(f.stat().st_size for f in (tmp_path / "probe").rglob("*") if f.is_file())
    free = shutil.disk_usage(small_disk).free
    (small_disk / "filler").write_bytes(b"\0" * (free - whole // 2))
    full = extract(inputs.parent, out)
    output = full.stdout + full.stderr
    assert full.returncode != 0 and "no space left on the device" in output, output[-4000:]
    assert "run the job again to resume" in output and DRIVER_TRACEBACK not in output
    kept = committed(out)
    assert 0 < len(kept) < N, output[-3000:]
    assert all(storage.read_table(str(out / t)).num_rows >= len(kept) for t in ("videos", "features"))

    (small_disk / "filler").unlink()
    remount(small_disk, "ro")
    refused = extract(inputs.parent, out)
    output = refused.stdout + refused.stderr
    assert refused.returncode != 0 and DRIVER_TRACEBACK not in output, output[-3000:]
    assert f"cannot write --output {out}: read-only filesystem" in output, output[-3000:]
    assert sorted(committed(out)) == sorted(kept)  # still readable

    remount(small_disk, "rw")
    resumed = extract(inputs.parent, out)
    assert resumed.returncode == 0, (resumed.stdout + resumed.stderr)[-4000:]
    assert f"{len(kept)} already done" in resumed.stdout
    ids = committed(out)
    assert sorted(ids) == sorted(f"wave/v{i}.mp4" for i in range(N)) and len(set(ids)) == N
    features = pds.dataset(str(out / "features")).to_table(columns=["video_id"])["video_id"].to_pylist()
    assert sorted(features) == sorted(ids)
    print(f"\nFAULT output disk full then read-only: {len(kept)}/{N} committed before the disk filled, "
          f"resumed to {N}/{N}; three runs {time.monotonic() - started:.0f} s")

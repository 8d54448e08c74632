"""Faults of a real multi-node Ray cluster (a head without CPUs and two worker nodes, each its own raylet)
with its run roots on S3 (moto behind a fault-injecting proxy): nodes lost mid-extraction and mid-training, S3
answering SlowDown or resetting connections, two jobs on one run root, local paths on a cluster.

One cluster serves the module; a test that kills a node adds a fresh one afterwards, as an autoscaler would.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid

import boto3
import pyarrow.parquet as pq
import pytest

from multistream.store import storage
from tests.support.helpers import ROOT, SMALL_EXTRACTION, write_test_video
from tests.support.ray_cluster import MultiNodeCluster
from tests.support.s3_proxy import FaultPlan, FaultProxy

pytestmark = pytest.mark.cluster

CLASSES = ("Wave", "Jump")
WORKER = {"num_cpus": 2}
# the fused layout with one video per commit; two actors of one CPU: either worker node can host both
FUSED = ["--set", "ray.fused={num_cpus: 1, min_actors: 1, max_actors: 2, batch_size: 1}", "--set", "commit.every_s=0"]
PER_STAGE = ["--set", "ray.fused=null", "--set", "commit.every_s=0"]


def video_ids() -> list[str]:
    """UCF101 names: group 1 is the test split, groups 8-11 train (one of them carved into val)."""
    return sorted(f"{c}/v_{c}_g{g:02d}_c01.mp4" for c in CLASSES for g in (1, 8, 9, 10, 11))


@pytest.fixture(scope="module")
def bucket(s3_server, tmp_path_factory):
    """A bucket with the tiny videos under videos/."""
    name = f"faults-{uuid.uuid4().hex[:12]}"
    client = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")
    client.create_bucket(Bucket=name)
    folder = tmp_path_factory.mktemp("videos")
    for i, video_id in enumerate(video_ids()):
        path = write_test_video(folder / f"{i}.mp4", frames=20, seed=i, audio_tone_hz=300 + 40 * i)
        client.upload_file(str(path), name, f"videos/{video_id}")
    return f"s3://{name}"


@pytest.fixture(scope="module")
def proxy(s3_server):
    proxy = FaultProxy(s3_server).start()
    yield proxy
    proxy.stop()


@pytest.fixture(scope="module")
def cluster(proxy):
    env = {**os.environ, "AWS_ENDPOINT_URL": proxy.endpoint}  # the nodes' workers reach S3 through the proxy
    with MultiNodeCluster([{"num_cpus": 0}, WORKER, WORKER], env) as cluster:
        yield cluster


def job_env(cluster, proxy) -> dict[str, str]:
    return cluster.client_env({**os.environ, "AWS_ENDPOINT_URL": proxy.endpoint})


def start_job(job: str, cluster, proxy, *args: str, log=None) -> subprocess.Popen:
    command = [sys.executable, str(ROOT / "jobs" / f"{job}.py"), *args, *SMALL_EXTRACTION]
    return subprocess.Popen(command, env=job_env(cluster, proxy), cwd=ROOT, text=True,
                            stdout=log or subprocess.PIPE, stderr=subprocess.STDOUT)


def finish(process: subprocess.Popen, timeout: float = 400) -> str:
    output, _ = process.communicate(timeout=timeout)
    return output or ""


def extract(bucket: str, name: str, *layout: str) -> list[str]:
    return ["--input", f"{bucket}/videos", "--output", f"{bucket}/{name}", "--set", "validation.fraction=0.3",
            *(layout or FUSED)]


def wait_for(condition, process: subprocess.Popen, timeout: float = 300, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            raise AssertionError(f"the job ended before {what}:\n{finish(process)[-4000:]}")
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"timed out waiting for {what}:\n{finish(process)[-4000:]}")
        time.sleep(0.2)


def assert_extracted_once(root: str) -> None:
    """Every video committed exactly once, ok, with its features and flow; every committed part readable."""
    rows = {}
    for table in ("videos", "features", "flow"):
        ids = []
        for part in storage.list_parts(storage.join(root, table)):
            fs, path = storage.filesystem(storage.join(root, table, part + ".parquet"))
            with fs.open(path, "rb") as f:
                ids += pq.read_table(f, columns=["video_id"])["video_id"].to_pylist()
        rows[table] = ids
    assert sorted(rows["videos"]) == video_ids(), rows["videos"]
    assert sorted(rows["features"]) == video_ids() and sorted(set(rows["flow"])) == video_ids()
    statuses = storage.read_table(storage.join(root, "videos"), columns=["status"])["status"].to_pylist()
    assert statuses == ["ok"] * len(video_ids())


def features_by_video(root: str) -> dict:
    table = storage.read_table(storage.join(root, "features"), columns=["video_id", "frame_index", "spatial"])
    return {row["video_id"]: (row["frame_index"], row["spatial"]) for row in table.to_pylist()}


@pytest.fixture(scope="module")
def clean_run(bucket, cluster, proxy):
    """A fault-free extraction: the rows every faulted run must reproduce, and the training tests' input."""
    started = time.monotonic()
    process = start_job("extract", cluster, proxy, *extract(bucket, "clean"))
    output = finish(process)
    assert process.returncode == 0, output[-4000:]
    assert_extracted_once(f"{bucket}/clean")
    return f"{bucket}/clean", time.monotonic() - started


def test_local_paths_on_a_multi_node_cluster_are_refused_before_any_work(cluster, proxy, tmp_path):
    out = tmp_path / "run"
    process = start_job("extract", cluster, proxy, "--input", str(tmp_path), "--output", str(out))
    output = finish(process)
    assert process.returncode != 0
    assert f"--input {tmp_path} is a local path, but the Ray cluster has 3 nodes" in output, output[-3000:]
    assert "paths.shared_filesystem=true" in output and "Traceback" not in output
    assert not out.exists()


@pytest.mark.parametrize("layout", ["fused", "per_stage"])
def test_a_worker_node_killed_mid_extraction_is_survived_by_the_job(layout, bucket, cluster, proxy,
                                                                     clean_run):
    root = f"{bucket}/kill-{layout}"
    started = time.monotonic()
    process = start_job("extract", cluster, proxy, *extract(bucket, f"kill-{layout}",
                                                            *(FUSED if layout == "fused" else PER_STAGE)))
    wait_for(lambda: len(storage.list_parts(f"{root}/videos")) >= 2, process, what="two commits")
    killed = cluster.kill_node_hosting("MapWorker")
    at_kill = len(storage.list_parts(f"{root}/videos"))
    output = finish(process)
    seconds = time.monotonic() - started
    cluster.add_node(**WORKER)
    assert killed > 0 and process.returncode == 0, output[-4000:]  # the job itself carried on: no re-run
    assert at_kill < len(video_ids()), "the node died after the work was done: nothing was tested"
    assert_extracted_once(root)
    assert features_by_video(root).keys() == features_by_video(clean_run[0]).keys()
    print(f"\nFAULT node killed mid-extraction ({layout}): {at_kill}/{len(video_ids())} committed at the "
          f"kill, {seconds:.0f} s against {clean_run[1]:.0f} s fault-free")


def test_s3_throttling_and_resets_leave_the_rows_of_a_fault_free_run(bucket, cluster, proxy, clean_run):
    root = f"{bucket}/s3-faults"
    proxy.set_plan(FaultPlan(seed=18, slow_down=0.05, reset=0.05, slow=0.02, slow_s=0.5))  # 12% of requests
    started = time.monotonic()
    try:
        process = start_job("extract", cluster, proxy, *extract(bucket, "s3-faults"))
        output = finish(process)
    finally:
        counts = dict(proxy.counts)
        proxy.set_plan(FaultPlan())
    seconds = time.monotonic() - started
    assert process.returncode == 0, output[-4000:]
    assert counts["slow_down"] >= 1 and counts["reset"] >= 1 and counts["slow_down"] + counts["reset"] >= 5, counts
    assert_extracted_once(root)
    faulted, clean = features_by_video(root), features_by_video(clean_run[0])
    assert faulted.keys() == clean.keys()
    assert all(faulted[v][0] == clean[v][0] for v in clean)  # the same sampled frames
    print(f"\nFAULT S3 503/reset/slow on 12% of {counts['requests']} requests ({counts}): {seconds:.0f} s "
          f"against {clean_run[1]:.0f} s fault-free")


def test_a_permanent_s3_error_stops_the_job_at_once(bucket, cluster, proxy):
    started = time.monotonic()
    videos = ["--input", f"{bucket}/videos"]
    process = start_job("extract", cluster, proxy, *videos, "--output", "s3://no-such-bucket/run")
    output = finish(process, timeout=120)
    assert process.returncode != 0 and "Traceback" not in output, output[-3000:]
    assert "cannot write --output s3://no-such-bucket/run: The specified bucket does not exist" in output
    name = bucket.removeprefix("s3://")
    proxy.set_plan(FaultPlan(deny=frozenset({name})))
    try:
        process = start_job("extract", cluster, proxy, *videos, "--output", f"{bucket}/denied")
        output = finish(process, timeout=120)
    finally:
        proxy.set_plan(FaultPlan())
    assert process.returncode != 0 and "Traceback" not in output, output[-3000:]
    assert f"cannot read --input {bucket}/videos" in output, output[-3000:]
    print(f"\nFAULT permanent S3 errors: stopped before any work, {time.monotonic() - started:.0f} s, 2 runs")


RNN = ["--stream", "spatial", "--set", "rnn.epochs=12", "--set", "rnn.patience=100", "--set", "rnn.hidden=16",
       "--set", "rnn.layers=1", "--set", "rnn.bidirectional=false", "--set", "ray.train.max_failures=3",
       "--set", "ray.train.checkpoint_every_s=0"]


def copy_tables(source: str, target: str, tables=("videos", "features")) -> None:
    """A new run root holding `source`'s extraction (an object-store copy)."""
    client = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"], region_name="us-east-1")
    bucket, prefix = source.removeprefix("s3://").split("/", 1)
    new_prefix = target.removeprefix("s3://").split("/", 1)[1]
    for table in tables:
        for item in client.list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/{table}/").get("Contents", []):
            key = new_prefix + item["Key"][len(prefix):]
            client.copy_object(Bucket=bucket, Key=key, CopySource={"Bucket": bucket, "Key": item["Key"]})


def checkpoints(root: str) -> int:
    return len(storage.list_files(f"{root}/checkpoints", ("state.pt",)))


def trained_epochs(root: str) -> list[int]:
    from multistream.store import modelio
    from multistream.store.layout import RunRoot, rnn_name

    return [h["epoch"] for h in modelio.read_meta(RunRoot(root).model(rnn_name("spatial")))["history"]]


def test_a_node_killed_mid_training_resumes_from_the_last_epoch_on_the_survivors(bucket, cluster, proxy,
                                                                                 clean_run):
    root = f"{bucket}/train-kill"
    copy_tables(clean_run[0], root)
    started = time.monotonic()
    process = start_job("train_rnn", cluster, proxy, "--output", root, *RNN)
    wait_for(lambda: checkpoints(root) >= 2, process, what="two epoch checkpoints on S3")
    killed = cluster.kill_node_hosting("RayTrainWorker")
    at_kill = checkpoints(root)
    output = finish(process)
    seconds = time.monotonic() - started
    cluster.add_node(**WORKER)
    assert killed > 0 and process.returncode == 0, output[-4000:]
    assert trained_epochs(root) == list(range(1, 13)), output[-3000:]  # every epoch once, none run twice
    assert "resumed" in output.lower(), output[-3000:]
    print(f"\nFAULT node killed mid RNN training: killed with {at_kill} checkpoint(s) kept, 12/12 epochs, "
          f"{seconds:.0f} s")


def test_training_through_s3_faults_ends_with_every_epoch_and_every_video_embedded(bucket, cluster, proxy,
                                                                                 clean_run):
    root = f"{bucket}/train-s3-faults"
    copy_tables(clean_run[0], root)
    proxy.set_plan(FaultPlan(seed=19, slow_down=0.05, reset=0.05, slow=0.02, slow_s=0.5))
    started = time.monotonic()
    try:
        process = start_job("train_rnn", cluster, proxy, "--output", root, *RNN)
        output = finish(process)
    finally:
        counts = dict(proxy.counts)
        proxy.set_plan(FaultPlan())
    assert process.returncode == 0, output[-4000:]
    assert counts["slow_down"] >= 1 and counts["reset"] >= 1 and counts["slow_down"] + counts["reset"] >= 5, counts
    assert trained_epochs(root) == list(range(1, 13))
    embedded = storage.read_table(f"{root}/embeddings", columns=["video_id"])["video_id"].to_pylist()
    assert sorted(embedded) == video_ids()  # one row per video, as a fault-free run gives
    print(f"\nFAULT S3 503/reset/slow on 12% of {counts['requests']} requests during RNN training: 12/12 "
          f"epochs, {len(embedded)}/{len(video_ids())} embedded, {time.monotonic() - started:.0f} s")


def test_a_second_job_on_the_same_run_root_waits_or_is_refused_naming_the_first(bucket, cluster, proxy):
    root = f"{bucket}/two-runs"
    first = start_job("extract", cluster, proxy, *extract(bucket, "two-runs"))
    wait_for(lambda: storage.list_files(f"{root}/lease", (".json",)), first, what="the first job's lease")
    waiting = start_job("extract", cluster, proxy, *extract(bucket, "two-runs"),
                        "--set", "storage.lease_wait_s=600")
    refused = start_job("extract", cluster, proxy, *extract(bucket, "two-runs"))
    refused_output = finish(refused)
    first_output, waiting_output = finish(first), finish(waiting)
    assert first.returncode == 0, first_output[-4000:]
    assert refused.returncode != 0 and "Traceback" not in refused_output, refused_output[-3000:]
    assert f"is held by extract (host {os.uname().nodename}, pid {first.pid}, Ray job" in refused_output
    assert waiting.returncode == 0, waiting_output[-4000:]
    n = len(video_ids())
    assert f"extract: {n} videos, {n} already done" in waiting_output, waiting_output[-3000:]
    assert_extracted_once(root)
    assert storage.list_files(f"{root}/lease", (".json",)) == []


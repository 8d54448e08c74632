"""Shared fixtures: a local S3 endpoint (moto), fresh buckets, and the real clips of tests/data/clips."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

CLIPS = Path(__file__).resolve().parent / "data" / "clips"  # real clips of public repositories: MANIFEST.csv


@pytest.fixture(scope="session")
def s3_server():
    """Endpoint URL of a moto S3 server on 127.0.0.1; the AWS environment points at it for the session."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    with pytest.MonkeyPatch.context() as env:
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
            env.delenv(name, raising=False)
        env.setenv("AWS_ENDPOINT_URL", endpoint)
        env.setenv("AWS_ACCESS_KEY_ID", "testing")
        env.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        env.setenv("AWS_DEFAULT_REGION", "us-east-1")
        try:
            yield endpoint
        finally:
            server.stop()


@pytest.fixture
def s3_bucket(s3_server):
    """A new empty bucket, as "s3://<name>"."""
    import boto3

    name = f"test-{uuid.uuid4().hex[:16]}"
    boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1").create_bucket(Bucket=name)
    return f"s3://{name}"


@pytest.fixture(scope="session")
def real_clips() -> Path:
    """The folder of real clips (UCF101 AVIs with mp3, mp4/aac, mkv/opus) with their MANIFEST.csv."""
    return CLIPS


@pytest.fixture(scope="session")
def ray_session(s3_server):
    """One local Ray for the whole session (2 CPUs, 300 MB object store), never a cluster found on the machine.

    Started after the S3 server, so that its workers inherit the AWS environment pointing at it."""
    import ray

    from multistream.ray.worker_env import worker_env

    ray.init(num_cpus=2, object_store_memory=300 * 1024**2, include_dashboard=False,
             runtime_env={"env_vars": worker_env(1)})
    yield
    ray.shutdown()


def pytest_collection_modifyitems(config, items):
    """`fast`: every test that starts no Ray, runs no whole job and builds no cluster (`pytest -m fast`)."""
    for item in items:
        if not {"slow", "cluster"} & {m.name for m in item.iter_markers()} and \
                "ray_session" not in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.fast)

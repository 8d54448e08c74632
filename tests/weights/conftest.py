"""The weights tests' local HTTP server and an empty weights cache of the test's own."""

import pytest

from multistream.weights.fetch import ENV_PREFIX
from tests.support.weights_server import WeightsServer


@pytest.fixture(scope="module")
def server():
    with WeightsServer() as server:
        yield server


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty $MULTISTREAM_CACHE, with the download limits at their defaults (restored after the test)."""
    root = tmp_path / "cache"
    monkeypatch.setenv("MULTISTREAM_CACHE", str(root))
    for key in ("MAX_MB", "TIMEOUT_S"):
        monkeypatch.delenv(ENV_PREFIX + key, raising=False)
    return root

"""What a weights download may do: https only, no downgrade on redirect, a size cap, a deadline, a full pin, and
no token of its URL in a log line or an error."""

import hashlib
import logging
import os
import time
import urllib.request

import pytest
import safetensors.torch
import torch

from multistream.config import load_config
from multistream.weights import WeightsError, load_state_dict, resolve_all
from multistream.weights.fetch import ENV_PREFIX, _HttpsRedirects, check_url, current, download

STATE = {"w": torch.arange(12.0).reshape(3, 4)}
DATA = safetensors.torch.save(STATE)
SHA = hashlib.sha256(DATA).hexdigest()


def _cached(root) -> list:
    return [p for p in root.rglob("*") if p.is_file() and p.parent.name != "locks"]


@pytest.mark.parametrize("url", ["http://example.com/w.safetensors", "ftp://example.com/w.safetensors",
                                 "file:///etc/passwd", "http://10.0.0.1/w.safetensors",
                                 "http://127.0.0.1.example.com/w.safetensors"])
def test_only_https_or_loopback_http(url, cache):
    with pytest.raises(WeightsError, match="https only"):
        download(url, SHA)
    check_url("https://example.com/w.safetensors")
    for loopback in ("http://127.0.0.1:8/w", "http://localhost/w", "http://[::1]:8/w", "http://127.5.0.1/w"):
        check_url(loopback)
    assert _cached(cache) == []


def test_redirects_never_downgrade(server, cache):
    handler = _HttpsRedirects()
    request = urllib.request.Request("https://example.com/w.safetensors")
    with pytest.raises(WeightsError, match="redirected to http://127.0.0.1/w.safetensors, which is not https"):
        handler.redirect_request(request, None, 302, "Found", {}, "http://127.0.0.1/w.safetensors")
    assert handler.redirect_request(request, None, 302, "Found", {}, "https://cdn.example.com/w") is not None
    server.files["/real/w.safetensors"] = DATA
    server.redirects["/moved/w.safetensors"] = f"{server.url}/real/w.safetensors"  # loopback http → itself: fine
    server.redirects["/away/w.safetensors"] = "http://example.com/w.safetensors"  # → plain http elsewhere
    server.redirects["/file/w.safetensors"] = "file:///etc/passwd"
    assert torch.equal(load_state_dict(f"{server.url}/moved/w.safetensors#sha256={SHA}")["w"], STATE["w"])
    with pytest.raises(WeightsError, match="https only"):
        load_state_dict(f"{server.url}/away/w.safetensors#sha256={SHA}")
    with pytest.raises(WeightsError, match="https only|HTTP 302"):
        load_state_dict(f"{server.url}/file/w.safetensors#sha256={SHA}")


def test_size_cap_before_and_during_the_body(server, cache, monkeypatch):
    big = os.urandom(3 << 20)
    server.files["/big/w.bin"] = big
    server.files["/stream/w.bin"] = os.urandom(1 << 16)
    server.endless.add("/stream/w.bin")  # no Content-Length, never ends
    monkeypatch.setenv(ENV_PREFIX + "MAX_MB", "1")
    with pytest.raises(WeightsError, match=r"3145728 bytes, more than weights.max_mb \(1 MB\)"):
        download(f"{server.url}/big/w.bin", hashlib.sha256(big).hexdigest())
    started = time.monotonic()
    with pytest.raises(WeightsError, match=r"more than weights.max_mb \(1 MB\): stopped"):
        download(f"{server.url}/stream/w.bin", SHA)
    assert time.monotonic() - started < 30
    assert _cached(cache) == []


def test_deadline_covers_the_whole_download_and_lets_the_lock_go(server, cache, monkeypatch):
    server.files["/slow/w.bin"] = os.urandom(1 << 16)
    server.endless.add("/slow/w.bin")
    server.delay_s = 0.2  # a trickle: every read returns something, none waits for the socket timeout
    monkeypatch.setenv(ENV_PREFIX + "TIMEOUT_S", "1.5")
    try:
        started = time.monotonic()
        with pytest.raises(WeightsError, match=r"not downloaded within weights.timeout_s \(1.5 s\)"):
            download(f"{server.url}/slow/w.bin", SHA)
        assert time.monotonic() - started < 10
    finally:
        server.delay_s = 0.0
    server.endless.discard("/slow/w.bin")
    server.files["/slow/w.bin"] = DATA  # the lock of that entry was let go: the next try goes ahead at once
    started = time.monotonic()
    assert download(f"{server.url}/slow/w.bin", SHA)[1] == SHA
    assert time.monotonic() - started < 1.5
    assert sorted(p.name for p in _cached(cache)) == ["w.bin", "w.bin.sha256"]


def test_limits_come_from_the_config_and_are_checked(cache, monkeypatch, tmp_path):
    (tmp_path / "w.safetensors").write_bytes(DATA)
    cfg = load_config(overrides=[f"spatial.weights={tmp_path / 'w.safetensors'}", "weights.max_mb=64",
                                 "weights.timeout_s=90"])
    resolve_all(cfg)
    assert current().max_mb == 64 and current().timeout_s == 90
    assert os.environ[ENV_PREFIX + "MAX_MB"] == "64.0"
    monkeypatch.setenv(ENV_PREFIX + "TIMEOUT_S", "soon")
    with pytest.raises(WeightsError, match="TIMEOUT_S='soon' is not a number"):
        current()
    monkeypatch.setenv(ENV_PREFIX + "TIMEOUT_S", "-1")
    with pytest.raises(WeightsError, match="must be positive"):
        current()


def test_a_token_in_a_weights_url_is_never_logged_nor_raised(server, cache, caplog):
    caplog.set_level(logging.DEBUG)
    server.files["/tok/w.safetensors"] = DATA
    url = f"{server.url}/tok/w.safetensors?token=SECRETTOKEN42&sig=SIGSECRET99"
    cfg = load_config(overrides=[f"spatial.weights={url}#sha256={SHA}"])
    pinned = resolve_all(cfg)
    assert pinned.spatial.weights.startswith(f"{url}#sha256={SHA}&cached=")  # the config keeps what reads it
    assert torch.equal(load_state_dict(pinned.spatial.weights)["w"], STATE["w"])
    messages = []
    for spec in (f"{url}#sha256={'0' * 64}", f"{url}#sha256=abc", url,
                 f"http://user:SECRETTOKEN42@127.0.0.1:9/w.safetensors?sig=SIGSECRET99#sha256={SHA}",
                 f"http://example.com/w.safetensors?token=SECRETTOKEN42#sha256={SHA}"):
        with pytest.raises(WeightsError) as error:
            load_state_dict(spec, "spatial.weights")
        messages.append(str(error.value))
    server.files["/gone/w.safetensors"] = DATA
    server.expire["/gone/w.safetensors"] = 0
    with pytest.raises(WeightsError) as error:
        load_state_dict(f"{server.url}/gone/w.safetensors?token=SECRETTOKEN42#sha256={SHA}")
    messages.append(str(error.value))
    text = "\n".join(messages + [record.getMessage() for record in caplog.records])
    assert "HTTP 404" in text and "sha256 mismatch" in text and "not pinned" in text
    assert "SECRETTOKEN42" not in text and "SIGSECRET99" not in text
    assert not any("SECRETTOKEN42" in str(p) for p in cache.rglob("*"))  # nor in the cache's file names


def test_prepare_writes_and_prints_no_token(server, cache, tmp_path, capsys):
    from multistream.weights.prepare import main as weights_main

    server.files["/prep-tok/w.safetensors"] = DATA
    spec = f"spatial.weights={server.url}/prep-tok/w.safetensors?token=SECRETTOKEN77#sha256={SHA}"
    assert weights_main(["prepare", "--set", spec, "--to", str(tmp_path / "copies")]) == 0
    assert weights_main(["fetch", "--set", spec]) == 0
    assert "SECRETTOKEN77" not in (tmp_path / "copies" / "weights.json").read_text()
    captured = capsys.readouterr()
    assert "SECRETTOKEN77" not in captured.out + captured.err

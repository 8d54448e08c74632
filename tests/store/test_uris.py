"""Redaction of URIs before they are stored or logged, and where a URI points once normalised."""

import os

import pytest

from multistream.store.uris import normalise, redact, scrub, within

SIG = "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIASECRET%2F20240101%2Fus-east-1%2Fs3%2Faws4_request" \
      "&X-Amz-Date=20240101T000000Z&X-Amz-Expires=3600&X-Amz-SignedHeaders=host&X-Amz-Signature=" + "5e" * 32


@pytest.mark.parametrize("uri, kept", [
    (f"https://bucket.s3.amazonaws.com/a/clip.mp4?{SIG}", "https://bucket.s3.amazonaws.com/a/clip.mp4"),
    ("https://user:pa%40ss@host:8443/w.pth?token=abc", "https://host:8443/w.pth"),
    ("HTTPS://user@host/clip.mp4#t=10", "HTTPS://host/clip.mp4"),
    ("s3://key:secret@bucket/k.mp4?versionId=3", "s3://bucket/k.mp4"),
    (f"https://host/w.pth?token=abc#sha256={'a' * 64}&cached=/tmp/c/w.pth",
     f"https://host/w.pth#sha256={'a' * 64}&cached=/tmp/c/w.pth"),
    ("https://host/w.pth#sha256=SECRET&token=xyz", "https://host/w.pth"),
    ("https://host/w.pth#cached=SECRET", "https://host/w.pth"),
    ("https://host?sig=abc", "https://host"),
    ("https://a@b@host/x?y", "https://host/x"),
    ("http://[::1]:80/x.mp4?sig=1", "http://[::1]:80/x.mp4"),
    ("http://[::1/x.mp4?sig=1", "http://[::1/x.mp4"),  # malformed: still cut
    ("/data/videos/a?b.mp4", "/data/videos/a?b.mp4"),  # a local path: its name may hold a "?"
    ("Class/v_x.avi", "Class/v_x.avi"),
    ("hf-hub:timm/model@abc", "hf-hub:timm/model@abc"),
    ("", ""),
])
def test_redact(uri, kept):
    assert redact(uri) == kept
    assert redact(redact(uri)) == redact(uri)


def test_scrub_masks_urls_and_the_secrets_of_known_uris_wherever_they_appear():
    uri = f"https://bucket.s3.amazonaws.com/clip.mp4?{SIG}"
    messages = [
        f"ClientResponseError: 403, message='Forbidden', url='{uri}'",
        f"FileNotFoundError: {uri}",
        f"GET /clip.mp4?{SIG} answered 403",  # path and query without the scheme
        "signature " + "5e" * 32 + " expired",
        "credential AKIASECRET/20240101/us-east-1/s3/aws4_request refused",  # percent-decoded
        f"URL('{uri.replace('%2F', '/')}')",  # re-encoded by a library
        f"two: {uri} and {uri.replace('clip', 'other')}",
    ]
    for message in messages:
        cleaned = scrub(message, uri)
        assert "5e5e5e5e" not in cleaned and "AKIASECRET" not in cleaned, cleaned
    assert scrub(messages[0]) == "ClientResponseError: 403, message='Forbidden', url='https://bucket.s3.amazonaws.com/clip.mp4'"
    assert scrub("decoding past 3600 s", uri) == "decoding past 3600 s"  # X-Amz-Expires is no secret to mask
    assert scrub("https://u:SECRETPW@h/x failed", "https://u:SECRETPW@h/x") == "https://h/x failed"
    assert scrub(None) is None and scrub("", uri) == ""


def test_normalise_and_within(tmp_path):
    run = tmp_path / "run"
    (run / "models").mkdir(parents=True)
    link = tmp_path / "link"
    link.symlink_to(run)
    assert normalise(f"file://{run}/") == ("file", str(run.resolve()))
    assert normalise(f"{link}/models/../") == ("file", str(run.resolve()))
    for inside in (str(run), f"{run}/", f"file://{run}", f"file://localhost{run}/new", str(link / "x"),
                   f"{run}/a/../b", f"{tmp_path}/other/../run/p"):
        assert within(inside, str(run)), inside
        assert within(inside, f"file://{link}/"), inside
    for outside in (str(tmp_path), f"{tmp_path}/run2", f"{tmp_path}/other", "s3://b/run"):
        assert not within(outside, str(run)), outside
    assert within("s3a://b/runs/demo//new/", "s3://b/runs/demo")
    assert within("s3://b/runs/demo", "s3://b/runs/demo/") and within("s3://b/runs/demo/./x", "s3://b/runs/demo")
    assert not within("s3://b/runs/demo2", "s3://b/runs/demo") and not within("s3://c/runs/demo", "s3://b/runs/demo")
    assert within("S3://b/runs/demo/x?versionId=1", "s3://b/runs/demo")
    assert normalise("relative/x") == ("file", os.path.realpath("relative/x"))


def test_config_values_given_to_mlflow_are_redacted():
    from multistream.config import load_config
    from multistream.train.progress import _flat

    cfg = load_config(overrides=[f"paths.input=https://h/clip.mp4?X-Amz-Signature={'5e' * 32}",
                                 "spatial.weights=https://u:SECRETPW@h/w.safetensors?token=TOKEN1#sha256=" + "a" * 64])
    params = _flat(cfg)
    assert params["paths.input"] == "https://h/clip.mp4"
    assert params["spatial.weights"] == "https://h/w.safetensors#sha256=" + "a" * 64
    assert not any(s in v for v in params.values() for s in ("5e5e5e5e", "SECRETPW", "TOKEN1"))


SIGNED = "https://bucket.example/clip.mp4?X-Amz-Signature=0123456789abcdef&X-Amz-Credential=AKIA%2F20261207"
_STOPS = f"""
import logging, sys
from multistream.store.uris import redact_logs

logging.basicConfig(level=logging.INFO, stream=sys.stderr)
redact_logs()
try:
    try:
        raise OSError("404 for {SIGNED}")
    except OSError as cause:
        raise RuntimeError("could not read the clip") from cause
except RuntimeError:
    logging.getLogger("job").exception("video failed")
logging.getLogger("job").info("stack", stack_info=True, extra={{"uri": "{SIGNED}"}})
raise ValueError("stopped on {SIGNED}")
"""


@pytest.mark.fast
def test_tracebacks_of_log_records_and_of_a_stopping_job_are_redacted():
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-c", _STOPS], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "video failed" in result.stderr and "Traceback" in result.stderr and "ValueError: stopped on" in result.stderr
    assert "https://bucket.example/clip.mp4" in result.stderr  # the URL is kept, without its query string
    assert "0123456789abcdef" not in result.stderr and "AKIA" not in result.stderr, result.stderr

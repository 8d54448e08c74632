"""Videos read through presigned-style URLs (`?X-Amz-Signature=...`) on 127.0.0.1: the signature reaches no
table, log line, report or error message; only the reader sees the whole URL."""

import json
import logging
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from multistream.cli import setup_logging
from multistream.config import load_config
from multistream.dataset.manifest import build_manifest
from multistream.extract.processor import Decoder
from tests.support.helpers import run_job_main, write_test_video
from tests.support.weights_server import WeightsServer

SECRETS = ("SIGSECRET0123456789abcdef", "AKIACREDSECRET", "SESSIONTOKENSECRET", "PASSWORDSECRET")
QUERY = (f"?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential={SECRETS[1]}%2F20240101%2Fus-east-1%2Fs3%2Faws4_request"
         f"&X-Amz-Date=20240101T000000Z&X-Amz-Expires=3600&X-Amz-Security-Token={SECRETS[2]}"
         f"&X-Amz-SignedHeaders=host&X-Amz-Signature={SECRETS[0]}")


@pytest.fixture
def served(tmp_path):
    """A server with an ok clip, one whose URL expires after the manifest's check (404 on read), one that is
    no video, and a labels CSV that lists them (and one that never existed) by presigned-style URLs, for an
    input folder of no files of its own."""
    clip = write_test_video(tmp_path / "clip.mp4", frames=16, audio_tone_hz=300).read_bytes()
    with WeightsServer() as server:
        server.files.update({"/v/walk/ok.mp4": clip, "/v/walk/gone.mp4": clip, "/v/run/bad.mp4": b"\0junk" * 400})
        server.expire["/v/walk/gone.mp4"] = 1
        host = server.url.removeprefix("http://")
        rows = [f"{server.url}/v/walk/ok.mp4{QUERY},walk", f"{server.url}/v/walk/gone.mp4{QUERY},walk",
                f"http://user:{SECRETS[3]}@{host}/v/run/bad.mp4{QUERY}#frag={SECRETS[0]},run",
                f"{server.url}/v/run/none.mp4{QUERY},run"]
        folder = tmp_path / "input"
        folder.mkdir()
        (tmp_path / "labels.csv").write_text("uri,label\n" + "\n".join(rows) + "\n")
        yield server, folder


def _assert_clean(text: str, where: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"{secret} in {where}: ...{text[max(0, text.find(secret) - 200):][:400]}"


def test_ids_rows_and_errors_hold_no_signature(served, caplog):
    setup_logging()  # as every job and Ray worker does: it redacts the URLs of every log record
    caplog.set_level(logging.DEBUG)  # fsspec logs whole URLs at DEBUG
    server, folder = served
    entries = build_manifest(str(folder), labels=str(folder.parent / "labels.csv"))
    assert [e.video_id for e in entries] == [f"{server.url}/v/run/bad.mp4", f"{server.url}/v/walk/gone.mp4",
                                            f"{server.url}/v/walk/ok.mp4"]
    assert all(SECRETS[0] in e.uri for e in entries)  # the reader still gets the whole URL
    decode = Decoder(load_config(overrides=["flow.size=[64, 48]", "spatial.image_size=32"]))
    rows = {row["video"]["video_id"].rsplit("/", 1)[-1]: row["video"] for row in map(decode, entries)}
    assert rows["ok.mp4"]["status"] == "ok" and rows["ok.mp4"]["uri"] == f"{server.url}/v/walk/ok.mp4"
    assert rows["gone.mp4"]["status"] == "error" and "404" in rows["gone.mp4"]["error"]
    assert rows["bad.mp4"]["status"] == "error" and rows["bad.mp4"]["uri"] == f"{server.url}/v/run/bad.mp4"
    assert any("none.mp4 does not exist" in r.getMessage() for r in caplog.records)
    assert any(SECRETS[0] in path for path in server.requests)  # the signature did go to the server
    _assert_clean(json.dumps(rows) + "\n".join(r.getMessage() for r in caplog.records), "rows or log")


def test_extract_job_and_report_keep_no_signature(served, tmp_path, ray_session, caplog, capfd):
    from multistream.report.page import write_report

    caplog.set_level(logging.DEBUG)
    server, folder = served
    started = time.time()
    out = tmp_path / "run"
    assert run_job_main("extract", "--input", str(folder), "--output", str(out),
                        "--set", f"paths.labels={folder.parent / 'labels.csv'}") == 0
    write_report(str(out))
    videos = pq.read_table(out / "videos").to_pylist()
    assert sorted(v["status"] for v in videos) == ["error", "error", "ok"]
    files = [p for p in out.rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {"report.html"}
    for path in files:
        if path.suffix == ".parquet":
            _assert_clean(json.dumps(pq.read_table(path).to_pylist(), default=repr), str(path))
        _assert_clean(path.read_bytes().decode("latin-1"), str(path))
    captured = capfd.readouterr()
    _assert_clean(captured.out + captured.err + "\n".join(r.getMessage() for r in caplog.records), "the logs")
    import ray

    logs = Path(ray._private.worker._global_node.get_logs_dir_path())
    for path in logs.rglob("*"):
        if path.is_file() and path.stat().st_mtime >= started - 1:
            _assert_clean(path.read_bytes().decode("latin-1"), str(path))


def test_a_list_of_urls_gives_ids_without_credentials_or_query(tmp_path):
    urls = [f"https://user:{SECRETS[3]}@cdn.example.com/v/a.mp4{QUERY}", f"s3://bucket/b.mp4?versionId={SECRETS[2]}",
            f"https://cdn.example.com/v/c.mp4#token={SECRETS[0]}", f"HTTP://cdn.example.com/v/d.mp4{QUERY}"]
    path = tmp_path / "list.jsonl"
    path.write_text("".join(json.dumps({"uri": url, "label": "x"}) + "\n" for url in urls))
    entries = build_manifest(str(path))
    assert [e.video_id for e in entries] == ["HTTP://cdn.example.com/v/d.mp4", "https://cdn.example.com/v/a.mp4",
                                            "https://cdn.example.com/v/c.mp4", "s3://bucket/b.mp4"]
    assert sorted(e.uri for e in entries) == sorted(urls)  # what the reader gets: whole


def test_one_file_mode_names_a_failing_url_without_its_signature(served, tmp_path, capsys):
    from multistream.predict.bundle import write_bundle
    from multistream.predict.single import main as one_file_main
    from tests.predict.test_bundle import fake_run

    server, _ = served
    cfg = load_config(overrides=["spatial.model=tf_efficientnet_lite0", "spatial.weights=null",
                                 "flow.size=[64, 48]", "spatial.image_size=32"])
    run = fake_run(tmp_path / "trained", cfg)
    write_bundle(run.uri, cfg)
    for url in (f"{server.url}/v/run/bad.mp4{QUERY}", f"{server.url}/v/nowhere.mp4{QUERY}"):
        with pytest.raises(SystemExit) as exit_:
            one_file_main([url, "--models", run.uri, "--set", "spatial.device=cpu"])
        assert exit_.value.code == 2
        captured = capsys.readouterr()
        assert f"{server.url}/v/" in captured.err
        _assert_clean(captured.out + captured.err, "one-file mode's output")

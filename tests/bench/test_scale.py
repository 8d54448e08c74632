"""The scale benchmark's pieces (multistream.bench.scale), on small sizes, without Ray."""

import os

import pytest

from multistream.bench import scale
from multistream.store import storage
from multistream.store.commit import resume_state
from multistream.store.layout import RunRoot


def test_archives_and_committed_runs_are_generated(tmp_path):
    archive = scale.make_archive(str(tmp_path / "a"), 2100)
    assert len(storage.list_files(archive)) == 2100 and sorted(os.listdir(archive)) == ["c0000", "c0001", "c0002"]
    scale.make_archive(archive, 2100)  # a second call finds them
    scale.committed_run(str(tmp_path / "run"), 1000, per_part=256)
    assert scale.files_per_100(str(tmp_path / "run"), 1000) == {"videos": 0.4, "features": 0.0, "flow": 0.0}
    assert len(resume_state(RunRoot(str(tmp_path / "run"))).done) == 1000
    assert scale.resume_seconds(str(tmp_path / "run"), 1000) >= 0


def test_resume_on_s3_reads_one_request_per_part():
    server = scale.CountingS3()
    try:
        bucket = server.bucket("scale-test")
        scale.committed_run(f"{bucket}/run", 2000, per_part=256)  # 8 parts
        before = server.total()
        scale.resume_seconds(f"{bucket}/run", 2000)
        assert server.total() - before <= 8 + 10  # a GET per part, plus a few listings
    finally:
        server.stop()


def test_planning_is_measured_in_a_fresh_process(tmp_path):
    plan = scale.plan_peak_rss(scale.make_archive(str(tmp_path / "a"), 3000), str(tmp_path / "run"))
    assert plan["entries"] == 3000 and plan["peak_rss_mb"] >= plan["imports_mb"] > 0


def test_the_table_names_every_figure():
    runs = {"500": {"seconds": 20.0, "lines": 40, "videos": 0.4}, "2500": {"seconds": 30.0, "lines": 45, "videos": 0.4,
                                                                            "s3_requests_per_video": 0.1}}
    place = {"runs": runs, "marginal_ms_per_video": 5.0, "rerun_finished_s": 3.0, "rerun_lines": 20}
    report = {"sizes": [500, 2500], "commit": "the config's commit.every_s", "local": place, "s3": place,
              "resume_s": {"local": {"10000": 0.5}, "s3": {"10000": 2.0}},
              "plan": {"entries": 10, "peak_rss_mb": 300, "imports_mb": 200, "seconds": 1.0}}
    text = "\n".join(scale.format_lines(report))
    for figure in ("marginal ms/video", "S3 requests per video", "resume 10000", "planning 10 entries"):
        assert figure in text


@pytest.mark.slow
def test_2500_inputs_make_at_most_25_videos_files_with_the_default_config(tmp_path):
    """The demo config unchanged (commit.every_s, no batch to raise): few files for an archive."""
    archive = scale.make_archive(str(tmp_path / "archive"), 2500)
    run = scale.extract_job(archive, str(tmp_path / "run"), [])
    files = scale.files_per_100(str(tmp_path / "run"), 2500)
    print(f"\nscale: 2500 empty inputs, {files['videos'] * 25:.0f} videos/ files, {run['seconds']:.0f} s")
    assert files["videos"] * 25 <= 25

"""The extraction's summary: errors by kind, skipped files, the progress line."""

from collections import Counter

from multistream.extract.summary import ErrorKinds, ExtractSummary, Progress, error_kind


def test_errors_are_counted_by_kind_with_a_few_examples():
    assert error_kind("/in/x/v1.mp4: empty file") == error_kind("/in/y/v22.avi: empty file") == "<video>: empty file"
    assert error_kind("spatial: RuntimeError: 3 != 4") == "spatial: RuntimeError: # != #"
    kinds = ErrorKinds(examples=2)
    for i in range(2500):
        kinds.add(f"v{i}.mp4", f"/in/v{i}.mp4: empty file", f"/in/v{i}.mp4")
    kinds.add("odd.mp4", "audio: ValueError: bad wave", "/in/odd.mp4")
    assert len(kinds) == 2501
    lines = kinds.lines()
    assert lines[0] == "  2500 × <video>: empty file" and len(lines) == 1 + 2 + 1 + 1  # kind, 2 examples, kind, 1 example
    assert "odd.mp4" in lines[-1]


def test_progress_counts_and_rate(caplog):
    summary = ExtractSummary(total=10, skipped=4)
    progress = Progress(summary, every_s=0.0)
    with caplog.at_level("INFO", logger="multistream.extract.summary"):
        progress.update({"video_id": "a", "status": "ok", "error": None})
        progress.update({"video_id": "b", "status": "error", "error": "x: empty file", "uri": "x"})
    assert summary.ok == 1 and len(summary.errors) == 1
    assert "extract: 2/6 committed (1 ok, 1 errors)" in caplog.text


def test_the_skipped_files_are_one_line_by_extension():
    assert ExtractSummary(total=1, skipped=0).skipped_line() is None
    summary = ExtractSummary(total=3, skipped=0, skipped_files=Counter({".txt": 2, ".srt": 1}))
    assert summary.skipped_line() == ("skipped 3 files by extension (.txt 2, .srt 1): not in dataset.extensions")

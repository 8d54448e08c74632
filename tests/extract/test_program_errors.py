"""An error of the program stops the job with its traceback; an error of the video stays an error row."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import av
import numpy as np
import pyarrow.dataset as pds
import pytest

from multistream.config import load_config
from multistream.dataset.manifest import VideoEntry
from multistream.extract import processor
from multistream.extract.processor import VideoProcessor
from multistream.extract.rows import ProgramError
from tests.support.helpers import ROOT, SMALL_EXTRACTION, write_test_video

SMALL = ["flow.size=[64, 48]", "spatial.image_size=32", "sampling.max_seq_len=8", "sampling.segments=4",
         "spatial.device=cpu", "audio.device=cpu"]


def bad_inputs(folder) -> dict[str, str]:
    """name → path of inputs that belong to the video: empty, truncated, text, audio-only."""
    good = write_test_video(folder / "good.mp4", frames=30, audio_tone_hz=300)
    (folder / "empty.mp4").write_bytes(b"")
    (folder / "truncated.mp4").write_bytes(good.read_bytes()[:1500])
    (folder / "text.mp4").write_text("this is a text file, not a video\n" * 50)
    with av.open(str(folder / "audio_only.m4a"), "w") as container:
        stream = container.add_stream("aac", rate=16000, layout="mono")
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 16000), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 16000
        container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return {p.name: str(p) for p in folder.iterdir() if p.name != "good.mp4"}


def test_bad_inputs_are_error_rows_and_the_processor_goes_on(tmp_path):
    process = VideoProcessor(load_config(overrides=SMALL), threads=1)
    for name, path in bad_inputs(tmp_path).items():
        row = process(VideoEntry(name, path, None, None))
        assert row["video"]["status"] == "error", name
        assert "TypeError" not in row["video"]["error"] and row["video"]["error"], name
    assert process(VideoEntry("good.mp4", str(tmp_path / "good.mp4"), None, None))["video"]["status"] == "ok"


@pytest.mark.parametrize("error", [TypeError("unexpected keyword argument 'x'"), AttributeError("no attribute"),
                                   ModuleNotFoundError("No module named 'x'")])
def test_an_error_of_the_program_is_raised_not_recorded(tmp_path, monkeypatch, error):
    path = write_test_video(tmp_path / "good.mp4", frames=20)

    def broken(*args, **kwargs):
        raise error

    monkeypatch.setattr(processor, "decode_video", broken)
    with pytest.raises(ProgramError, match=type(error).__name__) as raised:
        VideoProcessor(load_config(overrides=SMALL), threads=1)(VideoEntry("good.mp4", str(path), None, None))
    assert raised.value.__cause__ is error and "good.mp4" in str(raised.value)


@pytest.mark.slow
def test_the_extract_job_stops_on_an_injected_type_error(tmp_path):
    # The fault is injected into every process of the job, Ray's workers included, by a sitecustomize on
    # PYTHONPATH: one video's decode raises TypeError, as an incompatible dependency would.
    videos = tmp_path / "videos"
    videos.mkdir()
    for i in range(3):
        write_test_video(videos / f"clip{i}.mp4", frames=20, seed=i)
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(textwrap.dedent("""
        import multistream.extract.processor as processor

        def broken(uri, *args, **kwargs):
            raise TypeError("open() got an unexpected keyword argument 'injected'")

        processor.decode_video = broken
    """))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(hook), str(ROOT)]), "RAY_ADDRESS": "local"}
    output = tmp_path / "run"
    done = subprocess.run([sys.executable, str(ROOT / "jobs" / "extract.py"), "--input", str(videos), "--output",
                           str(output), *SMALL_EXTRACTION], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    text = done.stdout + done.stderr
    assert done.returncode != 0, text[-3000:]
    assert "ProgramError" in text and "unexpected keyword argument 'injected'" in text, text[-3000:]
    assert "error of the program" in text
    if (output / "videos").exists():  # nothing recorded the bug as a property of a video
        table = pds.dataset(str(output / "videos")).to_table()
        assert "TypeError" not in " ".join(e or "" for e in table.column("error").to_pylist())

"""Per-video budgets: whatever a file's frame rate, timestamps, frame size or audio say, one video is one row
(ok, decimated where it is faster than video.max_fps, or a named error) with bounded memory and time."""

import time
import tracemalloc
from fractions import Fraction
from types import SimpleNamespace

import av
import numpy as np
import pytest

from multistream.bench.memory import write_bomb
from multistream.config import load_config
from multistream.dataset.manifest import VideoEntry
from multistream.extract.audio_track import MAX_AUDIO_RATE, AudioTrack
from multistream.extract.budgets import Budget, BudgetError, FrameGate
from multistream.extract.flow.registry import make_flow_estimator
from multistream.extract.processor import Decoder, VideoProcessor, decode_video
from multistream.extract.video import open_video
from tests.support.helpers import pattern_frame, write_test_video

SMALL = ["flow.size=[64, 48]", "spatial.image_size=32", "sampling.max_seq_len=8", "sampling.segments=4",
         "spatial.device=cpu", "audio.device=cpu"]


@pytest.fixture(scope="module")
def cfg():
    return load_config(overrides=SMALL)


@pytest.fixture(scope="module")
def process(cfg):
    return VideoProcessor(cfg, threads=1)


def entry(path) -> VideoEntry:
    return VideoEntry(path.name, str(path), None, None)


def write_with_audio_at(path, audio_start_s: float, audio_rate: int = 16000, audio_codec: str = "aac",
                        audio_seconds: float = 2.0, frames: int = 30):
    """A 15 fps clip whose audio stream (a tone, `audio_seconds` long) starts `audio_start_s` after its video."""
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=15)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        audio = container.add_stream(audio_codec, rate=audio_rate, layout="mono")
        for t in range(frames):
            frame = av.VideoFrame.from_ndarray(pattern_frame(t, (64, 48)), format="rgb24")
            frame.pts = t
            container.mux(video.encode(frame))
        container.mux(video.encode())
        n = int(audio_seconds * audio_rate)
        tone = (0.5 * np.sin(2 * np.pi * 440 * np.arange(n) / audio_rate)).astype(np.float32)
        if audio_codec == "pcm_s16le":
            tone, layout = (tone * 32767).astype(np.int16), "s16"
        else:
            layout = "fltp"
        start, block = round(audio_start_s * audio_rate), 1024 if audio_codec == "aac" else 16384
        for i in range(0, n, block):
            chunk = av.AudioFrame.from_ndarray(np.ascontiguousarray(tone[None, i:i + block]), format=layout,
                                               layout="mono")
            chunk.sample_rate, chunk.pts, chunk.time_base = audio_rate, start + i, Fraction(1, audio_rate)
            container.mux(audio.encode(chunk))
        container.mux(audio.encode())
    return path


def write_jittered(path, fps: float, frames: int, jitter: float, seed: int = 0):
    """A clip at `fps` whose frame times are off the grid by up to ±`jitter` of a frame (a phone's timestamps)."""
    rng = np.random.default_rng(seed)
    times = (np.arange(frames) + rng.uniform(-jitter, jitter, frames) * (np.arange(frames) > 0)) / fps
    time_base = Fraction(1, 90000)
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=round(fps))
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        video.codec_context.time_base = time_base
        for t in range(frames):
            frame = av.VideoFrame.from_ndarray(pattern_frame(t, (64, 48)), format="rgb24")
            frame.pts, frame.time_base = round(times[t] / time_base), time_base
            container.mux(video.encode(frame))
        container.mux(video.encode())
    return path


def test_frame_bomb_is_one_ok_row_of_max_fps_frames(tmp_path, process):
    bomb = write_bomb(tmp_path / "bomb.mp4", seconds=0.1, fps=100_000)  # 10,000 frames 10 µs apart
    started = time.perf_counter()
    row = process(entry(bomb))
    video = row["video"]
    assert video["status"] == "ok", video["error"]
    assert video["fps"] == pytest.approx(100_000, rel=0.01)  # the source's rate, as measured
    assert 6 <= video["n_frames"] <= 8 and video["kept_fps"] < 100  # ~60 a second of 0.1 s
    assert row["flow"].shape[0] == video["n_frames"] - 1
    assert time.perf_counter() - started < 30


def test_240_fps_clip_keeps_max_fps_frames_a_second(tmp_path, process):
    clip = write_test_video(tmp_path / "fast.mp4", frames=480, fps=240)  # 2 s
    row = process(entry(clip))
    video = row["video"]
    assert video["status"] == "ok", video["error"]
    assert video["fps"] == pytest.approx(240, rel=0.01)
    assert abs(video["n_frames"] - 60 * 2) <= 2 and video["kept_fps"] == pytest.approx(60, rel=0.02)
    assert row["flow"].shape[0] == video["n_frames"] - 1  # flow between kept frames: 4 source frames apart
    with open_video(clip, budget=Budget(max_fps=60)) as reader:
        times = np.array([frame.time_s for frame in reader.frames({})])
    assert reader.n_decoded == 480 and len(times) == reader.n_frames
    np.testing.assert_allclose(np.diff(times)[1:], 4 / 240, atol=1e-3)  # every 4th frame after the first two


@pytest.mark.parametrize("fps, jitter", [(25, 0.0), (30000 / 1001, 0.0), (60, 0.0), (60, 0.4), (50, 0.1), (30, 0.3)])
def test_ordinary_frame_rates_keep_every_frame(tmp_path, fps, jitter):
    clip = (write_jittered(tmp_path / "clip.mp4", fps, 90, jitter) if jitter
            else write_test_video(tmp_path / "clip.mp4", frames=90, fps=fps))
    with open_video(clip, budget=Budget(max_fps=60)) as reader:
        assert sum(1 for _ in reader.frames({})) == 90
    assert reader.n_frames == reader.n_decoded == 90 and reader.kept_fps == reader.measured_fps


def test_frame_gate_decimates_by_time_and_bounds_frames():
    gate = FrameGate(Budget(max_fps=60), max_seconds=10, name="v")
    kept = [gate.keep(i / 90) for i in range(90)]
    assert sum(kept) == 60 and kept[:3] == [True, True, False]  # 90 fps: two frames of three
    # timestamps that do not advance are kept as they always were, up to max_seconds x max_fps frames in all
    gate = FrameGate(Budget(max_fps=10), max_seconds=2, name="v")
    assert sum(gate.keep(0.0) for _ in range(1000)) == 21 and gate.full
    with pytest.raises(BudgetError, match="frame of 9000x9000 exceeds video.max_pixels"):
        FrameGate(Budget(), 36, "v").check_size(9000, 9000)


def test_frame_over_max_pixels_is_a_named_error_row(tmp_path, cfg):
    clip = write_test_video(tmp_path / "big.mp4", frames=5)  # 64x48
    row = Decoder(cfg.replace(**{"video.max_pixels": 3000}), threads=1)(entry(clip))
    assert row["video"]["status"] == "error" and set(row) == {"video"}
    assert row["video"]["error"] == f"{clip}: frame of 64x48 exceeds video.max_pixels (3000)"


def test_deadline_is_a_named_error_row(tmp_path, cfg):
    clip = write_test_video(tmp_path / "slow.mp4", frames=20)
    row = Decoder(cfg.replace(**{"video.deadline_s": 1e-6}), threads=1)(entry(clip))
    assert row["video"]["status"] == "error"
    assert row["video"]["error"] == f"{clip}: decode took longer than video.deadline_s (1e-06 s)"


def test_deadline_counts_decoding_not_the_consumer(tmp_path):
    clip = write_test_video(tmp_path / "clip.mp4", frames=5)
    with open_video(clip, budget=Budget(deadline_s=0.3)) as reader:
        for _ in reader.frames({"x": (16, 16)}):
            time.sleep(0.1)  # e.g. flow: 0.5 s in all, not the reader's
        reader.audio()
    assert reader.n_frames == 5


def test_audio_starting_after_the_window_is_no_audio_in_bounded_memory(tmp_path, cfg, process):
    clip = write_with_audio_at(tmp_path / "late.mkv", audio_start_s=200_000)
    tracemalloc.start()
    try:
        decoded = decode_video(str(clip), cfg, make_flow_estimator(cfg.flow))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 200 * 2**20  # a silence of 200,000 s at 16 kHz would be 12.8 GB
    assert decoded.facts["n_frames"] == 30 and decoded.facts["has_audio"] is False
    assert len(decoded.wave) <= cfg.video.max_seconds * 16000 and not decoded.wave.any()
    row = process(entry(clip))
    assert row["video"]["status"] == "ok" and row["video"]["has_audio"] is False
    with open_video(clip) as reader:
        reader.audio()
    assert reader.audio_dropped.startswith("audio starts 200000 s after the video, past the first")


def test_audio_starting_later_inside_the_window_is_padded(tmp_path):
    clip = write_with_audio_at(tmp_path / "later.mkv", audio_start_s=1.0, audio_seconds=1.0)
    with open_video(clip) as reader:
        wave = reader.audio()
    assert reader.audio_dropped is None
    assert not wave[:15000].any() and np.abs(wave[17000:30000]).max() > 0.3


def test_huge_source_sample_rate_is_no_audio(tmp_path, cfg):
    clip = write_with_audio_at(tmp_path / "rate.mkv", 0.0, audio_rate=1_000_000, audio_codec="pcm_s16le",
                               audio_seconds=0.2, frames=3)
    with open_video(clip) as reader:
        assert reader.audio_dropped == f"audio at 1000000 Hz exceeds {MAX_AUDIO_RATE} Hz"
        wave = reader.audio()
    assert len(wave) > 0 and not wave.any()
    decoded = decode_video(str(clip), cfg, make_flow_estimator(cfg.flow))
    assert decoded.facts["has_audio"] is False and decoded.facts["n_frames"] == 3


def test_audio_frame_over_the_rate_bound_drops_the_track():
    """A header can say 48 kHz while a frame says otherwise: each decoded frame's rate is checked too."""
    frame = av.AudioFrame.from_ndarray(np.zeros((1, 256), np.float32), format="fltp", layout="mono")
    frame.sample_rate = MAX_AUDIO_RATE * 2
    track = AudioTrack(None, 16000, 16000, lambda stream, packet: [frame])
    track.feed(SimpleNamespace(size=1))
    assert track.done and track.dropped == f"audio at {MAX_AUDIO_RATE * 2} Hz exceeds {MAX_AUDIO_RATE} Hz"
    assert len(track.wave(0.0)) == 0

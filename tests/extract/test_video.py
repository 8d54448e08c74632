import csv
import io

import av
import numpy as np
import pytest

from multistream.extract.video import VideoError, open_video
from tests.support.helpers import pattern_frame, vfr_timestamps, write_test_video

LUMA = np.array([0.299, 0.587, 0.114])


def clip_facts(real_clips):
    with open(real_clips / "MANIFEST.csv", newline="") as f:
        return list(csv.DictReader(f))


def dominant_hz(wave: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
    return float(np.fft.rfftfreq(len(wave), 1 / rate)[np.argmax(spectrum)])


def test_real_clips_agree_with_manifest(real_clips):
    for row in clip_facts(real_clips):
        with open_video(real_clips / row["file"], max_seconds=1000) as reader:
            times = []
            for frame in reader.frames({"small": (80, 60)}):
                assert frame.index == len(times)
                assert frame.images["small"].shape == (60, 80, 3) and frame.images["small"].dtype == np.uint8
                times.append(frame.time_s)
            wave = reader.audio()
        info = reader.info
        assert reader.n_frames == int(row["frames"]), row["file"]
        assert (info.width, info.height) == (int(row["width"]), int(row["height"]))
        assert info.fps == pytest.approx(float(row["fps"]), rel=0.01)
        assert reader.measured_fps == pytest.approx(float(row["fps"]), rel=0.01)
        assert reader.duration_s == pytest.approx(float(row["duration_s"]), abs=0.02)
        assert info.video_codec == row["video_codec"]
        assert info.has_audio == bool(row["audio_codec"])
        assert np.all(np.diff(times) > 0) and times[0] < 0.1
        assert wave.dtype == np.float32 and len(wave) == round(reader.duration_s * 16000)
        assert np.abs(wave).max() <= 1.0
        rms = float(np.sqrt(np.mean(wave**2)))
        assert (rms > 1e-3) == info.has_audio, row["file"]


def test_file_object_decodes_like_path(real_clips):
    path = real_clips / "v_ApplyEyeMakeup_g01_c01.avi"
    with open_video(path, max_seconds=2) as reader:
        from_path = [f.images["x"] for f in reader.frames({"x": None})]
        wave_path = reader.audio()
    with open(path, "rb") as f, open_video(f, max_seconds=2) as reader:
        from_file = [f.images["x"] for f in reader.frames({"x": None})]
        wave_file = reader.audio()
    assert len(from_path) == len(from_file) == 49  # 25 fps, first frame at 0.04 s
    assert all(np.array_equal(a, b) for a, b in zip(from_path, from_file, strict=True))
    assert np.array_equal(wave_path, wave_file) and len(wave_path) == 32000


def test_frames_are_rgb_at_each_requested_size(tmp_path):
    path = write_test_video(tmp_path / "clip.mp4", frames=10, size=(64, 48))
    sizes = {"native": None, "small": (32, 24), "again": (32, 24), "odd": (50, 30)}
    with open_video(path) as reader:
        frames = list(reader.frames(sizes))
    assert len(frames) == 10
    for frame in frames:
        assert frame.images["native"].shape == (48, 64, 3)
        assert frame.images["small"].shape == (24, 32, 3) and frame.images["odd"].shape == (30, 50, 3)
        assert np.array_equal(frame.images["small"], frame.images["again"])
        expected = pattern_frame(frame.index, (64, 48)).astype(float)
        error = np.abs(frame.images["native"] - expected).mean()
        assert error < 12, error  # lossy, but the pattern in RGB order (BGR would be far off)
        assert error < np.abs(frame.images["native"] - expected[..., ::-1]).mean() / 2
        small = frame.images["native"].reshape(24, 2, 32, 2, 3).mean(axis=(1, 3)) @ LUMA
        assert np.abs(frame.images["small"] @ LUMA - small).mean() < 2  # an area downscale of the same image


@pytest.mark.parametrize("threads", [1, 0])
def test_frames_match_a_fresh_conversion_of_each_frame(tmp_path, threads):
    """The reader keeps one scaler per size across frames and sets decoder/scaler threads; neither may change
    a pixel against PyAV converting every decoded frame on its own."""
    path = write_test_video(tmp_path / "clip.mp4", frames=12, size=(96, 72))
    sizes = {"flow": (48, 36), "spatial": (80, 80)}
    with open_video(path, threads=threads) as reader:
        frames = list(reader.frames(sizes))
    with av.open(str(path)) as container:
        decoded = list(container.decode(video=0))
    assert len(frames) == len(decoded) == 12
    for frame, vframe in zip(frames, decoded, strict=True):
        flow = vframe.to_ndarray(width=48, height=36, format="rgb24", interpolation="AREA")
        spatial = vframe.to_ndarray(width=80, height=80, format="rgb24", interpolation="BILINEAR")
        assert np.array_equal(frame.images["flow"], flow) and np.array_equal(frame.images["spatial"], spatial)


def test_max_seconds_stops_frames_and_audio(tmp_path):
    path = write_test_video(tmp_path / "clip.mkv", frames=30, fps=15, audio_tone_hz=440)
    with open_video(path, max_seconds=1.0) as reader:
        times = [f.time_s for f in reader.frames({"x": (16, 16)})]
        wave = reader.audio()
    assert reader.n_frames == 15 and max(times) < 1.0
    assert reader.duration_s == pytest.approx(2.0, abs=0.05)  # the whole file, from its header
    assert len(wave) == 16000


def test_variable_frame_rate_timestamps(tmp_path):
    for name in ("vfr.mp4", "vfr.mkv"):
        path = write_test_video(tmp_path / name, frames=31, fps=20, vfr=True)
        with open_video(path) as reader:
            times = np.array([f.time_s for f in reader.frames({})])
        expected = vfr_timestamps(31, 20)
        np.testing.assert_allclose(times, expected, atol=1.5e-3)
        assert reader.measured_fps == pytest.approx(30 / expected[-1], rel=1e-3)


@pytest.mark.parametrize("suffix, codec", [(".mp4", "libx264"), (".avi", "mpeg4"), (".mkv", "libx264")])
def test_audio_tone_mono_16k(tmp_path, suffix, codec):
    path = write_test_video(tmp_path / f"tone{suffix}", frames=30, fps=15, codec=codec, audio_tone_hz=440)
    with open_video(path) as reader:
        assert reader.info.has_audio
        wave = reader.audio()  # without iterating frames
    with open_video(path) as reader:
        for frame in reader.frames({"x": None}):
            if frame.index == 3:
                break  # a partly consumed frames() leaves the audio intact
        wave_after_frames = reader.audio()
    assert reader.duration_s == pytest.approx(2.0, abs=0.05)  # mkv: container duration, audio included
    assert len(wave) == round(reader.duration_s * 16000) and wave.dtype == np.float32
    np.testing.assert_array_equal(wave, wave_after_frames)
    body = wave[1600:-1600]  # away from codec edges
    assert dominant_hz(body, 16000) == pytest.approx(440, abs=2)
    assert float(np.sqrt(np.mean(body**2))) == pytest.approx(0.5 / np.sqrt(2), rel=0.1)


def test_no_audio_track_gives_silence(tmp_path):
    path = write_test_video(tmp_path / "mute.mp4", frames=15, fps=15)
    with open_video(path, audio_rate=8000) as reader:
        assert sum(1 for _ in reader.frames({})) == 15
        wave = reader.audio()
    assert not reader.info.has_audio and reader.info.audio_codec is None
    assert wave.shape == (8000,) and not wave.any()


def test_frames_only_once(tmp_path):
    path = write_test_video(tmp_path / "clip.mp4", frames=5)
    with open_video(path) as reader:
        list(reader.frames({}))
        with pytest.raises(RuntimeError):
            list(reader.frames({}))


@pytest.mark.timeout(30)
def test_unreadable_inputs_raise_video_error(tmp_path):
    good = write_test_video(tmp_path / "good.mp4", frames=30).read_bytes()
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "noise.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 50_000, np.uint8).tobytes())
    (tmp_path / "text.avi").write_text("this is not a video\n" * 100)
    (tmp_path / "cut.mp4").write_bytes(good[: len(good) // 2])  # mp4 index at the end: nothing readable
    for name in ("empty.mp4", "noise.mp4", "text.avi", "cut.mp4"):
        with pytest.raises(VideoError, match=name):
            with open_video(tmp_path / name) as reader:
                list(reader.frames({}))
    for data in (b"", b"\x00" * 1000):
        with pytest.raises(VideoError):
            open_video(io.BytesIO(data))


@pytest.mark.timeout(30)
def test_truncated_file_decodes_what_is_there(tmp_path):
    data = write_test_video(tmp_path / "full.mkv", frames=60, size=(64, 48)).read_bytes()
    (tmp_path / "head.mkv").write_bytes(data[: int(len(data) * 0.6)])
    with open_video(tmp_path / "head.mkv") as reader:
        n = sum(1 for _ in reader.frames({"x": None}))
    assert 0 < n < 60 and reader.n_frames == n
    header_only = data[:400]  # container header, no frame data
    (tmp_path / "header.mkv").write_bytes(header_only)
    with pytest.raises(VideoError, match="header.mkv"):
        with open_video(tmp_path / "header.mkv") as reader:
            list(reader.frames({}))


def test_audio_only_file_has_no_video_stream(tmp_path):
    for name, codec in (("sound.m4a", "aac"), ("sound.wav", "pcm_s16le")):
        with av.open(str(tmp_path / name), "w") as container:
            stream = container.add_stream(codec, rate=16000, layout="mono")
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1600), np.float32), format="fltp", layout="mono")
            frame.sample_rate = 16000
            container.mux(stream.encode(frame))
            container.mux(stream.encode())
        with pytest.raises(VideoError, match="no video stream"):
            open_video(tmp_path / name)


def test_best_effort_pts_trusts_pts_until_they_go_backwards_more_often_than_dts():
    from multistream.extract.timestamps import BestEffortPts

    guess = BestEffortPts(prefer_dts=False)
    assert [guess(pts, dts) for pts, dts in [(0, None), (2, 0), (1, 1), (3, 2)]] == [0, 2, 1, 3]  # B-frames: pts
    guess = BestEffortPts(prefer_dts=True)  # AVI: reconstructed pts start distrusted
    assert [guess(pts, dts) for pts, dts in [(0, 0), (2, 1), (1, 2), (3, 3)]] == [0, 1, 2, 3]
    guess = BestEffortPts(prefer_dts=False)
    assert [guess(pts, dts) for pts, dts in [(5, 0), (4, 1), (3, 2), (2, 3)]] == [5, 1, 2, 3]  # pts run backwards: dts
    assert BestEffortPts(prefer_dts=True)(None, 7) == 7

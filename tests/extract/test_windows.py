"""A whole video in time windows (`video.windows`), without Ray: the windows' spans and contents, flow computed
once per pair, a short video as one window equal to the whole-clip decode, audio cut from the one stream, windows
restarting at each cut between shots, and the tables a merged row gives (windows off: today's schemas)."""

import math

import numpy as np
import pytest

from multistream.config import load_config
from multistream.dataset.manifest import VideoEntry
from multistream.demo.longvideo import make_long_video
from multistream.extract.flow.registry import make_flow_estimator
from multistream.extract.processor import VideoProcessor, decode_video
from multistream.extract.rows import embedded_table, features_table
from multistream.extract.video import open_video
from multistream.extract.windows import WindowedDecode, merge_windows, spans, split_windows
from multistream.store import schema
from tests.support.helpers import write_test_video

SMALL = ["flow.size=[64, 48]", "spatial.image_size=32", "sampling.max_seq_len=8", "sampling.segments=4"]


def windowed(length: float, stride: float, *more: str, shot_cut: str = "0.1"):
    return load_config(overrides=[*SMALL, f"video.windows={{length_s: {length}, stride_s: {stride}, shot_cut: {shot_cut}}}",
                                  *more])


class CountingFlow:
    """The real estimator, counting the pairs it is asked for."""

    def __init__(self, estimator):
        self.estimator, self.pairs = estimator, 0

    def __call__(self, frames):
        self.pairs += len(frames) - 1
        return self.estimator(frames)


@pytest.fixture(scope="module")
def long_video(tmp_path_factory):
    """10 s at 10 fps with a 440 Hz tone."""
    return write_test_video(tmp_path_factory.mktemp("long") / "long.mp4", frames=100, size=(96, 72), fps=10,
                            audio_tone_hz=440)


def test_windows_cover_every_frame_and_flow_is_computed_once_per_pair(long_video):
    cfg = windowed(4, 3)
    estimator = CountingFlow(make_flow_estimator(cfg.flow))
    decode = WindowedDecode(str(long_video), cfg, estimator)
    windows = list(decode)
    # [0,4) [3,7) [6,10): window 3 would start at 9, inside window 2, which reaches the end
    assert [(w["window"].index, w["window"].start_s, w["window"].end_s) for w in windows] == [
        (0, 0.0, 4.0), (1, 3.0, 7.0), (2, 6.0, 10.0)]
    assert estimator.pairs == 99 == decode.facts["n_frames"] - 1  # overlapping windows share their pairs
    for w in windows:
        first, n = w["first"], len(w["flow"]) + 1
        assert first == round(w["window"].start_s * 10) and n == 40
        assert w["frames"].shape == (8, 32, 32, 3) and np.all(np.diff(w["positions"]) > 0)
        times = w["timestamps"]
        assert np.all((times >= w["window"].start_s - 1e-6) & (times < w["window"].end_s))
        assert len(w["wave"]) == 4 * 16000
    assert decode.facts["n_samples"] == 24 and decode.facts["has_audio"]
    assert set(decode.seconds) == {"decode_s", "flow_s"}


def test_the_last_window_is_cut_at_the_end_and_a_gap_free_stride_equal_to_length_tiles(long_video):
    windows = list(WindowedDecode(str(long_video), windowed(3, 3), make_flow_estimator(windowed(3, 3).flow)))
    assert [(w["window"].start_s, w["window"].end_s) for w in windows] == [(0, 3), (3, 6), (6, 9), (9, 10)]
    assert sum(len(w["flow"]) + 1 for w in windows) == 100  # each frame in exactly one window
    assert len(windows[-1]["wave"]) == 16000


def test_a_video_shorter_than_a_window_is_one_window_equal_to_the_whole_clip(long_video):
    whole = load_config(overrides=SMALL)
    cfg = windowed(36, 18)
    clip = decode_video(str(long_video), whole, make_flow_estimator(whole.flow))
    windows = list(WindowedDecode(str(long_video), cfg, make_flow_estimator(cfg.flow)))
    assert len(windows) == 1 and windows[0]["window"].end_s == pytest.approx(clip.facts["duration_s"])
    (w,) = windows
    np.testing.assert_array_equal(w["positions"], clip.positions)
    np.testing.assert_array_equal(w["frames"], clip.frames)
    np.testing.assert_array_equal(w["flow"], clip.flow)
    np.testing.assert_allclose(w["magnitudes"], clip.magnitudes)
    np.testing.assert_allclose(w["wave"], clip.wave, atol=1e-6)


def test_each_windows_audio_is_its_span_of_the_one_stream(long_video):
    cfg = windowed(4, 3)
    with open_video(str(long_video), max_seconds=math.inf) as reader:
        for _ in reader.frames({"x": (16, 16)}):
            pass
        whole = reader.audio()
    for w in WindowedDecode(str(long_video), cfg, make_flow_estimator(cfg.flow)):
        start = round(w["window"].start_s * 16000)
        np.testing.assert_allclose(w["wave"], whole[start:start + len(w["wave"])], atol=1e-6)
        assert np.abs(w["wave"]).max() > 0.3  # the tone, not silence


def write_shot(path, frames: int, tint: tuple[float, float, float], fps: int = 15, size=(96, 72)):
    """A clip of a random texture drifting 2 px a frame, tinted: its frames' colour histograms barely move, and
    two clips of other tints differ at once (a cut)."""
    import av

    rng = np.random.default_rng(len(path.name))
    texture = (rng.integers(0, 256, (size[1], size[0] + 2 * frames, 3)) * np.asarray(tint)).astype(np.uint8)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        for i in range(frames):
            image = np.ascontiguousarray(texture[:, 2 * i:2 * i + size[0]])
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())
    return path


def test_windows_restart_at_each_cut_and_none_spans_one(tmp_path):
    first = write_shot(tmp_path / "a.mp4", 45, (1.0, 0.3, 0.3))
    second = write_shot(tmp_path / "b.mp4", 60, (0.3, 0.3, 1.0))
    segments = make_long_video(tmp_path / "edited.mp4", [(str(first), "a"), (str(second), "b")], size=(96, 72))
    cut = segments[0].end_s  # 3.0 s
    cfg = windowed(2, 1)
    spans = [w["window"] for w in WindowedDecode(str(tmp_path / "edited.mp4"), cfg, make_flow_estimator(cfg.flow))]
    assert [(s.index, s.start_s, s.end_s) for s in spans] == [(0, 0, 2), (1, 1, 3), (2, 3, 5), (3, 4, 6), (4, 5, 7)]
    assert not any(s.start_s < cut < s.end_s for s in spans)
    one_shot = windowed(2, 1, shot_cut="null")
    spans = [w["window"] for w in WindowedDecode(str(tmp_path / "edited.mp4"), one_shot,
                                                 make_flow_estimator(one_shot.flow))]
    assert any(s.start_s < cut < s.end_s for s in spans) and spans[-1].end_s == 7


def test_a_long_decode_is_held_to_its_deadline_per_max_seconds_of_video(long_video):
    cfg = windowed(4, 3, "video.deadline_s=0.000001", "video.max_seconds=2")
    row = VideoProcessor(cfg)(VideoEntry("v", str(long_video), None, None))
    assert row["video"]["status"] == "error" and "per 2 s of video" in row["video"]["error"]


def test_the_processor_merges_the_windows_and_the_tables_have_a_row_per_window(long_video):
    cfg = windowed(4, 3)
    row = VideoProcessor(cfg)(VideoEntry("v", str(long_video), "a", "test"))
    assert row["video"]["status"] == "ok" and row["video"]["n_frames"] == 100 and row["video"]["n_samples"] == 24
    assert [(s.index, s.start_s, s.end_s) for s in spans(row)] == [(0, 0, 4), (1, 3, 7), (2, 6, 10)]
    assert [len(p) for p in split_windows(row, "spatial")] == [8, 8, 8]
    assert [len(a) for a in split_windows(row, "audio")] == [4, 4, 4]  # 4 s: four 0.96 s examples each
    positions = split_windows(row, "positions")
    assert positions[1][0] >= 30 and positions[2][-1] < 100  # frame indices of the video
    features = features_table([row])
    assert features.schema.equals(schema.windowed(schema.features_schema(row["spatial"].shape[1])))
    assert features["window"].to_pylist() == [0, 1, 2] and features["end_s"].to_pylist() == [4, 7, 10]
    assert "flow" not in row  # served the windows' models; a windowed video's flow is never stored
    merged = row | {"embedding_spatial": np.arange(6, dtype=np.float32).reshape(3, 2)}
    embeddings = embedded_table([merged])
    assert embeddings["window"].to_pylist() == [0, 1, 2]
    assert embeddings["spatial"].to_pylist() == [[0, 1], [2, 3], [4, 5]] and embeddings["label"].to_pylist() == ["a"] * 3


def test_windows_off_gives_todays_tables(long_video):
    cfg = load_config(overrides=SMALL)
    row = VideoProcessor(cfg)(VideoEntry("v", str(long_video), "a", "test"))
    assert "windows" not in row
    assert features_table([row]).schema.equals(schema.features_schema(row["spatial"].shape[1]))
    assert row["flow"].shape == (99, 48, 64, 2)
    assert embedded_table([row | {"embedding_spatial": np.zeros(2, np.float32)}]).schema.equals(
        schema.embeddings_schema(2))


def test_merge_and_split_are_inverse():
    from multistream.extract.windows import Span

    windows = [{"positions": np.array([0, 2], np.int32), "first": first, "window": Span(i, 2.0 * i, 2.0 * i + 3),
                "spatial": np.full((2, 3), i, np.float16), "audio": np.zeros((i + 1, 128), np.float16)}
               for i, first in enumerate((0, 20, 40))]
    row = merge_windows({"video_id": "v"}, windows)
    assert row["positions"].tolist() == [0, 2, 20, 22, 40, 42]
    assert [a.shape[0] for a in split_windows(row, "audio")] == [1, 2, 3]
    assert [s[0, 0] for s in split_windows(row, "spatial")] == [0, 1, 2]


def test_a_frame_that_overlapping_windows_both_sample_is_embedded_once(long_video):
    cfg = windowed(4, 3, "sampling.max_seq_len=64")  # every frame sampled: windows share their overlaps' frames
    processor = VideoProcessor(cfg)
    spatial, seen = processor.steps[-2], []
    embed = spatial.embed
    spatial.embed = lambda frames: seen.append(len(frames)) or embed(frames)
    row = processor(VideoEntry("v", str(long_video), None, None))
    positions = row["positions"].tolist()
    assert len(positions) == 120 and len(set(positions)) == 100 == sum(seen)  # 2 overlaps of 10 frames
    first = {}
    for position, vector in zip(positions, row["spatial"], strict=True):
        np.testing.assert_array_equal(first.setdefault(position, vector), vector)

"""The per-video extraction core, without Ray."""

import numpy as np
import pytest

from multistream.config import load_config
from multistream.extract import decode_video, flow_table, part_name, read_flow
from multistream.flow import make_flow_estimator
from multistream.video import VideoError
from tests.helpers import write_test_video


@pytest.fixture(scope="module")
def cfg():
    return load_config(overrides=["flow.size=[64, 48]", "spatial.image_size=32", "sampling.max_seq_len=8",
                                  "sampling.segments=4"])


def test_decode_video_gives_aligned_streams(tmp_path, cfg):
    path = write_test_video(tmp_path / "a.mp4", frames=40, size=(96, 72), fps=20, audio_tone_hz=440)
    decoded = decode_video(str(path), cfg, make_flow_estimator(cfg.flow))
    assert decoded.facts["n_frames"] == 40 and decoded.facts["has_audio"]
    assert decoded.facts["width"] == 96 and abs(decoded.facts["fps"] - 20) < 0.2
    assert decoded.flow.shape == (39, 48, 64, 2) and decoded.flow.dtype == np.uint8
    k = len(decoded.positions)
    assert k == 8 == decoded.facts["n_samples"]
    assert np.all(np.diff(decoded.positions) > 0) and decoded.positions[-1] < 40
    assert decoded.frames.shape == (k, 32, 32, 3) and decoded.timestamps.shape == (k,)
    np.testing.assert_allclose(decoded.timestamps, decoded.positions / 20, atol=1e-3)
    # the pattern drifts 2 px/frame right in the 96-px-wide original: magnitudes are in original pixels
    assert 1.0 < np.median(decoded.magnitudes) < 4.0
    assert abs(len(decoded.wave) - 2.0 * 16000) < 1600
    assert set(decoded.seconds) == {"decode_s", "flow_s"}


def test_single_frame_video_has_no_flow(tmp_path, cfg):
    path = write_test_video(tmp_path / "one.mp4", frames=1)
    decoded = decode_video(str(path), cfg, make_flow_estimator(cfg.flow))
    assert decoded.flow.shape == (0, 48, 64, 2) and list(decoded.positions) == [0]


def test_unreadable_video_raises_video_error(tmp_path, cfg):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video at all" * 100)
    with pytest.raises(VideoError):
        decode_video(str(bad), cfg, make_flow_estimator(cfg.flow))


def test_flow_row_round_trip_and_part_names():
    flow = np.random.default_rng(0).integers(0, 255, (3, 4, 5, 2), dtype=np.uint8)
    row = flow_table("v", flow, 20.0).to_pylist()[0]
    np.testing.assert_array_equal(read_flow(row), flow)
    assert part_name(["a", "b"]) == part_name(["b", "a"]) != part_name(["a"])

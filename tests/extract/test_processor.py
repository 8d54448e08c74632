"""The per-video extraction core, without Ray."""

import numpy as np
import pytest

from multistream.config import load_config
from multistream.extract.flow.registry import make_flow_estimator
from multistream.extract.processor import decode_video
from multistream.extract.rows import flow_table, read_flow
from multistream.extract.video import VideoError
from multistream.store.commit import part_name
from tests.support.helpers import write_test_video


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


def test_video_processor_gives_one_row_per_video_errors_included(tmp_path):
    from multistream.dataset.manifest import VideoEntry
    from multistream.extract.processor import VideoProcessor

    cfg = load_config(overrides=["flow.size=[64, 48]", "spatial.image_size=32", "sampling.max_seq_len=8",
                                 "sampling.segments=4", "spatial.device=cpu", "audio.device=cpu"])
    process = VideoProcessor(cfg, threads=1)
    good = write_test_video(tmp_path / "good.mp4", frames=20, audio_tone_hz=300)
    (tmp_path / "empty.mp4").write_bytes(b"")
    row = process(VideoEntry("good.mp4", str(good), "walk", "train"))
    assert row["video"]["status"] == "ok" and row["video"]["n_frames"] == 20
    assert row["spatial"].shape == (8, 1280) and row["spatial"].dtype == np.float16
    assert row["audio"].shape[1] == 128 and row["flow"].shape == (19, 48, 64, 2)
    assert "frames" not in row and "wave" not in row and row["video"]["spatial_s"] > 0
    bad = process(VideoEntry("empty.mp4", str(tmp_path / "empty.mp4"), None, None))
    assert bad["video"]["status"] == "error" and "empty file" in bad["video"]["error"] and set(bad) == {"video"}

    from multistream.extract.rows import from_columns, to_columns

    back = from_columns(to_columns([row, bad]))
    assert back[1] == bad and back[0]["video"] == row["video"]
    np.testing.assert_array_equal(back[0]["flow"], row["flow"])
    # blocks concatenated by Ray Data: a block of error rows had no array columns, so its cells are None
    merged = to_columns([row, bad])
    merged["flow"][1] = None
    assert from_columns(merged)[1] == bad


def test_a_failing_model_stage_makes_an_error_row_naming_it():
    from multistream.dataset.manifest import VideoEntry
    from multistream.extract.processor import ModelStep
    from multistream.extract.rows import video_row

    def broken(frames):
        raise RuntimeError("out of memory")

    row = {"video": video_row(VideoEntry("a", "/a", None, None)), "frames": np.zeros((2, 4, 4, 3), np.uint8),
           "flow": np.zeros((1, 4, 4, 2), np.uint8)}
    out = ModelStep(broken, "frames", "spatial")(row)
    assert out["video"]["status"] == "error" and out["video"]["error"] == "spatial: RuntimeError: out of memory"
    assert set(out) == {"video"}


def test_gpu_placement_is_checked_before_any_actor_starts():
    from multistream.config import ConfigError
    from multistream.extract.processor import check_gpu_placement

    with pytest.raises(ConfigError, match=r"spatial.device: cuda, but ray.fused.num_gpus is 0"):
        check_gpu_placement(load_config(overrides=["spatial.device=cuda"]))
    raft = ["ray.fused=null", "flow.backend=raft_small", "flow.weights=raft.pth"]
    assert check_gpu_placement(load_config(overrides=raft)) == [
        "flow.backend=raft_small runs on the CPU: ray.decode.num_gpus is 0, so its actors are given no GPU"]
    assert check_gpu_placement(load_config(overrides=[*raft, "flow.device=cuda", "ray.decode.num_gpus=0.25"])) == []
    assert check_gpu_placement(load_config(overrides=["flow.device=cuda"])) == []  # DIS: the flow device is unused


def test_a_bad_video_is_an_error_row_without_a_log_line(tmp_path, cfg, caplog):
    from multistream.dataset.manifest import VideoEntry
    from multistream.extract.processor import Decoder

    (tmp_path / "empty.mp4").write_bytes(b"")
    with caplog.at_level("INFO"):
        rows = [Decoder(cfg)(VideoEntry(f"v{i}", str(tmp_path / "empty.mp4"), None, None)) for i in range(20)]
    assert all(row["video"]["status"] == "error" and row["video"]["decode_s"] >= 0 for row in rows)
    assert not [r for r in caplog.records if r.name.startswith("multistream")]  # counted by the driver instead

"""The fused device path (`VideoProcessor(resident=True)`) on the CPU against the staged path's rows.

Frames are decoded at flow.size once and resized on the device (torch bilinear with antialias) where the staged
path resizes each frame from its native size in swscale. On UCF101's size (320x240 = flow.size) to 299 px, with
tf_efficientnet_lite0's ImageNet weights, the spatial features of v_ApplyEyeMakeup_g01_c01 measured per frame:
cosine >= 0.9938 (mean 0.9968), relative L2 <= 0.111 (mean 0.079); a one-pixel shift of the CPU frames moves
them more (cosine 0.990, relative L2 0.14). Everything else of a row (flow, positions, audio, facts) is equal.
"""

import numpy as np
import pytest
import torch

from multistream.config import load_config
from multistream.dataset.manifest import VideoEntry
from multistream.extract import processor
from multistream.extract.processor import Decoder, VideoProcessor, audio_step, spatial_step
from tests.support.helpers import write_test_video

CLIP = "v_ApplyEyeMakeup_g01_c01.avi"  # UCF101, 320x240, 164 frames
# the measured tolerance of the device resize (module doc), with a margin
MIN_COSINE, MAX_RELATIVE_L2 = 0.99, 0.15
CPU = {"flow": "cpu", "spatial": "cpu", "audio": "cpu"}


def staged(cfg, entry: VideoEntry, process: VideoProcessor | None = None) -> dict:
    """The per-stage pools' work on one video, one after the other (DecodeStage, SpatialStage, AudioStage);
    with `process`, its models (the same weights, built once)."""
    row = Decoder(cfg, threads=1)(entry)
    spatial, audio = (process.steps[1], process.steps[2]) if process is not None else (spatial_step(cfg), audio_step(cfg))
    return audio(spatial(row))


def assert_same_rows(resident: dict, reference: dict, spatial: bool = True) -> None:
    """Equal rows, but the spatial features: within the measured tolerance (`spatial`), else of equal shape."""
    assert resident["video"]["status"] == reference["video"]["status"] == "ok"
    timings = {"decode_s", "flow_s", "spatial_s", "audio_s"}
    assert {k: v for k, v in resident["video"].items() if k not in timings} == \
        {k: v for k, v in reference["video"].items() if k not in timings}
    for name in ("positions", "timestamps", "magnitudes", "flow", "audio"):
        np.testing.assert_array_equal(resident[name], reference[name], err_msg=name)
    ours, theirs = resident["spatial"].astype(np.float32), reference["spatial"].astype(np.float32)
    assert ours.shape == theirs.shape and resident["spatial"].dtype == np.float16
    if not spatial:
        return
    cosine = (ours * theirs).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(theirs, axis=1)
    relative = np.linalg.norm(ours - theirs, axis=1) / np.linalg.norm(theirs, axis=1)
    assert cosine.min() >= MIN_COSINE and relative.max() <= MAX_RELATIVE_L2, (cosine.min(), relative.max())


def test_the_device_path_gives_the_staged_rows_on_a_real_clip(real_clips):
    cfg = load_config(overrides=["flow.size=[320, 240]", "spatial.image_size=299", "sampling.max_seq_len=8",
                                 "sampling.segments=4", "video.max_seconds=2", *[f"{k}.device=cpu" for k in CPU]])
    entry = VideoEntry(CLIP, str(real_clips / CLIP), "ApplyEyeMakeup", "train")
    resident = VideoProcessor(cfg, threads=1, devices=CPU, resident=True)
    # two videos in one call: the spatial CNN embeds their frames in shared batches
    rows = resident.batch([entry, VideoEntry("missing.avi", str(real_clips / "missing.avi"), None, None), entry])
    reference = staged(cfg, entry, resident)
    assert_same_rows(rows[0], reference)
    assert_same_rows(rows[2], reference)
    assert rows[1]["video"]["status"] == "error" and set(rows[1]) == {"video"}
    assert not any("frames" in row or "wave" in row for row in rows)


@pytest.fixture
def raft_weights(tmp_path):
    from torchvision.models.optical_flow import raft_small

    torch.manual_seed(0)
    path = tmp_path / "raft_small.pth"
    torch.save(raft_small(weights=None, progress=False).state_dict(), path)
    return path


def test_raft_runs_on_the_device_frames_as_on_the_decoder_s(tmp_path, raft_weights, monkeypatch):
    """RAFT on the uploaded frames gives the numpy path's flow bit for bit, across flow chunks."""
    monkeypatch.setattr(processor, "FLOW_CHUNK", 4)  # 11 pairs in chunks of 4, 4, 3: the carried frame
    cfg = load_config(overrides=["flow.backend=raft_small", f"flow.weights={raft_weights}", "flow.size=[64, 48]",
                                 "flow.batch_size=3", "spatial.image_size=32", "sampling.max_seq_len=6",
                                 "sampling.segments=3", *[f"{k}.device=cpu" for k in CPU]])
    video = write_test_video(tmp_path / "v.mp4", frames=12, size=(96, 72), audio_tone_hz=300)
    entry = VideoEntry("v.mp4", str(video), "walk", "train")
    process = VideoProcessor(cfg, threads=1, devices=CPU, resident=True)
    assert process.steps[0].resident == torch.device("cpu")
    row, reference = process(entry), staged(cfg, entry, process)
    assert row["flow"].shape == (11, 48, 64, 2)
    assert_same_rows(row, reference, spatial=False)  # a synthetic 96x72 clip to 32 px: outside the measured case

    frames = np.random.default_rng(0).integers(0, 256, (5, 48, 64, 3), dtype=np.uint8)
    estimator = process.steps[0].estimator
    np.testing.assert_array_equal(estimator(torch.from_numpy(frames)), estimator(frames))
    for on_device, on_host in zip(estimator.encode(torch.from_numpy(frames), 20.0), estimator.encode(frames, 20.0),
                                  strict=True):
        np.testing.assert_array_equal(on_device, on_host)


def test_a_failing_shared_batch_is_embedded_again_video_by_video(tmp_path, monkeypatch):
    cfg = load_config(overrides=["flow.size=[64, 48]", "spatial.image_size=32", "sampling.max_seq_len=8",
                                 "sampling.segments=4", *[f"{k}.device=cpu" for k in CPU]])
    paths = [write_test_video(tmp_path / f"{name}.mp4", frames=frames, seed=i)
             for i, (name, frames) in enumerate([("a", 20), ("b", 3)])]
    process = VideoProcessor(cfg, threads=1, devices=CPU, resident=True)
    embed = process.on_device.embed

    def fails_on_three_frames(frames):  # b has 3 sampled frames: it fails, alone and in the shared batch
        if len(frames) == 3 or len(frames) == 11:
            raise RuntimeError("CUDA out of memory")
        return embed(frames)

    process.on_device.embed = fails_on_three_frames
    a, b = process.batch([VideoEntry(p.name, str(p), None, None) for p in paths])
    assert a["video"]["status"] == "ok" and a["spatial"].shape == (8, 1280)
    assert b["video"]["status"] == "error" and b["video"]["error"] == "spatial: RuntimeError: CUDA out of memory"


def test_the_cpu_fused_path_is_left_as_it_was(tmp_path):
    """The demo's fused actors (no GPU) keep the per-video path: frames resized by swscale, no torch tensors."""
    from multistream.ray.extract import resident_on_gpu

    demo = load_config()
    assert not resident_on_gpu(demo, CPU)
    raft = load_config(overrides=["flow.backend=raft_small", "flow.weights=raft.pth"])
    assert not resident_on_gpu(raft, CPU) and not resident_on_gpu(demo, {**CPU, "flow": "cuda", "spatial": "cuda"})
    cfg = load_config(overrides=["flow.size=[64, 48]", "spatial.image_size=32", "sampling.max_seq_len=8",
                                 "sampling.segments=4", *[f"{k}.device=cpu" for k in CPU]])
    video = write_test_video(tmp_path / "v.mp4", frames=20, audio_tone_hz=300)
    entry = VideoEntry("v.mp4", str(video), "walk", "train")
    process = VideoProcessor(cfg, threads=1, devices=CPU)
    [row] = process.batch([entry])
    reference = staged(cfg, entry, process)
    assert process.steps[0].resident is None
    for name in ("positions", "flow", "spatial", "audio"):
        np.testing.assert_array_equal(row[name], reference[name], err_msg=name)


def test_the_device_embedder_is_the_spatial_embedder_on_device_frames():
    from multistream.extract.processor import DeviceEmbedder

    cfg = load_config(overrides=["spatial.image_size=32", "spatial.batch_size=3", "spatial.device=cpu"])
    embedder = spatial_step(cfg).embed
    frames = np.random.default_rng(0).integers(0, 256, (7, 32, 32, 3), dtype=np.uint8)
    on_device = DeviceEmbedder(embedder)(torch.from_numpy(frames).permute(0, 3, 1, 2))
    np.testing.assert_array_equal(on_device, embedder(frames))

"""Precomputed flow (`flow.backend: precomputed`): per-frame flow images in mmaction2's and the uv layout, read
back into the same sampling, `flow/` and motion-CNN input as the flow they were made from."""

import posixpath

import cv2
import numpy as np
import pytest

from multistream.config import ConfigError, load_config
from multistream.dataset.manifest import VideoEntry
from multistream.extract.flow.codec import dequantize, quantize
from multistream.extract.flow.opencv import DISFlow
from multistream.extract.flow.precomputed import LAYOUTS, resized, video_folder
from multistream.extract.flow.registry import BACKENDS, FlowBackend, register
from multistream.extract.processor import Decoder
from multistream.train.motion.model import flow_stacks

CLIP = "v_ApplyEyeMakeup_g01_c01.avi"  # UCF101, 320x240, 25 fps, 164 frames
VIDEO_ID = f"ApplyEyeMakeup/{CLIP}"
SETTINGS = ["flow.size=[112, 84]", "spatial.image_size=32", "sampling.max_seq_len=24", "sampling.segments=6"]
# JPEG's error, measured on this clip: at quality 100 a stored value moves by at most 1 of 255 (1.6 % of them
# move), one quantization step of 2 * 20 / 255 = 0.157 px; the motion-CNN input (stacks, mean removed) then
# differs by at most 0.158 px. (Quality 95 and 90: at most 2 steps, the same positions.)
JPEG_LEVELS = 1


def write_flow_images(flow_q: np.ndarray, root, layout: str, video_id: str, quality: int = 100) -> None:
    """(P, H, W, 2) uint8 flow (values as `codec.quantize` with clip 20, the tools' mapping) → one JPEG per
    component and pair, named as `layout` names them (first index 1)."""
    x_file, y_file, video_dir = LAYOUTS[layout]
    video = video_folder(video_id, video_dir)
    for i, pair in enumerate(flow_q, start=1):
        for component, name in enumerate((x_file, y_file)):
            path = root / name.format(video=video, index=i)
            path.parent.mkdir(parents=True, exist_ok=True)
            assert cv2.imwrite(str(path), pair[..., component], [cv2.IMWRITE_JPEG_QUALITY, quality])


def decode(cfg, clip_dir, video_id: str = VIDEO_ID) -> dict:
    row = Decoder(cfg)(VideoEntry(video_id, str(clip_dir / CLIP), "ApplyEyeMakeup", "train"))
    assert row["video"]["status"] == "ok", row["video"]["error"]
    return row


class EightBitDIS(DISFlow):
    """DIS flow as flow images hold it: on the 8-bit grid of ±20 px. The precomputed flow is made from this one,
    so that what is compared is the backend, not the 8 bits (DIS's float flow at 112x84 is mostly sub-pixel:
    quantized, each segment's mean magnitude moves enough to move adaptive sampling's positions)."""

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        return dequantize(quantize(super().__call__(frames), 20.0), 20.0)


@pytest.fixture(scope="module")
def computed(real_clips):
    """The clip through the 8-bit DIS backend, as extraction computes it."""
    register(FlowBackend("dis_8bit", lambda cfg, threads: EightBitDIS()))
    try:
        return decode(load_config(overrides=[*SETTINGS, "flow.backend=dis_8bit"]), real_clips)
    finally:
        BACKENDS.pop("dis_8bit")


@pytest.mark.parametrize("layout", ["mmaction", "uv"])
def test_precomputed_flow_gives_the_positions_and_stacks_of_the_flow_it_was_made_from(
        tmp_path, real_clips, computed, layout):
    write_flow_images(computed["flow"], tmp_path, layout, VIDEO_ID)
    expected = {"mmaction": tmp_path / "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01/flow_x_00001.jpg",
                "uv": tmp_path / "v/v_ApplyEyeMakeup_g01_c01/frame000163.jpg"}[layout]
    assert expected.exists()  # the layouts as mmaction2 (rawframes) and UCF101's tvl1_flow name their files
    cfg = load_config(overrides=[*SETTINGS, "flow.backend=precomputed", f"flow.precomputed.root={tmp_path}",
                                 f"flow.precomputed.layout={layout}"])
    read = decode(cfg, real_clips)

    assert read["flow"].shape == computed["flow"].shape == (163, 84, 112, 2)
    np.testing.assert_array_equal(read["positions"], computed["positions"])  # features/ positions
    np.testing.assert_array_equal(read["timestamps"], computed["timestamps"])
    assert len(read["positions"]) == 24 < 164  # adaptive sampling chose them, not "every frame"
    np.testing.assert_allclose(read["magnitudes"], computed["magnitudes"], rtol=0.02, atol=0.02)
    levels = np.abs(read["flow"].astype(int) - computed["flow"].astype(int))
    assert levels.max() <= JPEG_LEVELS and levels.mean() < 0.1
    # the motion CNN's input: stacks of 10 pairs at the sampled positions, in pixels
    stacks = [flow_stacks(f, read["positions"], 10, 20.0) for f in (read["flow"], computed["flow"])]
    step = 2 * 20.0 / 255
    assert np.abs(stacks[0] - stacks[1]).max() <= 2 * JPEG_LEVELS * step + 1e-5


def test_flow_images_of_another_size_are_resized_with_their_vectors(tmp_path, real_clips):
    """Flow images at 2x the flow size (e.g. 341x256 TV-L1 for 320x240): vectors halve with the image."""
    flow = np.zeros((163, 168, 224, 2), np.float32)
    flow[..., 0], flow[..., 1] = 6.0, -3.0  # pixels of the 224x168 images
    write_flow_images(quantize(flow, 20.0), tmp_path, "uv", VIDEO_ID)
    cfg = load_config(overrides=[*SETTINGS, "flow.backend=precomputed", f"flow.precomputed.root={tmp_path}",
                                 "flow.precomputed.layout=uv"])
    read = dequantize(decode(cfg, real_clips)["flow"], 20.0)
    assert read.shape == (163, 84, 112, 2)
    np.testing.assert_allclose(read[..., 0], 3.0, atol=0.1)
    np.testing.assert_allclose(read[..., 1], -1.5, atol=0.1)
    stretched = resized(np.ones((10, 20, 2), np.float32), 30, 40)  # 2x as wide, 3x as high
    assert stretched.shape == (30, 40, 2) and np.allclose(stretched, [2.0, 3.0])
    same = flow[0]
    assert resized(same, 168, 224) is same  # at the flow size already: as it is


def test_a_folder_short_of_pairs_is_an_error_row_beyond_missing_pairs(tmp_path, real_clips, computed):
    write_flow_images(computed["flow"][:-1], tmp_path, "mmaction", VIDEO_ID)  # the decoder saw one frame more
    overrides = [*SETTINGS, "flow.backend=precomputed", f"flow.precomputed.root={tmp_path}"]
    row = decode(load_config(overrides=overrides), real_clips)
    np.testing.assert_array_equal(row["flow"][-1], row["flow"][-2])  # the last pair repeats
    none = Decoder(load_config(overrides=[*overrides, "flow.precomputed.missing_pairs=0"]))(
        VideoEntry(VIDEO_ID, str(real_clips / CLIP), "ApplyEyeMakeup", "train"))
    assert none["video"]["status"] == "error" and "flow_x_00163.jpg" in none["video"]["error"]
    other = Decoder(load_config(overrides=overrides))(VideoEntry("Other/v_Other.avi", str(real_clips / CLIP), "x", "train"))
    assert other["video"]["status"] == "error" and "v_Other" in other["video"]["error"]


def test_a_decimated_video_is_refused(tmp_path, real_clips, computed):
    write_flow_images(computed["flow"], tmp_path, "mmaction", VIDEO_ID)
    cfg = load_config(overrides=[*SETTINGS, "flow.backend=precomputed", f"flow.precomputed.root={tmp_path}",
                                 "video.max_fps=10"])
    row = Decoder(cfg)(VideoEntry(VIDEO_ID, str(real_clips / CLIP), "ApplyEyeMakeup", "train"))
    assert row["video"]["status"] == "error" and "max_fps" in row["video"]["error"]


def test_video_folders_and_the_config():
    assert video_folder("ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi", "{path}") == posixpath.join(
        "ApplyEyeMakeup", "v_ApplyEyeMakeup_g01_c01")
    assert video_folder("ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi", "{stem}") == "v_ApplyEyeMakeup_g01_c01"
    with pytest.raises(ConfigError, match="flow.precomputed.root"):
        load_config(overrides=["flow.backend=precomputed"])

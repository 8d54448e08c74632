"""RAFTFlow's own forward (each frame encoded once, only the last iteration upsampled) against torchvision's
model call on real frames, its device-side quantization against `codec`, and its bf16 mode's error bound.

No published RAFT weights can be fetched offline: the weights are torchvision's raft_small architecture with a
seeded random init (torch.manual_seed(0)), NOT the published ones. The forward is the same computation whatever
the weights; `python -m multistream.bench.raft --weights torchvision` measures it with the published ones.
"""

import numpy as np
import pytest
import torch

from multistream.bench.raft import clip_frames, end_point_error, torchvision_flow
from multistream.config import FlowConfig
from multistream.extract.flow import raft
from multistream.extract.flow.base import encode_flow
from multistream.extract.flow.codec import mean_magnitude, quantize
from multistream.extract.flow.raft import RAFTFlow, build_raft
from multistream.extract.flow.registry import make_flow_estimator

CLIP = "v_ApplyEyeMakeup_g01_c01.avi"  # UCF101, 320x240 (its native size, configs/ucf101.yaml's flow.size)


@pytest.fixture(scope="module")
def seeded_raft_small(tmp_path_factory):
    """(path of the state dict, torchvision's model with it): raft_small, seeded random init."""
    torch.manual_seed(0)
    model = build_raft("raft_small")
    path = tmp_path_factory.mktemp("raft") / "raft_small_seed0.pth"
    torch.save(model.state_dict(), path)
    return str(path), model


@pytest.fixture(scope="module")
def real_frames(real_clips):
    """4 frames (3 pairs) of a real clip at 320x240, and 3 frames of another clip resized to 320x240."""
    return clip_frames(real_clips / CLIP, 4), clip_frames(real_clips / "flipping_a_pancake.mkv", 3)


def test_flow_equals_torchvision_on_real_frames(seeded_raft_small, real_frames):
    path, model = seeded_raft_small
    estimate = RAFTFlow(FlowConfig(backend="raft_small", weights=path, device="cpu", batch_size=2))
    for frames in real_frames:  # batch_size 2: the 3 pairs of the first clip run as two chunks
        ours = estimate(frames)
        expected = torchvision_flow(model, frames, batch_size=2, device=torch.device("cpu"))
        assert ours.shape == expected.shape == (len(frames) - 1, 240, 320, 2) and ours.dtype == np.float32
        assert np.linalg.norm(expected, axis=-1).mean() > 1.0  # a real flow field, not zeros
        assert end_point_error(ours, expected) < 1e-3
        assert np.abs(ours - expected).max() < 0.05


def test_odd_sizes_pad_and_crop_as_before(seeded_raft_small, real_frames):
    path, model = seeded_raft_small
    frames = np.ascontiguousarray(real_frames[0][:2, :100, :150])  # padded to 128x152, cropped back
    ours = make_flow_estimator(FlowConfig(backend="raft_small", weights=path, device="cpu"))(frames)
    expected = torchvision_flow(model, frames, batch_size=16, device=torch.device("cpu"))
    assert ours.shape == (1, 100, 150, 2) and end_point_error(ours, expected) < 1e-3


@pytest.mark.parametrize("backend", ["raft_small", "raft_large"])  # correlation radius 3 and 4
def test_correlation_lookup_equals_torchvision_inside_and_far_outside(backend):
    torch.manual_seed(1)
    corr_block = build_raft(backend).corr_block
    fmap1, fmap2 = torch.randn(2, 2, 64, 16, 20)
    coords = raft.coords_grid(2, 16, 20, torch.device("cpu"))
    coords = coords + torch.randn_like(coords) * 6  # some windows straddle the border, some lie outside
    coords[0, :, 0, :4] = torch.tensor([[-40.0, 70.0, 3.5, 19.0], [5.0, -30.0, 40.0, 15.0]])
    corr_block.build_pyramid(fmap1, fmap2)
    expected = corr_block.index_pyramid(coords)
    ours = raft.CorrLookup(raft.correlation_pyramid(fmap1, fmap2, corr_block.num_levels), corr_block.radius)(coords)
    assert ours.shape == expected.shape and ours.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)


def test_encode_gives_the_host_path_bytes_and_magnitudes(seeded_raft_small, real_frames):
    path, _ = seeded_raft_small
    frames = real_frames[0][:3]
    estimate = RAFTFlow(FlowConfig(backend="raft_small", weights=path, device="cpu", batch_size=1))
    flow = estimate(frames)
    scale = (340 / 320, 256 / 240)
    stored, magnitudes = encode_flow(estimate, frames, 2.0, scale)  # clip 2 px: some vectors are clipped
    assert stored.dtype == np.uint8 and magnitudes.dtype == np.float32
    np.testing.assert_array_equal(stored, quantize(flow, 2.0))
    np.testing.assert_allclose(magnitudes, mean_magnitude(flow, scale), rtol=1e-6)


def test_device_quantize_and_magnitude_equal_codec():
    rng = np.random.default_rng(0)
    flow = rng.normal(0, 12, (3, 40, 50, 2)).astype(np.float32)
    step = np.float32(2 * 20.0 / 255)
    flow[0, 0, :20, 0] = (np.arange(20) - 10.5) * step  # on the rounding half-way points
    flow[0, 1, :4, 1] = [-20.0, 20.0, -1e9, 1e9]
    np.testing.assert_array_equal(raft.quantize(torch.from_numpy(flow), 20.0).numpy(), quantize(flow, 20.0))
    np.testing.assert_allclose(raft.mean_magnitude(torch.from_numpy(flow), (1.5, 0.5)).numpy(),
                               mean_magnitude(flow, (1.5, 0.5)), rtol=1e-6)


def test_cpu_backends_keep_the_host_path(real_frames):
    frames = real_frames[0][:3]
    estimate = make_flow_estimator(FlowConfig(backend="dis"))
    assert not hasattr(estimate, "encode")
    stored, magnitudes = encode_flow(estimate, frames, 20.0, (2.0, 1.0))
    flow = estimate(frames)
    np.testing.assert_array_equal(stored, quantize(flow, 20.0))
    np.testing.assert_array_equal(magnitudes, mean_magnitude(flow, (2.0, 1.0)))


# precision bf16 is allowed where its end-point error against torchvision's float32 flow stays within one
# step of the stored flow's uint8 grid, 2·clip_px/255 = 0.157 px at clip_px 20. Measured (seeded init, 3 pairs
# of each of tests/data/clips' 5 clips at 320x240): raft_small 0.114-0.137 px, raft_large 0.025-0.042 px.
BF16_BOUND_PX = 2 * 20.0 / 255


def test_bf16_stays_within_one_storage_step(seeded_raft_small, real_frames):
    path, model = seeded_raft_small
    frames = real_frames[0][:3]
    estimate = RAFTFlow(FlowConfig(backend="raft_small", weights=path, device="cpu"), precision="bf16")
    expected = torchvision_flow(model, frames, batch_size=16, device=torch.device("cpu"))
    error = end_point_error(estimate(frames), expected)
    assert 0 < error < BF16_BOUND_PX


def test_unknown_precision_is_refused(seeded_raft_small):
    with pytest.raises(ValueError, match="flow.precision"):
        RAFTFlow(FlowConfig(backend="raft_small", weights=seeded_raft_small[0], device="cpu"), precision="fp16")


def test_raft_speed_reports_both_paths_and_the_error(real_clips):
    from multistream.bench.raft import raft_speed

    report = raft_speed(size=(128, 128), pairs=2, batch_size=2, repeats=1, clips=[real_clips / CLIP], epe_pairs=1)
    assert report["pairs"] == 2 and report["backend"] == "raft_small" and "not the published" in report["weights"]
    assert report["speedup"] == report["baseline_s_per_pair"] / report["new_s_per_pair"] > 0
    assert set(report["epe_px"]) == {CLIP} and report["epe_px_max"] < 1e-3 and "bf16" not in report

import cv2
import numpy as np
import pytest
import torch

from multistream.config import FlowConfig
from multistream.extract.flow.codec import dequantize, mean_magnitude, quantize
from multistream.extract.flow.registry import make_flow_estimator


def _texture(h: int, w: int, seed: int = 0) -> np.ndarray:
    """(h, w, 3) uint8 RGB: smoothed noise, textured at several scales so every patch has gradients."""
    noise = np.random.default_rng(seed).random((h, w, 3)).astype(np.float32)
    texture = cv2.GaussianBlur(noise, (0, 0), 1.5) + 0.5 * cv2.GaussianBlur(noise, (0, 0), 4.0)
    texture -= texture.min()
    return (255 * texture / texture.max()).astype(np.uint8)


def _moving(n: int, dx: int, dy: int, h: int = 96, w: int = 128) -> np.ndarray:
    """(n, h, w, 3) frames of one texture whose content moves by (dx, dy) pixels per frame."""
    margin = n * max(abs(dx), abs(dy)) + 1
    big = _texture(h + 2 * margin, w + 2 * margin)
    return np.stack([big[margin - i * dy:margin - i * dy + h, margin - i * dx:margin - i * dx + w]
                     for i in range(n)])


@pytest.mark.parametrize("backend", ["dis", "farneback"])
def test_recovers_a_known_shift(backend):
    frames = _moving(4, dx=3, dy=-2)
    flow = make_flow_estimator(FlowConfig(backend=backend))(frames)
    assert flow.shape == (3, 96, 128, 2) and flow.dtype == np.float32
    inner = flow[:, 16:-16, 16:-16]  # borders see content entering the frame
    np.testing.assert_allclose(np.median(inner, axis=(1, 2)), [[3, -2]] * 3, atol=0.5)


@pytest.mark.parametrize("backend", ["dis", "farneback"])
def test_still_frames_have_no_flow(backend):
    frames = np.repeat(_texture(64, 80)[None], 3, axis=0)
    flow = make_flow_estimator(FlowConfig(backend=backend))(frames)
    assert np.abs(flow).max() < 0.1


def test_rejects_bad_frames():
    estimate = make_flow_estimator(FlowConfig(backend="dis"))
    with pytest.raises(ValueError, match="uint8 RGB"):
        estimate(np.zeros((1, 32, 32, 3), np.uint8))
    with pytest.raises(ValueError, match="uint8 RGB"):
        estimate(np.zeros((2, 32, 32, 3), np.float32))


def test_threads_argument_sets_opencv_threads():
    before = cv2.getNumThreads()
    try:
        make_flow_estimator(FlowConfig(backend="dis"), threads=1)
        assert cv2.getNumThreads() == 1
    finally:
        cv2.setNumThreads(before)


def test_quantize_round_trip_and_clipping():
    clip = 20.0
    flow = np.random.default_rng(0).uniform(-30, 30, (5, 8, 9, 2)).astype(np.float32)
    q = quantize(flow, clip)
    assert q.dtype == np.uint8 and q.shape == flow.shape
    back = dequantize(q, clip)
    assert back.dtype == np.float32
    inside = np.abs(flow) <= clip
    assert np.abs(back - flow)[inside].max() <= clip / 255 + 1e-5
    np.testing.assert_allclose(back[~inside], np.sign(flow[~inside]) * clip, atol=1e-5)
    assert quantize(np.array([-clip, clip], np.float32), clip).tolist() == [0, 255]


def test_mean_magnitude_in_original_pixels():
    flow = np.zeros((3, 4, 5, 2), np.float32)
    flow[1] = (3.0, 4.0)
    flow[2, :2] = (0.0, -2.0)  # half the field moves 2 px
    np.testing.assert_allclose(mean_magnitude(flow), [0.0, 5.0, 1.0], rtol=1e-6)
    # flow computed at half the width and a quarter of the height of the original video
    np.testing.assert_allclose(mean_magnitude(flow, scale=(2.0, 4.0)), [0.0, np.hypot(6, 16), 4.0], rtol=1e-6)
    assert mean_magnitude(flow).dtype == np.float32


@pytest.fixture(scope="module")
def raft_small_weights(tmp_path_factory):
    from torchvision.models.optical_flow import raft_small

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("raft") / "raft_small.pth"
    torch.save(raft_small(weights=None, progress=False).state_dict(), path)
    return str(path)


def test_raft_small_shapes_and_chunking(raft_small_weights):
    frames = _moving(3, dx=2, dy=1, h=64, w=72)
    estimate = make_flow_estimator(FlowConfig(backend="raft_small", weights=raft_small_weights, batch_size=1,
                                              device="cpu"))
    flow = estimate(frames)  # two chunks of one pair each
    assert flow.shape == (2, 64, 72, 2) and flow.dtype == np.float32 and np.isfinite(flow).all()
    np.testing.assert_allclose(estimate(frames[1:])[0], flow[1], atol=1e-4)  # pair 1 is frame 1 → frame 2


def test_raft_needs_weights(tmp_path):
    with pytest.raises(ValueError, match="flow.weights"):
        make_flow_estimator(FlowConfig(backend="raft_small"))
    with pytest.raises(ValueError, match="not found"):
        make_flow_estimator(FlowConfig(backend="raft_large", weights=str(tmp_path / "missing.pth")))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_raft_on_cuda_matches_cpu(raft_small_weights):
    frames = _moving(3, dx=2, dy=1, h=128, w=160)
    cpu, gpu = (make_flow_estimator(FlowConfig(backend="raft_small", weights=raft_small_weights,
                                               device=device))(frames) for device in ("cpu", "cuda"))
    assert gpu.shape == cpu.shape and np.abs(gpu - cpu).mean() < 0.05  # cuDNN may use TF32 convolutions

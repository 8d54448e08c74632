import numpy as np
import pytest
import torch

from multistream.config import MotionCNNConfig
from multistream.train.motion.model import EMBEDDING_DIM, MotionCNN, feature_grid, flow_stack, flow_stacks

CLIP = 20.0
STEP = 2 * CLIP / 255  # one quantization level in pixels


@pytest.mark.parametrize("flow_size,width,grid", [((112, 84), 0.25, (2, 3)), ((320, 240), 0.125, (7, 9))])
def test_shapes_and_documented_grid(flow_size, width, grid):
    model = MotionCNN(num_classes=5, stack_length=10, width=width, flow_size=flow_size).eval()
    x = torch.randn(2, 20, flow_size[1], flow_size[0])
    assert feature_grid(flow_size[1], flow_size[0]) == grid
    before_adaptive = model.features[:-2](x)
    assert tuple(before_adaptive.shape[2:]) == grid  # the adaptive pool is an identity at flow_size
    assert model(x).shape == (2, 5)
    emb = model.embed(x)
    assert emb.shape == (2, EMBEDDING_DIM)
    assert (emb >= 0).all()  # after ReLU
    assert torch.equal(emb, model.embed(x))  # eval mode: deterministic


def test_full_width_paper_network_shapes():
    with torch.device("meta"):  # shapes only: no memory, no compute
        model = MotionCNN(num_classes=101, stack_length=10, width=1.0, flow_size=(320, 240))
        x = torch.empty(2, 20, 240, 320)
        assert model(x).shape == (2, 101)
        assert model.embed(x).shape == (2, 2048)
    convs = [m for m in model.features if isinstance(m, torch.nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size, c.stride) for c in convs] == [
        (96, (7, 7), (2, 2)), (256, (5, 5), (2, 2)), (512, (3, 3), (1, 1)), (512, (3, 3), (1, 1)),
        (512, (3, 3), (1, 1))]
    assert model.full6[0].in_features == 512 * 7 * 9
    assert model.full6[0].out_features == 4096 and model.full7[0].out_features == 2048


def test_other_input_size_and_config():
    model = MotionCNN.from_config(MotionCNNConfig(stack_length=4, width=0.125), 3, (112, 84)).eval()
    assert model(torch.randn(1, 8, 120, 160)).shape == (1, 3)
    with pytest.raises(ValueError, match="too small"):
        MotionCNN(3, flow_size=(40, 40))


def test_adam_steps_lower_the_loss():
    torch.manual_seed(0)
    model = MotionCNN(num_classes=3, stack_length=2, width=0.125, flow_size=(112, 84))
    x = torch.randn(6, 4, 84, 112)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = torch.nn.CrossEntropyLoss()

    def eval_loss():
        model.eval()
        with torch.no_grad():
            return float(loss_fn(model(x), y))

    start = eval_loss()
    for _ in range(15):
        model.train()
        optimizer.zero_grad()
        loss_fn(model(x), y).backward()
        optimizer.step()
    assert eval_loss() < 0.5 * start


def _checker(h, w):
    return np.where((np.arange(h)[:, None] + np.arange(w)[None, :]) % 2 == 0, 1, -1)


def _labelled_flow(pairs, h=6, w=8):
    """Pair i: dx = (i+1) levels x checker, dy = -2(i+1) levels x checker, on top of a constant pan."""
    c = _checker(h, w)
    q = np.empty((pairs, h, w, 2), dtype=np.uint8)
    for i in range(pairs):
        q[i, ..., 0] = 100 + (i + 1) * c
        q[i, ..., 1] = 140 - 2 * (i + 1) * c
    return q, c


def _pair_indices(stack, c):
    dx = stack[0::2, 0, 0] / (STEP * c[0, 0])
    dy = stack[1::2, 0, 0] / (-2 * STEP * c[0, 0])
    np.testing.assert_allclose(dx, dy, atol=1e-4)  # dx and dy channels of one pair alternate
    return np.rint(dx).astype(int) - 1


def test_flow_stack_ordering_and_clamping():
    q, c = _labelled_flow(30)
    stack = flow_stack(q, center=15, stack_length=10, clip_px=CLIP)
    assert stack.shape == (20, 6, 8) and stack.dtype == np.float32
    assert list(_pair_indices(stack, c)) == list(range(10, 20))
    assert list(_pair_indices(flow_stack(q, 0, 10, CLIP), c)) == list(range(0, 10))
    assert list(_pair_indices(flow_stack(q, 2, 10, CLIP), c)) == list(range(0, 10))
    assert list(_pair_indices(flow_stack(q, 30, 10, CLIP), c)) == list(range(20, 30))
    assert list(_pair_indices(flow_stack(q, 7, 3, CLIP), c)) == [6, 7, 8]


def test_flow_stack_short_video_repeats_edge_pairs():
    q, c = _labelled_flow(3)
    assert list(_pair_indices(flow_stack(q, 1, 6, CLIP), c)) == [0, 1, 2, 2, 2, 2]
    with pytest.raises(ValueError):
        flow_stack(q[:0], 0, 6, CLIP)


def test_flow_stack_dequantizes_and_subtracts_the_mean():
    pan = np.full((4, 6, 8, 2), 200, dtype=np.uint8)  # uniform motion: nothing left after mean subtraction
    assert np.abs(flow_stack(pan, 2, 4, CLIP)).max() < 1e-5
    half = np.zeros((4, 6, 8, 2), dtype=np.uint8)
    half[:, :3] = 255  # top half +clip, bottom half -clip: already zero-mean
    stack = flow_stack(half, 2, 4, CLIP)
    np.testing.assert_allclose(stack[:, :3], CLIP, atol=1e-4)
    np.testing.assert_allclose(stack[:, 3:], -CLIP, atol=1e-4)
    rng = np.random.default_rng(0)
    noisy = flow_stack(rng.integers(0, 256, (12, 6, 8, 2), dtype=np.uint8), 5, 10, CLIP)
    np.testing.assert_allclose(noisy.mean(axis=(1, 2)), 0, atol=1e-5)


def test_flow_stacks_batches_centers():
    q, c = _labelled_flow(12)
    batch = flow_stacks(q, [0, 6, 12], stack_length=4, clip_px=CLIP)
    assert batch.shape == (3, 8, 6, 8)
    np.testing.assert_array_equal(batch[1], flow_stack(q, 6, 4, CLIP))


def test_norm_paper_normalizes_after_conv1_only_and_cnn_m_after_conv2_too():
    norms = {}
    for norm in ("paper", "cnn_m"):
        model = MotionCNN(num_classes=3, stack_length=2, width=0.125, flow_size=(112, 84), norm=norm)
        layers = list(model.features)
        convs = [i for i, m in enumerate(layers) if isinstance(m, torch.nn.Conv2d)]
        norms[norm] = [isinstance(layers[i + 1], torch.nn.BatchNorm2d) for i in convs]
        assert layers[convs[1]].bias is None if norm == "cnn_m" else layers[convs[1]].bias is not None
        assert model(torch.randn(2, 4, 84, 112)).shape == (2, 3)
    assert norms == {"paper": [True, False, False, False, False], "cnn_m": [True, True, False, False, False]}
    assert MotionCNN.from_config(MotionCNNConfig(norm="paper"), 3, (112, 84)).features[4].bias is not None
    with pytest.raises(ValueError, match="norm"):
        MotionCNN(3, norm="lrn")

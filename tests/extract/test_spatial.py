import logging

import numpy as np
import pytest
import safetensors.torch
import torch

from multistream.config import SpatialConfig
from multistream.extract.spatial import SpatialEmbedder

SIZE = 64  # small frames keep the CPU forward pass quick; the pooled embedding size does not depend on it


def _images(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    base = np.stack([xx * 4, yy * 4, (xx + yy) * 2], axis=-1) % 256
    return np.stack([(base + rng.integers(0, 60, base.shape)) % 256 for _ in range(n)]).astype(np.uint8)


@pytest.fixture(scope="module")
def lite0():
    return SpatialEmbedder(SpatialConfig(model="tf_efficientnet_lite0", weights="package:efficientnet_lite0",
                                         image_size=SIZE, batch_size=2, device="cpu"))


def test_packaged_weights_embed_deterministically(lite0):
    images = _images(3)
    out = lite0(images)  # two chunks: 2 + 1
    assert lite0.dim == 1280
    assert out.shape == (3, 1280) and out.dtype == np.float32 and np.isfinite(out).all()
    np.testing.assert_array_equal(lite0(images), out)
    np.testing.assert_allclose(lite0(images[2:]), out[2:], atol=1e-5)
    assert not np.allclose(out[0], out[1])


def test_empty_and_wrong_inputs(lite0):
    assert lite0(np.zeros((0, SIZE, SIZE, 3), np.uint8)).shape == (0, 1280)
    with pytest.raises(ValueError, match=f"{SIZE}, {SIZE}, 3"):
        lite0(np.zeros((1, SIZE + 1, SIZE, 3), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        lite0(np.zeros((1, SIZE, SIZE, 3), np.float32))


def test_weights_file_with_classifier_matches_timm_features(tmp_path):
    import timm

    torch.manual_seed(0)
    full = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()  # with its 1000-class head
    path = tmp_path / "lite0.safetensors"
    safetensors.torch.save_file(full.state_dict(), path)
    embed = SpatialEmbedder(SpatialConfig(model="tf_efficientnet_lite0", weights=str(path), image_size=SIZE,
                                          device="cpu"))
    images = _images(2)
    x = (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.5  # this model's mean/std
    with torch.inference_mode():
        expected = full.forward_head(full.forward_features(x), pre_logits=True)
    np.testing.assert_allclose(embed(images), expected.numpy(), atol=1e-4)


def test_weights_for_another_model_are_refused():
    with pytest.raises(ValueError, match="do not fit"):
        SpatialEmbedder(SpatialConfig(model="mobilenetv3_small_050", weights="package:efficientnet_lite0",
                                      image_size=SIZE, device="cpu"))


def test_random_init_is_announced(caplog):
    with caplog.at_level(logging.WARNING, logger="multistream.extract.spatial"):
        embed = SpatialEmbedder(SpatialConfig(model="tf_efficientnet_lite0", weights=None, image_size=SIZE,
                                              device="cpu"))
    assert embed.dim == 1280
    assert "NOT ImageNet features" in caplog.text


def test_inception_resnet_v2_matches_timm_forward_features_and_pooled_head(tmp_path):
    import timm

    torch.manual_seed(0)
    full = timm.create_model("inception_resnet_v2", pretrained=False).eval()  # random, with its classifier
    path = tmp_path / "irv2.safetensors"
    safetensors.torch.save_file(full.state_dict(), path)
    size = 96  # small input keeps the CPU pass quick; the pooled embedding size does not depend on it
    embed = SpatialEmbedder(SpatialConfig(model="inception_resnet_v2", weights=str(path), image_size=size,
                                          device="cpu"))
    assert embed.dim == 1536  # the paper's frame embedding size
    assert embed.mean.flatten().tolist() == [127.5] * 3  # normalised with timm's 0.5/0.5 for this model
    images = np.random.default_rng(2).integers(0, 256, (2, size, size, 3), dtype=np.uint8)
    x = (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.5
    with torch.inference_mode():
        expected = full.forward_head(full.forward_features(x), pre_logits=True)
    assert expected.shape == (2, 1536)
    np.testing.assert_allclose(embed(images), expected.numpy(), atol=1e-4, rtol=1e-4)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_amp_is_close_to_cpu_float32(lite0):
    cuda = SpatialEmbedder(SpatialConfig(model="tf_efficientnet_lite0", weights="package:efficientnet_lite0",
                                         image_size=SIZE, device="cuda", amp=True))
    images = _images(4)
    cpu, gpu = lite0(images), cuda(images)
    cosine = (cpu * gpu).sum(1) / np.linalg.norm(cpu, axis=1) / np.linalg.norm(gpu, axis=1)
    assert cosine.min() > 0.99

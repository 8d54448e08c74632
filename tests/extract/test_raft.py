"""The RAFT wrapper against torchvision's raft_small / raft_large with the same (seeded random) state dict."""

import numpy as np
import pytest
import torch
from torchvision.models.optical_flow import raft_large, raft_small

from multistream.config import FlowConfig
from multistream.extract.flow.raft import RAFTFlow


@pytest.mark.parametrize("backend,build", [("raft_small", raft_small), ("raft_large", raft_large)])
def test_wrapper_matches_torchvision(tmp_path, backend, build):
    torch.manual_seed(0)
    reference = build(weights=None, progress=False).eval()
    path = tmp_path / f"{backend}.pth"
    torch.save(reference.state_dict(), path)
    flow = RAFTFlow(FlowConfig(backend=backend, weights=str(path), device="cpu"))
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (2, 128, 128, 3), dtype=np.uint8)  # 128 px, multiples of 8: no padding
    ours = flow(frames)
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 127.5 - 1.0  # torchvision's Raft transforms
    with torch.inference_mode():
        expected = reference(x[:-1], x[1:])[-1].permute(0, 2, 3, 1).numpy()
    assert ours.shape == (1, 128, 128, 2)
    np.testing.assert_allclose(ours, expected, atol=1e-4, rtol=1e-4)


def test_missing_weights_are_refused():
    with pytest.raises(ValueError, match="flow.weights: backend raft_small needs RAFT weights"):
        RAFTFlow(FlowConfig(backend="raft_small", weights=None, device="cpu"))

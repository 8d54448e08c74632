"""A flow backend is one registry entry: the config accepts its name and the per-video processor uses it."""

import numpy as np
import pytest

from multistream.config import ConfigError, load_config
from multistream.extract.flow import BACKENDS, FlowBackend, register
from multistream.extract.flow.codec import quantize

SMALL = ["flow.size=[64, 48]", "spatial.image_size=32", "sampling.max_seq_len=8", "sampling.segments=4",
         "spatial.device=cpu", "audio.device=cpu"]


class ShiftFlow:
    """A toy backend in plain NumPy: every pixel of every pair moves (dx, dy) = (clip_px / 10, 0) pixels."""

    built: list["ShiftFlow"] = []

    def __init__(self, cfg, threads=None):
        self.dx, self.pairs = cfg.clip_px / 10, 0
        ShiftFlow.built.append(self)

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        self.pairs += len(frames) - 1
        flow = np.zeros((len(frames) - 1, *frames.shape[1:3], 2), np.float32)
        flow[..., 0] = self.dx
        return flow


@pytest.fixture
def shift_backend():
    ShiftFlow.built.clear()
    register(FlowBackend("shift", ShiftFlow))
    yield "shift"
    BACKENDS.pop("shift")


def test_an_unregistered_name_is_refused_by_the_config():
    with pytest.raises(ConfigError, match="flow.backend: 'shift' is not one of dis, farneback"):
        load_config(overrides=["flow.backend=shift"])


def test_a_registered_backend_is_accepted_and_computes_the_processors_flow(tmp_path, shift_backend):
    from multistream.dataset.manifest import VideoEntry
    from multistream.extract.processor import VideoProcessor
    from tests.support.helpers import write_test_video

    cfg = load_config(overrides=[*SMALL, f"flow.backend={shift_backend}", "flow.clip_px=20"])
    assert cfg.flow.backend == "shift"
    video = write_test_video(tmp_path / "v.mp4", frames=20, size=(128, 48), audio_tone_hz=300)
    row = VideoProcessor(cfg, threads=1)(VideoEntry("v.mp4", str(video), "walk", "train"))
    assert row["video"]["status"] == "ok", row["video"]["error"]
    [estimator] = ShiftFlow.built
    assert estimator.pairs == 19
    assert row["flow"].shape == (19, 48, 64, 2)
    assert (row["flow"][..., 0] == quantize(np.float32(2.0), 20.0)).all()
    assert (row["flow"][..., 1] == quantize(np.float32(0.0), 20.0)).all()
    # 2 px at the 64-px-wide flow size are 4 px of the 128-px-wide video
    np.testing.assert_allclose(row["magnitudes"], 4.0, rtol=1e-6)


def test_a_backend_reads_flow_weights_and_flow_device_only_if_its_entry_says_so(shift_backend):
    from multistream.extract.processor import check_gpu_placement
    from multistream.weights.sources import weight_keys

    cfg = load_config(overrides=[f"flow.backend={shift_backend}", "flow.weights=w.pth", "flow.device=cuda"])
    assert ("flow.weights", "w.pth") not in weight_keys(cfg)
    assert check_gpu_placement(cfg) == []  # a CPU backend: flow.device is unused
    register(FlowBackend("shift_gpu", ShiftFlow, weights={}, gpu=True))
    try:
        gpu = load_config(overrides=["flow.backend=shift_gpu", "flow.weights=w.pth", "ray.fused=null"])
        assert ("flow.weights", "w.pth") in weight_keys(gpu)
        assert check_gpu_placement(gpu) == [
            "flow.backend=shift_gpu runs on the CPU: ray.decode.num_gpus is 0, so its actors are given no GPU"]
    finally:
        BACKENDS.pop("shift_gpu")

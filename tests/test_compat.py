"""The compatibility step makes timm/torchvision/torchaudio work on this machine's CPU torch."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

import multistream  # noqa: F401  (applies multistream.compat)


def test_imports_and_transforms_work():
    import timm
    import torchaudio
    import torchvision
    from torchvision.models.optical_flow import raft_small
    from torchvision.transforms import v2

    mel = torchaudio.transforms.MelSpectrogram(sample_rate=16000, n_fft=512, hop_length=160, n_mels=64)(torch.randn(16000))
    assert mel.shape == (64, 101) and torch.isfinite(mel).all()
    assert timm.create_model("resnet18", pretrained=False, num_classes=0).num_features == 512
    assert raft_small().__class__.__name__ == "RAFT"
    assert v2.Resize((8, 8))(torch.zeros(3, 16, 16)).shape == (3, 8, 8)
    assert torchvision.__version__


def test_torchaudio_fallback_matches_numpy_resample():
    import torchaudio.functional as F

    tone = torch.sin(2 * torch.pi * 440 * torch.arange(48000) / 48000)
    down = F.resample(tone, 48000, 16000)
    spectrum = np.abs(np.fft.rfft(down.numpy()))
    assert down.shape == (16000,) and abs(np.argmax(spectrum) - 440) <= 1


def test_fresh_interpreter_imports_in_any_order():
    # Ray workers import the package first too; nothing may depend on a previous import.
    code = "import multistream, torchaudio, timm, torchvision; print(multistream.compat.status())"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_decode_and_write_stages_never_import_torch():
    # Their actors start faster without it; torchvision/torchaudio are prepared only when first imported.
    demo_config = Path(__file__).parents[1] / "configs" / "demo.yaml"
    code = ("import sys; from multistream.config import load_config; from multistream.ray import extract; "
            f"cfg = load_config({str(demo_config)!r}, []); extract.DecodeStage(cfg); extract.WriteStage(cfg); "
            "assert 'torch' not in sys.modules, 'torch imported'; "
            "import timm, torchaudio; from multistream import compat; print(compat.status())")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "torchvision_stub" in result.stdout

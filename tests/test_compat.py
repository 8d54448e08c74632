"""The compatibility step makes timm and torchvision work beside a CPU torch build."""

import subprocess
import sys
from pathlib import Path

import torch

import multistream  # noqa: F401  (applies multistream.compat)


def test_imports_and_transforms_work():
    import timm
    import torchvision
    from torchvision.models.optical_flow import raft_small
    from torchvision.transforms import v2

    assert timm.create_model("resnet18", pretrained=False, num_classes=0).num_features == 512
    assert raft_small().__class__.__name__ == "RAFT"
    assert v2.Resize((8, 8))(torch.zeros(3, 16, 16)).shape == (3, 8, 8)
    assert torchvision.__version__


def test_fresh_interpreter_imports_in_any_order():
    # Ray workers import the package first too; nothing may depend on a previous import.
    code = "import multistream, timm, torchvision; print(multistream.compat.status())"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_the_decode_stage_and_the_commit_tasks_never_import_torch():
    # Their actors and tasks start faster without it; torchvision is prepared only when first imported.
    demo_config = Path(__file__).parents[1] / "configs" / "demo.yaml"
    code = ("import sys; from multistream.config import load_config; from multistream.ray import extract, commit; "
            f"cfg = load_config({str(demo_config)!r}, []); extract.DecodeStage(cfg); "
            "assert 'torch' not in sys.modules, 'torch imported'; "
            "import timm; from multistream import compat; print(compat.status())")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "torchvision_stub" in result.stdout

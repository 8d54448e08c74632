"""The model bundle without Ray: what it records, how it refuses a broken bundle or a contradicting --set."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from multistream.config import Config
from multistream.predict.bundle import (
    FORMAT_VERSION,
    BundleError,
    check_overrides,
    extraction_settings,
    model_names,
    open_bundle,
    state_sha256,
    write_bundle,
)
from multistream.store import layout, modelio

CLASSES = ["a", "b", "c"]


def fake_run(root, cfg: Config):
    """A run root whose models/ holds a small model in every folder a bundle needs."""
    run = layout.RunRoot(str(root))
    for i, name in enumerate(model_names()):
        meta = {"classes": CLASSES}
        if name == layout.MOTION_CNN:
            meta["flow_size"] = list(cfg.flow.size)
        if name == layout.SVM:
            meta["streams"] = ["spatial", "temporal", "audio"]
        modelio.save_model(run.model(name), {"w": np.full((2, 3), i, np.float32)}, meta)
    return run


@pytest.fixture
def weights(tmp_path):
    path = tmp_path / "backbone.safetensors"
    save_file({"conv.weight": torch.ones(4, 3)}, str(path))
    return path


@pytest.fixture
def cfg(weights):
    return Config().replace(**{"spatial.weights": str(weights), "flow.size": [64, 48]})


def test_bundle_records_settings_weights_and_every_model_file(tmp_path, cfg, weights):
    run = fake_run(tmp_path / "run", cfg)
    uri = write_bundle(run.uri, cfg)
    assert uri == run.bundle
    manifest = json.loads(open(uri).read())
    assert manifest["format"] == FORMAT_VERSION and manifest["classes"] == CLASSES
    assert manifest["streams"] == ["spatial", "temporal", "audio"]
    assert set(manifest["files"]) == {f"{name}/{file}" for name in model_names()
                                      for file in (modelio.WEIGHTS_FILE, modelio.META_FILE)}
    assert manifest["extraction"]["flow"]["size"] == [64, 48]
    assert "device" not in manifest["extraction"]["spatial"] and "batch_size" not in manifest["extraction"]["flow"]
    assert manifest["weights"] == {"spatial.weights": {"source": str(weights),
                                                       "sha256": state_sha256({"conv.weight": torch.ones(4, 3)})}}
    bundle = open_bundle(run.uri)
    assert bundle.classes == CLASSES and bundle.uri == run.models
    assert open_bundle(run.models).manifest == open_bundle(run.bundle).manifest == bundle.manifest
    bundle.check_weights(bundle.config(Config()))


def test_bundle_written_again_only_when_it_changes(tmp_path, cfg):
    run = fake_run(tmp_path / "run", cfg)
    first = open(write_bundle(run.uri, cfg)).read()
    assert open(write_bundle(run.uri, cfg)).read() == first
    modelio.save_model(run.model(layout.SVM), {"w": np.zeros(3, np.float32)},
                       {"classes": CLASSES, "streams": ["spatial"]})
    assert json.loads(open(write_bundle(run.uri, cfg)).read())["streams"] == ["spatial"]


def test_missing_model_or_other_flow_size_refuses_to_bundle(tmp_path, cfg):
    run = fake_run(tmp_path / "run", cfg)
    with pytest.raises(BundleError, match=r"flow.size=\[64, 48\].*says \[320, 240\]"):
        write_bundle(run.uri, cfg.replace(**{"flow.size": [320, 240]}))
    for path in (tmp_path / "run" / "models" / "autoencoder").iterdir():
        path.unlink()
    with pytest.raises(BundleError, match="has no autoencoder"):
        write_bundle(run.uri, cfg)


def test_missing_and_altered_files_are_named_in_one_error(tmp_path, cfg):
    run = fake_run(tmp_path / "run", cfg)
    write_bundle(run.uri, cfg)
    (tmp_path / "run" / "models" / "rnn_audio" / modelio.WEIGHTS_FILE).unlink()
    meta = tmp_path / "run" / "models" / "svm" / modelio.META_FILE
    meta.write_text(meta.read_text().replace('"a"', '"z"'))
    with pytest.raises(BundleError) as error:
        open_bundle(run.uri)
    message = str(error.value)
    assert "rnn_audio/model.safetensors is missing" in message and "svm/model.json was altered" in message


def test_other_format_version_and_no_bundle_are_refused(tmp_path, cfg):
    with pytest.raises(BundleError, match="no model bundle"):
        open_bundle(str(tmp_path / "nothing"))
    run = fake_run(tmp_path / "run", cfg)
    manifest = json.loads(open(write_bundle(run.uri, cfg)).read())
    with open(run.bundle, "w") as f:
        json.dump(manifest | {"format": FORMAT_VERSION + 1}, f)
    with pytest.raises(BundleError, match=f"bundle format {FORMAT_VERSION + 1}.*reads format {FORMAT_VERSION}"):
        open_bundle(run.uri)


def test_changed_pretrained_weights_are_refused(tmp_path, cfg, weights):
    bundle = open_bundle(write_bundle(fake_run(tmp_path / "run", cfg).uri, cfg))
    save_file({"conv.weight": torch.zeros(4, 3)}, str(weights))
    with pytest.raises(BundleError, match="spatial.weights .* now holds other weights"):
        bundle.check_weights(bundle.config(Config()))


def test_bundle_settings_replace_the_config_and_a_contradicting_set_is_refused(tmp_path, cfg):
    bundle = open_bundle(write_bundle(fake_run(tmp_path / "run", cfg).uri, cfg))
    applied = bundle.config(Config(), ["flow.size=[64, 48]", "ray.num_cpus=4", "spatial.device=cpu"])
    assert applied.flow.size == (64, 48) and applied.spatial.weights == cfg.spatial.weights
    assert extraction_settings(applied) == extraction_settings(cfg)
    with pytest.raises(BundleError, match=r"--set flow.size=\[112, 84\] contradicts .* flow.size=\[64, 48\]"):
        bundle.config(Config(), ["flow.size=[112, 84]"])
    with pytest.raises(BundleError, match="spatial.model=resnet18 contradicts"):
        bundle.config(Config(), ["spatial.model=resnet18"])
    with pytest.raises(BundleError, match="rnn.hidden is a training setting"):
        bundle.config(Config(), ["rnn.hidden=64"])


def test_check_overrides_compares_typed_values():
    settings = extraction_settings(Config())
    check_overrides(settings, ["video.max_seconds=36", "flow={backend: dis, device: cpu}", "ray.fused=null",
                               "spatial.batch_size=8", "motion_cnn.embed_batch_size=4", "paths.output=x"])
    with pytest.raises(BundleError, match="flow=.*contradicts"):
        check_overrides(settings, ["flow={backend: farneback}"])

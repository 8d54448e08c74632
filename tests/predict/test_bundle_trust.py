"""What a model bundle must hold before anything is loaded from it, what loading checks, where predict may write,
and what of a weights URL it keeps."""

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch

from multistream.config import Config
from multistream.predict.bundle import Bundle, BundleError, expected_files, open_bundle, write_bundle
from multistream.predict.models import Classifier, Detector, TemporalEmbedder, VideoEmbedder
from multistream.store import layout, modelio
from tests.predict.test_bundle import fake_run
from tests.support.weights_server import WeightsServer


@pytest.fixture
def cfg(tmp_path):
    path = tmp_path / "backbone.safetensors"
    safetensors.torch.save_file({"conv.weight": torch.ones(4, 3)}, str(path))
    return Config().replace(**{"spatial.weights": str(path), "flow.size": [64, 48]})


@pytest.fixture
def sealed(tmp_path, cfg) -> Path:
    run = fake_run(tmp_path / "run", cfg)
    write_bundle(run.uri, cfg)
    return tmp_path / "run"


def _rewrite(run: Path, change) -> None:
    path = run / "models" / layout.BUNDLE_FILE
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))


def _refused(run: Path, *fragments: str) -> str:
    with pytest.raises(BundleError) as error:
        open_bundle(str(run))
    for fragment in fragments:
        assert fragment in str(error.value), str(error.value)
    return str(error.value)


def test_a_bundle_lists_exactly_the_expected_files(sealed):
    assert sorted(open_bundle(str(sealed)).manifest["files"]) == sorted(expected_files())
    _rewrite(sealed, lambda m: m.update(files={}))
    _refused(sealed, "lists no motion_cnn/model.safetensors", "lists no autoencoder/model.json")


def test_a_missing_key_an_extra_file_or_a_short_hash_is_refused(sealed):
    files = json.loads((sealed / "models" / layout.BUNDLE_FILE).read_text())["files"]
    _rewrite(sealed, lambda m: m["files"].pop("svm/model.json"))
    _refused(sealed, "lists no svm/model.json")
    _rewrite(sealed, lambda m: m.update(files=files | {"svm/extra.bin": "0" * 64}))
    _refused(sealed, "lists 'svm/extra.bin', which is no model file of a bundle")
    _rewrite(sealed, lambda m: m.update(files=files | {"svm/model.json": files["svm/model.json"][:8]}))
    _refused(sealed, "svm/model.json: sha256", "is not 64 lowercase hex digits")


@pytest.mark.parametrize("key", ["../../dev/zero", "/etc/passwd", "svm/../../../x", "s3://bucket/key",
                                 "svm\\model.json", "./svm/model.json", "svm//model.json", "", "svm/model.json\0",
                                 "~/x", "file:///etc/passwd", "svm/ model.json"])
def test_keys_outside_models_are_refused_before_any_read(sealed, key, monkeypatch):
    from multistream.store import storage

    reads = []
    real = storage.read_bytes
    monkeypatch.setattr(storage, "read_bytes", lambda uri: reads.append(uri) or real(uri))
    _rewrite(sealed, lambda m: m["files"].update({key: "0" * 64}))
    _refused(sealed, f"file key {key!r} is not a plain path relative to models/")
    assert not [uri for uri in reads if not uri.endswith(layout.BUNDLE_FILE)]


@pytest.mark.parametrize("change, fragment", [
    (lambda m: m.update(streams=["../../x"]), "are not distinct streams"),
    (lambda m: m.update(streams=[]), "are not distinct streams"),
    (lambda m: m.update(streams=["spatial", "spatial"]), "are not distinct streams"),
    (lambda m: m.update(models=["svm"]), "models ['svm']"),
    (lambda m: m.update(classes=[]), "classes must be"),
    (lambda m: m.update(files=[]), "files must map"),
    (lambda m: m.update(extraction={"flow": {}}), "extraction must hold the settings of video, flow"),
    (lambda m: m["extraction"].update(flow=[1]), "extraction must hold"),
    (lambda m: m.update(weights={"spatial.weights": {"source": "x", "sha256": "abc"}}), "weights must map"),
    (lambda m: m.update(weights={"paths.output": {"source": "x", "sha256": "0" * 64}}), "weights must map"),
])
def test_hostile_manifest_fields_are_refused(sealed, change, fragment):
    _rewrite(sealed, change)
    _refused(sealed, fragment)


def test_only_a_weights_key_the_bundle_pins_by_content_may_point_elsewhere(sealed, tmp_path):
    bundle = open_bundle(str(sealed))
    copy = tmp_path / "copy.safetensors"
    safetensors.torch.save_file({"conv.weight": torch.ones(4, 3)}, str(copy))
    applied = bundle.config(Config().replace(**{"spatial.weights": str(copy)}), [f"spatial.weights={copy}"])
    assert applied.spatial.weights == str(copy)
    bundle.check_weights(applied)  # the same tensors from another file
    with pytest.raises(BundleError, match="audio.weights=.* contradicts the model bundle"):
        bundle.config(Config(), [f"audio.weights={copy}"])  # trained without: no content to check it against


def test_a_model_altered_after_opening_is_refused_at_load(sealed):
    bundle = open_bundle(str(sealed))
    svm = sealed / "models" / "svm"
    with bundle.verified():
        tensors, meta = modelio.load_model(str(svm))  # listed and intact: loads
    assert meta["classes"] == ["a", "b", "c"]
    modelio.save_model(str(svm), {"w": np.full((2, 3), 9, np.float32)}, meta)  # a fuse rewriting the run
    for load in (lambda: Classifier(bundle), lambda: modelio.load_model(str(svm))):
        with pytest.raises(BundleError, match=r"svm/model.safetensors changed after the bundle was sealed"):
            with bundle.verified():
                load()
    assert modelio.load_model(str(svm))[1] == meta  # outside a bundle nothing is checked


def test_every_loader_checks_the_bytes_it_reads(sealed):
    bundle = open_bundle(str(sealed))
    for name in layout.MOTION_CNN, layout.rnn_name("spatial"), layout.AUTOENCODER:
        meta = sealed / "models" / name / modelio.META_FILE
        meta.write_text(meta.read_text().replace('"a"', '"q"'))
    for make in (lambda: TemporalEmbedder(bundle, "cpu"), lambda: VideoEmbedder(bundle, "cpu"),
                 lambda: Detector(bundle, "cpu")):
        with pytest.raises(BundleError, match="model.json changed after the bundle was sealed"):
            make()


def test_a_model_file_that_is_no_regular_file_is_never_read(sealed):
    weights = sealed / "models" / "svm" / modelio.WEIGHTS_FILE
    intact = weights.read_bytes()
    weights.unlink()
    weights.symlink_to("/dev/zero")  # read whole, it would never end
    _refused(sealed, "svm/model.safetensors is not a regular file")
    weights.unlink()
    weights.write_bytes(intact)
    bundle = open_bundle(str(sealed))
    weights.unlink()
    weights.symlink_to("/dev/zero")
    with pytest.raises(BundleError, match="svm/model.safetensors is not a regular file: not read"):
        Classifier(bundle)


def test_a_manifest_that_is_no_json_object_is_refused(sealed):
    path = sealed / "models" / layout.BUNDLE_FILE
    for text in ("[" * 100_000, "\"x\"", "{", "\xff"):
        path.write_bytes(text.encode("latin-1"))
        with pytest.raises(BundleError):
            open_bundle(str(sealed))


def test_a_model_the_bundle_does_not_list_is_refused(sealed):
    bundle = open_bundle(str(sealed))
    files = dict(bundle.manifest["files"])
    files.pop("svm/model.safetensors")
    partial = Bundle(bundle.uri, bundle.manifest | {"files": files})
    with pytest.raises(BundleError, match=r"svm/model.safetensors is not listed in the model bundle"):
        Classifier(partial)


def test_weights_urls_are_stored_redacted_and_a_fresh_token_may_be_given(tmp_path, cfg, monkeypatch, caplog):
    caplog.set_level(logging.INFO)
    monkeypatch.setenv("MULTISTREAM_CACHE", str(tmp_path / "cache"))
    data = safetensors.torch.save({"conv.weight": torch.ones(4, 3)})
    sha = hashlib.sha256(data).hexdigest()
    with WeightsServer() as server:
        server.files["/w.safetensors"] = data
        url = f"{server.url}/w.safetensors?token=TOKENSECRET1"
        trained = cfg.replace(**{"spatial.weights": f"{url}#sha256={sha}"})
        run = fake_run(tmp_path / "run", trained)
        text = Path(write_bundle(run.uri, trained)).read_text()
        assert "TOKENSECRET1" not in text and "token=" not in text
        bundle = open_bundle(run.uri)
        assert bundle.manifest["weights"]["spatial.weights"]["source"].startswith(
            f"{server.url}/w.safetensors#sha256={sha}&cached=")
        bundle.check_weights(bundle.config(Config()))  # the cached copy on this machine
        monkeypatch.setenv("MULTISTREAM_CACHE", str(tmp_path / "other-node"))
        settings = json.loads(Path(run.bundle).read_text())
        settings["extraction"]["spatial"]["weights"] = f"{server.url}/w.safetensors#sha256={sha}"  # no copy
        Path(run.bundle).write_text(json.dumps(settings))
        bundle = open_bundle(run.uri)
        fresh = f"spatial.weights={server.url}/w.safetensors?token=TOKENSECRET2"
        applied = bundle.config(Config().replace(**{"spatial.weights": fresh.partition("=")[2]}), [fresh])
        assert applied.spatial.weights == f"{fresh.partition('=')[2]}#sha256={sha}"  # the bundle's pin carried
        bundle.check_weights(applied)
        server.files["/other.safetensors"] = safetensors.torch.save({"conv.weight": torch.zeros(4, 3)})
        other = f"spatial.weights={server.url}/other.safetensors?token=TOKENSECRET3"
        applied = bundle.config(Config().replace(**{"spatial.weights": other.partition("=")[2]}), [other])
        with pytest.raises(Exception, match="sha256 mismatch|now holds other weights") as error:
            bundle.check_weights(applied)
        assert "TOKENSECRET3" not in str(error.value)
    assert not any("TOKENSECRET" in record.getMessage() for record in caplog.records)


class _Started(Exception):
    pass


def test_predict_refuses_an_output_at_or_under_the_trained_run(sealed, tmp_path, monkeypatch, capsys):
    from multistream.jobs import predict as job

    def started(*args, **kwargs):
        raise _Started

    monkeypatch.setattr(job, "start_job", started)  # past the guard: stop before any work
    (tmp_path / "link").symlink_to(sealed)
    inside = [str(sealed), f"{sealed}/", f"file://{sealed}", f"file://{sealed}/", f"{sealed}/new",
              f"{sealed}/models", f"{sealed}/models/../x", str(tmp_path / "link"), f"file://{tmp_path}/link/new/",
              f"{tmp_path}/other/../run/y"]
    for output in inside:
        with pytest.raises(SystemExit) as exit_:
            job.main(["--models", str(sealed), "--input", str(tmp_path), "--output", output])
        assert exit_.value.code == 2, output
        assert "or a folder in it: give a run root outside it" in capsys.readouterr().err
    for models in (f"file://{tmp_path}/link/", f"{sealed}/models/bundle.json"):
        with pytest.raises(SystemExit):
            job.main(["--models", models, "--input", str(tmp_path), "--output", f"{sealed}/out"])
        assert "or a folder in it" in capsys.readouterr().err
    for output in (str(tmp_path / "run2"), str(tmp_path / "predict"), str(tmp_path)):
        with pytest.raises(_Started):
            job.main(["--models", str(sealed), "--input", str(tmp_path), "--output", output])

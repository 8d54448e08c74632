"""Weights sources over real HTTP on 127.0.0.1: verified, cached once, safe to fetch from many processes."""

import hashlib
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch

from multistream.config import AudioConfig, FlowConfig, SpatialConfig, load_config
from multistream.weights import WeightsError, load_pca_params, load_state_dict, resolve_all
from multistream.weights.fetch import expected_hash, split_spec
from multistream.weights.prepare import main as weights_main
from multistream.weights.sources import VGGISH_PCA_URL, VGGISH_URL, expand, published_sha256
from tests.support.helpers import ROOT, run_job_main, write_test_video


def _state(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"layer.weight": torch.randn(64, 32, generator=g), "layer.bias": torch.randn(64, generator=g)}


def _safetensors(state) -> bytes:
    return safetensors.torch.save(state)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _files(root: Path) -> list[str]:
    """Files under the cache except the lock files (empty, left for the next process to take)."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and p.parent.name != "locks")


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_download_is_verified_and_cached_once(server, cache):
    data = _safetensors(_state())
    server.files["/once/w.safetensors"] = data
    spec = f"{server.url}/once/w.safetensors#sha256={_sha(data)}"
    _assert_same(load_state_dict(spec), _state())
    _assert_same(load_state_dict(spec), _state())
    assert server.hits["/once/w.safetensors"] == 1
    assert [p for p in _files(cache) if p.endswith(".safetensors")] != []


def test_wrong_hash_stops_and_caches_nothing(server, cache):
    data = _safetensors(_state())
    server.files["/wrong/w.safetensors"] = data
    wrong = _sha(data[::-1])
    with pytest.raises(WeightsError, match=f"spatial.weights=.*/wrong/w.safetensors.*sha256 mismatch.*{wrong}"):
        load_state_dict(f"{server.url}/wrong/w.safetensors#sha256={wrong}", "spatial.weights")
    assert _files(cache) == []


def test_cut_connection_and_http_errors_cache_nothing(server, cache):
    data = _safetensors(_state(1))
    server.files["/cut/w.safetensors"] = data
    server.cut.add("/cut/w.safetensors")
    pin = f"#sha256={_sha(data)}"
    with pytest.raises(WeightsError, match=r"/cut/w.safetensors: connection closed after \d+ of \d+ bytes"):
        load_state_dict(f"{server.url}/cut/w.safetensors{pin}")
    with pytest.raises(WeightsError, match="/missing.safetensors: HTTP 404"):
        load_state_dict(f"{server.url}/missing.safetensors{pin}")
    with pytest.raises(WeightsError, match="download failed"):
        load_state_dict(f"http://127.0.0.1:9/w.safetensors{pin}")  # nothing listens on the discard port
    assert _files(cache) == []


def test_named_defaults_are_checked_against_their_published_hash_prefix(server, cache, monkeypatch):
    """A named default whose publisher gives only the 8-hex-digit prefix in its torch-hub name is checked against
    it; the same URL given by hand needs the full sha256."""
    from multistream.weights import sources

    buffer = io.BytesIO()
    torch.save(_state(2), buffer)
    data = buffer.getvalue()
    server.files[f"/hub/w-{_sha(data)[:8]}.pth"] = data
    server.files["/hub/w-0badc0de.pth"] = data
    monkeypatch.setattr(sources, "VGGISH_URL", f"{server.url}/hub/w-{_sha(data)[:8]}.pth")
    _assert_same(load_state_dict("torchvggish", "audio.weights"), _state(2))
    monkeypatch.setattr(sources, "VGGISH_URL", f"{server.url}/hub/w-0badc0de.pth")
    with pytest.raises(WeightsError, match="sha256 mismatch.*expected 0badc0de"):
        load_state_dict("torchvggish", "audio.weights")
    with pytest.raises(WeightsError, match=r"not pinned: add #sha256=<the file's full sha256, 64 hex digits>"):
        load_state_dict(f"{server.url}/hub/w-{_sha(data)[:8]}.pth", "audio.weights")
    with pytest.raises(WeightsError, match=r"full sha256, 64 hex digits"):
        load_state_dict(f"{server.url}/hub/w.pth#sha256={_sha(data)[:8]}", "audio.weights")
    assert published_sha256("https://h/models/other_C_T_V2-01064c6d.pth") == "01064c6d"
    assert expected_hash(*split_spec(f"https://h/w.pth#sha256={'Ab' * 32}")) == "ab" * 32


_CHILD = """
import sys, time, pathlib
from multistream.weights.fetch import download, split_spec, expected_hash
ready, go, spec = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), sys.argv[3]
ready.touch()
while not go.exists():
    time.sleep(0.01)
url, options = split_spec(spec)
path, sha = download(url, expected_hash(url, options))
print(path, sha)
"""


def test_concurrent_processes_download_once(server, cache, tmp_path):
    data = os.urandom(1 << 20)
    server.files["/many/w.bin"] = data
    server.delay_s = 0.05  # 16 chunks: ~0.8 s in flight while the others ask for it
    spec = f"{server.url}/many/w.bin#sha256={_sha(data)}"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    children = [subprocess.Popen([sys.executable, "-c", _CHILD, str(tmp_path / f"ready{i}"), str(tmp_path / "go"),
                                  spec], stdout=subprocess.PIPE, text=True, env=env) for i in range(3)]
    try:
        deadline = time.monotonic() + 120
        while not all((tmp_path / f"ready{i}").exists() for i in range(3)) and time.monotonic() < deadline:
            time.sleep(0.05)
        (tmp_path / "go").touch()
        outputs = [child.communicate(timeout=120)[0].split() for child in children]
    finally:
        server.delay_s = 0.0
    assert [child.returncode for child in children] == [0, 0, 0]
    assert len({tuple(out) for out in outputs}) == 1 and outputs[0][1] == _sha(data)
    assert Path(outputs[0][0]).read_bytes() == data
    assert server.hits["/many/w.bin"] == 1


def _torchvggish_pca_file(eigen: np.ndarray, means: np.ndarray) -> bytes:
    """A .pth in the format of torchvggish's vggish_pca_params-970ea276.pth: numpy arrays in torch's legacy
    (non-zip) format, pickled under numpy 1's module name `numpy.core.multiarray`."""
    buffer = io.BytesIO()
    torch.save({"pca_eigen_vectors": eigen, "pca_means": means}, buffer, _use_new_zipfile_serialization=False)
    data = buffer.getvalue()
    assert b"numpy._core.multiarray\n_reconstruct" in data
    return data.replace(b"numpy._core.multiarray\n_reconstruct", b"numpy.core.multiarray\n_reconstruct")


class Evil:
    def __reduce__(self):
        return (os.system, ("echo unpickled > /dev/null",))


def test_numpy_pca_params_load_and_objects_are_refused(tmp_path, cache, server):
    rng = np.random.default_rng(0)
    eigen, means = rng.normal(size=(128, 128)), rng.normal(size=128)
    data = _torchvggish_pca_file(eigen, means)
    server.files["/pca/vggish_pca_params.pth"] = data
    matrix, mu = load_pca_params(f"{server.url}/pca/vggish_pca_params.pth#sha256={_sha(data)}")
    np.testing.assert_allclose(matrix.numpy(), eigen, rtol=1e-6)
    np.testing.assert_allclose(mu.numpy(), means, rtol=1e-6)
    assert matrix.dtype == mu.dtype == torch.float32
    torch.save({"pca_eigen_vectors": eigen.astype(np.float32), "pca_means": means}, tmp_path / "new.pth")
    np.testing.assert_allclose(load_pca_params(str(tmp_path / "new.pth"))[0].numpy(), eigen, rtol=1e-6)
    torch.save({"pca_eigen_vectors": Evil()}, tmp_path / "evil.pth")
    with pytest.raises(ValueError, match="not a loadable state dict"):
        load_state_dict(str(tmp_path / "evil.pth"))
    torch.save({"w": np.array([{"a": 1}], dtype=object)}, tmp_path / "objects.pth")
    with pytest.raises(ValueError, match="not a loadable state dict|not numeric"):
        load_state_dict(str(tmp_path / "objects.pth"))


def test_hf_hub_through_huggingface_hub(server, cache, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    data = _safetensors(_state(3))
    server.hub[("org/tiny", "model.safetensors")] = data
    pin = f"#sha256={_sha(data)}"
    _assert_same(load_state_dict(f"hf-hub:org/tiny{pin}"), _state(3))
    _assert_same(load_state_dict(f"hf-hub:org/tiny@main{pin}"), _state(3))
    assert server.hits["/org/tiny/resolve/main/model.safetensors"] == 1
    with pytest.raises(WeightsError, match="hf-hub:org/tiny: not pinned: add #sha256="):
        load_state_dict("hf-hub:org/tiny")
    with pytest.raises(WeightsError, match="sha256 mismatch"):
        load_state_dict(f"hf-hub:org/tiny#sha256={_sha(b'other')}")
    server.hub[("org/liar", "model.safetensors")] = data
    server.hub_etag[("org/liar", "model.safetensors")] = _sha(b"something else")
    with pytest.raises(WeightsError, match="hf-hub:org/liar: sha256 mismatch"):
        load_state_dict(f"hf-hub:org/liar{pin}")
    assert not [p for p in _files(cache) if "liar" in p and "blobs" in p]
    with pytest.raises(WeightsError, match="has none of model.safetensors, pytorch_model.bin"):
        load_state_dict(f"hf-hub:org/empty{pin}")


def test_named_defaults_name_the_publishers_files():
    import timm
    from torchvision.models.optical_flow import Raft_Large_Weights, Raft_Small_Weights

    assert expand("spatial.weights", "timm", SpatialConfig()) == "hf-hub:timm/inception_resnet_v2.tf_in1k"
    lite0 = timm.models.get_pretrained_cfg("tf_efficientnet_lite0").hf_hub_id
    assert expand("spatial.weights", "timm", SpatialConfig(model="tf_efficientnet_lite0")) == f"hf-hub:{lite0}"
    assert expand("audio.weights", "torchvggish", AudioConfig()) == VGGISH_URL
    # every named default is pinned by its full sha256, which extends the prefix its publisher put in its name;
    # the PCA parameters' alone by that prefix
    for url in (VGGISH_URL, Raft_Small_Weights.DEFAULT.url, Raft_Large_Weights.DEFAULT.url):
        full = published_sha256(url)
        assert len(full) == 64 and full.startswith(url.rsplit("-", 1)[1].removesuffix(".pth")), url
    assert published_sha256(VGGISH_PCA_URL) == "970ea276"
    assert expand("audio.pca_params", "torchvggish", AudioConfig()) == VGGISH_PCA_URL
    assert expand("flow.weights", "torchvision", FlowConfig(backend="raft_small")) == Raft_Small_Weights.DEFAULT.url
    assert expand("flow.weights", "torchvision", FlowConfig(backend="raft_large")) == Raft_Large_Weights.DEFAULT.url
    with pytest.raises(WeightsError, match="unknown named weights 'torchvggish' .*known here: timm"):
        expand("spatial.weights", "torchvggish", SpatialConfig())


def test_resolve_all_pins_the_copy_that_actors_read(server, cache, tmp_path, monkeypatch):
    data = _safetensors(_state(4))
    server.files["/pin/w.safetensors"] = data
    cfg = load_config(overrides=[f"spatial.weights={server.url}/pin/w.safetensors#sha256={_sha(data)}",
                                 "audio.postprocess=pca"])
    with pytest.raises(WeightsError, match="audio.postprocess=pca needs audio.pca_params"):
        resolve_all(cfg)
    pinned = resolve_all(cfg.replace(**{"audio.postprocess": "raw"}))
    assert pinned.spatial.weights.startswith(f"{server.url}/pin/w.safetensors#sha256={_sha(data)}&cached=")
    monkeypatch.setenv("MULTISTREAM_CACHE", str(tmp_path / "actor-cache"))  # an actor with another cache
    _assert_same(load_state_dict(pinned.spatial.weights), _state(4))
    assert server.hits["/pin/w.safetensors"] == 1  # read the driver's copy
    for path in cache.rglob("w.safetensors"):
        path.unlink()  # another node: no copy there, so it fetches and checks the same file
    _assert_same(load_state_dict(pinned.spatial.weights), _state(4))
    assert server.hits["/pin/w.safetensors"] == 2
    with pytest.raises(WeightsError, match="not found"):
        resolve_all(load_config(overrides=[f"flow.weights={tmp_path}/none.pth", "flow.backend=raft_small"]))


@pytest.mark.parametrize("where", ["local", "s3"])
def test_prepare_and_verify(server, cache, tmp_path, capsys, where, request):
    rng = np.random.default_rng(1)
    pca = _torchvggish_pca_file(rng.normal(size=(128, 128)), rng.normal(size=128))
    vggish = io.BytesIO()
    torch.save(_state(5), vggish)
    spatial = _safetensors(_state(6))
    server.files.update({"/prep/spatial.safetensors": spatial, "/prep/vggish.pth": vggish.getvalue(),
                         "/prep/pca.pth": pca})
    to = str(tmp_path / "weights") if where == "local" else request.getfixturevalue("s3_bucket") + "/weights/"
    sets = [f"spatial.weights={server.url}/prep/spatial.safetensors#sha256={_sha(spatial)}",
            f"audio.weights={server.url}/prep/vggish.pth#sha256={_sha(vggish.getvalue())}",
            f"audio.pca_params={server.url}/prep/pca.pth#sha256={_sha(pca)}",
            "audio.postprocess=pca_quantized"]
    args = [a for s in sets for a in ("--set", s)]
    assert weights_main(["prepare", *args, "--to", to]) == 0
    overrides = capsys.readouterr().out.strip().splitlines()[-1].split()
    assert overrides[::2] == ["--set"] * 3
    copies = dict(item.split("=", 1) for item in overrides[1::2])
    assert set(copies) == {"spatial.weights", "audio.weights", "audio.pca_params"}
    _assert_same(load_state_dict(copies["spatial.weights"]), _state(6))
    _assert_same(load_state_dict(copies["audio.weights"]), _state(5))
    assert load_pca_params(copies["audio.pca_params"])[0].shape == (128, 128)
    from multistream.store import storage

    manifest = json.loads(storage.read_text(storage.join(to, "weights.json")))["files"]
    assert manifest["spatial.weights"]["source_sha256"] == _sha(spatial)
    assert manifest["audio.pca_params"]["dtypes"] == {"float64": 2} and manifest["audio.weights"]["tensors"] == 2
    assert weights_main(["verify", to]) == 0
    assert weights_main(["fetch", *args]) == 0  # the cache already has every source: pinned lines printed
    assert f"spatial.weights={server.url}/prep/spatial.safetensors#sha256={_sha(spatial)}" in capsys.readouterr().out
    bad = ["--set", f"flow.weights={server.url}/prep/raft-0badc0de.pth", "--set", "flow.backend=raft_small"]
    server.files["/prep/raft-0badc0de.pth"] = vggish.getvalue()
    assert weights_main(["prepare", *args, *bad, "--to", to + "-bad"]) == 2
    assert "flow.weights=" in capsys.readouterr().err and not storage.exists(storage.join(to + "-bad", "weights.json"))
    storage.write_bytes(copies["audio.weights"], _safetensors(_state(7)))
    assert weights_main(["verify", to]) == 1
    assert "audio.weights" in capsys.readouterr().err


@pytest.fixture(scope="module")
def lite0_weights():
    import timm

    torch.manual_seed(0)
    return _safetensors(timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict())


def test_extract_job_fetches_spatial_weights_over_http(server, cache, tmp_path, lite0_weights, ray_session):
    from multistream.store import storage

    inputs = tmp_path / "videos"
    (inputs / "walk").mkdir(parents=True)
    write_test_video(inputs / "walk" / "a.mp4", frames=16, audio_tone_hz=300)
    server.files["/job/w.safetensors"] = lite0_weights
    right = f"spatial.weights={server.url}/job/w.safetensors#sha256={_sha(lite0_weights)}"
    for run in ("one", "two"):
        assert run_job_main("extract", "--input", str(inputs), "--output", str(tmp_path / run), "--set", right) == 0
        assert storage.list_parts(str(tmp_path / run / "videos"))
    assert server.hits["/job/w.safetensors"] == 1  # the second run found it in the cache
    before = _files(cache)
    server.files["/job/other.safetensors"] = lite0_weights
    wrong = f"spatial.weights={server.url}/job/other.safetensors#sha256={_sha(b'not these weights')}"
    with pytest.raises(WeightsError, match="spatial.weights=.*other.safetensors.*sha256 mismatch"):
        run_job_main("extract", "--input", str(inputs), "--output", str(tmp_path / "wrong"), "--set", wrong)
    assert not (tmp_path / "wrong" / "videos").exists()  # stopped before any video
    assert _files(cache) == before

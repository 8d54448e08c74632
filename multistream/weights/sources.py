"""Where the weights a config names come from, and the up-front fetch that pins them for every actor.

A weights value (`spatial.weights`, `audio.weights`, `audio.pca_params`, `flow.weights`) is one of
    a path or fsspec URI   runs/w.safetensors, s3://bucket/raft.pth  (safetensors or a tensors-only state dict)
    an https URL           https://host/w.safetensors#sha256=<the file's full sha256, 64 hex digits>
    a Hugging Face repo    hf-hub:timm/inception_resnet_v2.tf_in1k[@revision]#sha256=<64 hex digits>
    a named default        timm (spatial.weights: the default pretrained tag of `spatial.model`),
                           torchvggish (audio.weights and audio.pca_params: the AudioSet VGGish release),
                           torchvision (flow.weights: the DEFAULT weights of `flow.backend`)
    package:NAME           weights shipped by an installed package (multistream.weights.packaged)

A source given as a URL or a hub repo must be pinned by its full sha256: a URL alone could serve other bytes
tomorrow. A named default is pinned by its full sha256 (`PUBLISHED_SHA256`; the one file whose full hash is not
known here, by the hash prefix in its torch-hub name), and timm's hub repos by the hub's own LFS sha256 (checked
against the download). `resolve_all` then pins each
to the full sha256 of the file it fetched, which actors and bundles use. Downloads are https only
(`multistream.weights.fetch`).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import urllib.parse

import torch

from multistream.extract.flow.registry import BACKENDS, flow_backend, load
from multistream.store import storage
from multistream.store.uris import redact
from multistream.weights.fetch import (
    WeightsError,
    cached_copy,
    configure,
    download,
    expected_hash,
    hf_download,
    hub_name_hash,
    split_spec,
)
from multistream.weights.files import is_weights_file, read_state_dict
from multistream.weights.packaged import PACKAGE_WEIGHTS, load_packaged

log = logging.getLogger(__name__)

_TORCHVGGISH = "https://github.com/harritaylor/torchvggish/releases/download/v0.1/"
VGGISH_URL = _TORCHVGGISH + "vggish-10086976.pth"
VGGISH_PCA_URL = _TORCHVGGISH + "vggish_pca_params-970ea276.pth"
PCA_KEYS = ("pca_eigen_vectors", "pca_means")  # torchvggish's names (vggish_params.PCA_*_NAME)

# The full sha256 of each named default's file, by URL. Their publishers put only the first 8 hex digits in the
# torch-hub file names; the full hashes below extend those prefixes and agree across independent public records of
# the same files (projects that pin them). The PCA parameters' full hash was found in none: that file alone is
# checked against its name's prefix (`published_sha256`). `resolve_all` pins every one to the full sha256 of the
# file fetched. timm's defaults are hub repos, checked against the hub's LFS sha256 (its etag).
RAFT_SMALL_URL = "https://download.pytorch.org/models/raft_small_C_T_V2-01064c6d.pth"
RAFT_LARGE_URL = "https://download.pytorch.org/models/raft_large_C_T_SKHT_V2-ff5fadd5.pth"
PUBLISHED_SHA256: dict[str, str] = {
    VGGISH_URL: "10086976245803799d9194e9a73d9b6c1549c71d1b80106f5cade5608a561f4b",
    RAFT_SMALL_URL: "01064c6dba73b0fc9fc8edf772248560a00a3acfd62ac6677e9eeebad9680e27",
    RAFT_LARGE_URL: "ff5fadd56d26b40647388883af1547351ea17868b765c05b27231e72dd16a322",
}


def _timm_default(section) -> str:
    import timm

    cfg = timm.models.get_pretrained_cfg(section.model)
    if cfg is None:
        raise WeightsError(f"spatial.weights=timm: timm has no pretrained weights for {section.model!r}")
    if cfg.hf_hub_id:
        return f"hf-hub:{cfg.hf_hub_id}"
    if cfg.url:
        return cfg.url
    raise WeightsError(f"spatial.weights=timm: {section.model!r} names no hub repo or URL in timm")


def _flow_default(name: str, section) -> str:
    """flow.weights=`name`: the default that `section.backend`'s registry entry gives under that name."""
    weights = flow_backend(section.backend).weights or {}
    if name not in weights:
        offering = "/".join(b.name for b in BACKENDS.values() if name in (b.weights or {}))
        raise WeightsError(f"flow.weights={name}: flow.backend is {section.backend}, not {offering}")
    return load(weights[name])(section)


NAMED = {
    "spatial.weights": {"timm": _timm_default},
    "audio.weights": {"torchvggish": lambda section: VGGISH_URL},
    "audio.pca_params": {"torchvggish": lambda section: VGGISH_PCA_URL},
}


def named_sources(key: str) -> dict:
    """The named defaults `key` may take: name → function of the config section giving the concrete source.
    flow.weights's are the ones the flow backends' registry entries offer."""
    if key != "flow.weights":
        return NAMED.get(key, {})
    names = {name for backend in BACKENDS.values() for name in backend.weights or {}}
    return {name: functools.partial(_flow_default, name) for name in names}


def published_sha256(url: str) -> str | None:
    """A named default's hash: the full one of PUBLISHED_SHA256, else the prefix its torch-hub name carries."""
    return PUBLISHED_SHA256.get(url) or hub_name_hash(url)


def expand(key: str, spec: str, section=None) -> str:
    """A named default → its concrete source (URL or hf-hub:); any other spec unchanged."""
    named = named_sources(key)
    if spec in named:
        return named[spec](section)
    if spec.isidentifier():  # a bare word is no path anyone means
        known = ", ".join(sorted(named)) or "none"
        raise WeightsError(f"{key}: unknown named weights {spec!r} (known here: {known})")
    return spec


def locate(key: str, spec: str, section=None) -> tuple[str, str | None, str]:
    """(path or URI to read, its sha256 when it was fetched, the pinned spec) for a weights spec.

    Downloads go to the cache (multistream.weights.fetch); paths and URIs are returned as they are. The
    pinned spec names exactly the file fetched (full sha256, hub commit) and the local copy, for the actors:
    they read that copy where it exists (same node) and fetch and check the same file where it does not.
    """
    named = spec in named_sources(key)
    shown = f"{key}={redact(spec)}"
    try:
        source, options = split_spec(expand(key, spec, section))
    except WeightsError as error:
        raise WeightsError(f"{key}={error}") from None
    remote = source.startswith(("http://", "https://", "hf-hub:"))
    if not remote:
        if options:
            raise WeightsError(f"{shown}: #sha256 is for https:// and hf-hub: sources only")
        return source, None, source
    try:
        if source.startswith("http"):
            expected = expected_hash(source, options, published_sha256(source) if named else None)
        elif options.get("sha256") or named:  # a named hub default: the hub's LFS sha256 (hf_download)
            expected = options.get("sha256")
        else:
            raise WeightsError(f"{redact(source)}: not pinned: add #sha256=<the sha256 of the repo's model file, "
                               "64 hex digits> (its LFS object id on the hub's file page)")
    except WeightsError as error:
        raise WeightsError(f"{key}={error}") from None
    cached = options.get("cached")
    try:
        if cached and cached_copy(cached, expected):
            return cached, expected, spec
        if source.startswith("hf-hub:"):
            repo, _, revision = source.removeprefix("hf-hub:").partition("@")
            path, sha, commit = hf_download(repo, revision or None)
            source = f"hf-hub:{repo}@{commit}"
            if expected and not sha.startswith(expected):
                raise WeightsError(f"sha256 mismatch: the file has {sha}, expected {expected}")
        else:
            path, sha = download(source, expected)
    except WeightsError as error:
        raise WeightsError(f"{shown}: {error}") from None
    return str(path), sha, f"{source}#sha256={sha}&cached={urllib.parse.quote(str(path))}"


def load_state_dict(spec: str, key: str = "weights", section=None) -> dict[str, torch.Tensor]:
    """The tensors of any weights spec (see the module docstring), fetched first when it is remote."""
    if spec.startswith("package:"):
        return load_packaged(spec.removeprefix("package:"))
    path, _, _ = locate(key, spec, section)
    return read_state_dict(path)


def load_pca_params(spec: str) -> tuple[torch.Tensor, torch.Tensor]:
    """AudioSet's PCA: (eigen vectors (128, 128) float32, means (128,) float32) from `audio.pca_params`."""
    state = load_state_dict(spec, "audio.pca_params")
    if any(name not in state for name in PCA_KEYS):
        raise ValueError(f"audio.pca_params {redact(spec)!r}: expected tensors {', '.join(PCA_KEYS)}, got {sorted(state)}")
    matrix, means = state["pca_eigen_vectors"].float(), state["pca_means"].float().reshape(-1)
    if matrix.shape != (128, 128) or means.shape != (128,):
        raise ValueError(f"audio.pca_params {redact(spec)!r}: shapes {tuple(matrix.shape)} and {tuple(means.shape)}, "
                         "expected (128, 128) and (128,)")
    return matrix, means


def weight_keys(cfg) -> list[tuple[str, str]]:
    """(dotted key, spec) of every weights value the config names and its stages will use."""
    keys = []
    for section in dataclasses.fields(cfg):
        value = getattr(cfg, section.name)
        for name in ("weights", "pca_params"):
            spec = getattr(value, name, None)
            if isinstance(spec, str):
                keys.append((f"{section.name}.{name}", spec))
    used = {"flow.weights": flow_backend(cfg.flow.backend).weights is not None,
            "audio.pca_params": getattr(cfg.audio, "postprocess", "raw") != "raw"}
    return [(key, spec) for key, spec in keys if used.get(key, True)]


def resolve_all(cfg):
    """Fetch and verify every weights source of `cfg` now (on the driver, before any video), pinned.

    Returns the config with each remote source pinned to the exact file fetched (`url#sha256=<full>`,
    `hf-hub:repo@commit`), which actors then find in their node's cache (or fetch and check the same way).
    Paths and URIs must exist. Raises WeightsError naming the key and the source. The config's `weights`
    limits (size, deadline) apply to this process's downloads and travel to a local Ray's workers.
    """
    configure(cfg.weights)
    if getattr(cfg.audio, "postprocess", "raw") != "raw" and not cfg.audio.pca_params:
        raise WeightsError(f"audio.postprocess={cfg.audio.postprocess} needs audio.pca_params "
                           "(e.g. torchvggish: AudioSet's PCA parameters)")
    pinned = {}
    for key, spec in weight_keys(cfg):
        if spec.startswith("package:"):
            if spec.removeprefix("package:") not in PACKAGE_WEIGHTS:
                raise WeightsError(f"{key}={redact(spec)}: unknown packaged weights (known: {', '.join(PACKAGE_WEIGHTS)})")
            continue
        path, sha, pin = locate(key, spec, getattr(cfg, key.split(".")[0]))
        if sha is None:
            if not is_weights_file(path):
                raise WeightsError(f"{key}={redact(spec)}: unknown weights format (expected .safetensors, .pt, .pth or .bin)")
            if not storage.exists(path):
                raise WeightsError(f"{key}={redact(spec)}: weights file not found")
        log.info("%s: %s%s", key, redact(pin), f" (sha256 {sha})" if sha else "")
        if pin != spec:
            pinned[key] = pin
    return cfg.replace(**pinned) if pinned else cfg

"""The model bundle: `models/` of a trained run, with everything inference needs and a manifest that seals it.

    write_bundle(run_root, cfg)               # at the end of the pipeline / fuse
    bundle = open_bundle("runs/demo")         # a run root, its models/ folder or models/bundle.json
    cfg = bundle.config(cfg, overrides)       # extraction settings from the bundle; a contradicting --set raises

`models/bundle.json` holds the format version, the code version that wrote it, the classes and streams, the
extraction settings the models were trained on (the video, flow, sampling, spatial and audio sections, less
the keys that only say how fast or where it runs, `RESOURCE_KEYS`, and how a video is cut for them,
`PREDICTION_KEYS`), the source and content sha256 of every pretrained weights file they used, and the sha256 of every model file under `models/`. `open_bundle` checks
all of it before any video is read and raises one `BundleError` that names every missing or altered file.

`files` lists exactly `expected_files()` (each model folder's model.safetensors and model.json, by paths
relative to `models/`), no more and no fewer; a bundle that lists another set, or a key that is not such a
plain relative path, is refused. Loading a model (`multistream.predict.models`, in every Ray actor) reads each
file's bytes once and checks them against the bundle before parsing (`Bundle.verified`): a file altered after
`open_bundle` (a fuse writing the same run) is refused, never mixed in.

URLs are stored redacted (`multistream.store.uris.redact`: no credentials or query strings). A pretrained
weights source is pinned by its content (`weights[key].sha256`), not by where it is read: `--set` may point a
weights key elsewhere (a copy, the same URL with a fresh token); `check_weights` then checks what it holds.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import yaml

import multistream
from multistream.config import Config, ConfigError
from multistream.store import layout, modelio, schema, storage
from multistream.store.uris import redact

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
EXTRACTION_SECTIONS = ("video", "flow", "sampling", "spatial", "audio")
TRAINING_SECTIONS = ("motion_cnn", "rnn", "tune", "fusion", "anomaly")
# Keys that change how fast or on which device a value is computed, not the value: free to set at prediction.
RESOURCE_KEYS = frozenset({"batch_size", "embed_batch_size", "device", "amp"})
# Keys of how a trained model is applied to a video, not of what it was trained on: free at prediction, never
# recorded (the models are trained on whole clips, a window is one: docs/design.md#windows).
PREDICTION_KEYS = frozenset({"windows"})
# Keys that name where pretrained weights are read: free to set at prediction where the bundle records the
# content of what they held (its `weights` section), which `check_weights` then compares.
WEIGHT_KEYS = ("spatial.weights", "audio.weights", "audio.pca_params", "flow.weights")
MODEL_FILES = (layout.MODEL_WEIGHTS, layout.MODEL_META)
_SHA256 = re.compile(r"[0-9a-f]{64}")
_KEY = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*(/[A-Za-z0-9_][A-Za-z0-9_.-]*)*")


class BundleError(ValueError):
    """A model bundle is missing, of another format, incomplete or altered; the message names what."""


def model_names(streams=schema.STREAMS) -> list[str]:
    """The model folders a bundle needs, in the order inference runs them."""
    return [layout.MOTION_CNN, *(layout.rnn_name(s) for s in streams), layout.SVM, layout.AUTOENCODER]


def expected_files(streams=schema.STREAMS) -> list[str]:
    """The files a bundle lists, relative to `models/`: each model folder's weights and metadata."""
    return [f"{name}/{file}" for name in model_names(streams) for file in MODEL_FILES]


def file_sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def state_sha256(state: dict[str, torch.Tensor]) -> str:
    """sha256 of a state dict's content (sorted names, dtypes, shapes, bytes), whatever file or source holds it."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}\x1f{tensor.dtype}\x1f{tuple(tensor.shape)}\x1e".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def weights_sha256(cfg: Config, key: str, spec: str) -> str:
    """`state_sha256` of the weights a config key names (fetched into the cache first where remote)."""
    from multistream.weights.sources import load_state_dict

    return state_sha256(load_state_dict(spec, key, getattr(cfg, key.split(".")[0])))


def _plain(value):
    """JSON-shaped (tuples → lists), so that a setting compares equal to its round trip through bundle.json."""
    return json.loads(json.dumps(value))


def _redacted(value):
    """`value` with every URL string in it redacted (credentials, query strings: `multistream.store.uris`)."""
    if isinstance(value, str):
        return redact(value) if "://" in value else value
    if isinstance(value, dict):
        return {k: _redacted(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_redacted(v) for v in value]
    return value


def extraction_settings(cfg: Config) -> dict[str, dict]:
    """{section: {key: value}} of the extraction sections, resource keys left out, URLs redacted."""
    return {name: {k: _redacted(_plain(v)) for k, v in dataclasses.asdict(getattr(cfg, name)).items()
                   if k not in RESOURCE_KEYS | PREDICTION_KEYS} for name in EXTRACTION_SECTIONS}


def write_bundle(root: str, cfg: Config) -> str:
    """Seal `models/` of the run root with `models/bundle.json`; returns its URI. Rewritten only when it changes.

    Raises BundleError where a model is missing (the pipeline has not finished) or where the motion CNN
    was trained at another flow size than `cfg` says (then `cfg` is not the extraction the models saw).
    """
    run = layout.RunRoot(root)
    missing = [name for name in model_names() if not all(storage.exists(storage.join(run.model(name), file))
                                                          for file in MODEL_FILES)]
    if missing:
        raise BundleError(f"{run.models} has no {', '.join(missing)}: run the whole pipeline before bundling")
    motion = modelio.read_meta(run.model(layout.MOTION_CNN))
    if "flow_size" in motion and tuple(motion["flow_size"]) != tuple(cfg.flow.size):
        raise BundleError(f"the motion CNN in {run.models} was trained on flow.size={motion['flow_size']}, "
                          f"the config says {list(cfg.flow.size)}: bundle with the config of the run")
    fusion = modelio.read_meta(run.model(layout.SVM))  # its classes and streams
    files = {rel: file_sha256(storage.read_bytes(storage.join(run.models, rel))) for rel in expected_files()}
    from multistream.weights.sources import resolve_all, weight_keys

    cfg = resolve_all(cfg)  # remote sources pinned to the exact file (url#sha256=..., hf-hub:repo@commit)
    weights = {key: {"source": redact(spec), "sha256": weights_sha256(cfg, key, spec)} for key, spec in weight_keys(cfg)}
    manifest = {"format": FORMAT_VERSION, "code_version": multistream.__version__,
                "classes": list(fusion["classes"]), "streams": list(fusion["streams"]),
                "models": model_names(), "extraction": extraction_settings(cfg), "weights": weights,
                "files": dict(sorted(files.items()))}
    if storage.exists(run.bundle):
        old = json.loads(storage.read_text(run.bundle))
        if {k: v for k, v in old.items() if k != "created"} == manifest:
            return run.bundle
    storage.write_text(run.bundle, json.dumps(manifest | {"created": time.strftime("%Y-%m-%dT%H:%M:%S%z")},
                                              indent=2, sort_keys=True))
    log.info("model bundle: %d files, %d classes, streams %s → %s", len(files), len(manifest["classes"]),
             "+".join(manifest["streams"]), run.bundle)
    return run.bundle


def embedding_bundle(root: str) -> Bundle:
    """The motion CNN and the RNN heads under a run root's `models/` as a Bundle held in memory, for embedding
    videos with them before fuse seals `models/bundle.json` (the pipeline's windows step). It lists only their
    files (the heads of the streams that have one), with the sha256 of their bytes now: a model rewritten after
    this is refused as it is loaded (`Bundle.verified`). Only `TemporalEmbedder` and `VideoEmbedder` take it:
    it has no classes, fusion SVM, autoencoder or extraction settings. Raises BundleError without the motion CNN
    or any RNN head."""
    run = layout.RunRoot(root)
    streams = [s for s in schema.STREAMS if modelio.has_model(run.model(layout.rnn_name(s)))]
    if not modelio.has_model(run.model(layout.MOTION_CNN)) or not streams:
        raise BundleError(f"{run.models} has no trained motion CNN and RNN heads: train them before embedding")
    names = [layout.MOTION_CNN, *(layout.rnn_name(s) for s in streams)]
    files = {f"{name}/{file}": file_sha256(storage.read_bytes(storage.join(run.model(name), file)))
             for name in names for file in MODEL_FILES}
    return Bundle(run.models, {"format": FORMAT_VERSION, "code_version": multistream.__version__,
                               "streams": streams, "models": names, "files": files})


def locate(uri: str) -> str:
    """The URI of bundle.json for a run root, its models/ folder or the bundle.json itself."""
    uri = layout.absolute(uri).rstrip("/")
    candidates = [uri] if uri.endswith(".json") else [storage.join(uri, layout.BUNDLE_FILE), layout.RunRoot(uri).bundle]
    for candidate in candidates:
        if storage.exists(candidate):
            return candidate
    raise BundleError(f"no model bundle at {uri} (looked for {' and '.join(candidates)}): give a trained run "
                      f"root; the pipeline (or jobs/fuse.py) writes {layout.MODELS}/{layout.BUNDLE_FILE} at its end")


@dataclass(frozen=True)
class Bundle:
    uri: str  # the models/ folder
    manifest: dict

    @property
    def classes(self) -> list[str]:
        return list(self.manifest["classes"])

    @property
    def streams(self) -> tuple[str, ...]:
        return tuple(self.manifest["streams"])

    @property
    def settings(self) -> dict[str, dict]:
        return self.manifest["extraction"]

    def model(self, name: str) -> str:
        return storage.join(self.uri, name)

    @contextlib.contextmanager
    def verified(self) -> Iterator[None]:
        """Within: every model file loaded must be listed in the bundle and hold the bytes it lists (read once,
        hashed, then parsed: `multistream.store.modelio.verified`); BundleError otherwise."""
        hashes = {storage.join(self.uri, rel): sha for rel, sha in self.manifest["files"].items()}
        try:
            with modelio.verified(hashes):
                yield
        except modelio.ModelIntegrityError as error:
            raise BundleError(f"model bundle {self.uri}: {error}") from None

    def config(self, cfg: Config, overrides: list[str] | tuple[str, ...] = ()) -> Config:
        """`cfg` with the bundle's extraction settings; raises BundleError where one of `overrides` (the
        user's --set) contradicts the bundle or would change a trained model. A weights source set in
        `overrides` is kept (with the bundle's #sha256= pin where it gives none): `check_weights` checks it."""
        pinned = set(self.manifest.get("weights", {}))
        check_overrides(self.settings, overrides, pinned)
        chosen = {item.partition("=")[0].strip() for item in overrides} & pinned
        pairs = {f"{section}.{key}": value for section, keys in self.settings.items() for key, value in keys.items()
                 if f"{section}.{key}" not in chosen}
        for key in chosen:
            section, _, leaf = key.partition(".")
            pairs[key] = _with_pin(getattr(getattr(cfg, section), leaf), self.settings[section].get(leaf))
        try:
            return cfg.replace(**pairs)
        except ConfigError as error:
            raise BundleError(f"the bundle's setting {error} (written by multistream "
                              f"{self.manifest.get('code_version')}, this is {multistream.__version__})") from error

    def check_weights(self, cfg: Config) -> None:
        """Raise where a pretrained weights source of `cfg` (the config with the bundle's settings,
        `Bundle.config`) holds other tensors than the models were trained on."""
        for key, entry in self.manifest.get("weights", {}).items():
            section, _, leaf = key.partition(".")
            spec = getattr(getattr(cfg, section), leaf)
            if not spec:
                raise BundleError(f"{key} is not set, but the bundle's models were trained with {entry['source']}")
            actual = weights_sha256(cfg, key, spec)
            if actual != entry["sha256"]:
                raise BundleError(f"{key} {redact(spec)!r} now holds other weights (sha256 {actual[:16]}...) "
                                  f"than the bundle's models were trained on ({entry['sha256'][:16]}...)")


def open_bundle(uri: str) -> Bundle:
    """Read and verify a bundle: its format version, then every listed file's presence and sha256."""
    manifest_uri = locate(uri)
    try:
        manifest = json.loads(storage.read_text(manifest_uri))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as error:
        raise BundleError(f"{manifest_uri} is not a bundle manifest: {error}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_VERSION:
        found = manifest.get("format") if isinstance(manifest, dict) else None
        raise BundleError(f"{manifest_uri}: bundle format {found!r} (written by multistream "
                          f"{manifest.get('code_version') if isinstance(manifest, dict) else '?'}), but multistream "
                          f"{multistream.__version__} reads format {FORMAT_VERSION}: re-run the pipeline's fuse "
                          f"step with this version to rebuild the bundle")
    models_uri = manifest_uri.rsplit("/", 1)[0]
    problems = manifest_problems(manifest)
    if problems:
        raise BundleError(f"{manifest_uri} is not a valid bundle manifest: {'; '.join(problems)}")
    for rel, expected in manifest["files"].items():
        file_uri = storage.join(models_uri, rel)
        if not storage.exists(file_uri):
            problems.append(f"{rel} is missing")
        elif not modelio.is_regular_file(file_uri):
            problems.append(f"{rel} is not a regular file")
        elif (actual := file_sha256(storage.read_bytes(file_uri))) != expected:
            problems.append(f"{rel} was altered (sha256 {actual[:12]}..., the bundle lists {expected[:12]}...)")
    if problems:
        raise BundleError(f"model bundle {models_uri} is not intact: {'; '.join(problems)}")
    if manifest.get("code_version") != multistream.__version__:
        log.warning("bundle %s was written by multistream %s, this is %s", models_uri, manifest.get("code_version"),
                    multistream.__version__)
    return Bundle(models_uri, manifest)


def _check_key(rel) -> str | None:
    """Why `rel` is no file key of a bundle (a plain path relative to `models/`), or None."""
    if not isinstance(rel, str) or not _KEY.fullmatch(rel) or any(p in (".", "..") for p in rel.split("/")):
        return f"file key {rel!r} is not a plain path relative to {layout.MODELS}/"
    return None


def manifest_problems(manifest: dict) -> list[str]:
    """What makes a bundle manifest (of the right format) unusable, before any file is read: its models,
    streams and classes, and its `files` (exactly `expected_files()`, each with a full sha256)."""
    problems = []
    streams, classes, files = manifest.get("streams"), manifest.get("classes"), manifest.get("files")
    if (not isinstance(streams, list) or not streams or len(set(map(str, streams))) != len(streams)
            or not set(streams) <= set(schema.STREAMS)):
        problems.append(f"streams {streams!r} are not distinct streams of {list(schema.STREAMS)}")
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        problems.append("classes must be a non-empty list of names")
    if manifest.get("models") != model_names():
        problems.append(f"models {manifest.get('models')!r}, expected {model_names()}")
    extraction = manifest.get("extraction")
    if not isinstance(extraction, dict) or set(extraction) != set(EXTRACTION_SECTIONS) or not all(
            isinstance(keys, dict) for keys in extraction.values()):
        problems.append(f"extraction must hold the settings of {', '.join(EXTRACTION_SECTIONS)}")
    if not isinstance(files, dict):
        return [*problems, "files must map each model file to its sha256"]
    expected = set(expected_files())
    problems += [reason for rel in files if (reason := _check_key(rel))]
    problems += [f"{rel}: sha256 {sha!r} is not 64 lowercase hex digits" for rel, sha in files.items()
                 if not isinstance(sha, str) or not _SHA256.fullmatch(sha)]
    problems += [f"lists no {rel}" for rel in sorted(expected - set(files))]
    problems += [f"lists {rel!r}, which is no model file of a bundle" for rel in sorted(set(files) - expected)
                 if isinstance(rel, str) and not _check_key(rel)]
    weights = manifest.get("weights", {})
    if not isinstance(weights, dict) or not all(
            isinstance(e, dict) and isinstance(e.get("source"), str) and _SHA256.fullmatch(str(e.get("sha256")))
            and k in WEIGHT_KEYS for k, e in weights.items()):
        problems.append("weights must map weights keys to their source and sha256")
    return problems


def _with_pin(spec: str | None, bundled: str | None) -> str | None:
    """A remote weights source given without #sha256=, pinned to the bundle's sha256 for the same key."""
    if not spec or "#" in spec or not spec.startswith(("http://", "https://", "hf-hub:")):
        return spec
    pin = re.search(r"[#&]sha256=([0-9a-f]{64})", bundled or "")
    return f"{spec}#sha256={pin.group(1)}" if pin else spec


def check_overrides(settings: dict[str, dict], overrides: list[str] | tuple[str, ...],
                    pinned: set[str] | frozenset[str] = frozenset()) -> None:
    """Raise BundleError for the first `key=value` that sets an extraction setting to another value than the
    bundle's, or that sets a training key (the models are applied as trained, never re-fit). A weights key of
    `pinned` (the bundle records the content of its weights) may name any source."""
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        section, _, leaf = key.partition(".")
        if (not sep or section not in (*EXTRACTION_SECTIONS, *TRAINING_SECTIONS)
                or leaf.split(".")[-1] in RESOURCE_KEYS or leaf.split(".")[0] in PREDICTION_KEYS or key in pinned):
            continue  # ray.*, paths.*, resource keys, pinned weights sources; malformed items: the config loader's
        if section in TRAINING_SECTIONS:
            raise BundleError(f"--set {item}: {key} is a training setting; prediction applies the bundle's models "
                              f"as they were trained and never re-fits them")
        value = yaml.safe_load(text)
        wanted = value if leaf else {k: v for k, v in (value or {}).items()
                                     if k not in RESOURCE_KEYS | PREDICTION_KEYS and f"{section}.{k}" not in pinned}
        trained = settings[section].get(leaf) if leaf else settings[section]
        if leaf and leaf not in settings[section]:
            raise BundleError(f"--set {item}: the bundle records no {key}")
        if not leaf:
            trained = {k: v for k, v in trained.items() if k in wanted}
        if _plain(_coerce_like(wanted, trained)) != _plain(trained):
            raise BundleError(f"--set {item} contradicts the model bundle, whose models were trained with "
                              f"{key}={json.dumps(trained)}: extraction settings come from the bundle (drop the --set)")


def _coerce_like(value, reference):
    """An int where the bundle holds a float (`video.max_seconds=36` equals 36.0), tuples as lists."""
    if isinstance(reference, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(reference, dict) and isinstance(value, dict):
        return {k: _coerce_like(v, reference.get(k)) for k, v in value.items()}
    return value

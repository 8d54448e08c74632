"""Copies of a config's weights for clusters without internet: safetensors files + weights.json, verifiable.

    python -m multistream.weights prepare --config configs/ucf101.yaml --to s3://bucket/weights/
    python -m multistream.weights verify s3://bucket/weights/
    python -m multistream.weights fetch --config configs/ucf101.yaml    # only fill this node's cache

`prepare` fetches every weights source the config uses (checked as the extraction would check it), writes
each as `<section>-<field>.safetensors` under --to, and `weights.json`:
    {"files": {"spatial.weights": {"file", "source", "pinned", "source_sha256", "sha256", "tensors",
                                   "parameters", "dtypes": {dtype: count}}, ...}}
then prints the --set overrides that point the config at the copies. `verify` re-hashes every file listed.
`fetch` fetches and checks the sources into MULTISTREAM_CACHE only (an image baked with them runs the
config unchanged without internet).
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import sys

import safetensors.torch

from multistream.cli import setup_logging
from multistream.config import ConfigError, load_config
from multistream.store import storage
from multistream.store.layout import absolute
from multistream.store.uris import redact
from multistream.weights.fetch import WeightsError, cache_dir
from multistream.weights.files import parse_state_dict, read_state_dict
from multistream.weights.packaged import load_packaged
from multistream.weights.sources import locate, resolve_all, weight_keys

MANIFEST = "weights.json"


def prepare(cfg, to: str) -> dict[str, str]:
    """Write the copies and weights.json under `to`; {dotted key: URI of its copy}."""
    to = absolute(to)
    resolve_all(cfg)  # every source checked before anything is written
    entries, overrides = {}, {}
    for key, spec in weight_keys(cfg):
        if spec.startswith("package:"):
            state, source_sha, pin = load_packaged(spec.removeprefix("package:")), None, spec
        else:
            path, source_sha, pin = locate(key, spec, getattr(cfg, key.split(".")[0]))
            state = read_state_dict(path)
        data = safetensors.torch.save({name: t.contiguous().clone() for name, t in state.items()})
        name = key.replace(".", "-") + ".safetensors"
        storage.write_bytes(storage.join(to, name), data)
        entries[key] = {"file": name, "source": redact(spec), "pinned": redact(pin), "source_sha256": source_sha,
                        "sha256": hashlib.sha256(data).hexdigest(), "tensors": len(state),
                        "parameters": sum(t.numel() for t in state.values()),
                        "dtypes": dict(collections.Counter(str(t.dtype).removeprefix("torch.")
                                                           for t in state.values()))}
        overrides[key] = storage.join(to, name)
    storage.write_text(storage.join(to, MANIFEST), json.dumps({"files": entries}, indent=2) + "\n")
    return overrides


def verify(root: str) -> list[str]:
    """Problems found under `root` (empty: every file listed in weights.json is there, whole and readable)."""
    try:
        entries = json.loads(storage.read_text(storage.join(root, MANIFEST)))["files"]
    except FileNotFoundError:
        return [f"{storage.join(root, MANIFEST)}: not found"]
    problems = []
    for key, entry in entries.items():
        uri = storage.join(root, entry["file"])
        try:
            data = storage.read_bytes(uri)
        except FileNotFoundError:
            problems.append(f"{key}: {uri} is missing")
            continue
        actual = hashlib.sha256(data).hexdigest()
        if actual != entry["sha256"]:
            problems.append(f"{key}: {uri} has sha256 {actual}, weights.json says {entry['sha256']}")
        elif len(parse_state_dict(data, uri)) != entry["tensors"]:
            problems.append(f"{key}: {uri} does not hold the {entry['tensors']} tensors weights.json lists")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m multistream.weights", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    make = commands.add_parser("prepare", help="fetch the config's weights and write safetensors copies")
    make.add_argument("--to", required=True, help="folder or s3:// prefix for the copies")
    fetch = commands.add_parser("fetch", help="fetch and check the config's weights into MULTISTREAM_CACHE")
    for sub in (make, fetch):
        sub.add_argument("--config", default=None, help="YAML config (default: the embedded demo)")
        sub.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    check = commands.add_parser("verify", help="re-hash the copies listed in weights.json")
    check.add_argument("root", help="folder or s3:// prefix that prepare wrote")
    args = parser.parse_args(argv)
    setup_logging()
    if args.command == "verify":
        problems = verify(args.root)
        for problem in problems:
            print(f"verify: {problem}", file=sys.stderr)
        print(f"verify: {'FAILED' if problems else 'ok'}: {args.root}")
        return 1 if problems else 0
    try:
        cfg = load_config(args.config, args.overrides)
        if args.command == "fetch":
            pinned = resolve_all(cfg)
            for key, spec in weight_keys(pinned):
                print(f"{key}={redact(spec.split('&cached=')[0])}")
            print(f"fetch: every weights source checked, cached under {cache_dir()}")
            return 0
        overrides = prepare(cfg, args.to)
    except (ConfigError, WeightsError) as error:
        print(f"{args.command}: {error}", file=sys.stderr)
        return 2
    print(f"prepare: {len(overrides)} weights files under {absolute(args.to)}; run with")
    print(" ".join(f"--set {key}={uri}" for key, uri in overrides.items()))
    return 0

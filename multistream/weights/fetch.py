"""Downloads into the weights cache: once per node, atomically, checked against the publisher's hash.

    path = download("https://download.pytorch.org/models/raft_small_C_T_V2-01064c6d.pth")
    path = hf_download("timm/inception_resnet_v2.tf_in1k", revision=None)

The cache is `$MULTISTREAM_CACHE` (default ~/.cache/multistream): `url/<sha256 of the URL>[:16]/<name>`
with `<name>.sha256` beside it, and `huggingface/` (huggingface_hub's own layout). A file lock per entry
(under `locks/`) lets one process download while the others on the node wait and then read its copy. The body goes to a
temporary name, is hashed while it streams and is renamed into place only once it is whole and matches;
an HTTP error, a cut connection or a mismatch raises `WeightsError` and leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import logging
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from filelock import FileLock

log = logging.getLogger(__name__)

# torch.hub's convention: `name-<first hex digits of the sha256>.ext` (torch.hub.HASH_REGEX)
_HUB_NAME = re.compile(r"-([a-f0-9]{8,64})\.[^./]+$")
_SHA256 = re.compile(r"[a-f0-9]{64}")
_CHUNK = 1 << 20
LOCK_TIMEOUT_S = 3600.0  # a waiting process gives up after this long (a stuck download elsewhere)


class WeightsError(ValueError):
    """A weights source cannot be fetched, verified or read; the message names the source."""


def cache_dir() -> Path:
    return Path(os.environ.get("MULTISTREAM_CACHE") or Path.home() / ".cache" / "multistream").expanduser()


def split_spec(spec: str) -> tuple[str, dict[str, str]]:
    """`source#sha256=<hex>&cached=<path>` → (source, {"sha256": hex, "cached": path}); both parts optional.

    `cached` (URL-quoted) names a copy already fetched on the driver: used where it exists and matches.
    """
    source, _, fragment = spec.partition("#")
    options = dict(urllib.parse.parse_qsl(fragment, keep_blank_values=True)) if fragment else {}
    unknown = set(options) - {"sha256", "cached"}
    sha = options.get("sha256")
    if unknown or (sha is not None and not re.fullmatch(r"[0-9a-fA-F]{8,64}", sha)):
        raise WeightsError(f"{spec}: the fragment must be #sha256=<hex digits>")
    if sha:
        options["sha256"] = sha.lower()
    return source, options


def expected_hash(url: str, options: dict[str, str]) -> str | None:
    """The #sha256 given, else the hash prefix of a torch-hub file name, else None (used unverified)."""
    if options.get("sha256"):
        return options["sha256"]
    match = _HUB_NAME.search(url.rsplit("/", 1)[-1].split("?", 1)[0])
    return match.group(1) if match else None


def cached_copy(path: str, expected: str | None) -> bool:
    """Whether `path` is a whole fetched copy with sha256 `expected` (its sidecar, a hub blob name or hashed)."""
    file = Path(path)
    if not file.is_file():
        return False
    if expected is None:
        return True
    sidecar = file.with_name(file.name + ".sha256")
    if sidecar.is_file():
        return sidecar.read_text().strip().startswith(expected)
    blob = Path(os.path.realpath(file)).name
    return blob == expected if _SHA256.fullmatch(blob) else sha256_file(file).startswith(expected)


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def cached_path(url: str) -> Path:
    name = url.rsplit("/", 1)[-1].split("?", 1)[0] or "weights"
    return cache_dir() / "url" / hashlib.sha256(url.encode()).hexdigest()[:16] / name


def download(url: str, expected: str | None = None) -> tuple[Path, str]:
    """(local path, full sha256) of the file at an http(s) URL, from the cache or downloaded into it.

    `expected` is the full sha256 or a prefix of it (see `expected_hash`)."""
    dest = cached_path(url)
    sidecar = dest.with_name(dest.name + ".sha256")
    locks = cache_dir() / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    with FileLock(str(locks / f"{dest.parent.name}.lock"), timeout=LOCK_TIMEOUT_S):
        if dest.is_file() and sidecar.is_file():
            actual = sidecar.read_text().strip()
            if expected is None or actual.startswith(expected):
                return dest, actual
            log.warning("%s: the cached copy has sha256 %s, not %s: downloading again", url, actual, expected)
        dest.parent.mkdir(parents=True, exist_ok=True)
        sidecar.unlink(missing_ok=True)  # a file counts as cached only once its sidecar is written, last
        tmp = dest.with_name(f".{dest.name}.{os.getpid()}.part")
        try:
            actual = _stream(url, tmp)
            if expected is not None and not actual.startswith(expected):
                raise WeightsError(f"{url}: sha256 mismatch: the file has {actual}, expected "
                                   f"{expected}{'...' if len(expected) < 64 else ''}")
            if expected is None:
                log.warning("%s: no hash to check it against; its sha256 is %s (pin it with #sha256=%s)",
                            url, actual, actual)
            os.replace(tmp, dest)
            tmp.write_text(actual + "\n")
            os.replace(tmp, sidecar)
        finally:
            tmp.unlink(missing_ok=True)
            if not sidecar.is_file():
                dest.unlink(missing_ok=True)
                with contextlib.suppress(OSError):
                    dest.parent.rmdir()
    log.info("weights %s → %s", url, dest)
    return dest, actual


def _stream(url: str, target: Path) -> str:
    """Write the body of `url` to `target`; its sha256. WeightsError on HTTP errors and short bodies."""
    digest, received = hashlib.sha256(), 0
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(target, "wb") as f:  # noqa: S310
            length = response.headers.get("Content-Length")
            while chunk := response.read(_CHUNK):
                digest.update(chunk)
                f.write(chunk)
                received += len(chunk)
    except urllib.error.HTTPError as error:
        raise WeightsError(f"{url}: HTTP {error.code} {error.reason}") from error
    except (urllib.error.URLError, http.client.HTTPException, OSError) as error:  # refused, reset, timeout, cut
        reason = getattr(error, "reason", error)
        raise WeightsError(f"{url}: download failed after {received} bytes ({reason}){OFFLINE_HINT}") from error
    if length is not None and received != int(length):
        raise WeightsError(f"{url}: connection closed after {received} of {length} bytes")
    return digest.hexdigest()


OFFLINE_HINT = ("; without internet on this machine, copy the weights once with `python -m multistream.weights "
                "prepare --to <dir or s3://...>` and use the --set overrides it prints")


def hf_download(repo: str, revision: str | None, filenames=("model.safetensors", "pytorch_model.bin")
                ) -> tuple[Path, str, str]:
    """(local path, sha256, commit) of a timm checkpoint in a Hugging Face repo, through huggingface_hub.

    The endpoint is read from HF_ENDPOINT on each call (huggingface_hub reads it once, at import). The first
    of `filenames` that the repo has is taken, as timm does. An LFS file's etag is its sha256: the
    downloaded blob is checked against it, and removed on a mismatch.
    """
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import RemoteEntryNotFoundError

    cache = cache_dir() / "huggingface"
    source = f"hf-hub:{repo}" + (f"@{revision}" if revision else "")
    for filename in filenames:
        try:
            path = hf_hub_download(repo, filename, revision=revision, cache_dir=cache,
                                   endpoint=os.environ.get("HF_ENDPOINT") or None)
            break
        except RemoteEntryNotFoundError:
            continue
        except Exception as error:  # noqa: BLE001 - huggingface_hub raises many kinds; one message for all
            _drop_incomplete(cache)
            raise WeightsError(f"{source}: download failed ({str(error).splitlines()[0]}){OFFLINE_HINT}") from error
    else:
        raise WeightsError(f"{source}: the repo has none of {', '.join(filenames)}")
    blob = Path(os.path.realpath(path))
    actual = sha256_file(blob)
    if _SHA256.fullmatch(blob.name) and actual != blob.name:
        Path(path).unlink(missing_ok=True)
        blob.unlink(missing_ok=True)
        raise WeightsError(f"{source}: sha256 mismatch: {filename} has {actual}, the hub's etag is {blob.name}")
    return Path(path), actual, Path(path).parent.name


def _drop_incomplete(cache: Path) -> None:
    for part in cache.glob("*/blobs/*.incomplete"):
        part.unlink(missing_ok=True)

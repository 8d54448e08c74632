"""Downloads into the weights cache: once per node, atomically, checked against a pinned sha256.

    path, sha = download("https://host/w.safetensors", expected="<64 hex digits>")
    path = hf_download("timm/inception_resnet_v2.tf_in1k", revision=None)

The cache is `$MULTISTREAM_CACHE` (default ~/.cache/multistream): `url/<sha256 of the redacted URL>[:16]/<name>`
with `<name>.sha256` beside it, and `huggingface/` (huggingface_hub's own layout). A file lock per entry
(under `locks/`) lets one process download while the others on the node wait and then read its copy. The body goes to a
temporary name, is hashed while it streams and is renamed into place only once it is whole and matches;
an HTTP error, a cut connection or a mismatch raises `WeightsError` and leaves nothing behind.

A download is https (plain http only from this machine's loopback address, where the tests serve files), and
a redirect to anything but https is refused. At most `weights.max_mb` megabytes are read and the whole
download must end within `weights.timeout_s` seconds, so that a process holding the node's lock always lets
go; the settings travel to Ray workers as environment variables (`configure`, `env`), like the S3 ones.
A URL's query string and credentials (a token) never reach a log line or an error message
(`multistream.store.uris.redact`).
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import ipaddress
import logging
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from filelock import FileLock, Timeout

from multistream.config import WeightsConfig
from multistream.store.uris import redact, scrub

log = logging.getLogger(__name__)

# torch.hub's convention: `name-<first hex digits of the sha256>.ext` (torch.hub.HASH_REGEX)
_HUB_NAME = re.compile(r"-([a-f0-9]{8,64})\.[^./]+$")
_SHA256 = re.compile(r"[a-f0-9]{64}")
_CHUNK = 1 << 20
READ_TIMEOUT_S = 60.0  # one connect or read of the socket; the whole download has weights.timeout_s
ENV_PREFIX = "MULTISTREAM_WEIGHTS_"
DEFAULTS = WeightsConfig()


class WeightsError(ValueError):
    """A weights source cannot be fetched, verified or read; the message names the source."""


def env(settings: WeightsConfig) -> dict[str, str]:
    """The download limits as environment variables, for the workers' runtime environment."""
    return {ENV_PREFIX + "MAX_MB": str(settings.max_mb), ENV_PREFIX + "TIMEOUT_S": str(settings.timeout_s)}


def configure(settings: WeightsConfig) -> dict[str, str]:
    """Apply `settings` to this process's downloads (and a local Ray it starts); returns `env(settings)`."""
    values = env(settings)
    os.environ.update(values)
    return values


def current() -> WeightsConfig:
    """The limits in force in this process: the environment's, else the defaults."""
    values = {}
    for key in ("max_mb", "timeout_s"):
        raw = os.environ.get(ENV_PREFIX + key.upper())
        if raw:
            try:
                values[key] = float(raw)
            except ValueError:
                raise WeightsError(f"{ENV_PREFIX + key.upper()}={raw!r} is not a number") from None
            if not values[key] > 0:
                raise WeightsError(f"{ENV_PREFIX + key.upper()}={raw!r} must be positive")
    return WeightsConfig(**values) if values else DEFAULTS


def is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_url(url: str) -> None:
    """Refuse a URL that is not https, plain http to this machine's loopback address excepted: weights read
    over plain http could be swapped by anyone on the way (the sha256 pin would catch it, after the download);
    the tests serve files on 127.0.0.1."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "https" or (parts.scheme == "http" and is_loopback(parts.hostname)):
        return
    raise WeightsError(f"{redact(url)}: weights are downloaded over https only (plain http is allowed from "
                       "127.0.0.1 / localhost only)")


class _HttpsRedirects(urllib.request.HTTPRedirectHandler):
    """Follows a redirect to https only: from https, nothing else (no downgrade); from loopback http, https or
    loopback http."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        old, new = urllib.parse.urlsplit(req.full_url), urllib.parse.urlsplit(newurl)
        if old.scheme == "https" and new.scheme != "https":
            raise WeightsError(f"{redact(req.full_url)}: redirected to {redact(newurl)}, which is not https: refused")
        check_url(newurl)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


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
    if unknown or (sha is not None and not _SHA256.fullmatch(sha.lower())):
        raise WeightsError(f"{redact(source)}: the fragment must be #sha256=<the file's full sha256, 64 hex digits>")
    if sha:
        options["sha256"] = sha.lower()
    return source, options


def expected_hash(url: str, options: dict[str, str], published: str | None = None) -> str:
    """The sha256 a download must have: the #sha256 given (64 hex digits), else `published` (a named default's
    hash: `multistream.weights.sources.PUBLISHED_SHA256`, full or the publisher's prefix). WeightsError for a URL
    pinned by neither: an unpinned file could change under the same URL."""
    if options.get("sha256"):
        return options["sha256"]
    if published:
        return published
    raise WeightsError(f"{redact(url)}: not pinned: add #sha256=<the file's full sha256, 64 hex digits> (e.g. "
                       "`sha256sum` of a copy you trust)")


def hub_name_hash(url: str) -> str | None:
    """The hash prefix in a torch-hub file name (`name-<hex>.ext`, torch.hub.HASH_REGEX), or None."""
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
    """The cache entry of a URL, by its redacted form: a URL whose token changes keeps its entry (every use
    checks the copy's sha256 against its pin)."""
    url = redact(url)
    name = re.sub(r"[^A-Za-z0-9._-]", "_", url.rsplit("/", 1)[-1]).lstrip(".") or "weights"
    return cache_dir() / "url" / hashlib.sha256(url.encode()).hexdigest()[:16] / name[:200]


def download(url: str, expected: str, limits: WeightsConfig | None = None) -> tuple[Path, str]:
    """(local path, full sha256) of the file at an https URL, from the cache or downloaded into it.

    `expected` is the full sha256, or the publisher's prefix of it for a named default (`expected_hash`);
    `limits` (default `current()`) caps the bytes read and the seconds the download may take."""
    if not expected:
        raise WeightsError(f"{redact(url)}: no sha256 to check the download against")
    check_url(url)
    limits = limits or current()
    dest = cached_path(url)
    sidecar = dest.with_name(dest.name + ".sha256")
    locks = cache_dir() / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    # a holder gives the lock up within its deadline (and one socket timeout): wait a little longer than that
    lock = FileLock(str(locks / f"{dest.parent.name}.lock"), timeout=limits.timeout_s + 2 * READ_TIMEOUT_S)
    try:
        lock.acquire()
    except Timeout as error:
        raise WeightsError(f"{redact(url)}: another process has been downloading it for longer than "
                           f"weights.timeout_s ({limits.timeout_s:g} s); lock {lock.lock_file}") from error
    try:
        if dest.is_file() and sidecar.is_file():
            actual = sidecar.read_text().strip()
            if actual.startswith(expected):
                return dest, actual
            log.warning("%s: the cached copy has sha256 %s, not %s: downloading again", redact(url), actual, expected)
        dest.parent.mkdir(parents=True, exist_ok=True)
        sidecar.unlink(missing_ok=True)  # a file counts as cached only once its sidecar is written, last
        tmp = dest.with_name(f".{dest.name}.{os.getpid()}.part")
        try:
            actual = _stream(url, tmp, limits)
            if not actual.startswith(expected):
                raise WeightsError(f"{redact(url)}: sha256 mismatch: the file has {actual}, expected "
                                   f"{expected}{'...' if len(expected) < 64 else ''}")
            os.replace(tmp, dest)
            tmp.write_text(actual + "\n")
            os.replace(tmp, sidecar)
        finally:
            tmp.unlink(missing_ok=True)
            if not sidecar.is_file():
                dest.unlink(missing_ok=True)
                with contextlib.suppress(OSError):
                    dest.parent.rmdir()
    finally:
        lock.release()
    log.info("weights %s → %s", redact(url), dest)
    return dest, actual


def _stream(url: str, target: Path, limits: WeightsConfig) -> str:
    """Write the body of `url` to `target`; its sha256. WeightsError on HTTP errors, short bodies, a body past
    `limits.max_mb`, a download past `limits.timeout_s` and a redirect to anything but https."""
    digest, received = hashlib.sha256(), 0
    max_bytes, deadline = int(limits.max_mb * 2**20), time.monotonic() + limits.timeout_s
    shown = redact(url)
    opener = urllib.request.build_opener(_HttpsRedirects)
    try:
        with opener.open(url, timeout=min(READ_TIMEOUT_S, limits.timeout_s)) as response, open(target, "wb") as f:
            length = response.headers.get("Content-Length")
            if length is not None and length.isdigit() and int(length) > max_bytes:
                raise WeightsError(f"{shown}: {int(length)} bytes, more than weights.max_mb ({limits.max_mb:g} MB)")
            while chunk := response.read1(_CHUNK):  # what has arrived: a trickle cannot outlast the deadline
                received += len(chunk)
                if received > max_bytes:
                    raise WeightsError(f"{shown}: more than weights.max_mb ({limits.max_mb:g} MB): stopped")
                if time.monotonic() > deadline:
                    raise WeightsError(f"{shown}: not downloaded within weights.timeout_s ({limits.timeout_s:g} s): "
                                       f"stopped after {received} bytes")
                digest.update(chunk)
                f.write(chunk)
    except urllib.error.HTTPError as error:
        raise WeightsError(f"{shown}: HTTP {error.code} {scrub(str(error.reason), url)}") from None
    except (urllib.error.URLError, http.client.HTTPException, OSError) as error:  # refused, reset, timeout, cut
        reason = scrub(str(getattr(error, "reason", error)), url)
        raise WeightsError(f"{shown}: download failed after {received} bytes ({reason}){OFFLINE_HINT}") from None
    if length is not None and length.isdigit() and received != int(length):
        raise WeightsError(f"{shown}: connection closed after {received} of {length} bytes")
    return digest.hexdigest()


OFFLINE_HINT = ("; without internet on this machine, copy the weights once with `python -m multistream.weights "
                "prepare --to <dir or s3://...>` and use the --set overrides it prints")


def hf_download(repo: str, revision: str | None, filenames=("model.safetensors", "pytorch_model.bin")
                ) -> tuple[Path, str, str]:
    """(local path, sha256, commit) of a timm checkpoint in a Hugging Face repo, through huggingface_hub.

    The endpoint is read from HF_ENDPOINT on each call (huggingface_hub reads it once, at import); it must be
    https (or loopback http). The first of `filenames` that the repo has is taken, as timm does. A file the hub
    says is larger than `weights.max_mb` is refused before it is downloaded; the transfer itself is
    huggingface_hub's, with its per-request timeouts (weights.timeout_s does not bound it). An LFS file's etag
    is its sha256: the downloaded blob is checked against it, and removed on a mismatch.
    """
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import RemoteEntryNotFoundError

    cache = cache_dir() / "huggingface"
    source = f"hf-hub:{repo}" + (f"@{revision}" if revision else "")
    endpoint = os.environ.get("HF_ENDPOINT") or None
    if endpoint:
        check_url(endpoint)
    for filename in filenames:
        try:
            _check_hub_size(source, repo, filename, revision, endpoint)
            path = hf_hub_download(repo, filename, revision=revision, cache_dir=cache, endpoint=endpoint)
            break
        except RemoteEntryNotFoundError:
            continue
        except WeightsError:
            raise
        except Exception as error:  # noqa: BLE001 - huggingface_hub raises many kinds; one message for all
            _drop_incomplete(cache)
            reason = scrub(str(error).splitlines()[0] if str(error) else type(error).__name__)
            raise WeightsError(f"{source}: download failed ({reason}){OFFLINE_HINT}") from error
    else:
        raise WeightsError(f"{source}: the repo has none of {', '.join(filenames)}")
    blob = Path(os.path.realpath(path))
    actual = sha256_file(blob)
    if _SHA256.fullmatch(blob.name) and actual != blob.name:
        Path(path).unlink(missing_ok=True)
        blob.unlink(missing_ok=True)
        raise WeightsError(f"{source}: sha256 mismatch: {filename} has {actual}, the hub's etag is {blob.name}")
    return Path(path), actual, Path(path).parent.name


def _check_hub_size(source: str, repo: str, filename: str, revision: str | None, endpoint: str | None) -> None:
    """Refuse a hub file larger than weights.max_mb before it is downloaded. Where the hub cannot be asked
    (offline, with a copy in the cache), huggingface_hub's own download answers instead."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.errors import RemoteEntryNotFoundError

    limits = current()
    try:
        size = get_hf_file_metadata(hf_hub_url(repo, filename, revision=revision, endpoint=endpoint),
                                    endpoint=endpoint).size
    except RemoteEntryNotFoundError:
        raise
    except Exception:  # noqa: BLE001 - no answer: the download that follows reports it (or uses the cache)
        return
    if size is not None and size > limits.max_mb * 2**20:
        raise WeightsError(f"{source}: {filename} has {size} bytes, more than weights.max_mb ({limits.max_mb:g} MB)")


def _drop_incomplete(cache: Path) -> None:
    for part in cache.glob("*/blobs/*.incomplete"):
        part.unlink(missing_ok=True)

"""What of a URI may be stored or logged, and where a URI points after normalising.

    redact("https://bucket.s3.amazonaws.com/clip.mp4?X-Amz-Signature=...")   # https://bucket.s3.amazonaws.com/clip.mp4
    redact("https://user:token@host/w.pth#sha256=<hex>")                       # https://host/w.pth#sha256=<hex>
    scrub("404 for url='https://host/a.mp4?sig=...'", uri)                     # 404 for url='https://host/a.mp4'
    within("file:///runs/demo/new/", "runs/demo")                              # True (symlinks resolved too)

A URI with a scheme (`https://`, `s3://`, ...) loses, before it is stored in a table, a log line, a report or a
bundle: the credentials of its authority (`user:password@`), its query string (presigned URLs carry their
signature and credential there, weights URLs their tokens) and its fragment, except the weights' own pin
(`#sha256=<hex>` and `cached=<path>`: a content hash and a local path, no secret). A path without a scheme is
kept as it is. The URI used to read stays whole: only what is written or logged is redacted.

Two URLs that differ only in their query string are the same video after redaction (one `video_id`); a secret
placed in the path itself cannot be told from a file name and is kept.
"""

from __future__ import annotations

import logging
import os
import posixpath
import re
import sys
import traceback
import urllib.parse

__all__ = ["redact", "scrub", "secrets", "redact_logs", "normalise", "within"]

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
# a URL inside a message: up to whitespace, a quote or an angle bracket (commas and parentheses may belong to
# a query string, which is dropped whole)
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>`]+")
_HEX = re.compile(r"[0-9a-fA-F]{8,64}")
PIN_KEYS = ("sha256", "cached")  # the fragment of a weights spec (multistream.weights.fetch.split_spec)
MASK = "[redacted]"


def _parts(uri: str) -> tuple[str, str, str, str, str, str] | None:
    """(scheme, userinfo, host, path, query, fragment) of a URI with a scheme, else None."""
    match = _SCHEME.match(uri)
    if match is None:
        return None
    rest = uri[match.end():]
    cut = min((i for i in (rest.find(c) for c in "/?#") if i != -1), default=len(rest))
    authority, tail = rest[:cut], rest[cut:]
    userinfo, _, host = authority.rpartition("@")
    tail, _, fragment = tail.partition("#")
    path, _, query = tail.partition("?")
    return match.group(1), userinfo, host, path, query, fragment


def _pin(fragment: str) -> str:
    """The weights pin of a fragment (`sha256=<hex>`, `cached=<absolute path>`), anything else dropped."""
    kept = []
    for key, value in urllib.parse.parse_qsl(fragment, keep_blank_values=True):
        if (key == "sha256" and _HEX.fullmatch(value)) or (key == "cached" and value.startswith("/")
                                                             and "://" not in value):
            kept.append((key, value))
    return urllib.parse.urlencode(kept, safe="/")


def redact(uri: str) -> str:
    """`uri` without credentials, query string and fragment (the weights' `#sha256=` pin kept); a path without
    a scheme unchanged. Idempotent: `redact(redact(u)) == redact(u)`."""
    if not isinstance(uri, str):
        return uri
    parts = _parts(uri)
    if parts is None:
        return uri
    scheme, _, host, path, _, fragment = parts
    pin = _pin(fragment) if fragment else ""
    return f"{scheme}://{host}{path}" + (f"#{pin}" if pin else "")


def _worth_masking(text: str) -> bool:
    """A value long enough to be a secret and not to blank ordinary words of a message (`3600`, `true`)."""
    return len(text) >= 6 or (len(text) >= 4 and not text.isdigit() and text.lower() not in ("true", "false"))


def secrets(uri: str) -> set[str]:
    """The pieces of `uri` that `redact` drops and that may be secret, in the forms a message may quote them:
    as written, percent-decoded and percent-encoded."""
    parts = _parts(uri) if isinstance(uri, str) else None
    if parts is None:
        return set()
    _, userinfo, _, _, query, fragment = parts
    pieces = {userinfo, *userinfo.split(":", 1)} if userinfo else set()
    if fragment and _pin(fragment) != fragment:
        pieces.add(fragment)
    for text in (query, "" if _pin(fragment) == fragment else fragment):
        if not text:
            continue
        pieces.add(text)
        for item in re.split(r"[&;]", text):
            key, sep, value = item.partition("=")
            pieces.add(value if sep else key)
    found = set()
    for piece in pieces:
        for form in (piece, urllib.parse.unquote(piece), urllib.parse.unquote_plus(piece),
                     urllib.parse.quote(piece, safe=""), urllib.parse.quote(urllib.parse.unquote(piece), safe="")):
            if _worth_masking(form):
                found.add(form)
    return found


def scrub(text: str | None, *uris: str | None) -> str | None:
    """`text` (an error message, a log line) with every URL in it redacted, and every secret of `uris` masked
    wherever else it appears (a library may quote a URL's path and query without its scheme, or re-encode it)."""
    if not text:
        return text
    for secret in sorted({s for uri in uris if uri for s in secrets(uri)}, key=len, reverse=True):
        text = text.replace(secret, MASK)
    return _URL_IN_TEXT.sub(lambda match: redact(match.group(0)), text)


def redact_logs() -> None:
    """From now on, every log record of this process carries its message, its traceback and its stack with each
    URL in them redacted, whatever logger made it (fsspec and aiohttp log whole URLs at DEBUG) and whichever
    handler writes it; a traceback the interpreter prints for an uncaught exception (a job that stops) is
    redacted too. Idempotent."""
    make = logging.getLogRecordFactory()
    if getattr(make, "redacts", False):
        return

    def factory(*args, **kwargs) -> logging.LogRecord:
        record = make(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a malformed record is logging's to report, as it would
            return record
        if "://" in message:
            record.msg, record.args = scrub(message), None
        if record.exc_info and record.exc_info[0] is not None:
            # formatted now, as handlers would: a Formatter uses a record's exc_text where it is set
            record.exc_text = scrub(_FORMATTER.formatException(record.exc_info))
        if record.stack_info:
            record.stack_info = scrub(record.stack_info)
        return record

    factory.redacts = True
    logging.setLogRecordFactory(factory)
    show = sys.excepthook

    def excepthook(kind, error, trace) -> None:
        if kind is KeyboardInterrupt:
            show(kind, error, trace)
            return
        sys.stderr.write(scrub("".join(traceback.format_exception(kind, error, trace))))

    sys.excepthook = excepthook


_FORMATTER = logging.Formatter()


def normalise(uri: str) -> tuple[str, str]:
    """(kind, path) that names the place `uri` points to: ("file", real absolute path) for a local path or a
    `file://` URL (symlinks resolved, `..` applied, no trailing slash); ("s3", "bucket/key") for `s3://` and
    `s3a://`; (scheme, normalised path) for any other scheme. Credentials and query strings are dropped."""
    text = os.fspath(uri)
    parts = _parts(text)
    if parts is None or parts[0].lower() == "file":
        if parts is not None:  # file:///abs/path, file://localhost/abs/path
            host, path = parts[2], urllib.parse.unquote(parts[3])
            text = path if host in ("", "localhost") else f"//{host}{path}"
        return "file", os.path.realpath(os.path.abspath(os.path.expanduser(text)))
    scheme, _, host, path, _, _ = parts
    scheme = {"s3a": "s3", "s3n": "s3"}.get(scheme.lower(), scheme.lower())
    path = posixpath.normpath("/" + urllib.parse.unquote(path)).strip("/")
    return scheme, f"{host.lower()}/{path}" if path else host.lower()


def within(uri: str, root: str) -> bool:
    """Whether `uri` is `root` or a place under it, after `normalise`-ing both."""
    kind, path = normalise(uri)
    root_kind, root_path = normalise(root)
    if kind != root_kind:
        return False
    return path == root_path or path.startswith(root_path.rstrip("/") + "/")

"""URIs for local paths and object stores (fsspec, s3fs), and Parquet tables written one atomic part at a time.

A table is a directory of `<part>.parquet` files, readable by `pyarrow.dataset.dataset(table_uri)`, pandas
and duckdb. S3 credentials and endpoint come from the standard AWS environment variables
(`AWS_ENDPOINT_URL` for MinIO, moto or another S3-compatible store).
"""

from __future__ import annotations

import io
import os
import posixpath
import uuid

import fsspec
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from multistream import s3config

VIDEO_EXTENSIONS = (".avi", ".mp4", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".flv", ".wmv")
PART_SUFFIX = ".parquet"


def _is_local(fs: fsspec.AbstractFileSystem) -> bool:
    return "file" in fs.protocol or "local" in fs.protocol


def filesystem(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """(filesystem, path without protocol) for a local path or URI such as `s3://bucket/key`.

    fsspec caches instances per arguments (and drops its cache in forked children), so calls are cheap.
    S3 listings are not cached: other processes write parts concurrently, and a stale listing would
    make a resumed job redo or miss work.
    """
    options = {}
    if uri.startswith(("s3://", "s3a://")):
        options["use_listings_cache"] = False
        options.update(s3config.client_options())  # retries, back-off, timeouts: multistream.s3config
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint:  # explicit, so that the cached instance changes with the environment
            options["client_kwargs"] = {"endpoint_url": endpoint}
    fs, path = fsspec.core.url_to_fs(os.fspath(uri), **options)
    if "s3" in fs.protocol:
        fs.retries = s3config.current().retries  # s3fs's own retry loop around botocore's
    return fs, path


def _uri(fs: fsspec.AbstractFileSystem, path: str) -> str:
    return path if _is_local(fs) else fs.unstrip_protocol(path)


def join(uri: str, *parts: str) -> str:
    """`uri/part1/part2` with exactly one slash between the pieces, protocol kept."""
    pieces = [os.fspath(uri).rstrip("/")] + [p.strip("/") for p in parts if p.strip("/")]
    return "/".join(pieces)


def exists(uri: str) -> bool:
    fs, path = filesystem(uri)
    return fs.exists(path)


def is_dir(uri: str) -> bool:
    fs, path = filesystem(uri)
    return fs.isdir(path)


def open_input(uri: str, mode: str = "rb"):
    """An fsspec file object (a context manager) that reads `uri` in blocks, never staging it whole."""
    fs, path = filesystem(uri)
    return fs.open(path, mode)


def list_files(root: str, extensions: tuple[str, ...] | None = VIDEO_EXTENSIONS) -> list[str]:
    """Sorted URIs of the files under `root` (recursive) whose lowercase name ends with one of `extensions`.

    Hidden files and folders (a name starting with ".") are skipped; None keeps every extension. A `root`
    that is itself such a file gives [root].
    """
    fs, path = filesystem(root)
    if not fs.exists(path):
        return []
    paths = [path] if fs.isfile(path) else fs.find(path)
    base = path.rstrip("/")
    suffixes = None if extensions is None else tuple(e.lower() for e in extensions)
    keep = []
    for found in paths:
        rel = found[len(base):].lstrip("/") if found.startswith(base) else posixpath.basename(found)
        if any(piece.startswith(".") for piece in rel.split("/")):
            continue
        if suffixes is None or found.lower().endswith(suffixes):
            keep.append(_uri(fs, found) if "://" in os.fspath(root) else found)
    return sorted(keep)


def relative(uri: str, root: str) -> str:
    """Posix path of `uri` relative to `root` (both URIs or both local paths)."""
    _, path = filesystem(uri)
    _, base = filesystem(root)
    return posixpath.relpath(path, base.rstrip("/") or "/")


def read_bytes(uri: str) -> bytes:
    fs, path = filesystem(uri)
    return fs.cat_file(path)


def read_text(uri: str) -> str:
    return read_bytes(uri).decode("utf-8")


def write_bytes(uri: str, data: bytes) -> None:
    """Write `data` atomically: readers see the old object or the whole new one, never a partial file."""
    fs, path = filesystem(uri)
    if _is_local(fs):
        _replace_local(path, lambda tmp: _write_file(tmp, data))
    else:
        fs.pipe_file(path, data)  # one PUT (or a multipart upload, visible only once completed)


def write_text(uri: str, text: str) -> None:
    write_bytes(uri, text.encode("utf-8"))


def _write_file(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


def _replace_local(path: str, write) -> None:
    """Call `write(tmp)` on a hidden temporary name beside `path`, then rename it over `path`."""
    directory, name = os.path.split(path)
    os.makedirs(directory or ".", exist_ok=True)
    tmp = os.path.join(directory, f".{name}.{uuid.uuid4().hex}.tmp")  # hidden: datasets ignore it
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_part(table: pa.Table, table_uri: str, part_name: str) -> str:
    """Write `table` as `<table_uri>/<part_name>.parquet` (zstd) atomically; returns the part's URI."""
    part_uri = join(table_uri, part_name + PART_SUFFIX)
    fs, path = filesystem(part_uri)
    if _is_local(fs):
        _replace_local(path, lambda tmp: pq.write_table(table, tmp, compression="zstd"))
    else:
        buffer = io.BytesIO()
        pq.write_table(table, buffer, compression="zstd")
        fs.pipe_file(path, buffer.getvalue())
    return part_uri


def _part_paths(fs: fsspec.AbstractFileSystem, path: str) -> list[str]:
    if not fs.isdir(path):
        return []
    names = [posixpath.basename(p.rstrip("/")) for p in fs.ls(path, detail=False)]
    return sorted(posixpath.join(path, n) for n in names
                  if n.endswith(PART_SUFFIX) and not n.startswith((".", "_")))


def list_parts(table_uri: str) -> list[str]:
    """Sorted part names (without `.parquet`) of a table; [] when the table does not exist."""
    fs, path = filesystem(table_uri)
    return [posixpath.basename(p)[:-len(PART_SUFFIX)] for p in _part_paths(fs, path)]


def delete_part(table_uri: str, part_name: str) -> None:
    fs, path = filesystem(join(table_uri, part_name + PART_SUFFIX))
    if fs.exists(path):
        fs.rm(path)


def read_table(table_uri: str, columns: list[str] | None = None, schema: pa.Schema | None = None,
               filter: ds.Expression | None = None) -> pa.Table:
    """All parts of a table as one pyarrow Table (parts in name order).

    `schema` unifies the parts (columns a part lacks read as null) and types the empty table returned
    when the table is missing or has no parts. `filter` is a `pyarrow.dataset` expression.
    """
    fs, path = filesystem(table_uri)
    parts = _part_paths(fs, path)
    if not parts:
        if schema is None:
            return pa.table({})
        empty = schema.empty_table()
        return empty.select(columns) if columns is not None else empty
    arrow_fs = pafs.LocalFileSystem() if _is_local(fs) else pafs.PyFileSystem(pafs.FSSpecHandler(fs))
    dataset = ds.dataset(parts, schema=schema, format="parquet", filesystem=arrow_fs)
    return dataset.to_table(columns=columns, filter=filter)


def arrow_location(uri: str) -> tuple[str, pafs.FileSystem | None]:
    """(path, pyarrow filesystem) for Ray's APIs: an absolute local path with None, or an fsspec-backed store."""
    if "://" not in uri:
        return os.path.abspath(uri), None
    fs, path = filesystem(uri)
    return path, pafs.PyFileSystem(pafs.FSSpecHandler(fs))

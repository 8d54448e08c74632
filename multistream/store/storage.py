"""URIs for local paths, object stores and http(s) URLs (fsspec, s3fs), and Parquet tables written one atomic
part at a time.

A table is a directory of `<part>.parquet` files, readable by `pyarrow.dataset.dataset(table_uri)`, pandas
and duckdb. A part not yet committed waits under `<table>/_staged/` (`write_part(..., staged=True)`), which
those readers skip (pyarrow ignores names starting with "_", and a `*.parquet` glob does not descend), until
`publish_part` moves it into place. S3 credentials and endpoint come from the standard AWS environment
variables (`AWS_ENDPOINT_URL` for MinIO, moto or another S3-compatible store).
"""

from __future__ import annotations

import asyncio
import io
import os
import posixpath
import uuid
from collections.abc import Callable

import fsspec
import fsspec.asyn
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from multistream.dataset.entry import VIDEO_EXTENSIONS  # the default of `dataset.extensions`
from multistream.store import s3config

PART_SUFFIX = ".parquet"
STAGED = "_staged"  # <table>/_staged/<part>.parquet: written, not yet committed
# the lease generation of the job that wrote a part, in the part's Parquet key-value metadata
GENERATION_KEY = b"multistream.lease_generation"
_writer_generation: int | None = None


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
        options.update(s3config.client_options())  # retries, back-off, timeouts: multistream.store.s3config
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint:  # explicit, so that the cached instance changes with the environment
            options["client_kwargs"] = {"endpoint_url": endpoint}
    elif uri.startswith(("http://", "https://")):
        options["block_size"] = 2**20  # ranged reads of 1 MiB: a video is streamed, never fetched whole
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
    """An fsspec file object (a context manager) that reads `uri` in blocks, never staging it whole; a member
    of a tar shard (`members.member_uri`) reads as a file of its own."""
    from multistream.store import members

    if members.is_member(uri):
        return members.open_member(uri)
    fs, path = filesystem(uri)
    return fs.open(path, mode)


def list_files(root: str, extensions: tuple[str, ...] | None = VIDEO_EXTENSIONS) -> list[str]:
    """Sorted URIs of the files under `root` (recursive) whose lowercase name ends with one of `extensions`.

    Hidden files and folders (a name starting with ".") are skipped; None keeps every extension. A `root`
    that is itself such a file gives [root].
    """
    return sorted(iter_files(root, extensions))


def iter_files(root: str, extensions: tuple[str, ...] | None = VIDEO_EXTENSIONS, on_skip=None):
    """`list_files` as a stream, in listing order: a local tree is walked, an S3 prefix listed page by page
    (1,000 keys a request), so that no listing of the whole archive is ever held. `on_skip`, when given, is
    called with the path of every file left out for its extension."""
    fs, path = filesystem(root)
    if not fs.exists(path):
        return
    base = path.rstrip("/")
    suffixes = None if extensions is None else tuple(e.lower() for e in extensions)
    as_uri = "://" in os.fspath(root)
    for found in [path] if fs.isfile(path) else _walk(fs, base):
        rel = found[len(base):].lstrip("/") if found.startswith(base) else posixpath.basename(found)
        if any(piece.startswith(".") for piece in rel.split("/")):
            continue
        if suffixes is None or found.lower().endswith(suffixes):
            yield _uri(fs, found) if as_uri else found
        elif on_skip is not None:
            on_skip(found)


def _walk(fs: fsspec.AbstractFileSystem, base: str):
    if _is_local(fs):
        for folder, dirs, files in os.walk(base):
            dirs.sort()
            yield from (posixpath.join(folder, name) for name in sorted(files))
    elif hasattr(fs, "_iterdir"):  # s3fs
        bucket, _, prefix = base.partition("/")
        pages = fs._iterdir(bucket, delimiter="", prefix=f"{prefix}/" if prefix else "")
        while page := fsspec.asyn.sync(fs.loop, _next_page, pages):
            yield from (info["name"] for info in page if info["type"] == "file")
    else:
        yield from fs.find(base)


async def _next_page(items, size: int = 1000) -> list:
    page = []
    async for item in items:
        page.append(item)
        if len(page) == size:
            break
    return page


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


# Called with the URI before every write, publish and delete of this process: the run root's lease adds one
# while it is held (`lease.Lease.guard`), which stops a job that lost its lease before it touches the run root.
_write_guards: list[Callable[[str], None]] = []


def add_write_guard(guard: Callable[[str], None]) -> None:
    _write_guards.append(guard)


def remove_write_guard(guard: Callable[[str], None]) -> None:
    if guard in _write_guards:
        _write_guards.remove(guard)


def check_write(uri: str) -> None:
    """Run the write guards (e.g. a lost lease's) for a write or delete of `uri`; each may raise."""
    for guard in list(_write_guards):
        guard(uri)


def write_bytes(uri: str, data: bytes) -> None:
    """Write `data` atomically: readers see the old object or the whole new one, never a partial file."""
    check_write(uri)
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


def set_writer_generation(generation: int | None) -> None:
    """The lease generation this process writes under (None: none): stamped into every part it writes, so that
    a deletion can tell this job's parts and its predecessors' from a later job's (`part_generation`)."""
    global _writer_generation
    _writer_generation = generation


def writer_generation() -> int | None:
    return _writer_generation


def part_schema(table_uri: str, part_name: str, staged: bool = False) -> pa.Schema | None:
    """A part's schema, with its metadata, from its footer alone; None for a missing part."""
    fs, path = filesystem(_part_uri(table_uri, part_name, staged))
    try:
        with fs.open(path, "rb") as handle:
            return pq.read_schema(handle)
    except FileNotFoundError:
        return None


def part_generation(table_uri: str, part_name: str, staged: bool = False) -> int | None:
    """The lease generation that wrote a part (its footer's metadata); None for a part written without a lease
    or missing."""
    found = part_schema(table_uri, part_name, staged)
    metadata = (found.metadata or {}) if found is not None else {}
    return int(metadata[GENERATION_KEY]) if GENERATION_KEY in metadata else None


def write_part(table: pa.Table, table_uri: str, part_name: str, staged: bool = False) -> str:
    """Write `table` as `<table_uri>/<part_name>.parquet` (zstd) atomically, or as `<table_uri>/_staged/...`
    with `staged` (invisible to readers until `publish_part`), stamped with this process's lease generation;
    returns the part's URI."""
    part_uri = _part_uri(table_uri, part_name, staged)
    check_write(part_uri)
    if _writer_generation is not None:
        table = table.replace_schema_metadata({**(table.schema.metadata or {}),
                                               GENERATION_KEY: str(_writer_generation).encode()})
    fs, path = filesystem(part_uri)
    if _is_local(fs):
        _replace_local(path, lambda tmp: pq.write_table(table, tmp, compression="zstd"))
    else:
        buffer = io.BytesIO()
        pq.write_table(table, buffer, compression="zstd")
        fs.pipe_file(path, buffer.getvalue())
    return part_uri


def _part_uri(table_uri: str, part_name: str, staged: bool = False) -> str:
    return join(table_uri, STAGED, part_name + PART_SUFFIX) if staged else join(table_uri, part_name + PART_SUFFIX)


def publish_part(table_uri: str, part_name: str) -> bool:
    """Move the staged part `part_name` into place (a rename; on an object store a copy, then the staged
    object's deletion): readers see the whole part or none. False when there is no staged part (published
    already: calling it again is harmless)."""
    check_write(_part_uri(table_uri, part_name))
    fs, staged = filesystem(_part_uri(table_uri, part_name, staged=True))
    _, final = filesystem(_part_uri(table_uri, part_name))
    if _is_local(fs):
        try:
            os.replace(staged, final)
        except FileNotFoundError:
            return False
        return True
    try:
        fs.copy(staged, final)
    except FileNotFoundError:
        return False
    fs.rm(staged)
    return True


def list_staged(table_uri: str) -> list[str]:
    """Sorted names of the staged (uncommitted) parts of a table."""
    return list_parts(join(table_uri, STAGED))


def delete_staged(table_uri: str, part_name: str) -> None:
    delete_part(join(table_uri, STAGED), part_name)


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


def read_part(table_uri: str, part_name: str, columns: list[str] | None = None) -> pa.Table:
    """One part of a table (only `columns`, when given)."""
    fs, path = filesystem(join(table_uri, part_name + PART_SUFFIX))
    with fs.open(path, "rb") as handle:
        return pq.read_table(handle, columns=columns)


def delete_part(table_uri: str, part_name: str) -> None:
    check_write(join(table_uri, part_name + PART_SUFFIX))
    fs, path = filesystem(join(table_uri, part_name + PART_SUFFIX))
    if fs.exists(path):
        fs.rm(path)


def read_table(table_uri: str, columns: list[str] | None = None, schema: pa.Schema | None = None,
               filter: ds.Expression | None = None, parts: list[str] | None = None) -> pa.Table:
    """All parts of a table (only the part names `parts`, when given) as one pyarrow Table, in name order.

    `schema` unifies the parts (columns a part lacks read as null) and types the empty table returned
    when the table is missing or has no parts. `filter` is a `pyarrow.dataset` expression.
    """
    fs, path = filesystem(table_uri)
    paths = _part_paths(fs, path) if parts is None else [posixpath.join(path, p + PART_SUFFIX) for p in sorted(parts)]
    if not paths:
        if schema is None:
            return pa.table({})
        empty = schema.empty_table()
        return empty.select(columns) if columns is not None else empty
    return _dataset(fs, paths, schema).to_table(columns=columns, filter=filter)


def part_index(table_uri: str, key: str) -> dict:
    """{each row's `key` value: the name of the part holding that row}, from one read of the `key` column (a
    reader of a few rows at a time then opens only their parts: `read_table(..., parts=...)`)."""
    fs, path = filesystem(table_uri)
    paths = _part_paths(fs, path)
    if not paths:
        return {}
    table = _dataset(fs, paths, None).to_table(columns=[key, "__filename"])
    names = [posixpath.basename(name)[:-len(PART_SUFFIX)] for name in table["__filename"].to_pylist()]
    return dict(zip(table[key].to_pylist(), names, strict=True))


def _dataset(fs: fsspec.AbstractFileSystem, paths: list[str], schema: pa.Schema | None) -> ds.Dataset:
    arrow_fs = pafs.LocalFileSystem() if _is_local(fs) else pafs.PyFileSystem(pafs.FSSpecHandler(fs))
    return ds.dataset(paths, schema=schema, format="parquet", filesystem=arrow_fs)


def read_columns(table_uri: str, columns: list[str], schema: pa.Schema, batch: int = 256,
                 with_part: bool = False) -> pa.Table:
    """`columns` of every part of a table of small parts (e.g. `videos/`), as `read_table` gives them (plus a
    "part" column naming each row's part, `with_part`); on an object store each part is fetched whole with one
    GET, `batch` parts at a time concurrently (s3fs), instead of a HEAD and ranged GETs per part."""
    fs, path = filesystem(table_uri)
    parts = _part_paths(fs, path)
    tables = [schema.empty_table().select(columns)]
    if with_part:
        tables[0] = tables[0].append_column("part", pa.array([], pa.string()))
    for start in range(0, len(parts), batch):
        chunk = parts[start:start + batch]
        for part, data in zip(chunk, _fetch(fs, chunk), strict=True):
            table = pq.read_table(io.BytesIO(data), columns=[c for c in columns if c in pq.read_schema(
                io.BytesIO(data)).names])
            table = (table.cast(pa.schema([schema.field(name) for name in table.column_names]))
                     if table.num_columns == len(columns) else _with_nulls(table, columns, schema)).select(columns)
            if with_part:
                name = posixpath.basename(part)[:-len(PART_SUFFIX)]
                table = table.append_column("part", pa.array([name] * table.num_rows, pa.string()))
            tables.append(table)
    return pa.concat_tables(tables)


def _fetch(fs: fsspec.AbstractFileSystem, paths: list[str]) -> list[bytes]:
    """Whole objects, concurrently, one GET each (`fs.cat` would first look each one up)."""
    if not isinstance(fs, fsspec.asyn.AsyncFileSystem):
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(8) as pool:
            return list(pool.map(fs.cat_file, paths))

    async def fetch_all():
        return await asyncio.gather(*(fs._cat_file(path, max_concurrency=1) for path in paths))

    return fsspec.asyn.sync(fs.loop, fetch_all)


def _with_nulls(table: pa.Table, columns: list[str], schema: pa.Schema) -> pa.Table:
    for name in columns:
        if name not in table.column_names:
            table = table.append_column(schema.field(name), pa.nulls(table.num_rows, schema.field(name).type))
    return table.select(columns).cast(pa.schema([schema.field(name) for name in columns]))


def arrow_location(uri: str) -> tuple[str, pafs.FileSystem | None]:
    """(path, pyarrow filesystem) for Ray's APIs: an absolute local path with None, or an fsspec-backed store."""
    if "://" not in uri:
        return os.path.abspath(uri), None
    fs, path = filesystem(uri)
    return path, pafs.PyFileSystem(pafs.FSSpecHandler(fs))

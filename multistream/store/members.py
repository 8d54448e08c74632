"""A member of a tar shard (WebDataset) addressed by one URI and read as a file of its own, by byte range.

    uri = member_uri("s3://bucket/shards/train-0001.tar", "v_Jump_g01_c01.mp4", offset=1536, size=81234)
    # s3://bucket/shards/train-0001.tar::v_Jump_g01_c01.mp4@1536:81234
    with open_member(uri) as f:     # a seekable binary file of `size` bytes: f.seek(0, 2) == 81234
        f.read(16)

Only the member's bytes are read (ranged GETs on an object store): the shard is never scanned again, so the
videos of one shard decode in parallel on any worker. The offsets come from the shard's tar headers
(`multistream.dataset.webdataset`).
"""

from __future__ import annotations

import io
import os
import re

# no query string or fragment: the URI is stored and logged as it is (`store.uris.redact` keeps a path whole)
_MEMBER = re.compile(r"^(?P<shard>.+?)::(?P<member>.+)@(?P<offset>\d+):(?P<size>\d+)$")


def member_uri(shard: str, member: str, offset: int, size: int) -> str:
    return f"{shard}::{member}@{offset}:{size}"


def is_member(uri: str) -> bool:
    return "::" in uri and _MEMBER.match(uri) is not None


def readable_uri(uri: str) -> str:
    """`uri` as a message names it: a member as "<shard> member <name>"."""
    if not is_member(uri):
        return uri
    shard, member, _, _ = parse(uri)
    return f"{shard} member {member}"


def parse(uri: str) -> tuple[str, str, int, int]:
    """(shard URI, member name, offset, size) of a member URI."""
    match = _MEMBER.match(uri)
    if match is None:
        raise ValueError(f"{uri} is not a tar member URI")
    return match["shard"], match["member"], int(match["offset"]), int(match["size"])


class MemberFile(io.RawIOBase):
    """The byte range [offset, offset + size) of an open binary file, as a seekable read-only file."""

    def __init__(self, handle, offset: int, size: int, name: str):
        super().__init__()
        self._handle, self._offset, self._size, self._position = handle, offset, size, 0
        self.name = self.full_name = name

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, position: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._position, os.SEEK_END: self._size}[whence]
        self._position = max(0, base + position)
        return self._position

    def readinto(self, buffer) -> int:
        count = max(0, min(len(buffer), self._size - self._position))
        if count == 0:
            return 0
        self._handle.seek(self._offset + self._position)
        data = self._handle.read(count)
        if len(data) < count:
            raise EOFError(f"{self.name}: the shard ends inside this member ({self._position + len(data)} of "
                           f"{self._size} bytes)")
        buffer[:len(data)] = data
        self._position += len(data)
        return len(data)

    def read(self, size: int = -1) -> bytes:
        size = self._size - self._position if size is None or size < 0 else size
        buffer = bytearray(max(0, min(size, self._size - self._position)))
        view = memoryview(buffer)
        filled = 0
        while filled < len(buffer):
            got = self.readinto(view[filled:])
            if got == 0:
                break
            filled += got
        return bytes(buffer[:filled])

    def close(self) -> None:
        if not self.closed:
            self._handle.close()
        super().close()


def open_member(uri: str) -> MemberFile:
    """The member `uri` names, opened for reading (its shard opened with small ranged reads)."""
    from multistream.store import storage

    shard, member, offset, size = parse(uri)
    fs, path = storage.filesystem(shard)
    handle = fs.open(path, "rb") if "file" in fs.protocol or "local" in fs.protocol else \
        fs.open(path, "rb", block_size=min(max(size, 2**16), 8 * 2**20))
    return MemberFile(handle, offset, size, f"{shard} member {member}")

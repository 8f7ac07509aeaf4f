"""The one-member tar stream inside a bundle, written and read as a stream.

Writing follows what the AWS AMI tools run (`tar --create --dereference
--sparse --owner 0 --group 0`, GNU format): a file with holes becomes an
old-GNU sparse member (type 'S', sparse map in the header and extension
blocks), a file without holes a plain member; the archive ends with two zero
blocks and is padded to GNU tar's 10 KiB record. Holes are found with
SEEK_DATA/SEEK_HOLE, so they are never read, hashed or compressed.

Reading is push-style (`TarReceiver.feed`), so the unbundle pipeline can
hand it decompressed bytes as they come; it writes data at its offsets and
leaves holes as holes. It accepts what GNU tar writes for one regular or
old-GNU sparse file (plus GNU long-name and pax headers, which it skips).
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterator

from builder.sparse import Extent, data_extents

BLOCK = 512
RECORD = 20 * BLOCK  # GNU tar's default blocking factor
READ_SIZE = 1 << 20
_HEADER_SPARSE_SLOTS = 4
_EXT_SPARSE_SLOTS = 21


# ------------------------------------------------------------------ writing


def _number(value: int, width: int) -> bytes:
    """A tar numeric field: octal with NUL, or GNU base-256 when too large."""
    if value < 8 ** (width - 1):
        return b"%0*o\0" % (width - 1, value)
    out = bytearray(width)
    for i in range(width - 1, 0, -1):
        out[i] = value & 0xFF
        value >>= 8
    if value:
        raise ValueError("number too large for a tar header")
    out[0] = 0x80
    return bytes(out)


def _sparse_entries(extents: list[Extent]) -> bytes:
    return b"".join(_number(e.offset, 12) + _number(e.length, 12) for e in extents)


def member_header(name: str, size: int, mtime: int, extents: list[Extent] | None) -> bytes:
    """Header block(s) for one file: plain when `extents` is None, else sparse."""
    raw_name = name.encode()
    if not raw_name or len(raw_name) >= 100 or b"/" in raw_name:
        raise ValueError(f"tar member name must be 1-99 bytes without '/': {name!r}")
    header = bytearray(BLOCK)
    header[0 : len(raw_name)] = raw_name
    header[100:108] = _number(0o644, 8)
    header[108:116] = _number(0, 8)
    header[116:124] = _number(0, 8)
    stored = size if extents is None else sum(e.length for e in extents)
    header[124:136] = _number(stored, 12)
    header[136:148] = _number(mtime, 12)
    header[156:157] = b"0" if extents is None else b"S"
    header[257:265] = b"ustar  \0"  # GNU magic + version
    header[265:269] = b"root"
    header[297:301] = b"root"
    ext_blocks: list[bytes] = []
    if extents is not None:
        # as GNU tar: a final (size, 0) entry ends the map, whether or not the
        # file ends in a hole
        entries = [*extents, Extent(size, 0)]
        head, rest = entries[:_HEADER_SPARSE_SLOTS], entries[_HEADER_SPARSE_SLOTS:]
        header[386 : 386 + 24 * len(head)] = _sparse_entries(head)
        header[482] = 1 if rest else 0
        header[483:495] = _number(size, 12)
        while rest:
            chunk, rest = rest[:_EXT_SPARSE_SLOTS], rest[_EXT_SPARSE_SLOTS:]
            block = bytearray(BLOCK)
            block[0 : 24 * len(chunk)] = _sparse_entries(chunk)
            block[504] = 1 if rest else 0
            ext_blocks.append(bytes(block))
    header[148:156] = b"        "
    header[148:156] = b"%06o\0 " % sum(header)
    return bytes(header) + b"".join(ext_blocks)


def tar_stream(path: str, name: str, *, sparse: bool = True, read_size: int = READ_SIZE,
               new_buffer: Callable[[], bytearray] | None = None) -> Iterator[bytearray]:
    """Yield the tar stream of one file in blocks of `read_size` bytes (the
    last one shorter). The file is read straight into each block (preadv),
    so no byte is copied twice. Blocks come from `new_buffer` (each of
    `read_size` bytes: a recycling pool saves faulting in fresh pages for
    every block), else are fresh bytearrays; either way the consumer owns
    a block once it is yielded."""
    fd = os.open(path, os.O_RDONLY)
    try:
        st = os.fstat(fd)
        size = st.st_size
        extents = data_extents(fd, size) if sparse else [Extent(0, size)]
        has_holes = sum(e.length for e in extents) < size
        header = member_header(name, size, int(st.st_mtime), extents if has_holes else None)
        out = _Blocks(read_size, new_buffer or (lambda: bytearray(read_size)))
        yield from out.put(header)
        total = len(header)
        for extent in extents if has_holes else [Extent(0, size)]:
            pos, end = extent.offset, extent.offset + extent.length
            while pos < end:
                with memoryview(out.buf) as view:
                    n = os.preadv(fd, [view[out.have : out.have + min(out.room, end - pos)]], pos)
                if not n:
                    raise OSError(errno.EIO, f"{path} shrank while it was being read")
                pos += n
                total += n
                yield from out.grew(n)
        tail = (-total) % BLOCK + 2 * BLOCK
        total += tail
        tail += (-total) % RECORD
        yield from out.put(bytes(tail))
        yield from out.flush()
    finally:
        os.close(fd)


class _Blocks:
    """A `read_size` buffer filled by reads or small copies, handed on when full."""

    def __init__(self, read_size: int, new_buffer: Callable[[], bytearray]) -> None:
        self.size = read_size
        self.new_buffer = new_buffer
        self.buf = self._next()
        self.have = 0

    def _next(self) -> bytearray:
        buf = self.new_buffer()
        if len(buf) != self.size:
            raise ValueError(f"tar_stream: a buffer of {len(buf)} bytes, not {self.size}")
        return buf

    @property
    def room(self) -> int:
        return self.size - self.have

    def grew(self, n: int) -> Iterator[bytearray]:
        self.have += n
        if self.have == self.size:
            full, self.have = self.buf, 0
            self.buf = self._next()
            yield full

    def put(self, data: bytes) -> Iterator[bytearray]:
        view = memoryview(data)
        while view:
            take = min(len(view), self.room)
            self.buf[self.have : self.have + take] = view[:take]
            view = view[take:]
            yield from self.grew(take)

    def flush(self) -> Iterator[bytearray]:
        if self.have:
            del self.buf[self.have :]
            self.have = 0
            yield self.buf


# ------------------------------------------------------------------ reading


class TarFormatError(Exception):
    """The decrypted, decompressed stream is not the tar a bundle holds."""


def _parse_number(field: bytes) -> int:
    if field[:1] and field[0] & 0x80:
        value = field[0] & 0x7F
        for b in field[1:]:
            value = (value << 8) | b
        return value
    text = field.split(b"\0", 1)[0].strip(b" \0")
    if not text:
        return 0
    try:
        return int(text, 8)
    except ValueError as exc:
        raise TarFormatError(f"bad number {field!r} in a tar header") from exc


def _checksum_ok(block: bytes) -> bool:
    stored = _parse_number(block[148:156])
    return stored == sum(block[:148]) + 8 * 32 + sum(block[156:])


class TarReceiver:
    """Push parser for a one-file tar stream; writes the file via `pwrite`.

    `pwrite(data, offset)` writes the member's data at its offset in the
    file; holes are skipped (the caller truncates the file to `size`).
    """

    def __init__(self, pwrite: Callable[[bytes, int], None]) -> None:
        self._pwrite = pwrite
        self._buf = bytearray()
        self._state = "header"
        self.name = ""
        self.size = 0
        self._map: list[Extent] = []
        self._map_index = 0
        self._in_extent = 0
        self._stored_left = 0
        self._pad_left = 0
        self._skip_left = 0  # bytes of a long-name/pax payload (padded)
        self._pending_ext = False
        self.done = False
        self.members = 0

    def feed(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            if self._state == "data":
                view = self._feed_data(view)
                continue
            if self._state == "trailer":
                if any(view):
                    raise TarFormatError("data after the end of the tar archive")
                return
            need = BLOCK - len(self._buf)
            self._buf += view[:need]
            view = view[need:]
            if len(self._buf) < BLOCK:
                return
            block = bytes(self._buf)
            self._buf.clear()
            self._on_block(block)

    def _on_block(self, block: bytes) -> None:
        if self._state == "skip":
            self._skip_left -= BLOCK
            if self._skip_left <= 0:
                self._state = "header"
            return
        if self._state == "sparse_ext":
            self._add_entries(block, _EXT_SPARSE_SLOTS)
            if not block[504]:
                self._start_data()
            return
        # a header
        if not any(block):
            if self.members == 0:
                raise TarFormatError("the tar archive holds no file")
            self._state = "trailer"
            self.done = True
            return
        if not _checksum_ok(block):
            raise TarFormatError("tar header checksum mismatch")
        kind = block[156:157]
        stored = _parse_number(block[124:136])
        if kind in (b"L", b"K", b"x", b"g"):
            self._skip_left = stored + (-stored) % BLOCK
            self._state = "skip" if self._skip_left else "header"
            return
        if self.members:
            raise TarFormatError("the tar archive holds more than one file")
        self.members = 1
        self.name = block[:100].split(b"\0", 1)[0].decode("utf-8", "replace")
        self._stored_left = stored
        self._pad_left = (-stored) % BLOCK
        if kind in (b"0", b"\0", b"7"):
            self.size = stored
            self._map = [Extent(0, stored)] if stored else []
            self._start_data()
        elif kind == b"S":
            self.size = _parse_number(block[483:495])
            self._map = []
            self._add_entries(block[386:482], _HEADER_SPARSE_SLOTS)
            if block[482]:
                self._state = "sparse_ext"
            else:
                self._start_data()
        else:
            raise TarFormatError(f"unexpected tar member type {kind!r}")

    def _add_entries(self, raw: bytes, slots: int) -> None:
        for i in range(slots):
            field = raw[24 * i : 24 * i + 24]
            if not any(field):
                continue
            offset, length = _parse_number(field[:12]), _parse_number(field[12:])
            if length:
                self._map.append(Extent(offset, length))

    def _start_data(self) -> None:
        if sum(e.length for e in self._map) != self._stored_left:
            raise TarFormatError("the sparse map does not add up to the stored size")
        end = 0
        for extent in self._map:
            if extent.offset < end or extent.offset + extent.length > self.size:
                raise TarFormatError("the sparse map overlaps itself or runs past the file's end")
            end = extent.offset + extent.length
        self._map_index = 0
        self._in_extent = 0
        self._state = "data" if self._stored_left + self._pad_left else "header"

    def _feed_data(self, view: memoryview) -> memoryview:
        while view and self._stored_left:
            extent = self._map[self._map_index]
            take = min(len(view), extent.length - self._in_extent)
            self._pwrite(bytes(view[:take]), extent.offset + self._in_extent)
            view = view[take:]
            self._in_extent += take
            self._stored_left -= take
            if self._in_extent == extent.length:
                self._map_index += 1
                self._in_extent = 0
        if not self._stored_left:
            take = min(len(view), self._pad_left)
            view = view[take:]
            self._pad_left -= take
            if not self._pad_left:
                self._state = "header"
        return view

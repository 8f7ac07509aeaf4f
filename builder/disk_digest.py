"""The digest of a stored disk's bytes (image.json's `disk.digest`).

    sha256-blocks-512k:<hex>   sha256 of the concatenated binary sha256 digests
                               of the disk's 512 KiB blocks, in order (the last
                               block as long as what is left of the file)
    sha256:<hex>               the plain sha256 of the disk (image.json before
                               the block digest; still read and checked)

The block digest names the bytes as exactly as a plain sha256 (equal bytes,
equal digest; a collision needs a SHA-256 collision), whatever the file's
allocation: a hole is hashed as the zeros it reads as. It is cheap to take: a
block that is a hole needs no read (its digest is a constant), blocks are
hashed on every core, and a bake reuses the digests of the blocks it copied
unchanged from the cached root filesystem (builder.bake.root_image). 512 KiB
is the EBS snapshot block, so a snapshot upload checks the digest with the
block digests it sends anyway (builder.publish.snapshot_upload). By hand:
`amibake images verify NAME[:VERSION]`, or the few lines of Python in the
README ("The disk's digest").
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from builder.errors import UserError
from builder.sparse import data_extents

BLOCKS = "sha256-blocks-512k"
PLAIN = "sha256"
BLOCK = 512 * 1024
#: The digest of an all-zero block (and of a hole).
ZERO_BLOCK = hashlib.sha256(bytes(BLOCK)).digest()
_WORKERS = max(1, min(4, os.cpu_count() or 1))


def split(digest: str) -> tuple[str, str]:
    """('sha256-blocks-512k' | 'sha256', hex) of a digest as image.json has it."""
    algorithm, sep, hexdigest = digest.partition(":")
    if not sep or algorithm not in (BLOCKS, PLAIN):
        raise UserError(f"unknown disk digest {digest[:40]!r}",
                        hint=f"image.json's disk.digest is {BLOCKS}:<hex> or {PLAIN}:<hex>")
    return algorithm, hexdigest


def combine(block_digests: Iterable[bytes]) -> str:
    """The disk digest from its blocks' digests, in order."""
    top = hashlib.sha256()
    for d in block_digests:
        top.update(d)
    return f"{BLOCKS}:{top.hexdigest()}"


def block_count(size: int) -> int:
    return -(-size // BLOCK)


def data_blocks(fd: int, size: int, block: int = BLOCK) -> list[int]:
    """Indexes of the `block`-sized blocks a data extent touches (the rest are
    holes; a block listed may still hold only zeros)."""
    found: set[int] = set()
    for ext in data_extents(fd, size):
        found.update(range(ext.offset // block, (ext.end - 1) // block + 1))
    return sorted(found)


def hash_blocks(fd: int, indexes: Sequence[int], size: int) -> dict[int, bytes]:
    """index → sha256 of that block of `fd` (read; hashed on every core)."""
    if not indexes:
        return {}

    def run(part: Sequence[int]) -> list[tuple[int, bytes]]:
        buf = bytearray(BLOCK)
        view = memoryview(buf)
        out = []
        for i in part:
            want = min(BLOCK, size - i * BLOCK)
            got = os.preadv(fd, [view[:want]], i * BLOCK)
            if got != want:
                raise UserError("a disk image shrank while it was hashed")
            out.append((i, hashlib.sha256(view[:want]).digest()))
        return out

    workers = min(_WORKERS, len(indexes))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        parts = pool.map(run, [indexes[k::workers] for k in range(workers)])
        return {i: d for part in parts for i, d in part}


def block_digests(fd: int, size: int, known: Mapping[int, bytes] | None = None) -> list[bytes]:
    """Every block's digest; holes are not read, nor the blocks whose digest
    is `known` (index → digest)."""
    known = known or {}
    digests = [ZERO_BLOCK] * block_count(size)
    if size % BLOCK:  # a short last block (a hole, unless hashed below)
        digests[-1] = hashlib.sha256(bytes(size % BLOCK)).digest()
    todo = [i for i in data_blocks(fd, size) if i not in known]
    for i, d in (*hash_blocks(fd, todo, size).items(), *known.items()):
        digests[i] = d
    return digests


def fd_digest(fd: int, known: Mapping[int, bytes] | None = None) -> str:
    """The digest of the open file `fd`, the blocks in `known` not read."""
    return combine(block_digests(fd, os.fstat(fd).st_size, known))


def plain_sha256(fd: int, size: int) -> str:
    """Hex sha256 of the whole file (the old image.json digest); holes not read."""
    h = hashlib.sha256()
    zeros = memoryview(bytes(BLOCK))
    pos = 0
    for ext in data_extents(fd, size):
        while pos < ext.offset:
            n = min(BLOCK, ext.offset - pos)
            h.update(zeros[:n])
            pos += n
        while pos < ext.end:
            block = os.pread(fd, min(8 * BLOCK, ext.end - pos), pos)
            if not block:
                raise UserError("a disk image shrank while it was hashed")
            h.update(block)
            pos += len(block)
    while pos < size:
        n = min(BLOCK, size - pos)
        h.update(zeros[:n])
        pos += n
    return h.hexdigest()


def file_digest(path: Path, algorithm: str = BLOCKS) -> str:
    """`algorithm:hex` of the file at `path`."""
    fd = os.open(path, os.O_RDONLY)
    try:
        if algorithm == PLAIN:
            return f"{PLAIN}:{plain_sha256(fd, os.fstat(fd).st_size)}"
        return fd_digest(fd)
    finally:
        os.close(fd)


def matches(path: Path, digest: str) -> bool:
    """Whether the file's bytes have `digest` (taken with the algorithm it names)."""
    algorithm, _ = split(digest)
    return file_digest(path, algorithm) == digest

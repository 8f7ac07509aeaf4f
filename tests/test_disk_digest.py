"""The disk digest (builder.disk_digest): exact, independent of allocation, named."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from builder import disk_digest as dd
from builder.errors import UserError

B = dd.BLOCK
README = Path(__file__).resolve().parent.parent / "README.md"


def _by_definition(data: bytes) -> str:
    """The digest as README defines it: sha256 over the blocks' sha256 digests."""
    top = hashlib.sha256()
    for pos in range(0, len(data), B):
        top.update(hashlib.sha256(data[pos:pos + B]).digest())
    return "sha256-blocks-512k:" + top.hexdigest()


def _sparse(path: Path, size: int, writes: dict[int, bytes]) -> bytes:
    with path.open("wb") as f:
        f.truncate(size)
        for offset, data in writes.items():
            f.seek(offset)
            f.write(data)
    return path.read_bytes()


WRITES = {0: b"MBR", 3 * B + 17: os.urandom(B), 9 * B - 5: b"across a block edge",
          20 * B: bytes(B)}  # written zeros: data in the file, zeros in the digest


@pytest.mark.parametrize("size", [32 * B, 32 * B + 1000])
def test_the_digest_is_its_definition_holes_and_a_short_last_block_included(
        tmp_path: Path, size: int) -> None:
    data = _sparse(tmp_path / "disk", size, {**WRITES, size - 3: b"end"})
    assert dd.file_digest(tmp_path / "disk") == _by_definition(data)
    assert dd.file_digest(tmp_path / "disk", dd.PLAIN) == "sha256:" + hashlib.sha256(
        data).hexdigest()


def test_a_hole_and_written_zeros_give_one_digest(tmp_path: Path) -> None:
    holes = tmp_path / "holes"
    _sparse(holes, 16 * B, {})
    zeros = tmp_path / "zeros"
    zeros.write_bytes(bytes(16 * B))
    assert os.stat(holes).st_blocks == 0 < os.stat(zeros).st_blocks
    assert dd.file_digest(holes) == dd.file_digest(zeros) == _by_definition(bytes(16 * B))


@pytest.mark.parametrize("offset", [0, 3 * B + 17, 5 * B, 20 * B + 9, 32 * B - 1])
def test_one_changed_byte_anywhere_changes_the_digest(tmp_path: Path, offset: int) -> None:
    """In data, in a hole, in written zeros, in the last byte."""
    path = tmp_path / "disk"
    data = _sparse(path, 32 * B, WRITES)
    before = dd.file_digest(path)
    with path.open("r+b") as f:
        f.seek(offset)
        f.write(bytes([data[offset] ^ 1]))
    after = dd.file_digest(path)
    assert after != before and after == _by_definition(path.read_bytes())
    assert dd.matches(path, after) and not dd.matches(path, before)


def test_a_longer_disk_of_zeros_is_another_disk(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    _sparse(a, 8 * B, {0: b"x"})
    _sparse(b, 9 * B, {0: b"x"})
    assert dd.file_digest(a) != dd.file_digest(b)


def test_known_block_digests_are_not_read_again(tmp_path: Path) -> None:
    """fd_digest with the digests of blocks the caller wrote itself (a bake's root fs)."""
    path = tmp_path / "disk"
    _sparse(path, 16 * B, {0: b"gpt", 4 * B: os.urandom(3 * B)})
    fd = os.open(path, os.O_RDONLY)
    try:
        full = dd.block_digests(fd, 16 * B)
        known = {i: full[i] for i in (4, 5, 6)}
        assert dd.fd_digest(fd, known) == dd.file_digest(path)
        wrong = {4: hashlib.sha256(b"stale").digest()}
        assert dd.fd_digest(fd, wrong) != dd.file_digest(path)  # taken as given
    finally:
        os.close(fd)


def test_a_digest_names_its_algorithm(tmp_path: Path) -> None:
    path = tmp_path / "disk"
    path.write_bytes(b"x")
    assert dd.split(dd.file_digest(path))[0] == "sha256-blocks-512k"
    assert dd.split("sha256:" + "0" * 64) == ("sha256", "0" * 64)
    with pytest.raises(UserError, match="unknown disk digest"):
        dd.matches(path, "0" * 64)  # a bare hex names no algorithm


def test_the_readme_snippet_gives_the_digest(tmp_path: Path) -> None:
    """README's by-hand check, run as printed there."""
    text = README.read_text()
    start = text.index("```python\n", text.index("### The disk's digest")) + len("```python\n")
    snippet = text[start:text.index("```", start)]
    path = tmp_path / "disk.raw"
    _sparse(path, 12 * B + 77, {B + 3: b"data"})
    out = subprocess.run([sys.executable, "-c", snippet, str(path)], capture_output=True,
                         text=True, check=True).stdout.strip()
    assert out == dd.file_digest(path)

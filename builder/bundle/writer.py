"""Make a bundle: tar → gzip (parallel members) → AES-128-CBC → 10 MiB parts.

One pass over the image, streamed: the tar stream (tarstream.py) is hashed
(SHA-1: the manifest's image digest), cut into chunks that are compressed
on every core as separate gzip members (gzip_parallel.py, libdeflate by
default; concatenated members are one valid gzip stream), then encrypted in
order with a fresh random AES-128 key and IV (PKCS#7 padding, as `openssl
enc -aes-128-cbc`), and written to `<prefix>.part.NN` files of `part_size`
bytes whose SHA-1s are taken on the way. Memory is bounded by the chunks in
flight (about 2 × workers × chunk_size). A failed run deletes what it wrote.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from builder import __version__
from builder.atomic import open_private, write_atomically
from builder.bundle import manifest_xml
from builder.bundle.certs import BundleCredentials, certificate_public_key
from builder.bundle.gzip_parallel import Chunk, Engine, choose_engine, parallel_gzip
from builder.bundle.tarstream import tar_stream
from builder.errors import UserError

PART_SIZE = 10 * 1024 * 1024  # what the AMI tools and euca2ools write
CHUNK_SIZE = 4 * 1024 * 1024  # one gzip member per chunk
EC2_BUNDLE_SIZE_LIMIT = 10 * 2**30
BLOCK = 16  # AES block size


@dataclass(frozen=True)
class BundleRequest:
    """What to bundle and how."""

    image: Path
    destination: Path
    prefix: str
    user: str  # AWS account id, 12 digits
    architecture: str = "x86_64"
    block_device_mapping: Mapping[str, str] = field(
        default_factory=manifest_xml.default_block_device_mapping
    )
    kernel_id: str = ""
    ramdisk_id: str = ""
    part_size: int = PART_SIZE
    chunk_size: int = CHUNK_SIZE
    level: int | None = None  # None: the engine's DEFAULT_LEVEL (no larger than gzip -6)
    workers: int = 0  # 0: one per CPU
    sparse: bool = True
    engine: Engine = "auto"  # gzip_parallel: "zlib" threads, "libdeflate"/"zlib-ng" processes


@dataclass(frozen=True)
class BundleResult:
    manifest_path: Path
    part_paths: tuple[Path, ...]
    manifest: manifest_xml.BundleManifest


def check_prefix(prefix: str) -> str:
    """A prefix the manifest's <name> grammar admits, short enough for a tar name."""
    if not manifest_xml.NAME.pattern.fullmatch(prefix) or len(prefix) > 99:
        raise UserError(
            f"invalid bundle prefix {prefix!r}",
            hint="1-99 letters, digits and _.+=,@:~()[]- (no '/', no leading '.')",
        )
    return prefix


def check_user(user: str) -> str:
    account = user.replace("-", "")
    if not (account.isdigit() and len(account) == 12):
        raise UserError(
            f"invalid AWS account id {user!r}", hint="--user takes the 12-digit account id"
        )
    return account


def bundle_image(request: BundleRequest, creds: BundleCredentials) -> BundleResult:
    """Write the bundle's parts and manifest into `request.destination`."""
    check_prefix(request.prefix)
    user = check_user(request.user)
    image = Path(request.image)
    if not image.is_file():
        raise UserError(f"image not found: {image}", hint="give the path of a disk image file")
    size = image.stat().st_size
    if size > EC2_BUNDLE_SIZE_LIMIT:
        raise UserError(
            f"{image} is {size} bytes; EC2 bundles hold at most 10 GiB",
            hint="shrink the image, or publish it EBS-backed",
        )
    destination = Path(request.destination)
    destination.mkdir(parents=True, exist_ok=True)
    key, iv = os.urandom(16), os.urandom(16)
    parts = _PartWriter(destination, request.prefix, request.part_size)
    manifest_path = destination / f"{request.prefix}.manifest.xml"
    try:
        tar_sha1 = hashlib.sha1()
        # read straight into chunk-sized buffers, handed to the compressors as they are
        # and reused once compressed
        buffers = _BufferPool(request.chunk_size)
        blocks = tar_stream(str(image), request.prefix, sparse=request.sparse,
                            read_size=request.chunk_size, new_buffer=buffers.get)
        stream = _hashed(blocks, tar_sha1)
        encrypt = _Encryptor(key, iv)
        engine = choose_engine(request.engine, size)
        for member in parallel_gzip(stream, chunk_size=request.chunk_size, level=request.level,
                                    workers=request.workers, engine=engine,
                                    release=buffers.put):
            parts.write(encrypt.update(member))
        parts.write(encrypt.finalize())
        written = parts.close()
        manifest = manifest_xml.BundleManifest(
            name=request.prefix,
            user=user,
            architecture=request.architecture,
            digest=tar_sha1.hexdigest(),
            size=size,
            bundled_size=sum(p.size for p in written),
            parts=written,
            key_hex=key.hex(),
            iv_hex=iv.hex(),
            block_device_mapping=dict(request.block_device_mapping),
            kernel_id=request.kernel_id,
            ramdisk_id=request.ramdisk_id,
            bundler_version=__version__,
        )
        document = manifest_xml.render(
            manifest,
            creds.user_key,
            certificate_public_key(creds.user_cert),
            certificate_public_key(creds.ec2_cert),
        )
        write_atomically(manifest_path, document, mode=0o644)
    except BaseException:
        parts.remove()
        raise
    return BundleResult(manifest_path, tuple(destination / p.filename for p in written), manifest)


def _hashed(blocks: Iterable[Chunk], digest: hashlib._Hash) -> Iterator[Chunk]:
    for block in blocks:
        digest.update(block)
        yield block


class _BufferPool:
    """Chunk buffers handed back once compressed, for the tar stream to read into."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._free: list[bytearray] = []
        self.allocated = 0

    def get(self) -> bytearray:
        if self._free:
            return self._free.pop()
        self.allocated += 1
        return bytearray(self._size)

    def put(self, chunk: Chunk) -> None:
        if isinstance(chunk, bytearray) and len(chunk) == self._size:
            self._free.append(chunk)


class _Encryptor:
    """AES-128-CBC with PKCS#7 padding, byte-compatible with `openssl enc`.

    `update` encrypts into one reused buffer: its result is valid until the
    next call. The cipher keeps a partial block itself, so the padding is
    only the last block's."""

    def __init__(self, key: bytes, iv: bytes) -> None:
        self._cipher = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
        self._out = bytearray()
        self._total = 0

    def update(self, data: Chunk) -> memoryview:
        if len(self._out) < len(data) + BLOCK:
            self._out = bytearray(len(data) + BLOCK)
        self._total += len(data)
        n = self._cipher.update_into(data, self._out)
        return memoryview(self._out)[:n]

    def finalize(self) -> bytes:
        pad = BLOCK - self._total % BLOCK  # PKCS#7: 1..16 bytes, each the count
        return self._cipher.update(bytes([pad]) * pad) + self._cipher.finalize()


class _PartWriter:
    """Splits a byte stream into `<prefix>.part.NN` files, hashing each."""

    def __init__(self, destination: Path, prefix: str, part_size: int) -> None:
        self._dir = destination
        self._prefix = prefix
        self._part_size = part_size
        self._parts: list[manifest_xml.Part] = []
        self._created: list[Path] = []
        self._fd = -1
        self._sha1 = hashlib.sha1()
        self._written = 0

    def _name(self, index: int) -> str:
        return f"{self._prefix}.part.{index:02d}"

    def _open_next(self) -> None:
        path = self._dir / self._name(len(self._parts))
        path.unlink(missing_ok=True)  # a new file, never through a planted symlink
        self._fd = open_private(path, 0o644)
        self._created.append(path)
        self._sha1 = hashlib.sha1()
        self._written = 0

    def _close_current(self) -> None:
        os.close(self._fd)
        self._fd = -1
        self._parts.append(
            manifest_xml.Part(self._name(len(self._parts)), self._sha1.hexdigest(), self._written)
        )

    def write(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while view:
            if self._fd < 0:
                self._open_next()
            take = min(len(view), self._part_size - self._written)
            piece = view[:take]
            self._sha1.update(piece)
            while piece:
                n = os.write(self._fd, piece)
                piece = piece[n:]
            self._written += take
            view = view[take:]
            if self._written == self._part_size:
                self._close_current()

    def close(self) -> tuple[manifest_xml.Part, ...]:
        if self._fd >= 0:
            self._close_current()
        return tuple(self._parts)

    def remove(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        for path in self._created:
            path.unlink(missing_ok=True)

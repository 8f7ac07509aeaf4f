"""Unbundle: verify a bundle and reassemble its image, byte for byte.

Checks, in order, each failure a UserError naming what is wrong: the
manifest parses (a truncated one does not), its signature verifies (with the
user's certificate, or the public half of the private key given), the
private key decrypts the AES key and IV, every part listed exists, each
part's SHA-1 matches before its bytes are used, then the decrypted,
decompressed tar stream's SHA-1 and the image size match the manifest. The
image is written to `<output>.partial` and renamed only when all is well;
holes in a sparse member stay holes.
"""

from __future__ import annotations

import hashlib
import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import padding as sym_padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from builder.bundle import manifest_xml
from builder.bundle.certs import (
    certificate_public_key,
    keys_match,
    load_certificate,
    load_private_key,
)
from builder.bundle.tarstream import TarFormatError, TarReceiver
from builder.errors import UserError

READ_SIZE = 1 << 20
MAX_INFLATE = 4 << 20  # bound on output per decompress call


@dataclass(frozen=True)
class UnbundleResult:
    image_path: Path
    size: int
    digest: str
    parts: int


def read_manifest(path: Path) -> tuple[bytes, manifest_xml.ParsedManifest]:
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError as exc:
        raise UserError(f"manifest not found: {path}", hint="give <prefix>.manifest.xml") from exc
    return data, manifest_xml.parse(data, str(path))


def unbundle(
    manifest_path: Path,
    privatekey: Path,
    *,
    output: Path | None = None,
    destination: Path | None = None,
    cert: Path | None = None,
    parts_dir: Path | None = None,
) -> UnbundleResult:
    """Verify and unpack a bundle; the image goes to `output` (or
    `destination/<image name>`)."""
    manifest_path = Path(manifest_path)
    _, parsed = read_manifest(manifest_path)
    source = str(manifest_path)
    key = load_private_key(privatekey)
    if cert is not None:
        user_cert = load_certificate(cert, "user certificate")
        if not keys_match(user_cert, key):
            raise UserError(
                f"{privatekey} is not the private key of the certificate {cert}",
                hint="pass the matching --cert and --privatekey",
            )
        # The certificate is independent of the key: check the manifest first.
        manifest_xml.verify_signature(parsed, certificate_public_key(user_cert), source)
        aes_key, aes_iv = manifest_xml.decrypt_key_iv(parsed, key, source)
    else:
        # Only the key: a key that cannot decrypt is the clearer message.
        aes_key, aes_iv = manifest_xml.decrypt_key_iv(parsed, key, source)
        manifest_xml.verify_signature(parsed, key.public_key(), source)
    if parsed.cipher_algorithm.upper() != manifest_xml.CIPHER_ALGORITHM:
        raise UserError(f"{source}: unsupported cipher {parsed.cipher_algorithm!r}")
    if parsed.digest_algorithm.upper() != manifest_xml.DIGEST_ALGORITHM:
        raise UserError(f"{source}: unsupported digest {parsed.digest_algorithm!r}")

    parts_dir = Path(parts_dir) if parts_dir is not None else manifest_path.parent
    part_paths = []
    for index, part in enumerate(parsed.parts):
        if "/" in part.filename or part.filename in ("", ".", ".."):
            raise UserError(f"{source}: part {index} has an unsafe file name {part.filename!r}")
        path = parts_dir / part.filename
        if not path.is_file():
            raise UserError(
                f"part {index} of {len(parsed.parts)} is missing: {path}",
                hint="copy or download every part listed in the manifest",
            )
        part_paths.append(path)
    bundled = sum(p.stat().st_size for p in part_paths)
    if bundled != parsed.bundled_size:
        _check_parts_digests(parsed, part_paths)  # names the altered part
        raise UserError(
            f"{source}: the parts hold {bundled} bytes, the manifest says {parsed.bundled_size}"
        )

    if output is None:
        name = os.path.basename(parsed.name)
        if not name or name in (".", ".."):
            raise UserError(f"{source}: unsafe image name {parsed.name!r}", hint="use --output")
        output = Path(destination or ".") / name
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(output.name + ".partial")
    fd = os.open(partial, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        digest = _decode(parsed, part_paths, aes_key, aes_iv, fd, source)
        os.fsync(fd)
        os.close(fd)
        fd = -1
        os.replace(partial, output)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        partial.unlink(missing_ok=True)
        raise
    return UnbundleResult(output, parsed.size, digest, len(part_paths))


def _check_parts_digests(parsed: manifest_xml.ParsedManifest, paths: list[Path]) -> None:
    for index, (part, path) in enumerate(zip(parsed.parts, paths, strict=True)):
        _check_part(index, part, path, len(paths))


def _check_part(index: int, part: manifest_xml.Part, path: Path, count: int) -> None:
    sha1 = hashlib.sha1()
    size = 0
    with open(path, "rb", buffering=0) as f:
        while block := f.read(READ_SIZE):
            sha1.update(block)
            size += len(block)
    if sha1.hexdigest() != part.sha1:
        raise UserError(
            f"part {index} of {count} ({path}) is altered or truncated: SHA-1"
            f" {sha1.hexdigest()} ({size} bytes), the manifest says {part.sha1}",
            hint="copy or download this part again",
        )


def _decode(
    parsed: manifest_xml.ParsedManifest,
    part_paths: list[Path],
    key: bytes,
    iv: bytes,
    fd: int,
    source: str,
) -> str:
    decryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).decryptor()
    unpadder = sym_padding.PKCS7(128).unpadder()
    gunzip = _MultiMemberGunzip()
    tar_sha1 = hashlib.sha1()

    def pwrite(data: bytes, offset: int) -> None:
        view = memoryview(data)
        while view:
            n = os.pwrite(fd, view, offset)
            view, offset = view[n:], offset + n

    tar = TarReceiver(pwrite)

    def push(compressed: bytes) -> None:
        for plain in gunzip.feed(compressed):
            tar_sha1.update(plain)
            tar.feed(plain)

    try:
        for index, (part, path) in enumerate(zip(parsed.parts, part_paths, strict=True)):
            _check_part(index, part, path, len(part_paths))
            with open(path, "rb", buffering=0) as f:
                while block := f.read(READ_SIZE):
                    push(unpadder.update(decryptor.update(block)))
        try:
            push(unpadder.update(decryptor.finalize()) + unpadder.finalize())
        except ValueError as exc:
            raise UserError(
                f"{source}: the decrypted bundle has bad padding: wrong key, or parts altered"
            ) from exc
        gunzip.finish()
    except zlib.error as exc:
        raise UserError(f"{source}: the decrypted bundle is not valid gzip data: {exc}") from exc
    except TarFormatError as exc:
        raise UserError(f"{source}: the bundle's tar stream is not valid: {exc}") from exc
    if not tar.done:
        raise UserError(f"{source}: the bundle's tar stream ends early (no end-of-archive)")
    digest = tar_sha1.hexdigest()
    if digest != parsed.digest:
        raise UserError(
            f"{source}: the image digest does not match: SHA-1 of the tar stream is {digest},"
            f" the manifest says {parsed.digest}"
        )
    if tar.size != parsed.size:
        raise UserError(
            f"{source}: the image is {tar.size} bytes, the manifest says {parsed.size}"
        )
    os.ftruncate(fd, tar.size)
    return digest


class _MultiMemberGunzip:
    """gunzip for concatenated gzip members, with bounded output per step."""

    def __init__(self) -> None:
        self._d = zlib.decompressobj(31)
        self._started = False

    def feed(self, data: bytes) -> Iterator[bytes]:
        while data:
            self._started = True
            piece = self._d.decompress(data, MAX_INFLATE)
            if piece:
                yield piece
            while self._d.unconsumed_tail:
                piece = self._d.decompress(self._d.unconsumed_tail, MAX_INFLATE)
                if piece:
                    yield piece
            if self._d.eof:
                data = self._d.unused_data
                self._d = zlib.decompressobj(31)
                self._started = False
            else:
                data = b""

    def finish(self) -> None:
        if self._started and not self._d.eof:
            raise zlib.error("the gzip stream ends inside a member")

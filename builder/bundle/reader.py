"""Unbundle: verify a bundle and reassemble its image, byte for byte.

Checks, in order, each failure a UserError naming what is wrong: the
manifest parses under manifest_xml's strict rules (a truncated, crafted or
oversized one does not), its signature verifies (with the user's
certificate, or the public half of the user's private key), the private key
decrypts the AES key and IV, every part listed is a regular file (not a
symlink) in the parts' directory, each part's SHA-1
matches before its bytes are used, then the decrypted, decompressed tar
stream's SHA-1 and the image size match the manifest.

EC2's private key also decrypts a bundle (its own copy of the AES key), as
`euca-unbundle -k` allows, but cannot check the signature, which only the
bundler's certificate can: that needs the certificate, or an explicit
`trust_unsigned`.

The image is written to a private temporary file beside the output
(O_EXCL|O_NOFOLLOW, mode 0600: a planted symlink is never followed) and
renamed onto the output only when all is well; holes in a sparse member
stay holes.
"""

from __future__ import annotations

import hashlib
import os
import stat
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from cryptography.hazmat.primitives import padding as sym_padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from builder.atomic import fsync_dir, open_private, temp_beside
from builder.bundle import manifest_xml
from builder.bundle.certs import (
    certificate_public_key,
    keys_match,
    load_certificate,
    load_private_key,
)
from builder.bundle.tarstream import TarFormatError, TarReceiver
from builder.errors import UserError
from builder.inputs import read_input

READ_SIZE = 1 << 20
MAX_INFLATE = 4 << 20  # bound on output per decompress call


@dataclass(frozen=True)
class UnbundleResult:
    image_path: Path
    size: int
    digest: str
    parts: int
    signature_checked: bool = True


def read_manifest(path: Path) -> tuple[bytes, manifest_xml.ParsedManifest]:
    """Read (size-checked first) and parse a bundle manifest file."""
    data = read_input(path, manifest_xml.MAX_MANIFEST_BYTES, "manifest")
    return data, manifest_xml.parse(data, str(path))


def verified_manifest(path: Path, cert: Path | None = None,
                      privatekey: Path | None = None) -> manifest_xml.ParsedManifest:
    """A manifest whose signature verifies with the user's certificate (or the
    public half of the user's private key)."""
    _, parsed = read_manifest(path)
    if cert is not None:
        public = certificate_public_key(load_certificate(cert, "user certificate"))
    elif privatekey is not None:
        public = load_private_key(privatekey).public_key()
    else:
        raise UserError("the manifest's signature cannot be checked without the bundler's"
                        " certificate", hint="pass --cert (default: $EC2_CERT)")
    manifest_xml.verify_signature(parsed, public, str(path))
    return parsed


def part_paths(parsed: manifest_xml.ParsedManifest, directory: Path) -> list[Path]:
    """The parts' files: regular files (not symlinks) in `directory`; the
    parser has already held their names to `<name>.part.<index>`."""
    try:
        base = Path(directory).resolve(strict=True)
    except OSError:
        raise UserError(f"the parts' directory {directory} does not exist",
                        hint="give the directory holding the parts") from None
    paths = []
    for index, part in enumerate(parsed.parts):
        path = base / part.filename
        try:
            mode = path.lstat().st_mode
        except FileNotFoundError:
            raise UserError(
                f"part {index} of {len(parsed.parts)} is missing: {path}",
                hint="copy or download every part listed in the manifest",
            ) from None
        if stat.S_ISLNK(mode):
            raise UserError(f"part {index} ({path}) is a symlink to {os.readlink(path)}",
                            hint="parts are files in the manifest's directory: copy them there")
        if not stat.S_ISREG(mode):
            raise UserError(f"part {index} ({path}) is not a regular file")
        paths.append(path)
    return paths


def unbundle(
    manifest_path: Path,
    privatekey: Path,
    *,
    output: Path | None = None,
    destination: Path | None = None,
    cert: Path | None = None,
    parts_dir: Path | None = None,
    trust_unsigned: bool = False,
) -> UnbundleResult:
    """Verify and unpack a bundle; the image goes to `output` (or
    `destination/<image name>`)."""
    manifest_path = Path(manifest_path)
    _, parsed = read_manifest(manifest_path)
    source = str(manifest_path)
    key = load_private_key(privatekey)
    checked = True
    if cert is not None:
        # The certificate is independent of the key: check the manifest first.
        user_cert = load_certificate(cert, "user certificate")
        manifest_xml.verify_signature(parsed, certificate_public_key(user_cert), source)
        found = manifest_xml.decrypt_copy(parsed, key)
        if found is None and not keys_match(user_cert, key):
            raise UserError(
                f"{privatekey} is not the private key of the certificate {cert}",
                hint="pass the matching --cert and --privatekey (or EC2's key for the bundle)",
            )
    else:
        # Only the key: a key that cannot decrypt is the clearer message.
        found = manifest_xml.decrypt_copy(parsed, key)
        if found is not None and found[0] == "user":
            manifest_xml.verify_signature(parsed, key.public_key(), source)
        elif found is not None:
            if not trust_unsigned:
                raise UserError(
                    f"{privatekey} is EC2's key for this bundle: it decrypts the image but"
                    " cannot check the manifest's signature (only the bundler's certificate"
                    " can)",
                    hint="give the bundler's certificate with --cert, or --no-verify-signature"
                    " to unbundle without checking who made the manifest",
                )
            checked = False
    if found is None:
        raise UserError(
            f"{source}: the private key does not decrypt this bundle's key (wrong key)",
            hint="use the private key of the certificate given at bundle time",
        )
    _, aes_key, aes_iv = found

    paths = part_paths(parsed, Path(parts_dir) if parts_dir is not None
                       else manifest_path.parent)
    _check_bundled_size(parsed, paths, source)

    if output is None:
        output = Path(destination or ".") / parsed.name  # a plain file name (manifest_xml.NAME)
    output = Path(output)
    if output.is_dir():
        raise UserError(f"--output {output} is a directory",
                        hint="give a file name, or use --destination DIR")
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_beside(output)
    fd = open_private(tmp)
    try:
        digest = _decode(parsed, paths, aes_key, aes_iv, fd, source)
        os.fsync(fd)
        os.close(fd)
        fd = -1
        os.replace(tmp, output)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(output.parent)
    return UnbundleResult(output, parsed.size, digest, len(paths), checked)


def check_parts(parsed: manifest_xml.ParsedManifest, paths: list[Path], source: str) -> None:
    """Every part holds the bytes the manifest lists (its SHA-1), and no more."""
    _check_bundled_size(parsed, paths, source)
    _check_parts_digests(parsed, paths)


def _check_bundled_size(parsed: manifest_xml.ParsedManifest, paths: list[Path],
                        source: str) -> None:
    bundled = sum(p.stat().st_size for p in paths)
    if bundled != parsed.bundled_size:
        _check_parts_digests(parsed, paths)  # names the altered part
        raise UserError(
            f"{source}: the parts hold {bundled} bytes, the manifest says {parsed.bundled_size}"
        )


def _check_parts_digests(parsed: manifest_xml.ParsedManifest, paths: list[Path]) -> None:
    for index, (part, path) in enumerate(zip(parsed.parts, paths, strict=True)):
        _check_part(index, part, path, len(paths))


def _check_part(index: int, part: manifest_xml.Part, path: Path, count: int) -> None:
    sha1 = hashlib.sha1()
    size = 0
    with _open_part(path) as f:
        while block := f.read(READ_SIZE):
            sha1.update(block)
            size += len(block)
    if sha1.hexdigest() != part.sha1:
        raise UserError(
            f"part {index} of {count} ({path}) is altered or truncated: SHA-1"
            f" {sha1.hexdigest()} ({size} bytes), the manifest says {part.sha1}",
            hint="copy or download this part again",
        )


def _open_part(path: Path) -> BinaryIO:
    """A part checked by part_paths, opened without following a symlink."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise UserError(f"{path} is not a regular file")
    return os.fdopen(fd, "rb", buffering=0)


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
            with _open_part(path) as f:
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

"""The EC2 bundle manifest, version 2007-10-10: write, sign, parse, verify.

Field by field this follows the AWS AMI tools (ManifestV20071010) and
euca2ools (bundle/manifest.py):

    <manifest>
      <version>2007-10-10</version>
      <bundler><name/><version/><release/></bundler>
      <machine_configuration>
        <architecture>x86_64</architecture>
        <block_device_mapping>          (mappings sorted by virtual name)
          <mapping><virtual>ami</virtual><device>sda1</device></mapping> ...
        </block_device_mapping>
        <kernel_id/> <ramdisk_id/>      (only when given)
      </machine_configuration>
      <image>
        <name/> <user/> <type>machine</type>   (type right after user)
        <digest algorithm="SHA1">         SHA-1 of the tar stream (before gzip)
        <size/>                           the image file's size in bytes
        <bundled_size/>                   sum of the parts' sizes
        <ec2_encrypted_key algorithm="AES-128-CBC">
        <user_encrypted_key algorithm="AES-128-CBC">
        <ec2_encrypted_iv/> <user_encrypted_iv/>
        <parts count="N"><part index="i"><filename/><digest algorithm="SHA1"/></part>...
      </image>
      <signature/>
    </manifest>

The AES key and IV are 16 random bytes each, written as 32 lower-case hex
characters; that ASCII text is what is RSA-encrypted (PKCS#1 v1.5) under
the user's and EC2's certificates, and the ciphertext is hex-encoded. The
signature is RSA PKCS#1 v1.5 with SHA-1 over the serialized
`<machine_configuration>…</machine_configuration>` immediately followed by
the serialized `<image>…</image>`, hex-encoded. Verification takes those
two elements' exact bytes out of the file, as the AMI tools do.
"""

from __future__ import annotations

import binascii
import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from builder.errors import UserError

MANIFEST_VERSION = "2007-10-10"
CIPHER_ALGORITHM = "AES-128-CBC"
DIGEST_ALGORITHM = "SHA1"
BUNDLER_NAME = "amibake"


@dataclass(frozen=True)
class Part:
    """One part file of a bundle: its base name and the SHA-1 of its bytes."""

    filename: str
    sha1: str  # hex
    size: int = 0  # not written to the manifest (the format has no field)


@dataclass(frozen=True)
class BundleManifest:
    """Everything a manifest says, with the AES key and IV in the clear."""

    name: str
    user: str
    architecture: str
    digest: str  # hex SHA-1 of the tar stream
    size: int
    bundled_size: int
    parts: tuple[Part, ...]
    key_hex: str  # 32 hex chars
    iv_hex: str  # 32 hex chars
    image_type: str = "machine"
    block_device_mapping: Mapping[str, str] = field(default_factory=dict)
    kernel_id: str = ""
    ramdisk_id: str = ""
    bundler_version: str = "0"
    bundler_release: str = "0"


def default_block_device_mapping() -> dict[str, str]:
    """What ec2-bundle-vol writes off-EC2: the image on sda1, root /dev/sda1."""
    return {"ami": "sda1", "root": "/dev/sda1"}


# ------------------------------------------------------------------- writing


def render(
    manifest: BundleManifest,
    user_key: rsa.RSAPrivateKey,
    user_public: rsa.RSAPublicKey,
    ec2_public: rsa.RSAPublicKey,
) -> bytes:
    """The signed manifest document as bytes (UTF-8, with XML declaration)."""
    _check_key_text(manifest.key_hex, "key")
    _check_key_text(manifest.iv_hex, "IV")
    machine = _serialize(_machine_configuration(manifest))
    image = _serialize(_image(manifest, user_public, ec2_public))
    signature = user_key.sign(machine + image, padding.PKCS1v15(), hashes.SHA1())
    bundler = ET.Element("bundler")
    for tag, text in (
        ("name", BUNDLER_NAME),
        ("version", manifest.bundler_version),
        ("release", manifest.bundler_release),
    ):
        ET.SubElement(bundler, tag).text = text
    return b"".join(
        [
            b"<?xml version='1.0'?>",
            b"<manifest>",
            b"<version>" + MANIFEST_VERSION.encode() + b"</version>",
            _serialize(bundler),
            machine,
            image,
            b"<signature>" + binascii.hexlify(signature) + b"</signature>",
            b"</manifest>",
        ]
    )


def _machine_configuration(m: BundleManifest) -> ET.Element:
    mc = ET.Element("machine_configuration")
    ET.SubElement(mc, "architecture").text = m.architecture
    if m.block_device_mapping and m.image_type == "machine":
        bdm = ET.SubElement(mc, "block_device_mapping")
        for virtual in sorted(m.block_device_mapping):
            mapping = ET.SubElement(bdm, "mapping")
            ET.SubElement(mapping, "virtual").text = virtual
            ET.SubElement(mapping, "device").text = m.block_device_mapping[virtual]
    if m.kernel_id:
        ET.SubElement(mc, "kernel_id").text = m.kernel_id
    if m.ramdisk_id:
        ET.SubElement(mc, "ramdisk_id").text = m.ramdisk_id
    return mc


def _image(
    m: BundleManifest, user_public: rsa.RSAPublicKey, ec2_public: rsa.RSAPublicKey
) -> ET.Element:
    img = ET.Element("image")
    ET.SubElement(img, "name").text = m.name
    ET.SubElement(img, "user").text = m.user
    ET.SubElement(img, "type").text = m.image_type
    ET.SubElement(img, "digest", algorithm=DIGEST_ALGORITHM).text = m.digest
    ET.SubElement(img, "size").text = str(m.size)
    ET.SubElement(img, "bundled_size").text = str(m.bundled_size)
    key, iv = m.key_hex.encode(), m.iv_hex.encode()
    ET.SubElement(img, "ec2_encrypted_key", algorithm=CIPHER_ALGORITHM).text = encrypt_hex(
        key, ec2_public
    )
    ET.SubElement(img, "user_encrypted_key", algorithm=CIPHER_ALGORITHM).text = encrypt_hex(
        key, user_public
    )
    ET.SubElement(img, "ec2_encrypted_iv").text = encrypt_hex(iv, ec2_public)
    ET.SubElement(img, "user_encrypted_iv").text = encrypt_hex(iv, user_public)
    parts = ET.SubElement(img, "parts", count=str(len(m.parts)))
    for index, part in enumerate(m.parts):
        el = ET.SubElement(parts, "part", index=str(index))
        ET.SubElement(el, "filename").text = part.filename
        ET.SubElement(el, "digest", algorithm=DIGEST_ALGORITHM).text = part.sha1
    return img


def _serialize(el: ET.Element) -> bytes:
    return ET.tostring(el, encoding="utf-8", xml_declaration=False, short_empty_elements=False)


def encrypt_hex(plain: bytes, public: rsa.RSAPublicKey) -> str:
    """RSA PKCS#1 v1.5 encryption, hex-encoded (as `openssl rsautl -pkcs`)."""
    return public.encrypt(plain, padding.PKCS1v15()).hex()


def _check_key_text(text: str, what: str) -> None:
    if not re.fullmatch(r"[0-9a-f]{32}", text):
        raise ValueError(f"the AES {what} must be 32 lower-case hex characters")


# ------------------------------------------------------------------- reading


@dataclass(frozen=True)
class ParsedManifest:
    """A manifest as read from a file: fields, encrypted keys, signed bytes."""

    name: str
    user: str
    architecture: str
    image_type: str
    digest: str
    digest_algorithm: str
    size: int
    bundled_size: int
    cipher_algorithm: str
    parts: tuple[Part, ...]
    ec2_encrypted_key: str
    user_encrypted_key: str
    ec2_encrypted_iv: str
    user_encrypted_iv: str
    block_device_mapping: dict[str, str]
    kernel_id: str
    ramdisk_id: str
    signature: str
    signed_bytes: bytes
    version: str


def parse(data: bytes, source: str) -> ParsedManifest:
    """Parse a manifest; a truncated or incomplete one is a UserError."""
    try:
        root = ET.fromstring(data)
    except ET.ParseError as exc:
        line, col = exc.position
        raise UserError(
            f"{source}: the manifest is truncated or not valid XML (line {line}, column {col})",
            hint="download or copy the manifest again; bundles are only valid whole",
        ) from exc
    if root.tag != "manifest":
        raise UserError(f"{source}: not an EC2 bundle manifest (root <{root.tag}>)")
    version = _text(root, "version", source)
    if version != MANIFEST_VERSION:
        raise UserError(
            f"{source}: manifest version {version!r} is not supported",
            hint=f"amibake reads version {MANIFEST_VERSION} manifests",
        )
    mc = root.find("machine_configuration")
    bdm: dict[str, str] = {}
    arch = kernel = ramdisk = ""
    if mc is not None:
        arch = (mc.findtext("architecture") or "").strip()
        kernel = (mc.findtext("kernel_id") or "").strip()
        ramdisk = (mc.findtext("ramdisk_id") or "").strip()
        for mapping in mc.iterfind("block_device_mapping/mapping"):
            bdm[(mapping.findtext("virtual") or "").strip()] = (
                mapping.findtext("device") or ""
            ).strip()
    image = root.find("image")
    if image is None:
        raise UserError(f"{source}: the manifest has no <image> element")
    parts_el = image.find("parts")
    if parts_el is None:
        raise UserError(f"{source}: the manifest has no <image><parts> element")
    count = _int(parts_el.get("count", ""), "parts count", source)
    by_index: dict[int, Part] = {}
    for el in parts_el.iterfind("part"):
        index = _int(el.get("index", ""), "part index", source)
        by_index[index] = Part(_text(el, "filename", source), _text(el, "digest", source).lower())
    if sorted(by_index) != list(range(count)):
        raise UserError(
            f"{source}: the manifest lists parts {sorted(by_index)} but says count={count}",
        )
    digest_el = image.find("digest")
    key_el = image.find("ec2_encrypted_key")
    return ParsedManifest(
        name=_text(image, "name", source),
        user=_text(image, "user", source),
        architecture=arch,
        image_type=_text(image, "type", source),
        digest=_text(image, "digest", source).lower(),
        digest_algorithm=digest_el.get("algorithm", "") if digest_el is not None else "",
        size=_int(_text(image, "size", source), "size", source),
        bundled_size=_int(_text(image, "bundled_size", source), "bundled_size", source),
        cipher_algorithm=key_el.get("algorithm", "") if key_el is not None else "",
        parts=tuple(by_index[i] for i in range(count)),
        ec2_encrypted_key=_text(image, "ec2_encrypted_key", source),
        user_encrypted_key=_text(image, "user_encrypted_key", source),
        ec2_encrypted_iv=_text(image, "ec2_encrypted_iv", source),
        user_encrypted_iv=_text(image, "user_encrypted_iv", source),
        block_device_mapping=bdm,
        kernel_id=kernel,
        ramdisk_id=ramdisk,
        signature=_text(root, "signature", source),
        signed_bytes=_element_bytes(data, "machine_configuration") + _element_bytes(data, "image"),
        version=version,
    )


def _element_bytes(data: bytes, tag: str) -> bytes:
    """The exact serialized bytes of the first <tag>…</tag> (empty if absent)."""
    match = re.search(rb"<%s[\s>].*?</%s>" % (tag.encode(), tag.encode()), data, re.DOTALL)
    return match.group(0) if match else b""


def _text(el: ET.Element, path: str, source: str) -> str:
    found = el.find(path)
    if found is None or not (found.text or "").strip():
        raise UserError(f"{source}: the manifest has no <{path}> (or it is empty)")
    return (found.text or "").strip()


def _int(text: str, what: str, source: str) -> int:
    try:
        value = int(text)
    except ValueError as exc:
        raise UserError(f"{source}: the manifest's {what} {text!r} is not a number") from exc
    if value < 0:
        raise UserError(f"{source}: the manifest's {what} is negative")
    return value


# ------------------------------------------------------------ verify/decrypt


def verify_signature(parsed: ParsedManifest, public: rsa.RSAPublicKey, source: str) -> None:
    """Raise a UserError unless the signature verifies with `public`."""
    try:
        signature = bytes.fromhex(parsed.signature)
        public.verify(signature, parsed.signed_bytes, padding.PKCS1v15(), hashes.SHA1())
    except (ValueError, InvalidSignature) as exc:
        raise UserError(
            f"{source}: the manifest signature does not verify: the manifest was altered,"
            " or it was signed with another key",
            hint="unbundle with the certificate/key pair the bundle was made with",
        ) from exc


def decrypt_hex_key(encrypted_hex: str, key: rsa.RSAPrivateKey) -> str | None:
    """Decrypt one hex-encoded key or IV; None if `key` cannot (wrong key)."""
    try:
        plain = key.decrypt(bytes.fromhex(encrypted_hex), padding.PKCS1v15())
    except ValueError:
        return None
    text = plain.decode("ascii", "replace")
    # OpenSSL's implicit rejection returns random bytes instead of an error:
    # only 32 hex characters are a real key.
    return text if re.fullmatch(r"[0-9a-fA-F]{32}", text) else None


def decrypt_key_iv(
    parsed: ParsedManifest, key: rsa.RSAPrivateKey, source: str
) -> tuple[bytes, bytes]:
    """The AES key and IV, from the user's copy (or EC2's, for EC2's key)."""
    for enc_key, enc_iv in (
        (parsed.user_encrypted_key, parsed.user_encrypted_iv),
        (parsed.ec2_encrypted_key, parsed.ec2_encrypted_iv),
    ):
        key_hex = decrypt_hex_key(enc_key, key)
        iv_hex = decrypt_hex_key(enc_iv, key)
        if key_hex and iv_hex:
            return bytes.fromhex(key_hex), bytes.fromhex(iv_hex)
    raise UserError(
        f"{source}: the private key does not decrypt this bundle's key (wrong key)",
        hint="use the private key of the certificate given at bundle time",
    )

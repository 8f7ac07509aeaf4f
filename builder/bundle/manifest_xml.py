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
        <product_codes><product_code/>...</product_codes>  (read, never written)
      </machine_configuration>
      <image>
        <name/> <user/> <type>machine</type>   (type right after user)
        <kernel_name/> <ancestry><ancestor_ami_id/>...</ancestry>  (read only)
        <digest algorithm='SHA1'>         SHA-1 of the tar stream (before gzip)
        <size/>                           the image file's size in bytes
        <bundled_size/>                   sum of the parts' sizes
        <ec2_encrypted_key algorithm='AES-128-CBC'>
        <user_encrypted_key algorithm='AES-128-CBC'>
        <ec2_encrypted_iv/> <user_encrypted_iv/>
        <parts count='N'><part index='i'><filename/><digest algorithm='SHA1'/></part>...
      </image>
      <signature/>
    </manifest>

The AES key and IV are 16 random bytes each, written as 32 lower-case hex
characters; that ASCII text is what is RSA-encrypted (PKCS#1 v1.5) under
the user's and EC2's certificates, and the ciphertext is hex-encoded.

The signature is RSA PKCS#1 v1.5 with SHA-1 over `<machine_configuration>…`
immediately followed by `<image>…`, in their *canonical* form: the bytes
Ruby's REXML writes when the AMI tools re-serialise a parsed manifest
(attributes in single quotes, `<x/>` for an empty element, text and the
whitespace between elements as they were). ec2-bundle-image signs those
bytes and ec2-migrate-manifest checks them, so amibake writes exactly that.

Reading parses once and trusts nothing: the file is UTF-8 without DOCTYPE,
entities or character references, comments, CDATA or processing
instructions; every element and attribute must be in the 2007-10-10 layout
above, each at most once where the layout says so (a second or nested
<image> is refused, not ignored), the top level in that order (inside, in
any order: euca2ools writes its own); every value must match its field's
grammar. The signature is then checked over the canonical bytes of the very
elements the values are read from, never over bytes found by searching the
file. Manifests signed over the compact, double-quoted form of the same
values (euca2ools, amibake before it matched REXML) verify too.
"""

from __future__ import annotations

import binascii
import re
import xml.parsers.expat
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
#: a 10 GiB bundle with 4096-bit keys needs about 200 KiB of manifest
MAX_MANIFEST_BYTES = 1 << 20


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


# ------------------------------------------------------- the grammar of values


@dataclass(frozen=True)
class _Text:
    """The grammar of one leaf's text (or one attribute's value)."""

    pattern: re.Pattern[str]
    what: str


def _text(pattern: str, what: str) -> _Text:
    return _Text(re.compile(pattern), what)


#: an image name: a file name (no '/', not '.' or '..', no leading dot) that
#: REXML and every shell-free consumer read back unchanged
NAME = _text(r"[A-Za-z0-9_+=,@:~()\[\]-](?:[A-Za-z0-9_.+=,@:~()\[\] -]{0,126}"
             r"[A-Za-z0-9_.+=,@:~()\[\]-])?",
             "a file name of 1-128 letters, digits and _.+=,@:~()[]- (no '/', no leading '.')")
HEX_SHA1 = _text(r"[0-9a-fA-F]{40}", "40 hex digits (a SHA-1)")
HEX_BLOB = _text(r"(?:[0-9a-fA-F]{2}){16,2048}", "hex digits (RSA output)")
NUMBER = _text(r"[0-9]{1,19}", "a decimal number")
_LABEL = _text(r"[A-Za-z0-9_.-]{1,64}", "1-64 letters, digits, '_', '.' or '-'")
_DEVICE = _text(r"[A-Za-z0-9_./-]{1,64}", "a device name such as sda1 or /dev/sda1")
_AWS_ID = _text(r"[A-Za-z0-9-]{1,64}", "an AWS id such as aki-0123abcd")
_USER = _text(r"[0-9]{12}", "a 12-digit AWS account id")
_TYPE = _text(r"machine|kernel|ramdisk", "machine, kernel or ramdisk")
_FREE = _text(r"[A-Za-z0-9_.,:;()+=@ /-]{1,128}", "1-128 printable characters, no <>&'\"")
_VERSION = _text(re.escape(MANIFEST_VERSION), f"version {MANIFEST_VERSION}")
_SHA1_ALG = _text(DIGEST_ALGORITHM, f"{DIGEST_ALGORITHM} (the only digest the format has)")
_AES_ALG = _text(re.escape(CIPHER_ALGORITHM), f"{CIPHER_ALGORITHM} (the format's cipher)")
_SPACE = re.compile(r"[ \t\n]*")


@dataclass(frozen=True)
class _Spec:
    """One element of the layout: a leaf with `text`, or a container of
    `children` (tag, spec, least, most), in this order when `ordered`."""

    text: _Text | None = None
    attrs: Mapping[str, _Text] = field(default_factory=dict)
    children: tuple[tuple[str, _Spec, int, int], ...] = ()
    ordered: bool = False  # children in the order given (else any order)


MANY = 1 << 30


def _leaf(text: _Text, **attrs: _Text) -> _Spec:
    return _Spec(text=text, attrs=attrs)


def _one(tag: str, spec: _Spec) -> tuple[str, _Spec, int, int]:
    return (tag, spec, 1, 1)


def _optional(tag: str, spec: _Spec) -> tuple[str, _Spec, int, int]:
    return (tag, spec, 0, 1)


def _list_of(tag: str, spec: _Spec) -> _Spec:
    return _Spec(children=((tag, spec, 1, MANY),))


_MACHINE_CONFIGURATION = _Spec(children=(
    _one("architecture", _leaf(_LABEL)),
    _optional("block_device_mapping", _list_of("mapping", _Spec(children=(
        _one("virtual", _leaf(_LABEL)), _one("device", _leaf(_DEVICE)))))),
    _optional("kernel_id", _leaf(_AWS_ID)),
    _optional("ramdisk_id", _leaf(_AWS_ID)),
    _optional("product_codes", _list_of("product_code", _leaf(_AWS_ID))),
))
_IMAGE = _Spec(children=(
    _one("name", _leaf(NAME)),
    _one("user", _leaf(_USER)),
    _one("type", _leaf(_TYPE)),
    _optional("kernel_name", _leaf(_FREE)),
    _optional("ancestry", _list_of("ancestor_ami_id", _leaf(_AWS_ID))),
    _one("digest", _leaf(HEX_SHA1, algorithm=_SHA1_ALG)),
    _one("size", _leaf(NUMBER)),
    _one("bundled_size", _leaf(NUMBER)),
    _one("ec2_encrypted_key", _leaf(HEX_BLOB, algorithm=_AES_ALG)),
    _one("user_encrypted_key", _leaf(HEX_BLOB, algorithm=_AES_ALG)),
    _one("ec2_encrypted_iv", _leaf(HEX_BLOB)),
    _one("user_encrypted_iv", _leaf(HEX_BLOB)),
    _one("parts", _Spec(attrs={"count": NUMBER}, children=(("part", _Spec(
        attrs={"index": NUMBER},
        children=(_one("filename", _leaf(_FREE)),
                  _one("digest", _leaf(HEX_SHA1, algorithm=_SHA1_ALG)))), 1, MANY),))),
))
_MANIFEST = _Spec(ordered=True, children=(
    _one("version", _leaf(_VERSION)),
    _one("bundler", _Spec(children=(
        _one("name", _leaf(_FREE)), _one("version", _leaf(_FREE)),
        _one("release", _leaf(_FREE))))),
    _one("machine_configuration", _MACHINE_CONFIGURATION),
    _one("image", _IMAGE),
    _one("signature", _leaf(HEX_BLOB)),
))


# ------------------------------------------------------------------ the tree


@dataclass
class _Element:
    """An element as parsed: attributes in order, text before the first
    child, and each element's tail (the text after it, inside its parent)."""

    tag: str
    attrs: list[tuple[str, str]]
    line: int = 0
    col: int = 0
    text: str = ""
    tail: str = ""
    children: list[_Element] = field(default_factory=list)

    def get(self, tag: str) -> _Element | None:
        """The child `tag` (the layout allows at most one where this is used)."""
        return next((c for c in self.children if c.tag == tag), None)

    def value(self, tag: str) -> str:
        found = self.get(tag)
        return found.text if found is not None else ""

    def all(self, tag: str) -> list[_Element]:
        return [c for c in self.children if c.tag == tag]


def _element(tag: str, text: str = "", children: tuple[_Element, ...] = (),
             **attrs: str) -> _Element:
    return _Element(tag, list(attrs.items()), text=text, children=list(children))


def canonical(el: _Element, quote: str = "'", *, spaces: bool = True) -> bytes:
    """`el` as REXML writes it (the bytes the AMI tools sign and check).

    Values need no escaping: the layout's grammars admit no <, >, &, ' or ".
    `quote='"', spaces=False` gives the form lxml and ElementTree write for the
    same values (how euca2ools and older amibake signed)."""
    out: list[str] = []

    def write(e: _Element) -> None:
        out.append("<" + e.tag + "".join(f" {k}={quote}{v}{quote}" for k, v in e.attrs))
        if not e.text and not e.children:
            out.append("/>")
            return
        out.append(">" + (e.text if spaces or not e.children else ""))
        for child in e.children:
            write(child)
            out.append(child.tail if spaces else "")
        out.append(f"</{e.tag}>")

    write(el)
    return "".join(out).encode()


# ------------------------------------------------------------------- writing


def render(
    manifest: BundleManifest,
    user_key: rsa.RSAPrivateKey,
    user_public: rsa.RSAPublicKey,
    ec2_public: rsa.RSAPublicKey,
) -> bytes:
    """The signed manifest document as bytes (UTF-8, with XML declaration),
    byte for byte what REXML writes for it."""
    _check_key_text(manifest.key_hex, "key")
    _check_key_text(manifest.iv_hex, "IV")
    machine = _machine_configuration(manifest)
    image = _image(manifest, user_public, ec2_public)
    signed = canonical(machine) + canonical(image)
    signature = user_key.sign(signed, padding.PKCS1v15(), hashes.SHA1())
    root = _element("manifest", children=(
        _element("version", MANIFEST_VERSION),
        _element("bundler", children=(
            _element("name", BUNDLER_NAME),
            _element("version", manifest.bundler_version),
            _element("release", manifest.bundler_release))),
        machine,
        image,
        _element("signature", binascii.hexlify(signature).decode()),
    ))
    document = b"<?xml version='1.0'?>" + canonical(root)
    parsed = parse(document, "the manifest being written")  # the reader's rules hold
    assert parsed.signed_bytes == signed
    return document


def _machine_configuration(m: BundleManifest) -> _Element:
    mc = _element("machine_configuration", children=(_element("architecture", m.architecture),))
    if m.block_device_mapping and m.image_type == "machine":
        mc.children.append(_element("block_device_mapping", children=tuple(
            _element("mapping", children=(
                _element("virtual", virtual),
                _element("device", m.block_device_mapping[virtual])))
            for virtual in sorted(m.block_device_mapping))))
    if m.kernel_id:
        mc.children.append(_element("kernel_id", m.kernel_id))
    if m.ramdisk_id:
        mc.children.append(_element("ramdisk_id", m.ramdisk_id))
    return mc


def _image(
    m: BundleManifest, user_public: rsa.RSAPublicKey, ec2_public: rsa.RSAPublicKey
) -> _Element:
    key, iv = m.key_hex.encode(), m.iv_hex.encode()
    return _element("image", children=(
        _element("name", m.name),
        _element("user", m.user),
        _element("type", m.image_type),
        _element("digest", m.digest, algorithm=DIGEST_ALGORITHM),
        _element("size", str(m.size)),
        _element("bundled_size", str(m.bundled_size)),
        _element("ec2_encrypted_key", encrypt_hex(key, ec2_public), algorithm=CIPHER_ALGORITHM),
        _element("user_encrypted_key", encrypt_hex(key, user_public),
                 algorithm=CIPHER_ALGORITHM),
        _element("ec2_encrypted_iv", encrypt_hex(iv, ec2_public)),
        _element("user_encrypted_iv", encrypt_hex(iv, user_public)),
        _element("parts", count=str(len(m.parts)), children=tuple(
            _element("part", index=str(index), children=(
                _element("filename", part.filename),
                _element("digest", part.sha1, algorithm=DIGEST_ALGORITHM)))
            for index, part in enumerate(m.parts))),
    ))


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
    signed_bytes: bytes  # canonical <machine_configuration> + <image>
    version: str
    #: the same values as lxml/ElementTree write them (euca2ools, older amibake)
    legacy_signed_bytes: bytes = b""


_PROLOG = re.compile(rb"<\?xml\s+version\s*=\s*(['\"])1\.0\1"
                     rb"(?:\s+encoding\s*=\s*(['\"])(?i:utf-8)\2)?\s*\?>")


def parse(data: bytes, source: str) -> ParsedManifest:
    """Parse and check a manifest; anything outside the layout is a UserError."""
    if len(data) > MAX_MANIFEST_BYTES:
        raise UserError(f"{source}: {len(data)} bytes is too large for a bundle manifest",
                        hint=f"manifests are at most {MAX_MANIFEST_BYTES} bytes")
    root = _parse_tree(data, source)
    _check(root, "manifest", _MANIFEST, source)
    mc, image = root.get("machine_configuration"), root.get("image")
    assert mc is not None and image is not None  # the layout requires both
    name = image.value("name")
    parts_el = image.get("parts")
    assert parts_el is not None
    parts = []
    for index, el in enumerate(parts_el.all("part")):
        where = _at(source, el)
        if int(el.attrs[0][1]) != index:
            raise UserError(f"{where}: <part index='{el.attrs[0][1]}'> where part {index}"
                            " belongs: parts must be listed once each, in order")
        filename = el.value("filename")
        number = filename.removeprefix(f"{name}.part.")
        if number == filename or not number.isascii() or not number.isdigit() \
                or int(number) != index:
            raise UserError(
                f"{where}: part {index} is named {filename!r}, not {name}.part.{index}",
                hint="a bundle's parts are <image name>.part.<index>, beside the manifest")
        digest_el = el.get("digest")
        assert digest_el is not None
        parts.append(Part(filename, digest_el.text.lower()))
    count = int(parts_el.attrs[0][1])
    if count != len(parts):
        raise UserError(f"{_at(source, parts_el)}: <parts count='{count}'> but the manifest"
                        f" lists {len(parts)} parts")
    digest_el = image.get("digest")
    key_el = image.get("ec2_encrypted_key")
    assert digest_el is not None and key_el is not None
    bdm_el = mc.get("block_device_mapping")
    bdm: dict[str, str] = {}
    for mapping in bdm_el.all("mapping") if bdm_el is not None else []:
        virtual = mapping.value("virtual")
        if virtual in bdm:
            raise UserError(f"{_at(source, mapping)}: the block device mapping names"
                            f" {virtual!r} twice")
        bdm[virtual] = mapping.value("device")
    return ParsedManifest(
        name=name,
        user=image.value("user"),
        architecture=mc.value("architecture"),
        image_type=image.value("type"),
        digest=digest_el.text.lower(),
        digest_algorithm=digest_el.attrs[0][1],
        size=int(image.value("size")),
        bundled_size=int(image.value("bundled_size")),
        cipher_algorithm=key_el.attrs[0][1],
        parts=tuple(parts),
        ec2_encrypted_key=image.value("ec2_encrypted_key"),
        user_encrypted_key=image.value("user_encrypted_key"),
        ec2_encrypted_iv=image.value("ec2_encrypted_iv"),
        user_encrypted_iv=image.value("user_encrypted_iv"),
        block_device_mapping=bdm,
        kernel_id=mc.value("kernel_id"),
        ramdisk_id=mc.value("ramdisk_id"),
        signature=root.value("signature"),
        signed_bytes=canonical(mc) + canonical(image),
        version=root.value("version"),
        legacy_signed_bytes=(canonical(mc, '"', spaces=False)
                             + canonical(image, '"', spaces=False)),
    )


def _at(source: str, el: _Element) -> str:
    return f"{source}:{el.line}:{el.col}"


def _position(data: bytes, offset: int) -> tuple[int, int]:
    before = data[:offset]
    return before.count(b"\n") + 1, offset - (before.rfind(b"\n") + 1) + 1


def _parse_tree(data: bytes, source: str) -> _Element:
    """One expat pass into an `_Element` tree; only plain elements and text."""
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line, col = _position(data, exc.start)
        raise UserError(f"{source}:{line}:{col}: not UTF-8 text, not a bundle manifest",
                        hint="give the <prefix>.manifest.xml file of a bundle") from None
    body = data
    prolog = _PROLOG.match(data)
    if prolog:
        body = data[prolog.end():]
    for needle, what in ((b"<!", "a DOCTYPE, comment or CDATA section"),
                         (b"<?", "a processing instruction"),
                         (b"&", "an entity or character reference")):
        offset = body.find(needle)
        if offset >= 0:
            line, col = _position(data, offset + len(data) - len(body))
            raise UserError(f"{source}:{line}:{col}: the manifest holds {what}, which a"
                            " bundle manifest never has", hint="refusing a crafted manifest")

    parser = xml.parsers.expat.ParserCreate("UTF-8")
    parser.ordered_attributes = True
    stack: list[_Element] = []
    roots: list[_Element] = []

    def start(tag: str, attrs: list[str]) -> None:
        el = _Element(tag, list(zip(attrs[::2], attrs[1::2], strict=True)),
                      parser.CurrentLineNumber, parser.CurrentColumnNumber + 1)
        if stack:
            stack[-1].children.append(el)
        else:
            roots.append(el)
        stack.append(el)

    def end(tag: str) -> None:
        stack.pop()

    def chars(text: str) -> None:
        if not stack:
            return
        top = stack[-1]
        if top.children:
            top.children[-1].tail += text
        else:
            top.text += text

    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = chars
    try:
        parser.Parse(data, True)
    except xml.parsers.expat.ExpatError as exc:
        raise UserError(
            f"{source}:{exc.lineno}:{exc.offset + 1}: the manifest is truncated or not valid"
            f" XML ({xml.parsers.expat.ErrorString(exc.code)})",
            hint="download or copy the manifest again; bundles are only valid whole",
        ) from None
    root = roots[0]
    if root.tag != "manifest":
        raise UserError(f"{source}: not an EC2 bundle manifest (root <{root.tag}>)")
    version = root.get("version")
    if version is not None and version.text != MANIFEST_VERSION:
        raise UserError(
            f"{_at(source, version)}: manifest version {version.text!r} is not supported",
            hint=f"amibake reads version {MANIFEST_VERSION} manifests",
        )
    return root


def _check(el: _Element, path: str, spec: _Spec, source: str) -> None:
    """`el` has exactly the attributes, text and children `spec` allows."""
    where = _at(source, el)
    names = [k for k, _ in el.attrs]
    if sorted(names) != sorted(spec.attrs):
        raise UserError(f"{where}: <{path}> has attributes {names}, the 2007-10-10 layout"
                        f" gives it {sorted(spec.attrs)}", hint="refusing a crafted manifest")
    for name, value in el.attrs:
        grammar = spec.attrs[name]
        if not grammar.pattern.fullmatch(value):
            raise UserError(f"{where}: <{path}> {name}={value[:80]!r} is not {grammar.what}")
    if spec.text is not None:
        if el.children:
            raise UserError(f"{where}: <{path}> holds an element <{el.children[0].tag}>;"
                            " it holds only text", hint="refusing a crafted manifest")
        if not spec.text.pattern.fullmatch(el.text):
            shown = "empty" if not el.text else repr(el.text[:80])
            raise UserError(f"{where}: <{path}> is {shown}, not {spec.text.what}")
        return
    for text in [el.text, *(c.tail for c in el.children)]:
        if not _SPACE.fullmatch(text):
            raise UserError(f"{where}: <{path}> holds text {text.strip()[:80]!r} between"
                            " its elements", hint="refusing a crafted manifest")
    counts = [0] * len(spec.children)
    slot = 0
    for child in el.children:
        if not spec.ordered:
            slot = 0
        while slot < len(spec.children) and spec.children[slot][0] != child.tag:
            slot += 1
        if slot == len(spec.children):
            expected = [t for t, *_ in spec.children]
            if child.tag in expected:
                raise UserError(f"{_at(source, child)}: a misplaced <{child.tag}> in <{path}>:"
                                f" the 2007-10-10 layout is {expected}, in this order",
                                hint="refusing a crafted manifest")
            raise UserError(f"{_at(source, child)}: <{child.tag}> has no place in <{path}>"
                            f" (the 2007-10-10 layout is {expected})",
                            hint="refusing a crafted manifest")
        tag, child_spec, _, most = spec.children[slot]
        counts[slot] += 1
        if counts[slot] > most:
            raise UserError(f"{_at(source, child)}: a second <{tag}> in <{path}>",
                            hint="refusing a crafted manifest")
        _check(child, f"{path}/{tag}", child_spec, source)
    for (tag, _, least, _), count in zip(spec.children, counts, strict=True):
        if count < least:
            raise UserError(f"{where}: <{path}> has no <{tag}>",
                            hint="the manifest is incomplete")


# ------------------------------------------------------------ verify/decrypt


def verify_signature(parsed: ParsedManifest, public: rsa.RSAPublicKey, source: str) -> None:
    """Raise a UserError unless the signature over the canonical bytes of the
    elements `parsed` was read from verifies with `public`."""
    signature = bytes.fromhex(parsed.signature)  # the layout admits only hex
    for signed in (parsed.signed_bytes, parsed.legacy_signed_bytes):
        try:
            public.verify(signature, signed, padding.PKCS1v15(), hashes.SHA1())
            return
        except (ValueError, InvalidSignature):
            continue
    raise UserError(
        f"{source}: the manifest signature does not verify: the manifest was altered,"
        " or it was signed with another key",
        hint="unbundle with the certificate/key pair the bundle was made with",
    )


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


def decrypt_copy(
    parsed: ParsedManifest, key: rsa.RSAPrivateKey
) -> tuple[str, bytes, bytes] | None:
    """("user" or "ec2", AES key, IV): the copy `key` decrypts, None if neither."""
    for copy, enc_key, enc_iv in (
        ("user", parsed.user_encrypted_key, parsed.user_encrypted_iv),
        ("ec2", parsed.ec2_encrypted_key, parsed.ec2_encrypted_iv),
    ):
        key_hex = decrypt_hex_key(enc_key, key)
        iv_hex = decrypt_hex_key(enc_iv, key)
        if key_hex and iv_hex:
            return copy, bytes.fromhex(key_hex), bytes.fromhex(iv_hex)
    return None


def decrypt_key_iv(
    parsed: ParsedManifest, key: rsa.RSAPrivateKey, source: str
) -> tuple[bytes, bytes]:
    """The AES key and IV, from the user's copy (or EC2's, for EC2's key)."""
    found = decrypt_copy(parsed, key)
    if found is None:
        raise UserError(
            f"{source}: the private key does not decrypt this bundle's key (wrong key)",
            hint="use the private key of the certificate given at bundle time",
        )
    return found[1], found[2]

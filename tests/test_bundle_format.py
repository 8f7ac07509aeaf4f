"""Bundle format: round trips, known-answer manifest checks, tamper tests."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding

from builder.bundle import manifest_xml
from builder.bundle.certs import BundleCredentials, load_private_key
from builder.bundle.reader import unbundle
from builder.bundle.writer import PART_SIZE, BundleRequest, BundleResult, bundle_image
from builder.errors import UserError
from builder.sparse import data_extents
from builder.store import Store
from tests.bundle_pki import Pki, make_pki

MiB = 1024 * 1024
ROOT = Path(__file__).resolve().parent.parent
ACCOUNT = "123456789012"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def creds(pki: Pki) -> BundleCredentials:
    return BundleCredentials.load(pki.cert, pki.key, pki.ec2_cert)


def sha1_file(path: Path) -> str:
    digest = hashlib.sha1()
    with open(path, "rb") as f:
        while block := f.read(MiB):
            digest.update(block)
    return digest.hexdigest()


def make_bundle(
    image: Path, out: Path, creds: BundleCredentials, prefix: str = "disk.raw", **kw: object
) -> BundleResult:
    return bundle_image(
        BundleRequest(image=image, destination=out, prefix=prefix, user=ACCOUNT, **kw),  # type: ignore[arg-type]
        creds,
    )


def openssl_decrypt_stream(result: BundleResult, key_pem: Path) -> bytes:
    """Decrypt with the real openssl tools, as euca2ools does: rsautl + enc."""
    parsed = manifest_xml.parse(result.manifest_path.read_bytes(), "m")
    plain = []
    for enc in (parsed.user_encrypted_key, parsed.user_encrypted_iv):
        proc = subprocess.run(
            ["openssl", "pkeyutl", "-decrypt", "-inkey", str(key_pem),
             "-pkeyopt", "rsa_padding_mode:pkcs1"],
            input=bytes.fromhex(enc), capture_output=True, check=True,
        )
        plain.append(proc.stdout.decode())
    key_hex, iv_hex = plain
    data = b"".join(p.read_bytes() for p in result.part_paths)
    dec = subprocess.run(
        ["openssl", "enc", "-d", "-aes-128-cbc", "-K", key_hex, "-iv", iv_hex],
        input=data, capture_output=True, check=True,
    )
    return subprocess.run(["gzip", "-dc"], input=dec.stdout, capture_output=True,
                          check=True).stdout


# ------------------------------------------------------------------ round trips


@pytest.mark.parametrize(
    "size", [0, 1, 10 * MiB, 10 * MiB + 1], ids=["empty", "1B", "10MiB", "10MiB+1"]
)
def test_round_trip_awkward_sizes(tmp_path: Path, creds: BundleCredentials, pki: Pki,
                                  size: int) -> None:
    image = tmp_path / "disk.raw"
    image.write_bytes(os.urandom(size))
    result = make_bundle(image, tmp_path / "out", creds)
    m = result.manifest
    assert m.size == size
    assert [p.name for p in result.part_paths] == [
        f"disk.raw.part.{i:02d}" for i in range(len(result.part_paths))
    ]
    sizes = [p.stat().st_size for p in result.part_paths]
    assert all(s == PART_SIZE for s in sizes[:-1]) and 0 < sizes[-1] <= PART_SIZE
    assert sum(sizes) == m.bundled_size and m.bundled_size % 16 == 0
    # random data does not compress: 10 MiB of it needs a second part
    assert len(sizes) == (1 if size <= 1 else 2)
    back = unbundle(result.manifest_path, pki.key, output=tmp_path / "back.raw", cert=pki.cert)
    assert back.size == size
    assert (tmp_path / "back.raw").read_bytes() == image.read_bytes()
    assert not list(tmp_path.glob("*.partial"))


@pytest.mark.parametrize("engine", ["zlib", "zlib-ng", "libdeflate"])
def test_every_gzip_engine_makes_one_valid_gzip_stream(tmp_path: Path, creds: BundleCredentials,
                                                       pki: Pki, engine: str) -> None:
    image = tmp_path / "disk.raw"
    text = b"".join(b"line %d of a log file\n" % i for i in range(400_000))  # compressible
    image.write_bytes(text + bytes(9 * MiB) + text[:12345])
    result = make_bundle(image, tmp_path / "out", creds, engine=engine, chunk_size=1 * MiB,
                         sparse=False)
    assert result.manifest.bundled_size < image.stat().st_size // 4
    stream = openssl_decrypt_stream(result, pki.key)  # gzip -dc reads all the members
    assert hashlib.sha1(stream).hexdigest() == result.manifest.digest
    assert stream[512 : 512 + len(text)] == text
    unbundle(result.manifest_path, pki.key, output=tmp_path / "back.raw")
    assert (tmp_path / "back.raw").read_bytes() == image.read_bytes()


def test_chunk_buffers_are_reused_once_compressed(
    tmp_path: Path, creds: BundleCredentials, pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The tar stream reads into buffers handed back after compression: a few
    buffers serve ~100 chunks, and no chunk is overwritten while compressed."""
    from builder.bundle import writer

    pools: list[writer._BufferPool] = []

    class Spy(writer._BufferPool):
        def __init__(self, size: int) -> None:
            super().__init__(size)
            pools.append(self)

    monkeypatch.setattr(writer, "_BufferPool", Spy)
    image = tmp_path / "disk.raw"
    # every 64 KiB differs (a reused buffer read too early would repeat or mix blocks)
    image.write_bytes(b"".join(b"block %06d " % i * 5000 + os.urandom(4000) for i in range(100)))
    result = make_bundle(image, tmp_path / "out", creds, chunk_size=64 * 1024, workers=2,
                         engine="libdeflate", sparse=False)
    (pool,) = pools
    assert 0 < pool.allocated <= 2 * 2 + 3  # in flight, being read, being handed on
    stream = openssl_decrypt_stream(result, pki.key)
    assert hashlib.sha1(stream).hexdigest() == result.manifest.digest
    assert stream[512 : 512 + image.stat().st_size] == image.read_bytes()


def test_auto_engine_is_libdeflate_at_a_level_no_larger_than_gzip_6() -> None:
    from builder.bundle import gzip_parallel as gp

    assert gp.choose_engine("auto", gp.PROCESS_MIN_BYTES) == "libdeflate"
    assert gp.choose_engine("auto", gp.PROCESS_MIN_BYTES - 1) == "zlib"  # no workers to start
    # real content of the kind an image holds: a binary and licence texts
    files = [Path("/bin/bash"), *sorted(Path("/usr/share/common-licenses").glob("*"))]
    corpus = b"".join(p.read_bytes() for p in files if p.is_file())
    assert len(corpus) > 1 * MiB
    level = gp.DEFAULT_LEVEL["libdeflate"]
    assert len(gp.gzip_member_libdeflate(corpus, level)) <= len(gp.gzip_member(corpus, 6))


def test_libdeflate_is_the_packages_else_debians_and_both_make_gzip() -> None:
    """The ctypes engine loads the `deflate` package's own (newer) libdeflate
    first; Debian's libdeflate0, the fallback, makes valid members too."""
    import gzip

    import deflate

    from builder.bundle import gzip_parallel as gp

    candidates = gp._libdeflate_candidates()
    assert candidates == [deflate._deflate.__file__, "libdeflate.so.0"]
    assert gp._LIBDEFLATE is not None and gp._LIBDEFLATE._name == candidates[0]
    assert gp._load_libdeflate(["/nonexistent/libdeflate.so", "libc.so.6"]) is None
    corpus = Path("/bin/bash").read_bytes() + bytes(100_000)
    for name in candidates:
        lib = gp._load_libdeflate([name])
        assert lib is not None, name
        compress = gp.LibdeflateThreads(5, lib)
        try:
            member = compress(bytearray(corpus))
        finally:
            compress.close()
        assert gzip.decompress(member) == corpus and len(member) < len(corpus) // 2


def test_libdeflate_runs_in_threads_with_the_packages_output(tmp_path: Path) -> None:
    """The ctypes engine (GIL released, no worker processes) makes the same
    members as the `deflate` package, from the tar stream's own buffers."""
    import gzip
    import multiprocessing
    import threading

    from builder.bundle import gzip_parallel as gp
    from builder.bundle.tarstream import tar_stream

    image = tmp_path / "disk.raw"
    text = b"".join(b"row %d of a table\n" % i for i in range(200_000))
    image.write_bytes(Path("/bin/bash").read_bytes() + text + bytes(3 * MiB) + text[:777])
    blocks = list(tar_stream(str(image), "disk.raw", sparse=False, read_size=1 * MiB))
    assert {len(b) for b in blocks[:-1]} == {1 * MiB} and 0 < len(blocks[-1]) <= 1 * MiB
    stream = b"".join(blocks)
    seen: set[str] = set()
    real = gp.LibdeflateThreads.__call__

    def spy(self: gp.LibdeflateThreads, data: bytes) -> bytes:
        seen.add(threading.current_thread().name)
        return real(self, data)

    gp.LibdeflateThreads.__call__ = spy  # type: ignore[method-assign]
    try:
        members = list(gp.parallel_gzip(iter(blocks), chunk_size=1 * MiB, workers=2,
                                        engine="libdeflate"))
    finally:
        gp.LibdeflateThreads.__call__ = real  # type: ignore[method-assign]
    assert seen and all(name.startswith("gzip") for name in seen)
    assert not multiprocessing.active_children()
    level = gp.DEFAULT_LEVEL["libdeflate"]
    zero = gp.gzip_member(bytes(1 * MiB), level)
    expected = [zero if b == bytes(1 * MiB) else gp.gzip_member_libdeflate(bytes(b), level)
                for b in blocks]
    assert members == expected
    assert gzip.decompress(b"".join(members)) == stream


def test_last_part_exactly_full_has_no_empty_part(tmp_path: Path, creds: BundleCredentials,
                                                  pki: Pki) -> None:
    image = tmp_path / "disk.raw"
    image.write_bytes(os.urandom(5000))
    result = make_bundle(image, tmp_path / "out", creds, part_size=16)
    sizes = [p.stat().st_size for p in result.part_paths]
    assert set(sizes) == {16}  # AES output is a multiple of 16: every part is full
    assert len(result.manifest.parts) == len(sizes)
    unbundle(result.manifest_path, pki.key, output=tmp_path / "back.raw")
    assert (tmp_path / "back.raw").read_bytes() == image.read_bytes()


def assert_gnu_tar_extracts(stream: bytes, image: Path, into: Path) -> None:
    """GNU tar extracts the bundle's tar stream to the same bytes as `image`."""
    into.mkdir()
    subprocess.run(["tar", "-xSf", "-"], input=stream, cwd=into, check=True)
    assert sha1_file(into / image.name) == sha1_file(image)


def test_sparse_image_keeps_holes_and_gnu_tar_agrees(tmp_path: Path, creds: BundleCredentials,
                                                     pki: Pki) -> None:
    image = tmp_path / "disk.raw"
    with open(image, "wb") as f:
        f.write(os.urandom(100_000))
        f.seek(40 * MiB)
        f.write(b"middle" * 1000)
        f.truncate(64 * MiB)  # ends in a hole
    result = make_bundle(image, tmp_path / "out", creds)
    assert result.manifest.bundled_size < 1 * MiB  # holes are not in the stream
    stream = openssl_decrypt_stream(result, pki.key)
    assert hashlib.sha1(stream).hexdigest() == result.manifest.digest
    assert stream[156:157] == b"S"  # an old-GNU sparse member, like `tar --sparse`
    assert len(stream) % 10240 == 0  # GNU tar's record size
    # GNU tar extracts it to the same bytes
    assert_gnu_tar_extracts(stream, image, tmp_path / "gnu")
    back = unbundle(result.manifest_path, pki.key, output=tmp_path / "back.raw")
    assert sha1_file(back.image_path) == sha1_file(image)
    assert back.image_path.stat().st_size == 64 * MiB
    assert back.image_path.stat().st_blocks * 512 < 2 * MiB  # still sparse


def test_many_holes_use_sparse_extension_blocks(tmp_path: Path, creds: BundleCredentials,
                                                pki: Pki) -> None:
    image = tmp_path / "disk.raw"
    with open(image, "wb") as f:
        for i in range(70):  # 70 data islands: 4 in the header, 66 in 4 extension blocks
            f.seek(i * 256 * 1024)
            f.write(os.urandom(4096 + i))
        f.truncate(70 * 256 * 1024 + 5)
    result = make_bundle(image, tmp_path / "out", creds)
    stream = openssl_decrypt_stream(result, pki.key)
    assert stream[482] == 1  # isextended
    assert_gnu_tar_extracts(stream, image, tmp_path / "gnu")
    back = unbundle(result.manifest_path, pki.key, output=tmp_path / "back.raw")
    assert sha1_file(back.image_path) == sha1_file(image)


def test_bundle_of_gnu_tar_stream_is_readable(tmp_path: Path, creds: BundleCredentials,
                                             pki: Pki) -> None:
    """A bundle whose tar GNU tar wrote (as the AMI tools do) unbundles too."""
    image = tmp_path / "disk.raw"
    with open(image, "wb") as f:
        f.write(os.urandom(3000))
        f.seek(5 * MiB)
        f.write(os.urandom(3000))
        f.truncate(9 * MiB)
    made = make_bundle(image, tmp_path / "out", creds)
    gnu_tar = subprocess.run(["tar", "-cS", "--format=gnu", "--owner=0", "--group=0",
                              "-f", "-", "disk.raw"], cwd=tmp_path, capture_output=True,
                             check=True).stdout
    # re-bundle GNU tar's stream by hand, with the real shell tools
    key, iv = os.urandom(16).hex(), os.urandom(16).hex()
    gz = subprocess.run(["gzip", "-9"], input=gnu_tar, capture_output=True, check=True).stdout
    enc = subprocess.run(["openssl", "enc", "-e", "-aes-128-cbc", "-K", key, "-iv", iv],
                         input=gz, capture_output=True, check=True).stdout
    hand = tmp_path / "hand"
    hand.mkdir()
    (hand / "disk.raw.part.00").write_bytes(enc)
    m = manifest_xml.BundleManifest(
        name="disk.raw", user=ACCOUNT, architecture="x86_64",
        digest=hashlib.sha1(gnu_tar).hexdigest(), size=9 * MiB, bundled_size=len(enc),
        parts=(manifest_xml.Part("disk.raw.part.00", hashlib.sha1(enc).hexdigest()),),
        key_hex=key, iv_hex=iv,
    )
    user_cert = creds.user_cert.public_key()
    doc = manifest_xml.render(m, creds.user_key, user_cert,  # type: ignore[arg-type]
                              creds.ec2_cert.public_key())  # type: ignore[arg-type]
    (hand / "disk.raw.manifest.xml").write_bytes(doc)
    back = unbundle(hand / "disk.raw.manifest.xml", pki.key, output=tmp_path / "back.raw")
    assert sha1_file(back.image_path) == sha1_file(image)
    assert made.manifest.size == 9 * MiB


def _stored_or_ext4_image(tmp_path: Path) -> Path:
    stored = Store(ROOT / "images").list()  # committed images only, never a staging dir
    if stored:
        return stored[-1].disk_path
    # a real filesystem, made from real files (mkfs reads the tree directly)
    image = tmp_path / "ext4.raw"
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", "/usr/share/doc", str(image), "256M"],
                   check=True)
    return image


def test_round_trip_real_filesystem_image(tmp_path: Path, creds: BundleCredentials,
                                          pki: Pki) -> None:
    image = _stored_or_ext4_image(tmp_path)
    result = make_bundle(image, tmp_path / "out", creds, prefix=image.name)
    assert result.manifest.size == image.stat().st_size
    back = unbundle(result.manifest_path, pki.key, destination=tmp_path, cert=pki.cert)
    assert back.image_path == tmp_path / image.name
    assert sha1_file(back.image_path) == sha1_file(image)
    if image.name == "ext4.raw":
        subprocess.run(["e2fsck", "-fn", str(back.image_path)], check=True,
                       capture_output=True)
    # GNU tar reads the sparse member, extension blocks of the sparse map included
    fd = os.open(image, os.O_RDONLY)
    try:
        assert len(data_extents(fd, image.stat().st_size)) > 4  # needs extension blocks
    finally:
        os.close(fd)
    # streamed through the real tools (a stored image is GiBs: nothing in memory)
    parsed = manifest_xml.parse(result.manifest_path.read_bytes(), "m")
    key_hex, iv_hex = manifest_xml.decrypt_key_iv(parsed, load_private_key(pki.key), "m")
    back.image_path.unlink()
    parts = " ".join(str(p) for p in result.part_paths)
    subprocess.run(["bash", "-o", "pipefail", "-c",
                    f"cat {parts} | openssl enc -d -aes-128-cbc -K {key_hex.hex()}"
                    f" -iv {iv_hex.hex()} | gzip -dc | tar -xSf -"], cwd=tmp_path, check=True)
    assert sha1_file(tmp_path / image.name) == sha1_file(image)


# ---------------------------------------------------------- known answers


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory, creds: BundleCredentials) -> BundleResult:
    tmp = tmp_path_factory.mktemp("sample")
    image = tmp / "disk.raw"
    image.write_bytes(os.urandom(12 * MiB))
    return make_bundle(image, tmp / "out", creds, block_device_mapping={
        "root": "/dev/sda1", "ami": "sda1", "ephemeral0": "sdb"})


def test_manifest_structure_matches_ami_tools(sample: BundleResult) -> None:
    data = sample.manifest_path.read_bytes()
    assert data.startswith(b"<?xml version='1.0'?><manifest>")
    root = ET.fromstring(data)
    assert [c.tag for c in root] == [
        "version", "bundler", "machine_configuration", "image", "signature"]
    assert root.findtext("version") == "2007-10-10"
    assert [c.tag for c in root.find("bundler")] == ["name", "version", "release"]
    mc = root.find("machine_configuration")
    assert [c.tag for c in mc] == ["architecture", "block_device_mapping"]
    assert mc.findtext("architecture") == "x86_64"
    mappings = [(m.findtext("virtual"), m.findtext("device"))
                for m in mc.iterfind("block_device_mapping/mapping")]
    assert mappings == [("ami", "sda1"), ("ephemeral0", "sdb"), ("root", "/dev/sda1")]
    image = root.find("image")
    # EC2 wants <type> right after <user> (euca2ools' note); the rest in AMI tools' order
    assert [c.tag for c in image] == [
        "name", "user", "type", "digest", "size", "bundled_size", "ec2_encrypted_key",
        "user_encrypted_key", "ec2_encrypted_iv", "user_encrypted_iv", "parts"]
    assert image.findtext("name") == "disk.raw"
    assert image.findtext("user") == ACCOUNT
    assert image.findtext("type") == "machine"
    assert image.find("digest").get("algorithm") == "SHA1"
    assert image.find("ec2_encrypted_key").get("algorithm") == "AES-128-CBC"
    assert image.find("user_encrypted_key").get("algorithm") == "AES-128-CBC"
    assert image.findtext("size") == str(12 * MiB)
    parts = image.find("parts")
    assert parts.get("count") == str(len(sample.part_paths)) == "2"
    for index, (el, path) in enumerate(zip(parts.iterfind("part"), sample.part_paths,
                                           strict=True)):
        assert el.get("index") == str(index)
        assert el.findtext("filename") == path.name
        assert el.find("digest").get("algorithm") == "SHA1"
        assert el.findtext("digest") == sha1_file(path)
    assert image.findtext("bundled_size") == str(sum(p.stat().st_size for p in sample.part_paths))
    for tag in ("ec2_encrypted_key", "user_encrypted_key", "ec2_encrypted_iv",
                "user_encrypted_iv"):
        assert re.fullmatch(r"[0-9a-f]{512}", image.findtext(tag))  # 2048-bit RSA, hex


def test_keys_decrypt_with_both_private_keys(sample: BundleResult, pki: Pki) -> None:
    parsed = manifest_xml.parse(sample.manifest_path.read_bytes(), "m")
    user = manifest_xml.decrypt_key_iv(parsed, load_private_key(pki.key), "m")
    ec2_key = manifest_xml.decrypt_hex_key(parsed.ec2_encrypted_key, load_private_key(pki.ec2_key))
    ec2_iv = manifest_xml.decrypt_hex_key(parsed.ec2_encrypted_iv, load_private_key(pki.ec2_key))
    assert ec2_key and ec2_iv
    assert (bytes.fromhex(ec2_key), bytes.fromhex(ec2_iv)) == user
    # the plaintext is the key as 32 hex characters (what `openssl enc -K` takes)
    assert re.fullmatch(r"[0-9a-f]{32}", ec2_key) and ec2_key == sample.manifest.key_hex
    # and the other (user) copy is not readable with EC2's key and vice versa
    assert manifest_xml.decrypt_hex_key(parsed.user_encrypted_key,
                                        load_private_key(pki.ec2_key)) is None


def test_signature_verifies_with_openssl(sample: BundleResult, pki: Pki, tmp_path: Path) -> None:
    data = sample.manifest_path.read_bytes()
    signed = (re.search(rb"<machine_configuration>.*?</machine_configuration>", data).group(0)
              + re.search(rb"<image>.*?</image>", data).group(0))
    sig = bytes.fromhex(ET.fromstring(data).findtext("signature"))
    (tmp_path / "signed").write_bytes(signed)
    (tmp_path / "sig").write_bytes(sig)
    pub = subprocess.run(["openssl", "x509", "-in", str(pki.cert), "-pubkey", "-noout"],
                         capture_output=True, check=True).stdout
    (tmp_path / "pub.pem").write_bytes(pub)
    ok = subprocess.run(["openssl", "dgst", "-sha1", "-verify", str(tmp_path / "pub.pem"),
                         "-signature", str(tmp_path / "sig"), str(tmp_path / "signed")],
                        capture_output=True, text=True)
    assert ok.returncode == 0 and "Verified OK" in ok.stdout
    (tmp_path / "signed").write_bytes(signed.replace(b"<size>", b"<size>1"))
    bad = subprocess.run(["openssl", "dgst", "-sha1", "-verify", str(tmp_path / "pub.pem"),
                          "-signature", str(tmp_path / "sig"), str(tmp_path / "signed")],
                         capture_output=True, text=True)
    assert bad.returncode != 0


def test_digest_is_sha1_of_tar_stream_via_openssl(sample: BundleResult, pki: Pki) -> None:
    stream = openssl_decrypt_stream(sample, pki.key)
    assert hashlib.sha1(stream).hexdigest() == sample.manifest.digest
    assert stream[:9] == b"disk.raw\0"  # the member is named after the prefix
    assert stream[257:265] == b"ustar  \0"


# ------------------------------------------------------------------ tampering


@pytest.fixture
def bundle3(tmp_path: Path, creds: BundleCredentials) -> BundleResult:
    image = tmp_path / "disk.raw"
    image.write_bytes(os.urandom(25 * MiB))
    return make_bundle(image, tmp_path / "out", creds)


def _unbundle(result: BundleResult, key: Path, **kw: object) -> None:
    unbundle(result.manifest_path, key, output=result.manifest_path.parent / "back.raw", **kw)  # type: ignore[arg-type]


def test_tampered_part_is_named(bundle3: BundleResult, pki: Pki) -> None:
    part = bundle3.part_paths[1]
    with open(part, "r+b") as f:
        f.seek(1234)
        byte = f.read(1)
        f.seek(1234)
        f.write(bytes([byte[0] ^ 1]))
    with pytest.raises(UserError, match=r"part 1 of 3 .*disk\.raw\.part\.01.* altered"):
        _unbundle(bundle3, pki.key, cert=pki.cert)
    out = bundle3.manifest_path.parent
    assert not (out / "back.raw").exists() and not (out / "back.raw.partial").exists()


def test_truncated_part_is_named(bundle3: BundleResult, pki: Pki) -> None:
    last = bundle3.part_paths[-1]
    last.write_bytes(last.read_bytes()[:-16])
    with pytest.raises(UserError, match=r"part 2 of 3 .*truncated"):
        _unbundle(bundle3, pki.key)


def test_missing_part_is_named(bundle3: BundleResult, pki: Pki) -> None:
    bundle3.part_paths[2].unlink()
    with pytest.raises(UserError, match=r"part 2 of 3 is missing: .*disk\.raw\.part\.02"):
        _unbundle(bundle3, pki.key)


def test_truncated_manifest(bundle3: BundleResult, pki: Pki) -> None:
    data = bundle3.manifest_path.read_bytes()
    bundle3.manifest_path.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="manifest is truncated or not valid XML"):
        _unbundle(bundle3, pki.key)


def test_wrong_key(bundle3: BundleResult, pki: Pki) -> None:
    with pytest.raises(UserError, match=r"does not decrypt this bundle's key \(wrong key\)"):
        _unbundle(bundle3, pki.other_key)
    with pytest.raises(UserError, match="is not the private key of the certificate"):
        _unbundle(bundle3, pki.other_key, cert=pki.cert)


def test_edited_manifest_fails_signature(bundle3: BundleResult, pki: Pki) -> None:
    data = bundle3.manifest_path.read_bytes()
    bundle3.manifest_path.write_bytes(data.replace(b"<type>machine</type>",
                                                   b"<type>kernel</type>"))
    with pytest.raises(UserError, match="signature does not verify"):
        _unbundle(bundle3, pki.key, cert=pki.cert)


def test_failed_bundle_leaves_nothing(tmp_path: Path, creds: BundleCredentials,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    image = tmp_path / "disk.raw"
    image.write_bytes(os.urandom(21 * MiB))

    def boom(*a: object, **k: object) -> bytes:
        raise RuntimeError("injected failure while signing")

    monkeypatch.setattr(manifest_xml, "render", boom)
    with pytest.raises(RuntimeError, match="injected"):
        make_bundle(image, tmp_path / "out", creds)
    assert list((tmp_path / "out").iterdir()) == []


def test_bad_inputs_are_user_errors(tmp_path: Path, creds: BundleCredentials, pki: Pki) -> None:
    image = tmp_path / "disk.raw"
    image.write_bytes(b"x")
    with pytest.raises(UserError, match="invalid AWS account id"):
        bundle_image(BundleRequest(image=image, destination=tmp_path, prefix="p", user="12"),
                     creds)
    with pytest.raises(UserError, match="invalid bundle prefix"):
        bundle_image(BundleRequest(image=image, destination=tmp_path, prefix="a/b",
                                   user=ACCOUNT), creds)
    with pytest.raises(UserError, match="is not the private key of the certificate"):
        BundleCredentials.load(pki.cert, pki.other_key, pki.ec2_cert)
    with pytest.raises(UserError, match="not an X.509 certificate"):
        BundleCredentials.load(pki.key, pki.key, pki.ec2_cert)


def test_wrong_image_digest_or_size_in_a_signed_manifest(tmp_path: Path,
                                                         creds: BundleCredentials,
                                                         pki: Pki) -> None:
    """Parts intact, manifest validly signed, but its digest/size lie: refused."""
    image = tmp_path / "disk.raw"
    image.write_bytes(os.urandom(3 * MiB))
    made = make_bundle(image, tmp_path / "out", creds)
    user_pub = creds.user_cert.public_key()
    ec2_pub = creds.ec2_cert.public_key()
    for change, message in (({"digest": "0" * 40}, "image digest does not match"),
                            ({"size": 3 * MiB + 1}, "the manifest says 3145729")):
        forged = manifest_xml.BundleManifest(**{**made.manifest.__dict__, **change})
        made.manifest_path.write_bytes(
            manifest_xml.render(forged, creds.user_key, user_pub, ec2_pub))  # type: ignore[arg-type]
        with pytest.raises(UserError, match=message):
            unbundle(made.manifest_path, pki.key, output=tmp_path / "back.raw", cert=pki.cert)
        assert not (tmp_path / "back.raw").exists()


def test_tar_receiver_rejects_malformed_streams() -> None:
    from builder.bundle.tarstream import TarFormatError, TarReceiver, member_header

    def receiver() -> TarReceiver:
        return TarReceiver(lambda data, offset: None)

    header = member_header("disk.raw", 5, 0, None)
    bad = bytearray(header)
    bad[0] ^= 1
    with pytest.raises(TarFormatError, match="checksum"):
        receiver().feed(bytes(bad))
    with pytest.raises(TarFormatError, match="more than one file"):
        receiver().feed(header + b"hello" + bytes(507) + header)
    with pytest.raises(TarFormatError, match="after the end"):
        receiver().feed(header + b"hello" + bytes(507) + bytes(1024) + b"junk")
    with pytest.raises(TarFormatError, match="holds no file"):
        receiver().feed(bytes(1024))
    ok = receiver()
    ok.feed(header + b"hello" + bytes(507 + 1024))
    assert ok.done and ok.name == "disk.raw" and ok.size == 5


# ------------------------------------------- canonical form: what REXML writes

# What ec2-migrate-manifest (ec2-ami-tools 1.5) does before it checks a
# manifest: parse it with REXML, write it back (to_s), take the first
# <machine_configuration>…</…> and <image>…</…> of that text and verify the
# signature over the two with the user's certificate. Run with bookworm's Ruby.
REXML_CHECK = r"""
require "rexml/document"
require "openssl"
manifest, cert = ARGV
text = File.read(manifest)
written = REXML::Document.new(text).to_s
section = lambda do |tag|
  first = written.index("<#{tag}>")
  last = written.index("</#{tag}>") + "</#{tag}>".size
  written[first...last]
end
signed = section.call("machine_configuration") + section.call("image")
signature = [REXML::Document.new(text).root.elements["signature"].text].pack("H*")
key = OpenSSL::X509::Certificate.new(File.read(cert)).public_key
puts "same=#{written == text}"
puts "verified=#{key.verify(OpenSSL::Digest::SHA1.new, signature, signed)}"
STDOUT.write(signed)
"""


def rexml_check(manifest: Path, cert: Path) -> tuple[bool, bool, bytes]:
    """(REXML writes the file back unchanged, the signature verifies, signed bytes)."""
    proc = subprocess.run(["ruby", "-e", REXML_CHECK, str(manifest), str(cert)],
                          capture_output=True, check=True)
    same, verified, signed = proc.stdout.split(b"\n", 2)
    return same == b"same=true", verified == b"verified=true", signed


def test_rexml_round_trip_verifies_amibake_manifest(sample: BundleResult, pki: Pki) -> None:
    """Byte for byte the form the AMI tools re-serialise to: their check passes."""
    data = sample.manifest_path.read_bytes()
    assert b"<digest algorithm='SHA1'>" in data and b'"' not in data
    same, verified, signed = rexml_check(sample.manifest_path, pki.cert)
    assert same and verified
    assert signed == manifest_xml.parse(data, "m").signed_bytes


def test_canonical_bytes_are_rexmls_for_other_writers(sample: BundleResult, pki: Pki,
                                                      tmp_path: Path) -> None:
    """A manifest written another way (double quotes, indented) is checked over
    REXML's bytes of it, so a signature the AMI tools accept verifies here."""
    data = sample.manifest_path.read_bytes()
    other = re.sub(rb"='([^']*)'", rb'="\1"', data)  # attributes in double quotes
    other = other.replace(b"><", b">\n  <")  # and indented
    path = tmp_path / "other.manifest.xml"
    path.write_bytes(other)
    same, verified, rexml_signed = rexml_check(path, pki.cert)
    assert not same and not verified  # REXML's bytes differ from what was signed
    parsed = manifest_xml.parse(other, "other")
    assert parsed.signed_bytes == rexml_signed  # amibake checks exactly REXML's bytes
    # signed over REXML's bytes (as the AMI tools sign), it verifies in both
    key = load_private_key(pki.key)
    signature = key.sign(rexml_signed, padding.PKCS1v15(), hashes.SHA1()).hex().encode()
    path.write_bytes(re.sub(rb"<signature>[0-9a-f]+</signature>",
                            b"<signature>" + signature + b"</signature>", other))
    assert rexml_check(path, pki.cert)[1]
    manifest_xml.verify_signature(manifest_xml.parse(path.read_bytes(), "other"),
                                  load_private_key(pki.key).public_key(), "other")


# --------------------------------------------- the sparse map, as GNU tar has it


@pytest.mark.parametrize("layout", ["ends-in-data", "ends-in-hole", "many-extents",
                                    "starts-with-hole"])
def test_sparse_map_is_gnu_tars(tmp_path: Path, layout: str) -> None:
    """The sparse header (map, real size, extension blocks) equals GNU tar's."""
    from builder.bundle.tarstream import member_header

    image = tmp_path / "disk.raw"
    with open(image, "wb") as f:
        if layout == "ends-in-data":
            f.write(b"a" * 4096)
            f.seek(1 * MiB)
            f.write(b"b" * 8192)
        elif layout == "ends-in-hole":
            f.write(b"a" * 4096)
            f.truncate(2 * MiB)
        elif layout == "many-extents":
            for i in range(30):
                f.seek(i * 64 * 1024)
                f.write(b"x" * 4096)
        else:
            f.seek(1 * MiB)
            f.write(b"b" * 4096)
    gnu = subprocess.run(["tar", "-cS", "--format=gnu", "-f", "-", image.name],
                         cwd=tmp_path, capture_output=True, check=True).stdout
    fd = os.open(image, os.O_RDONLY)
    try:
        extents = data_extents(fd, image.stat().st_size)
    finally:
        os.close(fd)
    ours = member_header(image.name, image.stat().st_size, 0, extents)
    assert gnu[156:157] == ours[156:157] == b"S"
    assert ours[386:495] == gnu[386:495]  # map, isextended, realsize
    blocks = len(ours) // 512 - 1
    assert gnu[512 : 512 * (1 + blocks)] == ours[512:]  # extension blocks
    assert (layout == "many-extents") == (blocks > 0)

"""Forged and crafted bundle manifests: signature wrapping, duplicates, XML
tricks, unsafe part names; planted symlinks at unbundle's output."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

from builder.bundle import manifest_xml
from builder.bundle.certs import BundleCredentials
from builder.bundle.reader import unbundle
from builder.bundle.writer import BundleRequest, BundleResult, bundle_image
from builder.errors import UserError
from tests.bundle_pki import Pki, make_pki, resign, signed_section

ACCOUNT = "123456789012"
AT = r":\d+:\d+: "  # every refusal points into the manifest


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def _bundle(tmp: Path, pki: Pki, name: str, data: bytes) -> BundleResult:
    tmp.mkdir(parents=True, exist_ok=True)
    image = tmp / name
    image.write_bytes(data)
    creds = BundleCredentials.load(pki.cert, pki.key, pki.ec2_cert)
    return bundle_image(BundleRequest(image=image, destination=tmp / f"{name}-out",
                                      prefix=name, user=ACCOUNT, part_size=64 * 1024), creds)


@pytest.fixture(scope="module")
def genuine(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> BundleResult:
    return _bundle(tmp_path_factory.mktemp("genuine"), pki, "disk.raw", os.urandom(200_000))


@pytest.fixture
def bundle(genuine: BundleResult, tmp_path: Path) -> Path:
    """A private copy of the genuine bundle's directory; returns its manifest."""
    out = tmp_path / "bundle"
    shutil.copytree(genuine.manifest_path.parent, out)
    return out / genuine.manifest_path.name


def _unbundle(manifest: Path, pki: Pki, **kw: object) -> Path:
    output = manifest.parent.parent / "back.raw"
    unbundle(manifest, pki.key, output=output, cert=pki.cert, **kw)  # type: ignore[arg-type]
    return output


def test_signature_wrapping_is_refused(bundle: Path, pki: Pki, tmp_path: Path) -> None:
    """A genuine signed <machine_configuration>/<image> pair nested inside
    <bundler>, an attacker's <image> at the top level: refused, nothing written.
    (Verifying bytes found by searching the file while reading fields from the
    top level made this verify and unpack the attacker's image.)"""
    data = bundle.read_bytes()
    mc, image = signed_section(data, "machine_configuration"), signed_section(data, "image")
    attacker = _bundle(tmp_path / "evil", pki, "disk.raw", b"attacker's image" * 1000)
    evil_image = signed_section(attacker.manifest_path.read_bytes(), "image")
    for part in attacker.part_paths:  # the attacker's parts sit beside the manifest
        shutil.copy(part, bundle.parent / part.name)
    signature = re.search(rb"<signature>.*</signature>", data)
    assert signature
    forged = (b"<?xml version='1.0'?><manifest><version>2007-10-10</version><bundler>"
              b"<name>amibake</name><version>0</version><release>0</release>"
              + mc + image + b"</bundler>" + mc + evil_image + signature.group(0)
              + b"</manifest>")
    bundle.write_bytes(forged)
    with pytest.raises(UserError, match=AT + r"<machine_configuration> has no place in"
                       r" <manifest/bundler>"):
        _unbundle(bundle, pki)
    assert not (bundle.parent.parent / "back.raw").exists()
    # the attacker's <image> alone, in the right place, fails the signature
    alone = data.replace(image, evil_image)
    bundle.write_bytes(alone)
    with pytest.raises(UserError, match="signature does not verify"):
        _unbundle(bundle, pki)
    assert not (bundle.parent.parent / "back.raw").exists()


def _variants(data: bytes) -> dict[str, tuple[bytes, str]]:
    image = signed_section(data, "image")
    mc = signed_section(data, "machine_configuration")
    parts = re.search(rb"<parts .*</parts>", image)
    name = re.search(rb"<name>disk.raw</name>", image)
    assert parts and name
    return {
        "second image after": (data.replace(image, image + image), r"a second <image>"),
        "image nested in image": (data.replace(image, image.replace(b"</image>",
                                                                    image + b"</image>")),
                                  r"<image> has no place in <manifest/image>"),
        "second machine_configuration": (data.replace(mc, mc + mc),
                                         r"a second <machine_configuration>"),
        "second signature": (data.replace(b"</manifest>",
                                          b"<signature>00</signature></manifest>"),
                             r"a second <signature>"),
        "image before machine_configuration": (data.replace(mc + image, image + mc),
                                               r"misplaced <machine_configuration>"),
        "duplicated parts": (data.replace(parts.group(0), parts.group(0) * 2), r"a second <parts>"),
        "duplicated name": (data.replace(name.group(0), name.group(0) * 2),
                            r"a second <name>"),
        "unknown element": (data.replace(b"</image>", b"<extra>x</extra></image>"),
                            r"<extra> has no place in <manifest/image>"),
        "namespaced image": (data.replace(b"<image>", b"<x:image xmlns:x='urn:x'>")
                             .replace(b"</image>", b"</x:image>"),
                             r"<x:image> has no place"),
        "DOCTYPE with entity": (data.replace(b"<manifest>", b"<!DOCTYPE manifest [<!ENTITY e"
                                             b" 'disk.raw'>]><manifest>"), r"DOCTYPE"),
        "comment": (data.replace(b"<parts", b"<!-- hidden --><parts"), r"comment"),
        "character reference": (data.replace(b"<name>disk.raw", b"<name>disk&#46;raw"),
                                r"character reference"),
        "processing instruction": (data.replace(b"<image>", b"<?evil?><image>"),
                                   r"processing instruction"),
        "text between elements": (data.replace(b"<parts", b"junk<parts"),
                                  r"holds text 'junk'"),
        "extra attribute": (data.replace(b"<parts count", b"<parts evil='1' count"),
                            r"has attributes"),
        "other digest algorithm": (data.replace(b"algorithm='SHA1'", b"algorithm='MD5'", 1),
                                   r"not SHA1"),
        "negative size": (re.sub(rb"<size>\d+", b"<size>-1", data), r"not a decimal number"),
        "non-UTF-8": (data.replace(b"<release>0", b"<release>\xff"), r"not UTF-8"),
        "truncated": (data[: len(data) // 2], r"truncated or not valid XML"),
    }


@pytest.mark.parametrize("case", list(_variants(b"<machine_configuration></machine_configuration>"
                                                b"<image><parts count='1'></parts>"
                                                b"<name>disk.raw</name></image>")))
def test_crafted_manifests_are_refused_with_a_position(bundle: Path, pki: Pki,
                                                       case: str) -> None:
    data, message = _variants(bundle.read_bytes())[case]
    bundle.write_bytes(data)  # refused by its shape, before any signature check
    with pytest.raises(UserError, match=message) as err:
        _unbundle(bundle, pki)
    assert re.search(AT, str(err.value)), err.value
    assert "\n" not in str(err.value)
    assert not (bundle.parent.parent / "back.raw").exists()


@pytest.mark.parametrize("filename", ["../../etc/shadow", "/etc/shadow", "disk.raw.part.1",
                                      "other.part.0", "disk.raw.part.0/..", ".."])
def test_part_names_must_be_this_images_parts(bundle: Path, pki: Pki, filename: str) -> None:
    """Even validly signed, a part is <image name>.part.<its index>, beside the manifest."""
    data = bundle.read_bytes().replace(b"<filename>disk.raw.part.00<",
                                       b"<filename>" + filename.encode() + b"<")
    bundle.write_bytes(resign(data, pki.key))
    with pytest.raises(UserError, match=AT + r"(part 0 is named|<manifest/image/parts/part/"
                       r"filename> is)"):
        _unbundle(bundle, pki)


def test_part_symlink_is_refused(bundle: Path, pki: Pki, tmp_path: Path) -> None:
    part = bundle.parent / "disk.raw.part.01"
    elsewhere = tmp_path / "elsewhere"
    shutil.move(part, elsewhere)
    part.symlink_to(elsewhere)
    with pytest.raises(UserError, match=r"part 1 .*disk\.raw\.part\.01\) is a symlink"):
        _unbundle(bundle, pki)


def test_planted_symlinks_at_output_are_not_followed(bundle: Path, pki: Pki,
                                                     tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    output = tmp_path / "back.raw"
    partial = tmp_path / "back.raw.partial"  # the name unbundle used to write through
    partial.symlink_to(victim)
    output.symlink_to(victim)
    _unbundle(bundle, pki)
    assert victim.read_bytes() == b"precious"
    assert not output.is_symlink() and output.stat().st_size == 200_000
    assert output.stat().st_mode & 0o777 == 0o600  # a decrypted image is private
    assert partial.is_symlink() and os.readlink(partial) == str(victim)  # left alone
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "back.raw", "back.raw.partial", "bundle", "victim"]  # no temporary file left


def test_failed_unbundle_leaves_no_temporary_file(bundle: Path, pki: Pki) -> None:
    part = bundle.parent / "disk.raw.part.02"
    part.write_bytes(part.read_bytes()[:-1] + b"!")
    with pytest.raises(UserError, match="part 2 of 4 .* altered"):
        _unbundle(bundle, pki)
    assert sorted(p.name for p in bundle.parent.parent.iterdir()) == ["bundle"]


def test_ec2_key_unbundles_only_when_unverified_is_asked_for(bundle: Path, pki: Pki) -> None:
    output = bundle.parent.parent / "back.raw"
    with pytest.raises(UserError, match="EC2's key for this bundle: it decrypts the image but"
                       " cannot check the manifest's signature"):
        unbundle(bundle, pki.ec2_key, output=output)
    assert not output.exists()
    result = unbundle(bundle, pki.ec2_key, output=output, trust_unsigned=True)
    assert not result.signature_checked and output.stat().st_size == 200_000
    # with the bundler's certificate, EC2's key is fully checked
    output.unlink()
    assert unbundle(bundle, pki.ec2_key, output=output, cert=pki.cert).signature_checked
    # and --no-verify-signature does not make a forged manifest pass with a user's key
    bundle.write_bytes(bundle.read_bytes().replace(b"<type>machine", b"<type>kernel"))
    with pytest.raises(UserError, match="signature does not verify"):
        unbundle(bundle, pki.key, output=output, trust_unsigned=True)


def test_manifest_written_is_accepted_by_the_strict_reader(genuine: BundleResult) -> None:
    parsed = manifest_xml.parse(genuine.manifest_path.read_bytes(), "m")
    assert [p.filename for p in parsed.parts] == [f"disk.raw.part.{i:02d}" for i in range(4)]
    assert parsed.signed_bytes == (
        signed_section(genuine.manifest_path.read_bytes(), "machine_configuration")
        + signed_section(genuine.manifest_path.read_bytes(), "image"))


def test_euca2ools_form_verifies(bundle: Path, pki: Pki) -> None:
    """euca2ools orders <image> and <mapping> its own way, signs lxml's compact
    double-quoted bytes and writes the file indented: read and verified."""
    data = bundle.read_bytes()
    data = data.replace(b"<type>machine</type>", b"").replace(
        b"</bundled_size>", b"</bundled_size><type>machine</type>")
    data = re.sub(rb"<virtual>(\w+)</virtual><device>([\w/]+)</device>",
                  rb"<device>\2</device><virtual>\1</virtual>", data)
    data = re.sub(rb"='([^']*)'", rb'="\1"', data)
    signed = resign(data, pki.key)  # over the compact bytes, as euca2ools signs
    bundle.write_bytes(signed.replace(b"><", b">\n  <"))
    assert _unbundle(bundle, pki).stat().st_size == 200_000

"""Test PKI for bundle tests: a CA, a user cert/key and an "EC2" region cert."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID


@dataclass(frozen=True)
class Pki:
    cert: Path
    key: Path
    ec2_cert: Path
    ec2_key: Path
    other_cert: Path
    other_key: Path


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _issue(
    subject: str, key: rsa.RSAPrivateKey, ca_name: str, ca_key: rsa.RSAPrivateKey, ca: bool
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(ca_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )


def _write(
    dir: Path, stem: str, cert: x509.Certificate, key: rsa.RSAPrivateKey
) -> tuple[Path, Path]:
    cert_path, key_path = dir / f"{stem}-cert.pem", dir / f"{stem}-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def make_pki(dir: Path) -> Pki:
    dir.mkdir(parents=True, exist_ok=True)
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca_cert = _issue("amibake test CA", ca_key, "amibake test CA", ca_key, True)
    (dir / "ca-cert.pem").write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    out = []
    for stem in ("user", "ec2", "other"):
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        cert = _issue(f"amibake {stem}", key, "amibake test CA", ca_key, False)
        out.append(_write(dir, stem, cert, key))
    (cert, key), (ec2_cert, ec2_key), (other_cert, other_key) = out
    return Pki(cert, key, ec2_cert, ec2_key, other_cert, other_key)


def signed_section(data: bytes, tag: str) -> bytes:
    """The first `<tag>…</tag>` of a manifest, found as the AMI tools do
    (XMLUtil.get_xml: a plain search of the re-serialised document)."""
    start = data.index(b"<%s>" % tag.encode())
    end = data.index(b"</%s>" % tag.encode()) + len(tag) + 3
    return data[start:end]


def resign(data: bytes, key_path: Path) -> bytes:
    """`data` (a compact manifest, as amibake writes it) signed again with
    `key_path`: what a careless user, or a stolen key, could produce."""
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    assert isinstance(key, rsa.RSAPrivateKey)

    signed = signed_section(data, "machine_configuration") + signed_section(data, "image")
    signature = key.sign(signed, padding.PKCS1v15(), hashes.SHA1()).hex().encode()
    head, _, rest = data.partition(b"<signature>")
    return head + b"<signature>" + signature + b"</signature>" + rest.partition(b"</signature>")[2]

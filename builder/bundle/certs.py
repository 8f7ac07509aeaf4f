"""Loading the X.509 certificates and RSA keys a bundle is made with.

A bundle needs three things: the user's certificate (its public key encrypts
a copy of the AES key and IV; it verifies the manifest signature), the user's
private key (signs the manifest; decrypts the bundle at unbundle time) and
EC2's certificate for the region (its public key encrypts the copy EC2 uses).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from builder.errors import UserError
from builder.inputs import read_input

MAX_PEM_BYTES = 1 << 20


def load_certificate(path: Path, what: str) -> x509.Certificate:
    """A PEM (or DER) X.509 certificate holding an RSA public key."""
    data = _read(path, what)
    try:
        if b"-----BEGIN" in data:
            cert = x509.load_pem_x509_certificate(data)
        else:
            cert = x509.load_der_x509_certificate(data)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise UserError(
            f"{path}: not an X.509 certificate ({what}): {_first_line(exc)}",
            hint="give a PEM file that starts with -----BEGIN CERTIFICATE-----",
        ) from exc
    if not isinstance(cert.public_key(), rsa.RSAPublicKey):
        raise UserError(
            f"{path}: the {what} does not hold an RSA key",
            hint="the EC2 bundle format needs RSA certificates",
        )
    return cert


def certificate_public_key(cert: x509.Certificate) -> rsa.RSAPublicKey:
    key = cert.public_key()
    assert isinstance(key, rsa.RSAPublicKey)  # checked by load_certificate
    return key


def load_private_key(path: Path, what: str = "private key") -> rsa.RSAPrivateKey:
    """An unencrypted PEM (or DER) RSA private key (PKCS#1 or PKCS#8)."""
    data = _read(path, what)
    try:
        if b"-----BEGIN" in data:
            key = serialization.load_pem_private_key(data, password=None)
        else:
            key = serialization.load_der_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise UserError(
            f"{path}: not an unencrypted RSA private key ({what}): {_first_line(exc)}",
            hint="give the PEM key file that goes with your certificate (no passphrase)",
        ) from exc
    if not isinstance(key, rsa.RSAPrivateKey):
        raise UserError(f"{path}: the {what} is not an RSA key", hint="use an RSA key")
    return key


@dataclass(frozen=True)
class BundleCredentials:
    """What `bundle` needs: the user's cert and key, and EC2's region cert."""

    user_cert: x509.Certificate
    user_key: rsa.RSAPrivateKey
    ec2_cert: x509.Certificate

    @classmethod
    def load(cls, cert: Path, privatekey: Path, ec2cert: Path) -> BundleCredentials:
        user_cert = load_certificate(cert, "user certificate")
        user_key = load_private_key(privatekey)
        ec2_cert = load_certificate(ec2cert, "EC2 certificate")
        if not keys_match(user_cert, user_key):
            raise UserError(
                f"{privatekey} is not the private key of the certificate {cert}",
                hint="pass the key pair's matching --cert and --privatekey",
            )
        return cls(user_cert, user_key, ec2_cert)


def keys_match(cert: x509.Certificate, key: rsa.RSAPrivateKey) -> bool:
    return certificate_public_key(cert).public_numbers() == key.public_key().public_numbers()


def _read(path: Path, what: str) -> bytes:
    return read_input(path, MAX_PEM_BYTES, what)


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]

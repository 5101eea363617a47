"""A throwaway certificate authority and server certificate for https fakes.

MSAL accepts only https authorities, so the Microsoft fake serves TLS. The material is
generated with ``cryptography`` (EC P-256, fast) once per process and written to a temp
dir: ``ca_path`` is what a client trusts (``requests.Session.verify``), ``cert_path`` and
``key_path`` are what the server presents. The server certificate names 127.0.0.1, ::1
and localhost. A separate CA (rather than one self-signed leaf) keeps strict X.509
verification (Python 3.13's ``VERIFY_X509_STRICT``) happy.
"""

from __future__ import annotations

import atexit
import datetime
import ipaddress
import shutil
import ssl
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["TlsFiles", "server_ssl_context", "tls_files"]


@dataclass(frozen=True)
class TlsFiles:
    """Paths of the generated PEM files."""

    ca_path: Path  # trust this
    cert_path: Path  # server certificate followed by the CA certificate
    key_path: Path  # server private key (unencrypted)


_lock = threading.Lock()
_cached: TlsFiles | None = None


def tls_files() -> TlsFiles:
    """The process-wide CA and 127.0.0.1/localhost server certificate, made on first use."""
    global _cached
    with _lock:
        if _cached is None or not _cached.ca_path.exists():
            directory = Path(tempfile.mkdtemp(prefix="brain-fake-tls-"))
            atexit.register(shutil.rmtree, directory, ignore_errors=True)
            _cached = _generate(directory)
        return _cached


def server_ssl_context(files: TlsFiles | None = None) -> ssl.SSLContext:
    """An SSL context presenting the fake server certificate."""
    files = files or tls_files()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(files.cert_path), str(files.key_path))
    return context


def _generate(directory: Path) -> TlsFiles:
    now = datetime.datetime.now(datetime.UTC)
    not_before = now - datetime.timedelta(hours=1)
    not_after = now + datetime.timedelta(days=30)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "brain test fakes CA")])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    x509.IPAddress(ipaddress.ip_address("::1")),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=True,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    pem = serialization.Encoding.PEM
    ca_path = directory / "ca.pem"
    cert_path = directory / "server.pem"
    key_path = directory / "server.key"
    ca_path.write_bytes(ca_cert.public_bytes(pem))
    cert_path.write_bytes(cert.public_bytes(pem) + ca_cert.public_bytes(pem))
    key_path.write_bytes(key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    key_path.chmod(0o600)
    return TlsFiles(ca_path=ca_path, cert_path=cert_path, key_path=key_path)

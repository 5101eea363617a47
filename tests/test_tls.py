"""brain serving TLS itself: https on both roles, Secure cookies, HSTS, the JWKS fetch's trust."""

from __future__ import annotations

import datetime
import socket
import ssl
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import urllib3
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from brain.api.jwks import jwks_opener
from brain.config import load_settings
from brain.testing.fakes.tls import TlsFiles, tls_files
from tests.support import BrainServer, wait_until
from tests.test_auth_helpers import NO_LIMITS, bearer, new_user

SECRET = "s" * 40
HSTS = "max-age=31536000; includeSubDomains"
COOKIE = "__Secure-better-auth.session_token"


def tls_config(cert: Path, key: Path, *, mode: str = "dev") -> dict[str, dict[str, object]]:
    config: dict[str, dict[str, object]] = {
        "server": {"tls_cert": str(cert), "tls_key": str(key), "mode": mode},
        "auth": dict(NO_LIMITS),
    }
    if mode == "production":
        config["auth"].update(argon2_memory_kib=19456, argon2_time_cost=1)  # production's floor
    return config


def self_signed(directory: Path, name: str) -> tuple[Path, Path]:
    """A self-signed certificate for DNS `name` only (not 127.0.0.1), made here; (cert, key)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "self.pem", directory / "self.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def wait_healthy(server: BrainServer, verify: str | bool) -> dict[str, object]:
    """/health once it says ok (keys fetched from the auth role over https, NATS connected)."""
    return wait_until(
        lambda: (b := server.health(verify=verify))["status"] == "ok" and b,
        timeout=20, what=f"/health ok:\n{server.log_text()}",
    )


@pytest.fixture(scope="module")
def files() -> TlsFiles:
    return tls_files()


@pytest.fixture(scope="module")
def production(tmp_path_factory: pytest.TempPathFactory, files: TlsFiles) -> Iterator[BrainServer]:
    server = BrainServer(
        tmp_path_factory.mktemp("tls") / "brain",
        config=tls_config(files.cert_path, files.key_path, mode="production"),
        env={"BRAIN_SECRET": SECRET},
        ca=files.ca_path,
    )
    with server:
        yield server


@pytest.fixture
def trust_test_ca(monkeypatch: pytest.MonkeyPatch, files: TlsFiles) -> None:
    # The shared auth helpers call requests without verify=: point them at the test CA.
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(files.ca_path))


def test_production_over_https_end_to_end(production: BrainServer, trust_test_ca: None) -> None:
    assert production.auth_url.startswith("https://") and production.api_url.startswith("https://")
    health = wait_healthy(production, production.verify)
    assert health["jwks"]["url"] == f"{production.auth_url}/api/auth/jwks"  # type: ignore[index]

    r = requests.post(
        f"{production.auth_url}/api/auth/sign-up/email",
        json={"name": "T", "email": "tls@example.com", "password": "correct horse battery"},
        verify=production.verify, timeout=30,
    )
    assert r.status_code == 200, r.text
    body = r.json()
    # Better Auth's cookie over https: __Secure- prefix and the Secure attribute.
    set_cookie = r.headers["Set-Cookie"]
    assert set_cookie.startswith(f"{COOKIE}=")
    assert "; Secure" in set_cookie and "HttpOnly" in set_cookie
    assert r.headers["Strict-Transport-Security"] == HSTS

    me = requests.get(f"{production.api_url}/me", headers=bearer(body["jwt"]), verify=production.verify, timeout=5)
    assert me.status_code == 200 and me.json()["id"] == body["user"]["id"]
    assert me.headers["Strict-Transport-Security"] == HSTS
    assert me.json()["claims"]["iss"] == production.auth_url

    # The cookie works for the session over https (and an error answer carries HSTS too).
    session = requests.get(
        f"{production.auth_url}/api/auth/get-session", cookies={COOKIE: r.cookies[COOKIE]},
        verify=production.verify, timeout=5,
    )
    assert session.status_code == 200 and session.json()["user"]["id"] == body["user"]["id"]
    missing = requests.get(f"{production.api_url}/nope", verify=production.verify, timeout=5)
    assert missing.status_code == 404 and missing.headers["Strict-Transport-Security"] == HSTS
    # The shared helpers work over https too (through REQUESTS_CA_BUNDLE).
    assert new_user(production)["jwt"]


def test_tls_is_modern(production: BrainServer, files: TlsFiles) -> None:
    context = ssl.create_default_context(cafile=str(files.ca_path))
    context.set_alpn_protocols(["h2", "http/1.1"])
    with socket.create_connection(("127.0.0.1", production.api_port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            assert tls.version() in ("TLSv1.2", "TLSv1.3")
            assert tls.selected_alpn_protocol() == "http/1.1"  # not h2, which aiohttp does not speak
    old = ssl.create_default_context(cafile=str(files.ca_path))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        old.minimum_version = ssl.TLSVersion.TLSv1
        old.maximum_version = ssl.TLSVersion.TLSv1_1
    old.set_ciphers("DEFAULT:@SECLEVEL=0")  # let the client offer TLS 1.1 at all
    with socket.create_connection(("127.0.0.1", production.api_port), timeout=5) as raw:
        with pytest.raises((ssl.SSLError, ConnectionError)):
            with old.wrap_socket(raw, server_hostname="127.0.0.1"):
                pass


def test_plain_http_to_the_tls_port_fails_cleanly(production: BrainServer) -> None:
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{production.api_port}/health", timeout=5)
    with socket.create_connection(("127.0.0.1", production.auth_port), timeout=5) as raw:
        raw.sendall(b"GET /api/auth/ok HTTP/1.1\r\nHost: x\r\n\r\n")
        assert raw.recv(100) == b""  # closed without an answer, not left hanging
    # The server is unharmed and logged no traceback for it.
    ok = requests.get(f"{production.auth_url}/api/auth/ok", verify=production.verify, timeout=5)
    assert ok.status_code == 200
    assert "Traceback" not in production.log_text()


def test_dev_mode_over_https_has_no_hsts_but_secure_cookies(make_server, files: TlsFiles) -> None:  # type: ignore[no-untyped-def]
    server = make_server(config=tls_config(files.cert_path, files.key_path), ca=files.ca_path).start()
    wait_healthy(server, server.verify)
    r = requests.post(
        f"{server.auth_url}/api/auth/sign-up/email",
        json={"name": "D", "email": "dev-tls@example.com", "password": "correct horse battery"},
        verify=server.verify, timeout=30,
    )
    assert r.status_code == 200, r.text
    assert r.headers["Set-Cookie"].startswith(f"{COOKIE}=") and "; Secure" in r.headers["Set-Cookie"]
    assert "Strict-Transport-Security" not in r.headers
    me = requests.get(f"{server.api_url}/me", headers=bearer(r.json()["jwt"]), verify=server.verify, timeout=5)
    assert me.status_code == 200 and "Strict-Transport-Security" not in me.headers


def test_local_jwks_fetch_trusts_exactly_the_servers_own_certificate(
    make_server, tmp_path: Path, files: TlsFiles  # type: ignore[no-untyped-def]
) -> None:
    """A self-signed certificate naming a public host, not 127.0.0.1: the local fetch still works."""
    cert, key = self_signed(tmp_path, "brain.example")
    server = make_server(config=tls_config(cert, key)).start()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", urllib3.exceptions.InsecureRequestWarning)
        # The test client cannot check this certificate's name; the server's own fetch can pin it.
        health = wait_healthy(server, False)
    assert health["jwks"]["loaded"] is True and health["jwks"]["failures"] == 0  # type: ignore[index]

    # The pin is the certificate itself: another server's certificate is refused, even one the
    # client would otherwise trust.
    other = make_server("other", config=tls_config(files.cert_path, files.key_path)).start()
    url = f"{other.auth_url}/api/auth/jwks"
    pinned = jwks_opener(load_settings(environ={}, overrides={"server": {"tls_cert": str(cert), "tls_key": str(key)}}))
    with pytest.raises(Exception, match="certificate other than server.tls_cert"):
        pinned.open(url, timeout=5)
    right = jwks_opener(
        load_settings(environ={}, overrides={"server": {"tls_cert": str(files.cert_path), "tls_key": str(files.key_path)}})
    )
    with right.open(url, timeout=5) as resp:
        assert resp.status == 200


def test_split_roles_jwks_over_https_trust_the_configured_ca(make_server, files: TlsFiles) -> None:  # type: ignore[no-untyped-def]
    auth = make_server("auth", roles="auth", config=tls_config(files.cert_path, files.key_path)).start()
    env = {"AUTH_SERVER_URL": auth.auth_url, "BRAIN_API__ISSUER": auth.auth_url}
    # Without api.jwks_ca_file the system CAs do not know the test CA: the fetch fails.
    untrusting = make_server("api1", roles="api", env=env, config={"auth": NO_LIMITS}).start()
    wait_until(
        lambda: any(
            p.startswith("jwks:") and "CERTIFICATE_VERIFY_FAILED" in p
            for p in untrusting.health()["problems"]
        ),
        timeout=10, what="the JWKS fetch refused for an unknown CA",
    )
    trusting = make_server(
        "api2", roles="api", env=env, config={"auth": NO_LIMITS, "api": {"jwks_ca_file": str(files.ca_path)}}
    ).start()
    wait_healthy(trusting, True)
    user = requests.post(
        f"{auth.auth_url}/api/auth/sign-up/email",
        json={"name": "S", "email": "split@example.com", "password": "correct horse battery"},
        verify=str(files.ca_path), timeout=30,
    ).json()
    me = requests.get(f"{trusting.api_url}/me", headers=bearer(user["jwt"]), timeout=5)
    assert me.status_code == 200, me.text
    assert me.json()["id"] == user["user"]["id"]


def test_unreadable_certificate_is_a_startup_error(make_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    missing = tmp_path / "missing.pem"
    server = make_server(config={"server": {"tls_cert": str(missing), "tls_key": str(missing)}})
    with pytest.raises(AssertionError, match="exited with 2"):
        server.start(timeout=20)
    assert "server.tls_cert" in server.log_text()

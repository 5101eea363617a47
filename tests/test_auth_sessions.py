"""Session lifetimes: sliding refresh, expiry, and password rehash when argon2 parameters change."""

from __future__ import annotations

import sqlite3
import time

import jwt
import requests

from tests.support import BrainServer
from tests.test_auth_helpers import NO_LIMITS, bearer, new_user, sign_in


def session_of(server: BrainServer, token: str) -> requests.Response:
    return requests.get(f"{server.auth_url}/api/auth/get-session", headers=bearer(token), timeout=10)


def stored_hash(server: BrainServer, user_id: str) -> str:
    db = sqlite3.connect(f"file:{server.data_dir / 'auth.db'}?mode=ro", uri=True)
    try:
        return db.execute("SELECT password_hash FROM user WHERE id = ?", (user_id,)).fetchone()[0]
    finally:
        db.close()


def test_sessions_slide_forward_when_used(make_server) -> None:  # type: ignore[no-untyped-def]
    server = make_server(config={"auth": {**NO_LIMITS, "session_update_age_seconds": 1}}).start()
    body = new_user(server)
    first = body["session"]["expiresAt"]
    r = session_of(server, body["token"])
    assert r.json()["session"]["expiresAt"] == first and "Set-Cookie" not in r.headers
    time.sleep(1.2)
    r = session_of(server, body["token"])
    assert r.status_code == 200
    assert r.json()["session"]["expiresAt"] > first
    assert r.json()["session"]["updatedAt"] > body["session"]["updatedAt"]
    # The renewed cookie goes back to the client.
    assert "Max-Age=604800" in r.headers["Set-Cookie"]
    # A rememberMe: false session is never extended.
    short = sign_in(server, body["user"]["email"], extra={"rememberMe": False}).json()
    time.sleep(1.2)
    assert session_of(server, short["token"]).json()["session"]["expiresAt"] == short["session"]["expiresAt"]


def test_expired_sessions_are_refused(make_server) -> None:  # type: ignore[no-untyped-def]
    server = make_server(config={"auth": {**NO_LIMITS, "session_ttl_seconds": 1}}).start()
    body = new_user(server)
    assert session_of(server, body["token"]).json()["user"]["id"] == body["user"]["id"]
    time.sleep(1.3)
    assert session_of(server, body["token"]).content == b"null"
    r = requests.get(f"{server.auth_url}/api/auth/token", headers=bearer(body["token"]), timeout=10)
    assert r.status_code == 401


def test_password_is_rehashed_when_parameters_change(make_server) -> None:  # type: ignore[no-untyped-def]
    server = make_server(config={"auth": {**NO_LIMITS, "argon2_memory_kib": 1024, "argon2_time_cost": 1}}).start()
    body = new_user(server)
    assert "$m=1024,t=1,p=1$" in stored_hash(server, body["user"]["id"])
    assert server.stop() == 0
    server.config["auth"].update({"argon2_memory_kib": 2048, "argon2_time_cost": 2})
    server.start()
    assert sign_in(server, body["user"]["email"], "wrong password!").status_code == 401
    assert "$m=1024,t=1,p=1$" in stored_hash(server, body["user"]["id"])  # not on a failure
    assert sign_in(server, body["user"]["email"]).status_code == 200
    assert "$m=2048,t=2,p=1$" in stored_hash(server, body["user"]["id"])
    assert sign_in(server, body["user"]["email"]).status_code == 200


def test_required_email_verification_gives_no_session(make_server) -> None:  # type: ignore[no-untyped-def]
    server = make_server(config={"auth": {**NO_LIMITS, "require_email_verification": True}}).start()
    body = new_user(server)
    assert body["token"] is None and body["session"] is None and body["jwt"] is None
    assert body["user"]["emailVerified"] is False
    r = sign_in(server, body["user"]["email"])
    assert r.status_code == 403 and r.json() == {"message": "Email not verified", "code": "EMAIL_NOT_VERIFIED"}
    assert "Set-Cookie" not in r.headers
    # A wrong password still says only that.
    assert sign_in(server, body["user"]["email"], "wrong password").status_code == 401


def test_https_cookie_is_secure_and_prefixed(make_server) -> None:  # type: ignore[no-untyped-def]
    from brain.testing.fakes.tls import tls_files

    tls = tls_files()
    server = make_server(
        roles="auth",
        config={"auth": NO_LIMITS, "server": {"tls_cert": str(tls.cert_path), "tls_key": str(tls.key_path)}},
    ).start()
    base = f"https://127.0.0.1:{server.auth_port}"
    with requests.Session() as browser:
        browser.trust_env = False  # REQUESTS_CA_BUNDLE would override verify
        browser.verify = str(tls.ca_path)
        r = browser.post(
            f"{base}/api/auth/sign-up/email",
            json={"name": "TLS", "email": "tls@example.com", "password": "correct horse battery"},
            timeout=30,
        )
        assert r.status_code == 200, r.text
        cookie = r.headers["Set-Cookie"]
        assert cookie.startswith("__Secure-better-auth.session_token=") and "; Secure" in cookie
        # The issuer is the https public URL, and the cookie alone carries the session.
        assert jwt.decode(r.json()["jwt"], options={"verify_signature": False})["iss"] == base
        got = browser.get(f"{base}/api/auth/get-session", timeout=10)
        assert got.json()["user"]["email"] == "tls@example.com"

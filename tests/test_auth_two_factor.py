"""Two-factor (TOTP and backup codes) over HTTP, and what bounds guessing a code."""

from __future__ import annotations

import sqlite3
import time
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pyotp
import pytest
import requests
from aiosmtpd.controller import Controller

from tests.support import BrainServer, free_port
from tests.test_auth_email import Inbox, link_in, mail_config
from tests.test_auth_helpers import (  # noqa: F401 - module_server is a fixture
    NO_LIMITS, PASSWORD, bearer, module_server, sign_in, unique_email, verify_jwt,
)

# The module's server lifts the per-IP limit of /two-factor/* (every request comes from
# 127.0.0.1); the tests of that limit and of the lockout start servers of their own.
AUTH_CONFIG = {"two_factor_rate_limit_max": 100_000}


@pytest.fixture
def server(module_server: BrainServer) -> BrainServer:
    return module_server


def post(server: BrainServer, path: str, body: Any = None, *, token: str | None = None,
         cookies: dict[str, str] | None = None) -> requests.Response:
    headers = bearer(token) if token else {}
    if cookies:
        headers["Origin"] = server.auth_url  # a browser sends cookies with its Origin
    return requests.post(f"{server.auth_url}/api/auth/{path}", json=body if body is not None else {}, headers=headers,
                         cookies=cookies, timeout=15)


def secret_of(uri: str) -> str:
    return parse_qs(urlsplit(uri).query)["secret"][0]


def code(secret: str, steps: int = 0) -> str:
    """The TOTP code `steps` 30-second steps from now."""
    return pyotp.TOTP(secret).at(time.time() + 30 * steps)


def account_with_2fa(server: BrainServer) -> dict[str, Any]:
    """A new account with TOTP on: its email, session token, secret and backup codes."""
    email = unique_email("2fa")
    r = requests.post(f"{server.auth_url}/api/auth/sign-up/email",
                      json={"name": "Two", "email": email, "password": PASSWORD}, timeout=15)
    token = r.json()["token"]
    r = post(server, "two-factor/enable", {"password": PASSWORD}, token=token)
    assert r.status_code == 200, r.text
    body = r.json()
    secret = secret_of(body["totpURI"])
    r = post(server, "two-factor/verify-totp", {"code": code(secret)}, token=token)
    assert r.status_code == 200 and r.json()["user"]["twoFactorEnabled"] is True, r.text
    return {"email": email, "token": token, "secret": secret, "backup": body["backupCodes"],
            "user_id": r.json()["user"]["id"]}


def challenge(server: BrainServer, email: str, **extra: Any) -> dict[str, str]:
    """Sign in (password right); the two_factor cookie it answers with."""
    r = sign_in(server, email, extra=extra)
    assert r.status_code == 200 and r.json() == {"twoFactorRedirect": True, "twoFactorMethods": ["totp"]}, r.text
    assert "set-auth-token" not in r.headers and "set-auth-jwt" not in r.headers
    cookie = r.cookies.get("better-auth.two_factor")
    assert cookie, r.headers
    return {"better-auth.two_factor": cookie}


# --- enabling -----------------------------------------------------------------------------------------


def test_enable_gives_a_totp_uri_and_backup_codes_and_turns_on_after_the_first_code(server: BrainServer) -> None:
    email = unique_email("enable")
    token = requests.post(f"{server.auth_url}/api/auth/sign-up/email",
                          json={"name": "E", "email": email, "password": PASSWORD}, timeout=15).json()["token"]
    r = post(server, "two-factor/enable", {"password": "wrong password"}, token=token)
    assert r.status_code == 400 and r.json()["code"] == "INVALID_PASSWORD"
    r = post(server, "two-factor/enable", {}, token=token)
    assert r.status_code == 400 and "password" in r.json()["message"]
    # The issuer is an optional string: null is not its absence, nor are ':' or control characters allowed.
    for issuer in (None, "", "a:b", "a\x04", "x" * 129, 7):
        r = post(server, "two-factor/enable", {"password": PASSWORD, "issuer": issuer}, token=token)
        assert r.status_code == 400 and r.json()["code"] == "VALIDATION_ERROR", (issuer, r.text)
        assert "issuer" in r.json()["message"]
    r = post(server, "two-factor/enable", {"password": PASSWORD, "issuer": "My App"}, token=token)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["method"] == "totp" and len(body["backupCodes"]) == 10
    assert all(len(c) == 11 and c[5] == "-" for c in body["backupCodes"])
    uri = urlsplit(body["totpURI"])
    assert uri.scheme == "otpauth" and uri.netloc == "totp"
    assert uri.path == f"/My%20App:{requests.utils.quote(email, safe='')}"
    assert parse_qs(uri.query)["issuer"] == ["My App"] and parse_qs(uri.query)["digits"] == ["6"]
    # Not on until a code is verified: sign-in still gives a session.
    assert sign_in(server, email).json()["token"]
    assert sign_in(server, email).json()["user"]["twoFactorEnabled"] is False
    r = post(server, "two-factor/verify-totp", {"code": code(secret_of(body["totpURI"]), -10)}, token=token)
    assert r.status_code == 401 and r.json()["code"] == "INVALID_CODE"
    r = post(server, "two-factor/verify-totp", {"code": code(secret_of(body["totpURI"]))}, token=token)
    assert r.status_code == 200 and r.json()["token"] == token and r.json()["user"]["twoFactorEnabled"] is True
    r = post(server, "two-factor/enable", {"password": PASSWORD}, token=token)
    assert r.status_code == 400 and r.json()["code"] == "TOTP_ALREADY_ENABLED"
    r = post(server, "two-factor/get-totp-uri", {"password": PASSWORD}, token=token)
    assert r.status_code == 200 and secret_of(r.json()["totpURI"]) == secret_of(body["totpURI"])
    assert post(server, "two-factor/get-totp-uri", {"password": "nope nope"}, token=token).json()["code"] == "INVALID_PASSWORD"


def test_secret_and_backup_codes_are_sealed_at_rest(server: BrainServer) -> None:
    acct = account_with_2fa(server)
    db = sqlite3.connect(server.data_dir / "auth.db")
    try:
        secret, codes = db.execute("SELECT secret_sealed, backup_codes_sealed FROM two_factor WHERE user_id = ?",
                                   (acct["user_id"],)).fetchone()
        dump = b"\n".join(line.encode() for line in db.iterdump())
    finally:
        db.close()
    assert acct["secret"].encode() not in dump and acct["secret"].encode() not in bytes(secret)
    for backup in acct["backup"]:
        assert backup.encode() not in dump and backup.encode() not in bytes(codes)


# --- signing in -----------------------------------------------------------------------------------------


def test_sign_in_with_totp(server: BrainServer) -> None:
    acct = account_with_2fa(server)
    cookies = challenge(server, acct["email"])
    r = post(server, "two-factor/verify-totp", {"code": code(acct["secret"], 1)}, cookies=cookies)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["user"]["email"] == acct["email"] and body["token"]
    assert r.headers["set-auth-token"].startswith(body["token"] + ".")
    assert verify_jwt(server, body["jwt"])["sub"] == acct["user_id"] == verify_jwt(server, r.headers["set-auth-jwt"])["sub"]
    assert "better-auth.two_factor=;" in r.headers["Set-Cookie"]
    session = requests.get(f"{server.auth_url}/api/auth/get-session", headers=bearer(body["token"]), timeout=10).json()
    assert session["user"]["id"] == acct["user_id"]
    # The challenge is spent, and a code is good once.
    r = post(server, "two-factor/verify-totp", {"code": code(acct["secret"], 1)}, cookies=cookies)
    assert r.status_code == 401 and r.json()["code"] == "INVALID_TWO_FACTOR_COOKIE"
    r = post(server, "two-factor/verify-totp", {"code": code(acct["secret"], 1)}, cookies=challenge(server, acct["email"]))
    assert r.status_code == 401 and r.json()["code"] == "INVALID_CODE"


def test_sign_in_with_a_backup_code_once(server: BrainServer) -> None:
    acct = account_with_2fa(server)
    r = post(server, "two-factor/verify-backup-code", {"code": acct["backup"][0]}, cookies=challenge(server, acct["email"]))
    assert r.status_code == 200 and r.json()["token"], r.text
    r = post(server, "two-factor/verify-backup-code", {"code": acct["backup"][0]}, cookies=challenge(server, acct["email"]))
    assert r.status_code == 401 and r.json()["code"] == "INVALID_BACKUP_CODE"
    # disableSession: the code is checked (and used) but no session is made.
    cookies = challenge(server, acct["email"])
    r = post(server, "two-factor/verify-backup-code", {"code": acct["backup"][1], "disableSession": True}, cookies=cookies)
    assert r.status_code == 200 and "token" not in r.json() and "Set-Cookie" not in r.headers
    r = post(server, "two-factor/generate-backup-codes", {"password": PASSWORD}, token=acct["token"])
    assert r.status_code == 200 and r.json()["status"] is True and len(r.json()["backupCodes"]) == 10
    r = post(server, "two-factor/verify-backup-code", {"code": acct["backup"][2]}, cookies=cookies)
    assert r.status_code == 401 and r.json()["code"] == "INVALID_BACKUP_CODE", "the old codes stop working"


def test_verify_without_or_with_a_forged_challenge_cookie_is_refused(server: BrainServer) -> None:
    acct = account_with_2fa(server)
    for cookies in (None, {"better-auth.two_factor": "abc"}, {"better-auth.two_factor": "x" * 32 + ".forged"}):
        r = post(server, "two-factor/verify-totp", {"code": code(acct["secret"])}, cookies=cookies)
        assert r.status_code == 401 and r.json()["code"] == "INVALID_TWO_FACTOR_COOKIE", r.text
    real = challenge(server, acct["email"])["better-auth.two_factor"]
    token, signature = requests.utils.unquote(real).rsplit(".", 1)
    tampered = {"better-auth.two_factor": requests.utils.quote(token[:-1] + ("a" if token[-1] != "a" else "b") + "." + signature, safe="")}
    r = post(server, "two-factor/verify-totp", {"code": code(acct["secret"], 1)}, cookies=tampered)
    assert r.status_code == 401 and r.json()["code"] == "INVALID_TWO_FACTOR_COOKIE"


def test_disable_turns_two_factor_off(server: BrainServer) -> None:
    acct = account_with_2fa(server)
    cookies = challenge(server, acct["email"])
    r = post(server, "two-factor/disable", {"password": "wrong password"}, token=acct["token"])
    assert r.status_code == 400 and r.json()["code"] == "INVALID_PASSWORD"
    r = post(server, "two-factor/disable", {"password": PASSWORD}, token=acct["token"])
    assert r.status_code == 200 and r.json() == {"status": True}
    body = sign_in(server, acct["email"]).json()
    assert body["token"] and body["user"]["twoFactorEnabled"] is False
    # A challenge from before is gone with it.
    r = post(server, "two-factor/verify-totp", {"code": code(acct["secret"], 1)}, cookies=cookies)
    assert r.status_code == 401
    r = post(server, "two-factor/generate-backup-codes", {"password": PASSWORD}, token=acct["token"])
    assert r.status_code == 400 and r.json()["code"] == "TWO_FACTOR_NOT_ENABLED"


@pytest.mark.parametrize("body", [{}, {"code": 123456}, {"code": None}, {"code": "1" * 65}, {"code": "1", "trustDevice": "yes"}])
def test_verify_checks_its_input(server: BrainServer, body: dict[str, Any]) -> None:
    acct = account_with_2fa(server)
    r = post(server, "two-factor/verify-totp", body, token=acct["token"])
    assert r.status_code == 400 and r.json()["code"] == "VALIDATION_ERROR", r.text
    assert ("trustDevice" if "trustDevice" in body else "code") in r.json()["message"]


def test_two_factor_endpoints_need_a_session(server: BrainServer) -> None:
    for path in ("enable", "get-totp-uri", "generate-backup-codes", "disable"):
        assert post(server, f"two-factor/{path}", {"password": PASSWORD}).status_code == 401


# --- guessing ----------------------------------------------------------------------------------------------


def test_a_challenge_takes_five_wrong_codes_then_is_spent(server: BrainServer) -> None:
    acct = account_with_2fa(server)
    cookies = challenge(server, acct["email"])
    for _ in range(5):
        r = post(server, "two-factor/verify-totp", {"code": code(acct["secret"], -20)}, cookies=cookies)
        assert r.status_code == 401 and r.json()["code"] == "INVALID_CODE"
    r = post(server, "two-factor/verify-totp", {"code": code(acct["secret"], 1)}, cookies=cookies)
    assert r.status_code == 400 and r.json()["code"] == "TOO_MANY_ATTEMPTS_REQUEST_NEW_CODE"
    r = post(server, "two-factor/verify-totp", {"code": code(acct["secret"], 1)}, cookies=cookies)
    assert r.status_code == 401 and r.json()["code"] == "INVALID_TWO_FACTOR_COOKIE"


def test_brute_force_locks_the_account_and_the_right_code_waits_for_the_window(make_server) -> None:  # type: ignore[no-untyped-def]
    lockout = 4
    server = make_server(config={"auth": {**NO_LIMITS, "two_factor_rate_limit_max": 100_000, "two_factor_max_failures": 10,
                                          "two_factor_lockout_seconds": lockout}}).start()
    acct = account_with_2fa(server)
    failures = 0
    locked = None
    while locked is None and failures < 20:
        cookies = challenge(server, acct["email"])
        for _ in range(5):
            r = post(server, "two-factor/verify-totp", {"code": code(acct["secret"], -20)}, cookies=cookies)
            if r.status_code == 429:
                locked = r
                break
            assert r.status_code == 401, r.text
            failures += 1
    assert failures == 10 and locked is not None, failures
    assert locked.json()["code"] == "ACCOUNT_TEMPORARILY_LOCKED" and int(locked.headers["Retry-After"]) >= 1
    # The right code, and a backup code, are refused too while the lock lasts.
    started = time.monotonic()
    cookies = challenge(server, acct["email"])
    r = post(server, "two-factor/verify-totp", {"code": code(acct["secret"], 1)}, cookies=cookies)
    assert r.status_code == 429 and r.json()["code"] == "ACCOUNT_TEMPORARILY_LOCKED"
    r = post(server, "two-factor/verify-backup-code", {"code": acct["backup"][0]}, cookies=cookies)
    assert r.status_code == 429
    assert time.monotonic() - started < lockout, "the machine was too slow to see the lock"
    time.sleep(lockout + 0.5)
    r = post(server, "two-factor/verify-totp", {"code": code(acct["secret"], 1)}, cookies=cookies)
    assert r.status_code == 200 and r.json()["token"], r.text


def test_two_factor_requests_are_limited_per_client_address(make_server) -> None:  # type: ignore[no-untyped-def]
    server = make_server(config={"auth": NO_LIMITS}).start()  # Better Auth's 3 per 10 s
    email = unique_email("ip")
    requests.post(f"{server.auth_url}/api/auth/sign-up/email", json={"name": "I", "email": email, "password": PASSWORD},
                  timeout=15)
    statuses = [post(server, "two-factor/verify-totp", {"code": "123456"}).status_code for _ in range(6)]
    assert statuses[:3] == [401, 401, 401] and statuses[3:] == [429, 429, 429], statuses
    r = post(server, "two-factor/verify-totp", {"code": "123456"})
    assert r.json()["code"] == "TOO_MANY_REQUESTS" and "Retry-After" in r.headers


def test_verification_link_does_not_sign_in_past_the_second_factor(make_server) -> None:  # type: ignore[no-untyped-def]
    inbox, port = Inbox(), free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        config = mail_config(port, auto_sign_in_after_verification=True, two_factor_rate_limit_max=100_000)
        server = make_server(config=config).start()
        acct = account_with_2fa(server)
        assert post(server, "send-verification-email", {"email": acct["email"]}, token=acct["token"]).status_code == 200
        r = requests.get(link_in(inbox.wait(acct["email"])).split("&")[0], allow_redirects=False, timeout=10)
        assert r.status_code == 200 and "Set-Cookie" not in r.headers and "set-auth-token" not in r.headers
    finally:
        controller.stop()

"""The auth role over real HTTP: every endpoint, its Better Auth shape, and its failures."""

from __future__ import annotations

import json
import re
import sqlite3

import jwt
import pytest
import requests

from brain.ids import is_valid_user_id
from tests.support import BrainServer
from tests.test_auth_helpers import (
    PASSWORD,
    bearer,
    jwks,
    module_server,  # noqa: F401 - fixture
    new_user,
    sign_in,
    sign_up,
    unique_email,
    verify_jwt,
)

TRUSTED = "https://app.example.com"
AUTH_CONFIG = {"trusted_origins": [TRUSTED, "https://*.trusted.example"]}
ISO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
# Better Auth's user with its twoFactor plugin's field.
USER_KEYS = {"id", "email", "name", "image", "emailVerified", "twoFactorEnabled", "createdAt", "updatedAt"}
SESSION_KEYS = {"id", "userId", "token", "expiresAt", "ipAddress", "userAgent", "createdAt", "updatedAt"}


@pytest.fixture
def server(module_server: BrainServer) -> BrainServer:  # noqa: F811
    return module_server


def url(server: BrainServer, path: str) -> str:
    return f"{server.auth_url}{path}"


# --- sign-up ---------------------------------------------------------------------------


def test_sign_up_returns_token_user_session_jwt(server: BrainServer) -> None:
    email = unique_email("Shape")
    r = sign_up(server, email, name="Ann Example")
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"token", "user", "session", "jwt"}
    user, session = body["user"], body["session"]
    assert set(user) == USER_KEYS and set(session) == SESSION_KEYS
    assert user["email"] == email.lower() and user["name"] == "Ann Example"
    assert user["image"] is None and user["emailVerified"] is False
    assert is_valid_user_id(user["id"]) and len(user["id"]) == 32
    assert session["userId"] == user["id"] and session["token"] == body["token"]
    assert session["ipAddress"] == "127.0.0.1" and session["userAgent"].startswith("python-requests")
    for stamp in (user["createdAt"], user["updatedAt"], session["createdAt"], session["expiresAt"]):
        assert ISO.fullmatch(stamp), stamp
    assert len(body["token"]) >= 22  # >= 128 bits of alphanumerics
    # The cookie Better Auth sets, and the headers of its bearer and jwt plugins.
    cookie = r.headers["Set-Cookie"]
    assert cookie.startswith("better-auth.session_token=" + body["token"] + ".")
    for attr in ("Max-Age=604800", "Path=/", "HttpOnly", "SameSite=Lax"):
        assert attr in cookie
    assert "Secure" not in cookie  # plain http
    assert r.headers["set-auth-jwt"] == body["jwt"]
    assert r.headers["set-auth-token"] == cookie.split(";")[0].split("=", 1)[1]
    claims = verify_jwt(server, body["jwt"])
    assert claims["sub"] == user["id"] and claims["email"] == user["email"]
    assert claims["exp"] - claims["iat"] == 900


def test_duplicate_email_is_refused_case_insensitively(server: BrainServer) -> None:
    email = unique_email("dup")
    new_user(server, email)
    for variant in (email, email.upper(), email.capitalize()):
        r = sign_up(server, variant)
        assert r.status_code == 422
        assert r.json() == {"message": "User already exists. Use another email.", "code": "USER_ALREADY_EXISTS_USE_ANOTHER_EMAIL"}


@pytest.mark.parametrize(
    "body, status, code, needle",
    [
        ({"name": "A", "email": "a@b.io"}, 400, "VALIDATION_ERROR", "password"),
        ({"email": "a@b.io", "password": PASSWORD}, 400, "VALIDATION_ERROR", "name"),
        ({"name": "A", "password": PASSWORD}, 400, "VALIDATION_ERROR", "email"),
        ({"name": "A", "email": "a@b.io", "password": 12345678}, 400, "VALIDATION_ERROR", "password"),
        ({"name": ["A"], "email": "a@b.io", "password": PASSWORD}, 400, "VALIDATION_ERROR", "name"),
        ({"name": "A", "email": {"x": 1}, "password": PASSWORD}, 400, "VALIDATION_ERROR", "email"),
        ({"name": "A", "email": "a@b.io", "password": PASSWORD, "rememberMe": "yes"}, 400, "VALIDATION_ERROR", "rememberMe"),
        ({"name": "A", "email": "a@b.io", "password": PASSWORD, "image": 5}, 400, "VALIDATION_ERROR", "image"),
        ({"name": "A" * 300, "email": "a@b.io", "password": PASSWORD}, 400, "VALIDATION_ERROR", "name"),
        ({"name": "A", "email": "not-an-email", "password": PASSWORD}, 400, "INVALID_EMAIL", "email"),
        ({"name": "A", "email": "a@b", "password": PASSWORD}, 400, "INVALID_EMAIL", "email"),
        ({"name": "A", "email": "x" * 250 + "@b.io", "password": PASSWORD}, 400, "INVALID_EMAIL", "email"),
        ({"name": "A", "email": "a@b.io\r\nBcc: x@evil.io", "password": PASSWORD}, 400, "INVALID_EMAIL", "control"),
        ({"name": "A", "email": "a@b.io\n", "password": PASSWORD}, 400, "INVALID_EMAIL", "control"),
        ({"name": "A", "email": "a\x00@b.io", "password": PASSWORD}, 400, "INVALID_EMAIL", "control"),
        ({"name": "A", "email": "a@b.io", "password": "short12"}, 400, "PASSWORD_TOO_SHORT", "short"),
        ({"name": "A", "email": "a@b.io", "password": "x" * 129}, 400, "PASSWORD_TOO_LONG", "long"),
        ({"name": "A", "email": "a@b.io", "password": ""}, 400, "VALIDATION_ERROR", "password"),
        ([1, 2], 400, "VALIDATION_ERROR", "object"),
        ("a string", 400, "VALIDATION_ERROR", "object"),
        (0, 400, "VALIDATION_ERROR", "object"),
    ],
)
def test_sign_up_refuses_bad_input(server: BrainServer, body: object, status: int, code: str, needle: str) -> None:
    r = requests.post(url(server, "/api/auth/sign-up/email"), json=body, timeout=10)
    assert r.status_code == status, r.text
    err = r.json()
    assert err["code"] == code
    assert needle.lower() in err["message"].lower()
    assert "Set-Cookie" not in r.headers


CONTROL_NAMES = ["Eve\n2000-01-01T00:00:00 INFO    brain.auth: forged", "Eve\r", "Eve\tTab", "Eve\x1b[2J", "Eve\x00",
                 "Eve\x7f", "Eve\x85", "Eve\x9b31m", "Eve\u2028", "Eve\u202egnp.exe", "Eve\u2066x"]


@pytest.mark.parametrize("name", CONTROL_NAMES, ids=[ascii(n) for n in CONTROL_NAMES])
def test_names_with_control_characters_are_refused(server: BrainServer, name: str) -> None:
    """A name goes into mails, logs and the admin CLI: no line breaks, terminal escapes or bidi overrides."""
    r = sign_up(server, unique_email("ctl"), name=name)
    assert r.status_code == 400, r.text
    assert r.json()["code"] == "VALIDATION_ERROR" and r.json()["message"].startswith("[body.name] ")
    assert "control characters" in r.json()["message"]


def test_names_in_any_script_are_kept(server: BrainServer) -> None:
    names = ["Zo\u00eb \u00d8stergaard", "\u5c71\u7530\u3000\u592a\u90ce", "\u0645\u0631\u06cc\u0645\u200c\u0632\u0627\u062f\u0647",
             "\U0001f469\u200d\U0001f4bb dev", "A\u00a0B", "O'Neil-Smith"]
    for name in names:
        r = sign_up(server, unique_email("script"), name=name)
        assert r.status_code == 200, (name, r.text)
        assert r.json()["user"]["name"] == name


def test_malformed_bodies_are_4xx_json(server: BrainServer) -> None:
    endpoint = url(server, "/api/auth/sign-up/email")
    r = requests.post(endpoint, data=b'{"name": "A", "email": ', headers={"Content-Type": "application/json"}, timeout=10)
    assert r.status_code == 400 and "malformed JSON" in r.json()["message"]
    r = requests.post(endpoint, data=b"", headers={"Content-Type": "application/json"}, timeout=10)
    assert r.status_code == 400 and "empty" in r.json()["message"]
    r = requests.post(endpoint, data=b"null", headers={"Content-Type": "application/json"}, timeout=10)
    assert r.status_code == 400 and "object" in r.json()["message"]
    r = requests.post(endpoint, data=b'{"a": NaN}', headers={"Content-Type": "application/json"}, timeout=10)
    assert r.status_code == 400
    r = requests.post(endpoint, data=b"\xff\xfe{}", headers={"Content-Type": "application/json"}, timeout=10)
    assert r.status_code == 400
    r = requests.post(endpoint, data=b"name=A", headers={"Content-Type": "application/xml"}, timeout=10)
    assert r.status_code == 415 and r.json()["code"] == "UNSUPPORTED_MEDIA_TYPE"
    # A lone surrogate is valid JSON but not storable text.
    raw = b'{"name": "\\ud800", "email": "s@b.io", "password": "' + PASSWORD.encode() + b'"}'
    r = requests.post(endpoint, data=raw, headers={"Content-Type": "application/json"}, timeout=10)
    assert r.status_code == 400 and r.json()["code"] == "VALIDATION_ERROR"
    big = json.dumps({"name": "A" * 40_000, "email": unique_email(), "password": PASSWORD})
    r = requests.post(endpoint, data=big, headers={"Content-Type": "application/json"}, timeout=10)
    assert r.status_code == 413 and r.json()["code"] == "PAYLOAD_TOO_LARGE"
    # Streamed without a Content-Length, it is cut off as well.
    r = requests.post(endpoint, data=iter([big.encode()]), headers={"Content-Type": "application/json"}, timeout=10)
    assert r.status_code == 413


def test_failed_sign_up_leaves_no_record(server: BrainServer) -> None:
    email = unique_email("half")
    assert sign_up(server, email, password="short").status_code == 400
    assert sign_in(server, email, "short").status_code == 401
    assert sign_up(server, email).status_code == 200


def test_password_bounds_and_no_truncation(server: BrainServer) -> None:
    email = unique_email("long")
    long_pw = "p" * 127 + "A"
    assert sign_up(server, email, password=long_pw).status_code == 200
    assert sign_in(server, email, long_pw).status_code == 200
    # Same first 127 characters, different last one: a truncating hash would let this in.
    r = sign_in(server, email, "p" * 127 + "B")
    assert r.status_code == 401 and r.json()["code"] == "INVALID_EMAIL_OR_PASSWORD"
    assert sign_in(server, email, "p" * 127).status_code == 401
    # Exactly the minimum is fine; the maximum counts characters as JavaScript does.
    assert sign_up(server, unique_email("eight"), password="12345678").status_code == 200
    assert sign_up(server, unique_email("emoji"), password="\U0001F600" * 64).status_code == 200
    assert sign_up(server, unique_email("emoji"), password="\U0001F600" * 65).json()["code"] == "PASSWORD_TOO_LONG"
    # Sign-in refuses an over-long password before hashing it.
    r = sign_in(server, email, "p" * 129)
    assert r.status_code == 400 and r.json()["code"] == "PASSWORD_TOO_LONG"


# --- sign-in ---------------------------------------------------------------------------


def test_sign_in_shape_and_case_insensitive_email(server: BrainServer) -> None:
    email = unique_email("signin")
    user = new_user(server, email)["user"]
    r = sign_in(server, email.upper())
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"redirect", "token", "user", "session", "jwt"}
    assert body["redirect"] is False
    assert body["user"] == user
    assert body["session"]["token"] == body["token"] and body["session"]["userId"] == user["id"]
    assert r.headers["set-auth-jwt"] == body["jwt"]
    assert "better-auth.session_token=" in r.headers["Set-Cookie"]
    assert verify_jwt(server, body["jwt"])["sub"] == user["id"]


def test_unknown_email_and_wrong_password_look_the_same(server: BrainServer) -> None:
    email = unique_email("same")
    new_user(server, email)
    wrong = sign_in(server, email, "not the password")
    unknown = sign_in(server, unique_email("nobody"), "not the password")
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.content == unknown.content
    assert wrong.json() == {"message": "Invalid email or password", "code": "INVALID_EMAIL_OR_PASSWORD"}
    headers = lambda r: {k.lower() for k in r.headers if k.lower() != "date"}  # noqa: E731
    assert headers(wrong) == headers(unknown)


@pytest.mark.parametrize(
    "body, code",
    [
        ({"email": "a@b.io"}, "VALIDATION_ERROR"),
        ({"password": PASSWORD}, "VALIDATION_ERROR"),
        ({"email": 5, "password": PASSWORD}, "VALIDATION_ERROR"),
        ({"email": "a@b.io", "password": PASSWORD, "rememberMe": 1}, "VALIDATION_ERROR"),
        ({"email": "nope", "password": PASSWORD}, "INVALID_EMAIL"),
        ({"email": "a@b.io\r\n", "password": PASSWORD}, "INVALID_EMAIL"),
    ],
)
def test_sign_in_refuses_bad_input(server: BrainServer, body: dict[str, object], code: str) -> None:
    r = requests.post(url(server, "/api/auth/sign-in/email"), json=body, timeout=10)
    assert r.status_code == 400 and r.json()["code"] == code


def test_remember_me_false_is_a_short_browser_session(server: BrainServer) -> None:
    email = unique_email("forget")
    new_user(server, email)
    r = sign_in(server, email, extra={"rememberMe": False})
    assert r.status_code == 200
    assert "Max-Age" not in r.headers["Set-Cookie"]
    s = r.json()["session"]
    from datetime import datetime

    created = datetime.fromisoformat(s["createdAt"].replace("Z", "+00:00"))
    expires = datetime.fromisoformat(s["expiresAt"].replace("Z", "+00:00"))
    assert abs((expires - created).total_seconds() - 86400) < 5


def test_callback_url_must_be_relative_or_trusted(server: BrainServer) -> None:
    email = unique_email("cb")
    new_user(server, email)
    r = sign_in(server, email, extra={"callbackURL": "https://evil.example/steal"})
    assert r.status_code == 403 and r.json() == {"message": "Invalid callbackURL", "code": "INVALID_CALLBACK_URL"}
    r = sign_in(server, email, extra={"callbackURL": "//evil.example/x"})
    assert r.status_code == 403
    r = sign_in(server, email, extra={"callbackURL": "/dashboard"})
    assert r.status_code == 200 and r.json()["redirect"] is True and r.json()["url"] == "/dashboard"
    r = sign_in(server, email, extra={"callbackURL": TRUSTED + "/home"})
    assert r.status_code == 200


# --- sessions --------------------------------------------------------------------------


def test_get_session_by_cookie_and_by_bearer(server: BrainServer) -> None:
    body = new_user(server)
    token, user = body["token"], body["user"]
    with requests.Session() as browser:
        r = browser.post(url(server, "/api/auth/sign-in/email"), json={"email": user["email"], "password": PASSWORD}, timeout=30)
        assert r.status_code == 200
        r = browser.get(url(server, "/api/auth/get-session"), timeout=10)
        assert r.status_code == 200
        got = r.json()
        assert got["user"] == user and set(got["session"]) == SESSION_KEYS
        assert r.headers["Cache-Control"] == "no-store"
        assert verify_jwt(server, r.headers["set-auth-jwt"])["sub"] == user["id"]
    # Raw token (bearer plugin), and the signed cookie value.
    r = requests.get(url(server, "/api/auth/get-session"), headers=bearer(token), timeout=10)
    assert r.json()["session"]["token"] == token and r.json()["user"]["id"] == user["id"]
    signed = sign_in(server, user["email"]).headers["set-auth-token"]
    r = requests.get(url(server, "/api/auth/get-session"), headers=bearer(signed), timeout=10)
    assert r.json()["user"]["id"] == user["id"]


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer "},
        {"Authorization": "Bearer not-a-session"},
        {"Authorization": "Basic dXNlcjpwdw=="},
        {"Authorization": "Bearer abc.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="},
        {"Cookie": "better-auth.session_token=abc.def"},
        {"Cookie": "better-auth.session_token=%ZZ"},
    ],
)
def test_no_or_bad_session_is_null_and_401(server: BrainServer, headers: dict[str, str]) -> None:
    r = requests.get(url(server, "/api/auth/get-session"), headers=headers, timeout=10)
    assert r.status_code == 200 and r.content == b"null"
    assert "set-auth-jwt" not in r.headers
    r = requests.get(url(server, "/api/auth/token"), headers=headers, timeout=10)
    assert r.status_code == 401 and r.json() == {"message": "Unauthorized", "code": "UNAUTHORIZED"}


def test_forged_cookie_signature_is_refused(server: BrainServer) -> None:
    token = new_user(server)["token"]
    r = requests.get(
        url(server, "/api/auth/get-session"),
        headers={"Cookie": f"better-auth.session_token={token}.{'A' * 43}%3D"},
        timeout=10,
    )
    assert r.content == b"null"
    # The token alone in a cookie is not enough either: cookies must be signed.
    r = requests.get(url(server, "/api/auth/get-session"), headers={"Cookie": f"better-auth.session_token={token}"}, timeout=10)
    assert r.content == b"null"


def test_token_endpoint_mints_fresh_jwt(server: BrainServer) -> None:
    body = new_user(server)
    r = requests.get(url(server, "/api/auth/token"), headers=bearer(body["token"]), timeout=10)
    assert r.status_code == 200 and set(r.json()) == {"token"}
    claims = verify_jwt(server, r.json()["token"])
    assert claims["sub"] == body["user"]["id"] and claims["aud"] == "brain"
    header = jwt.get_unverified_header(r.json()["token"])
    assert header["alg"] == "RS256" and header["kid"]
    # A JWT is not a session token.
    r = requests.get(url(server, "/api/auth/token"), headers=bearer(body["jwt"]), timeout=10)
    assert r.status_code == 401


def test_sign_out_revokes_only_that_session(server: BrainServer) -> None:
    body = new_user(server)
    other = sign_in(server, body["user"]["email"]).json()["token"]
    r = requests.post(url(server, "/api/auth/sign-out"), headers=bearer(body["token"]), timeout=10)
    assert r.status_code == 200 and r.json() == {"success": True}
    assert "better-auth.session_token=;" in r.headers["Set-Cookie"] and "Max-Age=0" in r.headers["Set-Cookie"]
    assert requests.get(url(server, "/api/auth/get-session"), headers=bearer(body["token"]), timeout=10).content == b"null"
    assert requests.get(url(server, "/api/auth/token"), headers=bearer(body["token"]), timeout=10).status_code == 401
    assert requests.get(url(server, "/api/auth/token"), headers=bearer(other), timeout=10).status_code == 200
    # Signing out again, or without a session, is harmless.
    r = requests.post(url(server, "/api/auth/sign-out"), headers=bearer(body["token"]), timeout=10)
    assert r.status_code == 200


def test_sign_out_with_cookie_needs_an_origin(server: BrainServer) -> None:
    body = new_user(server)
    signed = sign_in(server, body["user"]["email"]).headers["set-auth-token"]
    cookie = {"Cookie": f"better-auth.session_token={signed}"}
    r = requests.post(url(server, "/api/auth/sign-out"), headers=cookie, timeout=10)
    assert r.status_code == 403 and r.json() == {"message": "Missing or null Origin", "code": "MISSING_OR_NULL_ORIGIN"}
    r = requests.post(url(server, "/api/auth/sign-out"), headers={**cookie, "Origin": "https://evil.example"}, timeout=10)
    assert r.status_code == 403 and r.json()["code"] == "INVALID_ORIGIN"
    token = signed.split(".")[0]
    assert requests.get(url(server, "/api/auth/token"), headers=bearer(token), timeout=10).status_code == 200
    r = requests.post(url(server, "/api/auth/sign-out"), headers={**cookie, "Origin": server.auth_url}, timeout=10)
    assert r.status_code == 200
    assert requests.get(url(server, "/api/auth/token"), headers=bearer(token), timeout=10).status_code == 401


# --- keys ------------------------------------------------------------------------------


def test_jwks_has_public_keys_only(server: BrainServer) -> None:
    r = requests.get(url(server, "/api/auth/jwks"), timeout=10)
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("application/json")
    assert r.headers["Cache-Control"] == "public, max-age=300"
    keys = r.json()["keys"]
    assert keys
    for key in keys:
        assert set(key) == {"kty", "n", "e", "kid", "alg", "use"}
        assert key["kty"] == "RSA" and key["alg"] == "RS256" and key["use"] == "sig"
        public = jwt.algorithms.RSAAlgorithm.from_jwk(key)
        assert public.key_size == 2048


def test_openid_configuration_points_at_the_jwks(server: BrainServer) -> None:
    r = requests.get(url(server, "/.well-known/openid-configuration"), timeout=10)
    assert r.status_code == 200
    doc = r.json()
    assert doc["issuer"] == server.auth_url
    assert doc["jwks_uri"] == f"{server.auth_url}/api/auth/jwks"
    assert requests.get(doc["jwks_uri"], timeout=10).json() == jwks(server)
    # A standard verifier that discovers keys from the issuer accepts our token.
    token = new_user(server)["jwt"]
    client = jwt.PyJWKClient(doc["jwks_uri"])
    signing_key = client.get_signing_key_from_jwt(token)
    claims = jwt.decode(token, signing_key.key, algorithms=["RS256"], audience="brain", issuer=doc["issuer"])
    assert claims["iss"] == doc["issuer"]


def test_secrets_are_not_stored_in_the_clear(server: BrainServer) -> None:
    body = new_user(server)
    db = sqlite3.connect(f"file:{server.data_dir / 'auth.db'}?mode=ro", uri=True)
    try:
        dump = "\n".join(db.iterdump())
        (password_hash,) = db.execute("SELECT password_hash FROM user WHERE id = ?", (body["user"]["id"],)).fetchone()
        sealed = [bytes(row[0]) for row in db.execute("SELECT private_sealed FROM signing_key")]
    finally:
        db.close()
    assert body["token"] not in dump and PASSWORD not in dump
    assert password_hash.startswith("$argon2id$")
    assert sealed and all(b"PRIVATE KEY" not in s for s in sealed)


# --- origins and CORS ------------------------------------------------------------------


def test_untrusted_origin_is_refused(server: BrainServer) -> None:
    email = unique_email("origin")
    new_user(server, email)
    for origin in ("https://evil.example", "null", "https://app.example.com.evil.example", "http://app.example.com"):
        r = sign_in(server, email, headers={"Origin": origin})
        assert r.status_code == 403, origin
        assert r.json()["code"] in ("INVALID_ORIGIN", "MISSING_OR_NULL_ORIGIN")
        assert "Access-Control-Allow-Origin" not in r.headers
    r = sign_in(server, email, headers={"Origin": "https://evil.example"})
    assert r.json() == {"message": "Invalid origin", "code": "INVALID_ORIGIN"}
    r = requests.post(
        url(server, "/api/auth/sign-up/email"),
        json={"name": "x", "email": unique_email(), "password": PASSWORD},
        headers={"Referer": "https://evil.example/page"},
        timeout=10,
    )
    assert r.status_code == 403


def test_trusted_origins_get_cors(server: BrainServer) -> None:
    email = unique_email("cors")
    new_user(server, email)
    for origin in (TRUSTED, "https://a.trusted.example", server.auth_url):
        r = sign_in(server, email, headers={"Origin": origin})
        assert r.status_code == 200, (origin, r.text)
        assert r.headers["Access-Control-Allow-Origin"] == origin
        assert r.headers["Access-Control-Allow-Credentials"] == "true"
        assert "set-auth-jwt" in r.headers["Access-Control-Expose-Headers"]
    # Errors are readable by the trusted page too.
    r = sign_in(server, email, "wrong password", headers={"Origin": TRUSTED})
    assert r.status_code == 401 and r.headers["Access-Control-Allow-Origin"] == TRUSTED


def test_cors_preflight(server: BrainServer) -> None:
    pre = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"}
    r = requests.options(url(server, "/api/auth/sign-in/email"), headers={"Origin": TRUSTED, **pre}, timeout=10)
    assert r.status_code == 204
    assert r.headers["Access-Control-Allow-Origin"] == TRUSTED
    assert "POST" in r.headers["Access-Control-Allow-Methods"]
    assert r.headers["Access-Control-Allow-Headers"] == "content-type"
    assert r.headers["Access-Control-Allow-Credentials"] == "true"
    r = requests.options(url(server, "/api/auth/sign-in/email"), headers={"Origin": "https://evil.example", **pre}, timeout=10)
    assert r.status_code == 403 and "Access-Control-Allow-Origin" not in r.headers
    # A GET from an untrusted page is answered, but without CORS the browser hides it.
    r = requests.get(url(server, "/api/auth/jwks"), headers={"Origin": "https://evil.example"}, timeout=10)
    assert r.status_code == 200 and "Access-Control-Allow-Origin" not in r.headers


# --- routing ---------------------------------------------------------------------------


def test_unknown_routes_and_methods_are_json(server: BrainServer) -> None:
    r = requests.get(url(server, "/api/auth/nope"), timeout=10)
    assert r.status_code == 404 and r.json()["code"] == "NOT_FOUND"
    r = requests.get(url(server, "/api/auth/sign-in/email"), timeout=10)
    assert r.status_code == 405 and r.json()["code"] == "METHOD_NOT_ALLOWED"
    r = requests.post(url(server, "/api/auth/get-session"), json={}, timeout=10)
    assert r.status_code == 405
    assert requests.get(url(server, "/api/auth/ok"), timeout=10).json() == {"ok": True}

"""Passkeys over HTTP, driven by a software authenticator (tests/fakes/authenticator.py): the
ceremonies of Better Auth's passkey plugin, and what each refuses.

The same ceremonies from a real browser (Chromium making the credential and the assertion with
its virtual authenticator, RP ID `localhost`): tests/test_browser_passkeys.py.
"""

from __future__ import annotations

import base64
import json
import random
import sqlite3
import time
from typing import Any

import pytest
import requests

from tests.fakes.authenticator import UP, UV, SoftAuthenticator, b64url, cbor, unb64url
from tests.support import BrainServer
from tests.test_auth_helpers import (  # noqa: F401 - module_server is a fixture
    NO_LIMITS, PASSWORD, bearer, module_server, new_user, sign_in, verify_jwt,
)
from tests.test_auth_two_factor import account_with_2fa

AUTH_CONFIG = {"two_factor_rate_limit_max": 100_000}
COOKIE = "better-auth.better-auth-passkey"
EVIL = "https://evil.example"


@pytest.fixture
def server(module_server: BrainServer) -> BrainServer:
    return module_server


class Browser:
    """A browser tab on the server's origin: a cookie jar, the Origin it sends, and optionally a
    session token (as Better Auth's bearer plugin sends it)."""

    def __init__(self, server: BrainServer, token: str | None = None, *, origin: str | None = None) -> None:
        self.server = server
        self.origin = origin or server.auth_url
        self.http = requests.Session()
        self.http.headers["Origin"] = self.origin
        if token:
            self.http.headers.update(bearer(token))

    def get(self, path: str, **params: str) -> requests.Response:
        return self.http.get(f"{self.server.auth_url}/api/auth/{path}", params=params, timeout=15)

    def post(self, path: str, body: Any, **kwargs: Any) -> requests.Response:
        return self.http.post(f"{self.server.auth_url}/api/auth/{path}", json=body, timeout=15, **kwargs)

    def register_options(self, **params: str) -> dict[str, Any]:
        r = self.get("passkey/generate-register-options", **params)
        assert r.status_code == 200, r.text
        return r.json()

    def sign_in_options(self) -> dict[str, Any]:
        r = self.get("passkey/generate-authenticate-options")
        assert r.status_code == 200, r.text
        return r.json()

    def register(self, key: SoftAuthenticator, *, name: str | None = None, **create: Any) -> requests.Response:
        """Both steps of a registration with this authenticator (create's keywords spoil it)."""
        options = self.register_options()
        body: dict[str, Any] = {"response": key.create(options, origin=create.pop("origin", self.origin), **create)}
        if name is not None:
            body["name"] = name
        return self.post("passkey/verify-registration", body)

    def sign_in(self, key: SoftAuthenticator, **get: Any) -> requests.Response:
        """Both steps of a passkey sign-in (get's keywords spoil it)."""
        options = self.sign_in_options()
        return self.post("passkey/verify-authentication",
                         {"response": key.get(options, origin=get.pop("origin", self.origin), **get)})

    def passkeys(self) -> list[dict[str, Any]]:
        r = self.get("passkey/list-user-passkeys")
        assert r.status_code == 200, r.text
        return r.json()


def signed_in(server: BrainServer) -> tuple[dict[str, Any], Browser]:
    """A new user and a browser with their session."""
    body = new_user(server)
    return body["user"], Browser(server, body["token"])


def with_passkey(server: BrainServer, **key: Any) -> tuple[dict[str, Any], Browser, SoftAuthenticator]:
    user, browser = signed_in(server)
    authenticator = SoftAuthenticator(**key)
    r = browser.register(authenticator)
    assert r.status_code == 200, r.text
    return user, browser, authenticator


def refused(r: requests.Response, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status and r.json()["code"] == code, (r.status_code, r.text)
    return r.json()


def set_cookie(r: requests.Response) -> str:
    """The Set-Cookie line of the challenge cookie."""
    lines = [v for k, v in r.raw.headers.items() if k.lower() == "set-cookie" and v.startswith(COOKIE + "=")]
    assert len(lines) == 1, r.headers
    return lines[0]


# --- the whole life of a passkey ----------------------------------------------------------------


def test_register_sign_in_list_rename_delete(server: BrainServer) -> None:
    user, browser = signed_in(server)
    r = browser.get("passkey/generate-register-options")
    assert r.status_code == 200, r.text
    options = r.json()
    assert options["rp"] == {"name": "brain", "id": "127.0.0.1"}
    assert options["user"]["name"] == options["user"]["displayName"] == user["email"]
    assert [p["alg"] for p in options["pubKeyCredParams"]] == [-8, -7, -257]
    assert options["attestation"] == "none" and options["timeout"] == 60000 and options["excludeCredentials"] == []
    assert options["authenticatorSelection"] == {"residentKey": "preferred", "userVerification": "preferred",
                                                 "requireResidentKey": False}
    assert len(unb64url(options["challenge"])) == 32 and r.headers["Cache-Control"] == "no-store"
    cookie = set_cookie(r)
    assert "Max-Age=300" in cookie and "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Path=/" in cookie

    laptop = SoftAuthenticator()
    r = browser.post("passkey/verify-registration",
                     {"response": laptop.create(options, origin=server.auth_url), "name": "  Laptop key  "})
    assert r.status_code == 200, r.text
    first = r.json()
    assert first["name"] == "Laptop key" and first["userId"] == user["id"] and first["credentialID"] == laptop.id
    assert first["counter"] == 0 and first["deviceType"] == "singleDevice" and first["backedUp"] is False
    assert first["transports"] == "usb,internal" and first["aaguid"] == "00000000-0000-0000-0000-000000000000"
    assert base64.b64decode(first["publicKey"]) == laptop.cose_key()  # Better Auth's column: standard base64
    assert COOKIE not in browser.http.cookies  # the challenge is spent; its cookie goes too

    # A synced passkey with packed self-attestation and no name.
    phone = SoftAuthenticator(backed_up=True, counts=False)
    r = browser.register(phone, attestation="packed")
    assert r.status_code == 200, r.text
    second = r.json()
    assert second["name"] is None and second["deviceType"] == "multiDevice" and second["backedUp"] is True
    excluded = browser.register_options(authenticatorAttachment="platform", name="Work")
    assert [c["id"] for c in excluded["excludeCredentials"]] == [laptop.id, phone.id]
    assert excluded["excludeCredentials"][0] == {"id": laptop.id, "transports": ["usb", "internal"], "type": "public-key"}
    assert excluded["authenticatorSelection"]["authenticatorAttachment"] == "platform" and excluded["user"]["name"] == "Work"
    assert [p["id"] for p in browser.passkeys()] == [first["id"], second["id"]]

    # Sign in from a browser that has no session: a sign-in answer like the others.
    stranger = Browser(server)
    options = stranger.sign_in_options()
    assert set(options) == {"rpId", "challenge", "timeout", "userVerification"} and options["rpId"] == "127.0.0.1"
    r = stranger.post("passkey/verify-authentication", {"response": laptop.get(options, origin=server.auth_url)})
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"token", "user", "session", "jwt"} and body["user"]["id"] == user["id"]
    assert body["session"]["userId"] == user["id"] and body["session"]["token"] == body["token"]
    assert r.headers["set-auth-jwt"] == body["jwt"] and verify_jwt(server, body["jwt"])["sub"] == user["id"]
    assert r.headers["set-auth-token"].startswith(body["token"] + ".")
    assert "better-auth.session_token" in stranger.http.cookies and COOKIE not in stranger.http.cookies
    session = stranger.get("get-session").json()  # by the session cookie alone
    assert session["user"]["id"] == user["id"]
    assert Browser(server).sign_in(phone).status_code == 200 and Browser(server).sign_in(phone).status_code == 200

    # A signed-in browser is offered its own passkeys; the counter moved with the sign-in.
    allowed = browser.sign_in_options()["allowCredentials"]
    assert [c["id"] for c in allowed] == [laptop.id, phone.id]
    assert [p["counter"] for p in browser.passkeys()] == [1, 0]

    r = browser.post("passkey/update-passkey", {"id": first["id"], "name": " Work laptop "})
    assert r.status_code == 200 and r.json() == {"passkey": {**first, "name": "Work laptop", "counter": 1}}, r.text
    assert "name" in refused(browser.post("passkey/update-passkey", {"id": first["id"], "name": "  "}),
                             400, "VALIDATION_ERROR")["message"]
    refused(browser.post("passkey/update-passkey", {"id": first["id"], "name": "evil\x1b[2J"}), 400, "VALIDATION_ERROR")

    r = browser.post("passkey/delete-passkey", {"id": first["id"]})
    assert r.status_code == 200 and r.json() == {"status": True}, r.text
    assert [p["id"] for p in browser.passkeys()] == [second["id"]]
    refused(Browser(server).sign_in(laptop), 401, "PASSKEY_NOT_FOUND")
    refused(browser.post("passkey/delete-passkey", {"id": first["id"]}), 404, "PASSKEY_NOT_FOUND")

    # Deleting the account deletes its passkeys.
    assert browser.post("delete-user", {"password": PASSWORD}).status_code == 200
    db = sqlite3.connect(server.data_dir / "auth.db")
    try:
        assert db.execute("SELECT count(*) FROM passkey WHERE user_id = ?", (user["id"],)).fetchone() == (0,)
    finally:
        db.close()
    refused(Browser(server).sign_in(phone), 401, "PASSKEY_NOT_FOUND")


def test_passkeys_need_a_session_and_registration_a_fresh_one(server: BrainServer) -> None:
    anonymous = Browser(server)
    for method, path in (("get", "generate-register-options"), ("post", "verify-registration"),
                         ("get", "list-user-passkeys"), ("post", "update-passkey"), ("post", "delete-passkey")):
        r = getattr(anonymous, method)(f"passkey/{path}", **({"body": {}} if method == "post" else {}))
        refused(r, 401, "UNAUTHORIZED")
    user, browser = signed_in(server)
    db = sqlite3.connect(server.data_dir / "auth.db")
    try:
        with db:
            db.execute("UPDATE session SET created_at = created_at - 2 * 86400 * 1000 WHERE user_id = ?", (user["id"],))
    finally:
        db.close()
    refused(browser.get("passkey/generate-register-options"), 403, "SESSION_NOT_FRESH")
    refused(browser.post("passkey/verify-registration", {"response": {}}), 403, "SESSION_NOT_FRESH")
    assert browser.passkeys() == []  # listing needs a session, not a fresh one


# --- the challenge --------------------------------------------------------------------------------


def auth_db(server: BrainServer) -> sqlite3.Connection:
    return sqlite3.connect(server.data_dir / "auth.db")


def test_a_challenge_is_good_once_for_its_own_ceremony_and_for_five_minutes(server: BrainServer) -> None:
    _user, browser = signed_in(server)
    key = SoftAuthenticator()

    # Registration: the same answer twice with the same cookie; the second finds no challenge.
    options = browser.register_options()
    cookie = browser.http.cookies[COOKIE]
    credential = key.create(options, origin=server.auth_url)
    assert browser.post("passkey/verify-registration", {"response": credential}).status_code == 200
    browser.http.cookies.set(COOKIE, cookie)
    refused(browser.post("passkey/verify-registration", {"response": credential}), 400, "CHALLENGE_NOT_FOUND")
    assert len(browser.passkeys()) == 1

    # Sign-in: a replayed assertion (cookie and all) is refused, and the counter did not move.
    stranger = Browser(server)
    options = stranger.sign_in_options()
    cookie = stranger.http.cookies[COOKIE]
    assertion = key.get(options, origin=server.auth_url)
    assert stranger.post("passkey/verify-authentication", {"response": assertion}).status_code == 200
    replay = Browser(server)
    replay.http.cookies.set(COOKIE, cookie)
    refused(replay.post("passkey/verify-authentication", {"response": assertion}), 400, "CHALLENGE_NOT_FOUND")

    # A failed attempt spends the challenge too: no second guess with it.
    options = stranger.sign_in_options()
    cookie = stranger.http.cookies[COOKIE]
    refused(stranger.post("passkey/verify-authentication", {"response": key.get(options, origin=server.auth_url,
                                                                                  rp_id="evil.example")}),
            400, "AUTHENTICATION_FAILED")
    stranger.http.cookies.set(COOKIE, cookie)
    refused(stranger.post("passkey/verify-authentication", {"response": key.get(options, origin=server.auth_url)}),
            400, "CHALLENGE_NOT_FOUND")

    # No cookie, a forged one, another browser's challenge.
    options = Browser(server).sign_in_options()
    refused(Browser(server).post("passkey/verify-authentication", {"response": key.get(options, origin=server.auth_url)}),
            400, "CHALLENGE_NOT_FOUND")
    forged = Browser(server)
    forged.http.cookies.set(COOKIE, "abc.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA%3D")
    refused(forged.post("passkey/verify-authentication", {"response": key.get(options, origin=server.auth_url)}),
            400, "CHALLENGE_NOT_FOUND")

    # A registration's challenge does not sign in, a sign-in's does not register.
    options = browser.register_options()
    refused(browser.post("passkey/verify-authentication",
                         {"response": key.get({"rpId": "127.0.0.1", "challenge": options["challenge"]},
                                              origin=server.auth_url)}), 400, "CHALLENGE_NOT_FOUND")
    options = browser.sign_in_options()
    other = SoftAuthenticator()
    refused(browser.post("passkey/verify-registration",
                         {"response": other.create({"rp": {"id": "127.0.0.1"}, "challenge": options["challenge"]},
                                                   origin=server.auth_url)}), 400, "CHALLENGE_NOT_FOUND")

    # Five minutes: the stored row says so, and a row past its time is no challenge.
    before = time.time() * 1000
    options = stranger.sign_in_options()
    with auth_db(server) as db:
        expires = db.execute("SELECT max(expires_at) FROM flow_state WHERE kind = 'passkey'").fetchone()[0]
        assert before + 299_000 <= expires <= time.time() * 1000 + 301_000
        db.execute("UPDATE flow_state SET expires_at = ? WHERE kind = 'passkey' AND expires_at = ?",
                   (int(time.time() * 1000) - 1, expires))
    db.close()
    refused(stranger.post("passkey/verify-authentication", {"response": key.get(options, origin=server.auth_url)}),
            400, "CHALLENGE_NOT_FOUND")


# --- what the checks refuse -----------------------------------------------------------------------


def test_a_cloned_authenticator_is_refused(server: BrainServer) -> None:
    _user, browser, key = with_passkey(server)
    for _ in range(3):
        assert Browser(server).sign_in(key).status_code == 200  # counts 1, 2, 3
    # A copy of the key that lags behind, or repeats a count, is a clone.
    for count in (3, 2, 0):
        refused(Browser(server).sign_in(key, sign_count=count), 400, "AUTHENTICATION_FAILED")
    assert browser.passkeys()[0]["counter"] == 3
    assert Browser(server).sign_in(key).status_code == 200
    assert browser.passkeys()[0]["counter"] == 4
    # An authenticator that does not count (synced passkeys send 0) signs in every time.
    _user, _browser, synced = with_passkey(server, counts=False)
    for _ in range(3):
        assert Browser(server).sign_in(synced).status_code == 200


SPOILERS: list[tuple[str, dict[str, Any]]] = [
    ("another origin in clientDataJSON", {"origin": EVIL, "header_origin": None}),
    ("another RP ID", {"rp_id": "evil.example"}),
    ("a suffix-confused RP ID", {"rp_id": "127.0.0.1.evil.example"}),
    ("the other ceremony's type", {"kind": "swap"}),
    ("a made-up type", {"kind": "payment.get"}),
    ("no user presence", {"flags": UV}),
    ("another challenge", {"challenge": b64url(b"\x00" * 32)}),
]


@pytest.mark.parametrize("why, spoil", SPOILERS, ids=[s[0] for s in SPOILERS])
def test_wrong_origin_rp_id_type_flags_and_challenge_are_refused(server: BrainServer, why: str, spoil: dict[str, Any]) -> None:
    spoil = dict(spoil)
    spoil.pop("header_origin", None)
    create, get = dict(spoil), dict(spoil)
    if spoil.get("kind") == "swap":
        create["kind"], get["kind"] = "webauthn.get", "webauthn.create"
    _user, browser = signed_in(server)
    key = SoftAuthenticator()
    r = browser.register(key, **create)
    assert r.status_code == 400 and r.json()["code"] == "FAILED_TO_VERIFY_REGISTRATION", r.text
    assert len(r.json()["message"]) > len("Failed to verify registration: "), r.text  # it says why
    assert browser.passkeys() == []
    assert browser.register(key).status_code == 200
    refused(Browser(server).sign_in(key, **get), 400, "AUTHENTICATION_FAILED")
    assert browser.passkeys()[0]["counter"] == 0


def test_a_forged_signature_and_an_untrusted_or_missing_origin_are_refused(server: BrainServer) -> None:
    _user, browser, key = with_passkey(server)
    stranger = Browser(server)
    assertion = key.get(stranger.sign_in_options(), origin=server.auth_url)
    signature = bytearray(unb64url(assertion["response"]["signature"]))
    signature[-1] ^= 1
    assertion["response"]["signature"] = b64url(bytes(signature))
    refused(stranger.post("passkey/verify-authentication", {"response": assertion}), 400, "AUTHENTICATION_FAILED")
    # Another key claiming the credential id.
    impostor = SoftAuthenticator()
    impostor.credential_id = key.credential_id
    refused(Browser(server).sign_in(impostor), 400, "AUTHENTICATION_FAILED")
    # clientDataJSON is checked against the Origin header, which must be a trusted origin.
    evil = Browser(server, origin=EVIL)
    options = Browser(server).sign_in_options()
    refused(evil.post("passkey/verify-authentication", {"response": key.get(options, origin=EVIL)}), 403, "INVALID_ORIGIN")
    _other, registering = signed_in(server)
    token = registering.http.headers["Authorization"].split()[1]
    refused(Browser(server, token, origin=EVIL).register(SoftAuthenticator()), 403, "INVALID_ORIGIN")
    # No Origin at all: with the challenge cookie that is a browser's request without one.
    originless = Browser(server)
    options = originless.sign_in_options()
    del originless.http.headers["Origin"]
    r = originless.post("passkey/verify-authentication", {"response": key.get(options, origin=server.auth_url)})
    refused(r, 403, "MISSING_OR_NULL_ORIGIN")
    assert registering.passkeys() == []


def test_user_verification_when_required_and_email_verification(make_server) -> None:  # type: ignore[no-untyped-def]
    server = make_server(config={"auth": {**NO_LIMITS, "passkey_user_verification": "required"}}).start()
    user, browser = signed_in(server)
    options = browser.register_options()
    assert options["authenticatorSelection"]["userVerification"] == "required"
    assert browser.sign_in_options()["userVerification"] == "required"
    key = SoftAuthenticator()
    r = browser.register(key, flags=UP)  # present, not verified
    assert r.status_code == 400 and "verif" in r.json()["message"].lower(), r.text
    assert browser.register(key, flags=UP | UV).status_code == 200
    refused(Browser(server).sign_in(key, flags=UP), 400, "AUTHENTICATION_FAILED")
    assert Browser(server).sign_in(key, flags=UP | UV).status_code == 200

    # With email verification required, an unverified account does not sign in with a passkey either.
    server.stop()
    server.config["auth"]["require_email_verification"] = True
    server.start()
    refused(Browser(server).sign_in(key), 403, "EMAIL_NOT_VERIFIED")
    assert user["emailVerified"] is False


def test_preferred_user_verification_accepts_a_passkey_without_it(server: BrainServer) -> None:
    _user, browser = signed_in(server)
    key = SoftAuthenticator()
    assert browser.register(key, flags=UP).status_code == 200  # Better Auth's default: asked, not required
    assert Browser(server).sign_in(key, flags=UP).status_code == 200


# --- other users ------------------------------------------------------------------------------------


def test_another_users_passkey_cannot_be_renamed_deleted_or_taken_over(server: BrainServer) -> None:
    alice, alice_browser, alice_key = with_passkey(server)
    passkey = alice_browser.passkeys()[0]
    _bob, bob_browser = signed_in(server)
    refused(bob_browser.post("passkey/update-passkey", {"id": passkey["id"], "name": "mine now"}), 404, "PASSKEY_NOT_FOUND")
    refused(bob_browser.post("passkey/delete-passkey", {"id": passkey["id"]}), 404, "PASSKEY_NOT_FOUND")
    assert bob_browser.passkeys() == [] and alice_browser.passkeys() == [passkey]
    assert alice_key.id not in json.dumps(bob_browser.sign_in_options())

    # Alice's registration challenge, finished by Bob's session: refused, nothing stored.
    options = alice_browser.register_options()
    bob_browser.http.cookies.set(COOKIE, alice_browser.http.cookies[COOKIE])
    r = bob_browser.post("passkey/verify-registration",
                         {"response": SoftAuthenticator().create(options, origin=server.auth_url)})
    refused(r, 401, "YOU_ARE_NOT_ALLOWED_TO_REGISTER_THIS_PASSKEY")
    bob_browser.http.cookies.clear()
    # Alice's credential registered again by Bob: refused (it would sign in as Bob).
    refused(bob_browser.register(alice_key), 400, "PREVIOUSLY_REGISTERED")
    assert bob_browser.passkeys() == [] and len(alice_browser.passkeys()) == 1
    r = Browser(server).sign_in(alice_key)
    assert r.status_code == 200 and r.json()["user"]["id"] == alice["id"]


def test_a_user_with_two_factor_signs_in_with_a_passkey_at_once(server: BrainServer) -> None:
    """Better Auth's rule: the twoFactor plugin asks for the second factor after password sign-ins
    only; a passkey is a factor of its own."""
    account = account_with_2fa(server)
    browser = Browser(server, account["token"])
    key = SoftAuthenticator()
    assert browser.register(key).status_code == 200
    assert sign_in(server, account["email"]).json() == {"twoFactorRedirect": True, "twoFactorMethods": ["totp"]}
    r = Browser(server).sign_in(key)
    assert r.status_code == 200 and r.json()["user"]["twoFactorEnabled"] is True and r.json()["token"], r.text


def test_create_session_on_registration_opens_a_new_session(server: BrainServer) -> None:
    user, browser = signed_in(server)
    options = browser.register_options()
    r = browser.post("passkey/verify-registration",
                     {"response": SoftAuthenticator().create(options, origin=server.auth_url), "createSession": True})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["userId"] == user["id"] and body["user"]["id"] == user["id"] and body["session"]["token"] == body["token"]
    assert body["token"] != browser.http.headers["Authorization"].split()[1]
    assert verify_jwt(server, body["jwt"])["sub"] == user["id"] and r.headers["set-auth-jwt"] == body["jwt"]
    session = requests.get(f"{server.auth_url}/api/auth/get-session", headers=bearer(body["token"]), timeout=10).json()
    assert session["user"]["id"] == user["id"]
    refused(browser.post("passkey/verify-registration", {"response": {}, "createSession": "yes"}), 400, "VALIDATION_ERROR")


# --- hostile input ----------------------------------------------------------------------------------


def random_bytes(rng: random.Random, n: int) -> bytes:
    return bytes(rng.randrange(256) for _ in range(n))


def cose_cases() -> list[bytes]:
    """COSE keys that are not usable keys: missing members, a point off the curve, a short
    Ed25519 key, an unknown key type, wrong member types, an empty or cut-off raw point."""
    return [cbor({1: 2}), cbor({1: 2, 3: -7, -1: 1, -2: b"\x00" * 32, -3: b"\x00" * 32}),
            cbor({1: 1, 3: -8, -1: 6, -2: b"\x00" * 31}),
            cbor({1: 9, 3: -7}), cbor({1: 2, 3: -7, -1: 1, -2: "x", -3: 5}), b"\x04" + b"\x01" * 10, b""]


def with_cose(auth_data: bytes, cose: bytes) -> bytes:
    """A registration's authenticator data with its credential's COSE key replaced."""
    id_length = int.from_bytes(auth_data[53:55], "big")
    return auth_data[:55 + id_length] + cose


def mutations(rng: random.Random, credential: dict[str, Any]) -> list[Any]:
    """Ways a credential can be broken: shapes, types, encodings, CBOR, keys and byte-level damage
    to every member the ceremony checks (a registration's, or an assertion's)."""
    inner = credential["response"]
    out: list[Any] = [None, [], "", "x", 1, True, {}, {"id": 1}, {"id": "x" * 5000}, {"id": credential["id"]},
                      {**credential, "response": None}, {**credential, "response": []}, {**credential, "type": "x"},
                      {**credential, "rawId": "!!!"}, {**credential, "rawId": b64url(b"other")},
                      {**credential, "id": credential["id"] + "A"},
                      {**credential, "authenticatorAttachment": "elsewhere"}]
    deep: Any = {}
    for _ in range(200):
        deep = {"response": deep}
    out.append(deep)
    fields: dict[str, list[Any]] = {
        "clientDataJSON": [None, 5, "%%%", b64url(b"not json"), b64url(b"[]"), b64url(b'{"type": 1}'),
                           b64url(json.dumps({"type": "webauthn.get", "challenge": 5, "origin": None}).encode()),
                           b64url(b"\xff\xfe" * 50), b64url(b'{"challenge":"' + b"A" * 3000 + b'"}')],
    }
    if "attestationObject" in inner:
        auth_data = unb64url(inner["authenticatorData"])
        bad_cbor = [
            cbor({"fmt": 1}), cbor({"fmt": "packed", "attStmt": {}, "authData": b""}),
            cbor({"fmt": "packed", "attStmt": {"alg": -7, "sig": b"x", "x5c": [b"junk"]}, "authData": auth_data}),
            cbor({"fmt": "tpm", "attStmt": {"ver": "2.0"}, "authData": auth_data}),
            cbor({"fmt": "fido-u2f", "attStmt": {"sig": b"x", "x5c": [b"junk"]}, "authData": auth_data}),
            cbor({"fmt": "none", "attStmt": {"sig": b"x"}, "authData": auth_data}),
            cbor({"fmt": "none", "attStmt": {}, "authData": auth_data[:37]}),  # flags say AT, no credential
            *(cbor({"fmt": "none", "attStmt": {}, "authData": with_cose(auth_data, cose)}) for cose in cose_cases()),
            b"\x9f" * 300, b"\xbb" + b"\xff" * 8, random_bytes(rng, 64), b"",
        ]
        fields["attestationObject"] = [None, [], "%%%", *(b64url(b) for b in bad_cbor)]
        fields["transports"] = ["usb", [1], ["x" * 100], ["usb"] * 50, [None]]
        binary = ["clientDataJSON", "attestationObject"]
    else:
        fields["authenticatorData"] = [None, 5, "%%%", b64url(b""), b64url(b"\x00" * 36),
                                       b64url(b"\x00" * 32 + b"\xc5" + b"\x00" * 60)]
        fields["signature"] = [None, 5, "", "%%%", b64url(b"\x30\x00"), b64url(random_bytes(rng, 72))]
        fields["userHandle"] = [5, []]
        binary = ["clientDataJSON", "authenticatorData", "signature"]
    for field, values in fields.items():
        for value in values:
            out.append({**credential, "response": {**inner, field: value}})
    for _ in range(40):  # byte-level damage (a changed byte, or a cut) to what the signatures cover
        field = rng.choice(binary)
        data = bytearray(unb64url(inner[field]))
        for _ in range(rng.randrange(1, 4)):
            data[rng.randrange(len(data))] ^= rng.randrange(1, 256)
        if rng.random() < 0.3:
            data = data[: rng.randrange(len(data))]
        out.append({**credential, "response": {**inner, field: b64url(bytes(data))}})
    return out


BROKEN_JSON = [b"", b"{", b'{"response": ', b"[1,2", b"\xff\xfe\x00", b'{"response": {"id": "\\ud800"}}', b"null",
               b'"text"', b"[" * 5000 + b"]" * 5000, b'{"a": 1e999999}', b"\xef\xbb\xbf{}"]


def test_hostile_json_to_every_passkey_endpoint_is_a_4xx(server: BrainServer) -> None:
    rng = random.Random(18)
    _user, browser, key = with_passkey(server)
    passkey_id = browser.passkeys()[0]["id"]
    problems: list[tuple[Any, ...]] = []

    def check(r: requests.Response, what: Any) -> None:
        if not 400 <= r.status_code < 500:
            problems.append((r.request.path_url, str(what)[:120], r.status_code, r.text[:200]))
        elif r.headers.get("Content-Type", "").split(";")[0] != "application/json" or not r.json().get("message"):
            problems.append((r.request.path_url, str(what)[:120], "not a JSON error", r.text[:200]))

    # Each broken answer is made from a valid one for a live challenge, so it gets as far as its
    # damage lets it (packed attestation: a changed byte anywhere breaks a signature).
    count = len(mutations(random.Random(0), SoftAuthenticator().create(browser.register_options(), origin=server.auth_url)))
    for i in range(count):
        fresh = SoftAuthenticator().create(browser.register_options(), origin=server.auth_url, attestation="packed")
        body = mutations(random.Random(i), fresh)[i]
        check(browser.post("passkey/verify-registration", {"response": body, "name": rng.choice(["k", None])}), body)
    registration = SoftAuthenticator().create(browser.register_options(), origin=server.auth_url)
    for extra in ({"name": 5}, {"name": "a\u202eb"}, {"name": "n" * 1000}, {"createSession": 1}):
        browser.register_options()
        check(browser.post("passkey/verify-registration", {"response": registration, **extra}), extra)
    stranger = Browser(server)
    count = len(mutations(random.Random(0), key.get(stranger.sign_in_options(), origin=server.auth_url)))
    for i in range(count):
        fresh = key.get(stranger.sign_in_options(), origin=server.auth_url)
        body = mutations(random.Random(i), fresh)[i]
        check(stranger.post("passkey/verify-authentication", {"response": body}), body)
    for body in ({}, {"id": 5}, {"id": "x" * 20_000}, {"id": passkey_id, "name": 5}, {"id": None, "name": "n"},
                 {"id": [passkey_id], "name": "n"}, {"id": "", "name": "n"}, {"id": passkey_id, "name": "x" * 1000}):
        check(browser.post("passkey/update-passkey", body), body)
        check(browser.post("passkey/delete-passkey", body) if body.get("id") != passkey_id else
              browser.post("passkey/delete-passkey", {**body, "id": [passkey_id]}), body)
    for params in ({"authenticatorAttachment": "usb"}, {"name": "x" * 1000}, {"name": "a\x00b"}, {"name": "\u2028"}):
        check(browser.get("passkey/generate-register-options", **params), params)
    for path in ("verify-registration", "verify-authentication", "update-passkey", "delete-passkey"):
        for raw in BROKEN_JSON:
            browser.register_options()
            r = browser.http.post(f"{server.auth_url}/api/auth/passkey/{path}", data=raw,
                                  headers={"Content-Type": "application/json"}, timeout=15)
            check(r, raw[:40])
    assert not problems, problems[:10]
    # Nothing was stored or changed by any of it, and nothing blew up inside.
    assert [(p["id"], p["name"]) for p in browser.passkeys()] == [(passkey_id, None)]
    assert "Traceback" not in server.log_text(), server.log_text()[-3000:]
    assert Browser(server).sign_in(key).status_code == 200

"""API keys: Better Auth's apiKey endpoints on the auth role, `x-api-key` on the API role, scopes,
and revocation that takes effect at once (in one process, and across processes over NATS)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import sqlite3
import time
from types import SimpleNamespace
from typing import Any

import jwt
import nats
import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.support import BrainServer, embedded_nats_url, free_port, wait_until
from tests.test_auth_helpers import (  # noqa: F401 - module_server is a fixture
    NO_LIMITS, PASSWORD, bearer, module_server, unique_email,
)


@pytest.fixture
def server(module_server: BrainServer) -> BrainServer:  # noqa: F811
    return module_server


def account(server: BrainServer) -> dict[str, Any]:
    r = requests.post(f"{server.auth_url}/api/auth/sign-up/email",
                      json={"name": "Keys", "email": unique_email("keys"), "password": PASSWORD}, timeout=15)
    assert r.status_code == 200, r.text
    return r.json()


def auth_post(server: BrainServer, path: str, token: str | None, body: Any) -> requests.Response:
    return requests.post(f"{server.auth_url}/api/auth/{path}", json=body, headers=bearer(token) if token else {},
                         timeout=15)


def create(server: BrainServer, token: str, **body: Any) -> dict[str, Any]:
    r = auth_post(server, "api-key/create", token, body)
    assert r.status_code == 200, r.text
    return r.json()


def api(server: BrainServer, method: str, path: str, key: str, *, header: str = "x-api-key", **kwargs: Any) -> requests.Response:
    headers = {"x-api-key": key} if header == "x-api-key" else {"Authorization": f"Bearer {key}"}
    return requests.request(method, f"{server.api_url}{path}", headers=headers, timeout=15, **kwargs)


NOTE = {"type": "note.created", "data": {"text": "hi"}}


# --- the auth role's endpoints ------------------------------------------------------------------------


def test_create_answers_better_auths_key_object_and_stores_only_a_hash(server: BrainServer) -> None:
    ada = account(server)
    body = create(server, ada["token"], name="ci", expiresIn=7 * 86400, metadata={"team": "x"},
                  permissions={"events": ["read", "write"]})
    key = body.pop("key")
    assert key.startswith("brain_") and len(key) == len("brain_") + 64 and key[6:].isalpha()
    assert body["start"] == key[:10] and body["prefix"] == "brain_" and body["name"] == "ci"
    assert body["referenceId"] == ada["user"]["id"] and body["enabled"] is True
    assert body["metadata"] == {"team": "x"} and body["permissions"] == {"events": ["read", "write"]}
    assert body["expiresAt"] > body["createdAt"]
    assert body["rateLimitEnabled"] is False and body["remaining"] is None and body["requestCount"] == 0
    db = sqlite3.connect(server.data_dir / "auth.db")
    try:
        stored = db.execute("SELECT key_hash FROM api_key WHERE id = ?", (body["id"],)).fetchone()[0]
        dump = "\n".join(db.iterdump())
    finally:
        db.close()
    assert stored == base64.urlsafe_b64encode(hashlib.sha256(key.encode()).digest()).rstrip(b"=").decode()
    assert key not in dump and key[10:] not in dump
    # get/list never show the key again.
    r = requests.get(f"{server.auth_url}/api/auth/api-key/get", params={"id": body["id"]}, headers=bearer(ada["token"]),
                     timeout=10)
    assert r.status_code == 200 and "key" not in r.json() and r.json()["id"] == body["id"]
    listed = requests.get(f"{server.auth_url}/api/auth/api-key/list", headers=bearer(ada["token"]), timeout=10).json()
    assert listed["total"] == 1 and "key" not in listed["apiKeys"][0] and set(listed) == {"apiKeys", "total"}


def test_create_without_permissions_gets_every_scope_and_a_custom_prefix(server: BrainServer) -> None:
    ada = account(server)
    body = create(server, ada["token"], prefix="ci-bot_")
    assert body["key"].startswith("ci-bot_") and body["expiresAt"] is None
    assert body["permissions"] == {"events": ["read", "write"], "mail": ["read"], "search": ["read"]}
    # Only x-api-key takes a key of another prefix: as a Bearer value it is not told from a bad JWT.
    assert api(server, "GET", "/me", body["key"]).status_code == 200
    r = api(server, "GET", "/me", body["key"], header="authorization")
    assert r.status_code == 401 and r.json()["code"] == "INVALID_TOKEN"


@pytest.mark.parametrize(("body", "status", "code"), [
    ({"remaining": 10}, 400, "SERVER_ONLY_PROPERTY"),
    ({"rateLimitMax": 10}, 400, "SERVER_ONLY_PROPERTY"),
    ({"refillAmount": 1, "refillInterval": 1000}, 400, "SERVER_ONLY_PROPERTY"),
    ({"userId": "someone-else"}, 401, "UNAUTHORIZED_SESSION"),
    ({"name": "x" * 33}, 400, "INVALID_NAME_LENGTH"),
    ({"name": "a\nb"}, 400, "VALIDATION_ERROR"),
    ({"prefix": "bad prefix"}, 400, "VALIDATION_ERROR"),
    ({"prefix": "p" * 33}, 400, "INVALID_PREFIX_LENGTH"),
    ({"expiresIn": 60}, 400, "EXPIRES_IN_IS_TOO_SMALL"),
    ({"expiresIn": 400 * 86400}, 400, "EXPIRES_IN_IS_TOO_LARGE"),
    ({"expiresIn": "soon"}, 400, "VALIDATION_ERROR"),
    ({"metadata": "text"}, 400, "INVALID_METADATA_TYPE"),
    ({"metadata": {"x": "y" * 5000}}, 400, "VALIDATION_ERROR"),
    ({"permissions": {"events": ["delete"]}}, 400, "VALIDATION_ERROR"),
    ({"permissions": {"admin": ["read"]}}, 400, "VALIDATION_ERROR"),
    ({"permissions": ["events:read"]}, 400, "VALIDATION_ERROR"),
    ([], 400, "VALIDATION_ERROR"),
])
def test_create_refuses_what_better_auth_refuses_naming_it(server: BrainServer, body: Any, status: int, code: str) -> None:
    ada = account(server)
    r = auth_post(server, "api-key/create", ada["token"], body)
    assert r.status_code == status and r.json()["code"] == code, r.text
    if code == "VALIDATION_ERROR" and isinstance(body, dict):
        assert any(field in r.json()["message"] for field in body)


def test_key_endpoints_need_a_session_and_act_on_own_keys_only(server: BrainServer) -> None:
    ada, bob = account(server), account(server)
    key = create(server, ada["token"], name="mine")
    assert auth_post(server, "api-key/create", None, {}).json()["code"] == "UNAUTHORIZED_SESSION"
    assert requests.get(f"{server.auth_url}/api/auth/api-key/list", timeout=10).status_code == 401
    # An API key is not a session on the auth role.
    r = requests.get(f"{server.auth_url}/api/auth/api-key/list", headers={"x-api-key": key["key"]}, timeout=10)
    assert r.status_code == 401
    r = requests.get(f"{server.auth_url}/api/auth/api-key/get", params={"id": key["id"]}, headers=bearer(bob["token"]),
                     timeout=10)
    assert r.status_code == 404 and r.json()["code"] == "KEY_NOT_FOUND"
    for path, body in (("api-key/update", {"keyId": key["id"], "enabled": True}), ("api-key/delete", {"keyId": key["id"]})):
        r = auth_post(server, path, bob["token"], body)
        assert r.status_code == 404 and r.json()["code"] == "KEY_NOT_FOUND", path
    assert requests.get(f"{server.auth_url}/api/auth/api-key/list", headers=bearer(bob["token"]), timeout=10).json() == {
        "apiKeys": [], "total": 0}
    assert api(server, "GET", "/me", key["key"]).status_code == 200


def test_list_pages_and_sorts(server: BrainServer) -> None:
    ada = account(server)
    for name in ("b", "c", "a"):
        create(server, ada["token"], name=name)
    url = f"{server.auth_url}/api/auth/api-key/list"
    r = requests.get(url, params={"sortBy": "name", "sortDirection": "desc", "limit": 2, "offset": 0},
                     headers=bearer(ada["token"]), timeout=10).json()
    assert [k["name"] for k in r["apiKeys"]] == ["c", "b"] and r["total"] == 3 and r["limit"] == 2 and r["offset"] == 0
    for params in ({"limit": "-1"}, {"sortBy": "key"}, {"sortDirection": "up"}):
        assert requests.get(url, params=params, headers=bearer(ada["token"]), timeout=10).status_code == 400


def test_update_changes_a_key_and_refuses_empty_updates(server: BrainServer) -> None:
    ada = account(server)
    key = create(server, ada["token"], name="old")
    r = auth_post(server, "api-key/update", ada["token"], {"keyId": key["id"], "name": "new", "expiresIn": 2 * 86400,
                                                            "metadata": {"v": 2}})
    assert r.status_code == 200 and r.json()["name"] == "new" and r.json()["metadata"] == {"v": 2}
    assert r.json()["expiresAt"] is not None and "key" not in r.json()
    r = auth_post(server, "api-key/update", ada["token"], {"keyId": key["id"], "expiresIn": None})
    assert r.status_code == 200 and r.json()["expiresAt"] is None
    r = auth_post(server, "api-key/update", ada["token"], {"keyId": key["id"]})
    assert r.status_code == 400 and r.json()["code"] == "NO_VALUES_TO_UPDATE"
    r = auth_post(server, "api-key/update", ada["token"], {"keyId": key["id"], "remaining": 3})
    assert r.status_code == 400 and r.json()["code"] == "SERVER_ONLY_PROPERTY"
    r = auth_post(server, "api-key/update", ada["token"], {"name": "x"})
    assert r.status_code == 400 and "keyId" in r.json()["message"]


def test_too_many_keys_per_user(make_server) -> None:  # type: ignore[no-untyped-def]
    server = make_server(config={"auth": {**NO_LIMITS, "api_keys_per_user": 2}}).start()
    ada = account(server)
    create(server, ada["token"])
    create(server, ada["token"])
    r = auth_post(server, "api-key/create", ada["token"], {})
    assert r.status_code == 400 and r.json()["code"] == "TOO_MANY_API_KEYS"


def test_verify_answers_better_auths_verdict(server: BrainServer) -> None:
    ada = account(server)
    key = create(server, ada["token"], permissions={"events": ["read"]})
    r = auth_post(server, "api-key/verify", None, {"key": key["key"]})
    assert r.json()["valid"] is True and r.json()["key"]["id"] == key["id"] and r.json()["user"]["id"] == ada["user"]["id"]
    assert "key" not in r.json()["key"]
    r = auth_post(server, "api-key/verify", None, {"key": key["key"], "permissions": {"events": ["write"]}})
    assert r.json() == {"valid": False, "error": {"message": "API Key not found", "code": "KEY_NOT_FOUND"}, "key": None}
    assert auth_post(server, "api-key/verify", None, {"key": "brain_nope"}).json()["error"]["code"] == "INVALID_API_KEY"
    auth_post(server, "api-key/update", ada["token"], {"keyId": key["id"], "enabled": False})
    assert auth_post(server, "api-key/verify", None, {"key": key["key"]}).json()["error"]["code"] == "KEY_DISABLED"


# --- the API role ---------------------------------------------------------------------------------------


def test_the_api_takes_a_key_as_x_api_key_or_bearer_and_me_says_so(server: BrainServer) -> None:
    ada = account(server)
    key = create(server, ada["token"], name="both", permissions={"events": ["read"]})
    for header in ("x-api-key", "authorization"):
        r = api(server, "GET", "/me", key["key"], header=header)
        assert r.status_code == 200, r.text
        assert r.json()["id"] == ada["user"]["id"] and r.json()["email"] == ada["user"]["email"]
        assert r.json()["auth"] == {"method": "api_key", "keyId": key["id"], "scopes": ["events:read"]}
    r = requests.get(f"{server.api_url}/me", headers=bearer(ada["jwt"]), timeout=10)
    assert r.json()["auth"] == {"method": "jwt"}


def test_scopes_cannot_be_exceeded(server: BrainServer) -> None:
    ada = account(server)
    reader = create(server, ada["token"], permissions={"events": ["read"]})["key"]
    writer = create(server, ada["token"], permissions={"events": ["write"]})["key"]
    mail = create(server, ada["token"], permissions={"mail": ["read"]})["key"]
    full = create(server, ada["token"])["key"]
    cases = [
        ("GET", "/events", {reader, full}),
        ("POST", "/events", {writer, full}),
        ("GET", "/mail/status", {mail, full}),
        ("POST", "/mail/connect", set()),  # takes no keys at all
        ("POST", "/mail/disconnect", set()),
    ]
    for method, path, allowed in cases:
        for key in (reader, writer, mail, full):
            body = NOTE if path == "/events" else {"provider": "gmail", "account": "x"}
            r = api(server, method, path, key, json=body if method == "POST" else None)
            if key in allowed:
                assert r.status_code in (200, 201), (method, path, r.text)
            else:
                assert r.status_code == 403 and r.json()["code"] == "INSUFFICIENT_SCOPE", (method, path, r.text)
                assert r.headers["WWW-Authenticate"].startswith('Bearer error="insufficient_scope"')
    # A refused write stored nothing; the allowed ones did.
    events = api(server, "GET", "/events", reader).json()["events"]
    assert len(events) == 2


def test_bad_keys_are_401_like_bad_tokens(server: BrainServer) -> None:
    for value in ("brain_" + "A" * 64, "short", "brain_" + "\u00e9" * 60, "x" * 5000, ""):
        r = requests.get(f"{server.api_url}/me", headers={"x-api-key": value.encode("utf-8")}, timeout=10)
        assert r.status_code == 401 and r.headers["WWW-Authenticate"].startswith('Bearer error="invalid_token"'), value
        assert r.json()["code"] in ("INVALID_API_KEY", "INVALID_TOKEN")


def test_revocation_is_immediate_even_for_a_cached_key(server: BrainServer) -> None:
    ada = account(server)
    gone, disabled, narrowed = (create(server, ada["token"]) for _ in range(3))
    for key in (gone, disabled, narrowed):  # in the API role's cache now
        assert api(server, "GET", "/me", key["key"]).status_code == 200
        assert api(server, "POST", "/events", key["key"], json=NOTE).status_code == 201
    assert auth_post(server, "api-key/delete", ada["token"], {"keyId": gone["id"]}).json() == {"success": True}
    r = api(server, "GET", "/me", gone["key"])
    assert r.status_code == 401 and r.json()["code"] == "INVALID_API_KEY"
    auth_post(server, "api-key/update", ada["token"], {"keyId": disabled["id"], "enabled": False})
    r = api(server, "GET", "/me", disabled["key"])
    assert r.status_code == 401 and r.json()["code"] == "KEY_DISABLED"
    auth_post(server, "api-key/update", ada["token"], {"keyId": disabled["id"], "enabled": True})
    assert api(server, "GET", "/me", disabled["key"]).status_code == 200
    auth_post(server, "api-key/update", ada["token"], {"keyId": narrowed["id"], "permissions": {"events": ["read"]}})
    assert api(server, "POST", "/events", narrowed["key"], json=NOTE).status_code == 403
    assert server.health(timeout=10)["api_keys"]["revocations"] >= 3


def test_an_expired_key_is_refused(make_server) -> None:  # type: ignore[no-untyped-def]
    server = make_server(config={"auth": {**NO_LIMITS, "api_key_min_expires_days": 0.00001}}).start()
    ada = account(server)
    key = create(server, ada["token"], expiresIn=2)
    assert api(server, "GET", "/me", key["key"]).status_code == 200
    time.sleep(2.2)
    r = api(server, "GET", "/me", key["key"])
    assert r.status_code == 401 and r.json()["code"] == "KEY_EXPIRED"


def test_deleting_the_user_stops_their_keys(server: BrainServer) -> None:
    ada = account(server)
    key = create(server, ada["token"])["key"]
    assert api(server, "GET", "/me", key).status_code == 200
    r = auth_post(server, "delete-user", ada["token"], {"password": PASSWORD})
    assert r.status_code == 200, r.text
    assert api(server, "GET", "/me", key).status_code == 401


# --- roles in two processes ---------------------------------------------------------------------------------


def test_split_roles_look_keys_up_over_http_and_learn_revocations_over_nats(make_server) -> None:  # type: ignore[no-untyped-def]
    auth_port, api_port, nats_port = free_port(), free_port(), free_port()
    secret = {"BRAIN_SECRET": "one-secret-for-every-role-" + "k" * 16}  # the roles' deletions are signed with it
    auth = make_server("auth", roles="auth", auth_port=auth_port, api_port=api_port, env=secret,
                       config={"auth": NO_LIMITS, "nats": {"embedded_port": nats_port}}).start()
    # The API shares the auth role's embedded NATS, with the credential the auth role made for it.
    nats_url = embedded_nats_url(f"nats://127.0.0.1:{nats_port}", auth.data_dir)
    api_server = make_server("api", roles="api", auth_port=auth_port, api_port=api_port,
                             env={**secret, "AUTH_SERVER_URL": auth.auth_url, "NATS_URL": nats_url}).start()
    ada = account(auth)
    keep, gone = create(auth, ada["token"]), create(auth, ada["token"], permissions={"events": ["read"]})
    wait_until(lambda: api(api_server, "GET", "/me", keep["key"]).status_code == 200, timeout=20,
               what="the split API role to take the key")
    assert api(api_server, "GET", "/me", gone["key"]).json()["auth"]["scopes"] == ["events:read"]
    assert api(api_server, "POST", "/events", gone["key"], json=NOTE).status_code == 403
    # A revocation that is not signed by the issuer changes nothing.
    key_hash = base64.urlsafe_b64encode(hashlib.sha256(gone["key"].encode()).digest()).rstrip(b"=").decode()
    forged = forged_revocation(auth, key_hash)
    asyncio.run(publish(nats_url, [b"not a jwt", forged]))
    time.sleep(0.5)
    assert api(api_server, "GET", "/me", gone["key"]).status_code == 200
    # The issuer's revocation reaches it while the key is cached.
    assert auth_post(auth, "api-key/delete", ada["token"], {"keyId": gone["id"]}).status_code == 200
    wait_until(lambda: api(api_server, "GET", "/me", gone["key"]).status_code == 401, timeout=10,
               what="the split API role to refuse the deleted key")
    assert api(api_server, "GET", "/me", keep["key"]).status_code == 200
    assert "Traceback" not in api_server.log_text()


def forged_revocation(auth: BrainServer, key_hash: str) -> bytes:
    """A revocation message shaped like the issuer's, signed with a key of our own (same kid)."""
    kid = requests.get(f"{auth.auth_url}/api/auth/jwks", timeout=10).json()["keys"][0]["kid"]
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = int(time.time())
    claims = {"revoked_api_keys": [key_hash], "iss": auth.auth_url, "aud": "brain-control", "iat": now, "exp": now + 60}
    return jwt.encode(claims, private, algorithm="RS256", headers={"kid": kid}).encode()


async def publish(url: str, messages: list[bytes]) -> None:
    nc = await nats.connect(url)
    try:
        for message in messages:
            await nc.publish("brain.control.api-key-revoked", message)
        await nc.flush()
    finally:
        await nc.close()


def test_me_key_body_is_json(server: BrainServer) -> None:
    ada = account(server)
    key = create(server, ada["token"], name="json")
    body = api(server, "GET", "/me", key["key"]).content
    assert json.loads(body)["claims"] == {}


def test_a_lookup_overtaken_by_a_revocation_is_not_cached() -> None:
    """The race the epoch closes: the directory answered before the key was revoked, the answer
    arrives after the revocation; caching it would bring the revoked key back until the TTL."""
    from brain.api.api_keys import ApiKeyVerifier, InvalidApiKey
    from brain.apikeys import KeyRecord, hash_key

    key = "brain_" + "k" * 64

    class SlowDirectory:
        def __init__(self) -> None:
            self.asked, self.release = asyncio.Event(), asyncio.Event()
            self.enabled = True

        async def find(self, presented: str) -> KeyRecord | None:
            enabled = self.enabled  # read before the revocation...
            self.asked.set()
            await self.release.wait()  # ...answered after it
            return KeyRecord(id="k1", user_id="u" * 32, scopes=frozenset({"events:read"}), enabled=enabled)

    async def scenario() -> None:
        directory = SlowDirectory()
        tokens = SimpleNamespace(revoked=frozenset())  # no deleted users
        verifier = ApiKeyVerifier(lambda: directory, tokens, cache_size=10, cache_seconds=300)  # type: ignore[arg-type]
        first = asyncio.ensure_future(verifier.authenticate(key))
        await directory.asked.wait()
        directory.enabled = False
        verifier.drop([hash_key(key)])  # the revocation arrives while the lookup is under way
        directory.release.set()
        assert (await first).id == "u" * 32  # that request was already under way: it passes
        assert verifier.cached(key) is None  # ...but its answer was not kept
        with pytest.raises(InvalidApiKey):
            await verifier.authenticate(key)  # the next request asks again and is refused

    asyncio.run(scenario())

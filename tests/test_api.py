"""The API role as a client sees it: /health, /me with a real auth-role JWT, errors as JSON."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests

from tests.support import BrainServer, wait_until
from tests.test_auth_helpers import NO_LIMITS, bearer, new_user


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrainServer]:
    s = BrainServer(tmp_path_factory.mktemp("api") / "brain", config={"auth": NO_LIMITS})
    with s:
        yield s


def test_health_reports_jwks_supervisor_nats_and_stores(server: BrainServer) -> None:
    wait_until(
        lambda: server.health()["jwks"]["loaded"],
        timeout=15, what="JWKS loaded from the local auth role",
    )
    user = new_user(server)
    assert requests.get(f"{server.api_url}/me", headers=bearer(user["jwt"]), timeout=5).status_code == 200
    requests.post(f"{server.api_url}/events", json={"type": "t", "data": 1}, headers=bearer(user["jwt"]), timeout=5)
    body = server.health()
    assert body["status"] == "ok" and body["version"] and body["uptime_seconds"] > 0
    jwks = body["jwks"]
    assert jwks["url"] == f"{server.auth_url}/api/auth/jwks"
    assert jwks["keys"] >= 1 and jwks["age_seconds"] >= 0 and jwks["last_refresh"].endswith("Z")
    assert jwks["hits"] >= 1 and jwks["fetches"] >= 1 and jwks["failures"] >= 0
    assert {"misses", "refetches", "stale", "token_cache"} <= set(jwks)
    assert jwks["token_cache"]["size"] >= 1
    assert body["supervisor"]["restarts"] >= 0
    assert body["nats"]["connected"] is True and body["nats"]["embedded"] is True
    assert body["stores"]["open"] == 1 and body["stores"]["max_open"] == 256
    wait_until(
        lambda: server.health()["nats"]["published"] == 1,
        timeout=10, what="the event on JetStream",
    )


def test_me_is_the_signed_up_user(server: BrainServer) -> None:
    user = new_user(server)
    r = requests.get(f"{server.api_url}/me", headers=bearer(user["jwt"]), timeout=5)
    assert r.status_code == 200
    me = r.json()
    assert me["id"] == user["user"]["id"] and me["email"] == user["user"]["email"] and me["name"] == user["user"]["name"]
    assert me["claims"]["aud"] == "brain" and me["claims"]["iss"] == server.auth_url
    assert r.headers["Cache-Control"] == "no-store"
    # A fresh JWT for the session (GET /api/auth/token) works the same.
    fresh = requests.get(f"{server.auth_url}/api/auth/token", headers=bearer(user["token"]), timeout=5).json()["token"]
    assert requests.get(f"{server.api_url}/me", headers=bearer(fresh), timeout=5).json()["id"] == user["user"]["id"]
    # The session token itself is not a JWT the API accepts.
    r = requests.get(f"{server.api_url}/me", headers=bearer(user["token"]), timeout=5)
    assert r.status_code == 401 and r.headers["WWW-Authenticate"].startswith('Bearer error="invalid_token"')


def test_unknown_routes_and_methods_are_json(server: BrainServer) -> None:
    r = requests.get(f"{server.api_url}/nope", timeout=5)
    assert r.status_code == 404 and r.json()["code"] == "NOT_FOUND"
    r = requests.put(f"{server.api_url}/events", timeout=5)
    assert r.status_code == 405 and r.json()["code"] == "METHOD_NOT_ALLOWED"
    r = requests.get(f"{server.api_url}/me", timeout=5)
    assert r.status_code == 401 and r.json()["code"] == "INVALID_TOKEN"

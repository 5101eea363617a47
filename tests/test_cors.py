"""CORS on the API role, over HTTP: preflights for every route, headers on every answer to a trusted origin.

The browser's side of it (a page on another origin that works because of these headers, and
fails without them) is tests/test_browser.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import requests

from brain.config import load_settings
from brain.errors import ConfigError
from tests.support import BrainServer
from tests.test_auth_helpers import NO_LIMITS, bearer, new_user

APP = "http://app.example.test:5173"
OTHER = "https://evil.example.test"
WANTED_HEADERS = {"authorization", "content-type", "idempotency-key", "last-event-id", "x-api-key", "mcp-session-id",
                  "mcp-protocol-version"}
EXPOSED_HEADERS = {"idempotent-replayed", "retry-after", "mcp-session-id", "mcp-protocol-version"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrainServer]:
    s = BrainServer(tmp_path_factory.mktemp("cors") / "brain",
                    config={"auth": {**NO_LIMITS, "trusted_origins": [APP]}, "api": {"stream_heartbeat_seconds": 1.0}})
    with s:
        yield s


def preflight(server: BrainServer, path: str, method: str, origin: str = APP, headers: str = "authorization") -> requests.Response:
    return requests.options(f"{server.api_url}{path}", timeout=10, headers={
        "Origin": origin, "Access-Control-Request-Method": method, "Access-Control-Request-Headers": headers,
    })


def listed(value: str) -> set[str]:
    return {item.strip().lower() for item in value.split(",") if item.strip()}


@pytest.mark.parametrize(("path", "method", "methods"), [
    ("/events", "POST", {"GET", "POST", "DELETE"}),
    ("/events", "GET", {"GET", "POST", "DELETE"}),
    ("/events/stream", "GET", {"GET"}),  # not DELETE /events/{id}'s, though it takes any name (a 404 here)
    ("/events/changes", "GET", {"GET"}),
    ("/events/12", "DELETE", {"GET", "DELETE"}),
    ("/search", "GET", {"GET"}),
    ("/events/stream/ticket", "POST", {"POST"}),
    ("/me", "GET", {"GET"}),
    ("/mail/status", "GET", {"GET"}),  # another plugin's route on the API listener
    ("/mail/connect", "POST", {"POST"}),
    ("/health", "GET", {"GET"}),
])
def test_preflight_of_every_route_names_its_methods_and_the_api_headers(
    server: BrainServer, path: str, method: str, methods: set[str]
) -> None:
    r = preflight(server, path, method, headers="authorization, content-type, idempotency-key, last-event-id, x-api-key")
    assert r.status_code == 204, r.text
    h = r.headers
    assert h["Access-Control-Allow-Origin"] == APP
    assert h["Access-Control-Allow-Credentials"] == "true"
    assert {m.upper() for m in listed(h["Access-Control-Allow-Methods"])} >= methods | {"OPTIONS"}
    assert not {m.upper() for m in listed(h["Access-Control-Allow-Methods"])} & ({"PUT", "DELETE", "PATCH"} - methods)
    assert listed(h["Access-Control-Allow-Headers"]) == WANTED_HEADERS
    assert int(h["Access-Control-Max-Age"]) > 0
    assert "origin" in listed(h["Vary"])


def test_preflight_refusals(server: BrainServer) -> None:
    r = preflight(server, "/events", "POST", origin=OTHER)
    assert r.status_code == 403 and r.json()["code"] == "INVALID_ORIGIN"
    assert "Access-Control-Allow-Origin" not in r.headers
    r = preflight(server, "/no/such/route", "GET")
    assert r.status_code == 404 and r.json()["code"] == "NOT_FOUND"
    # A plain OPTIONS (no preflight) says what the path allows, and nothing about CORS.
    r = requests.options(f"{server.api_url}/events", timeout=10)
    assert r.status_code == 204 and listed(r.headers["Allow"]) >= {"get", "post", "options"}
    assert "Access-Control-Allow-Origin" not in r.headers
    # Other methods still 405, unknown paths still 404 (the preflight route takes only OPTIONS).
    assert requests.put(f"{server.api_url}/events", timeout=10).status_code == 405
    assert requests.get(f"{server.api_url}/no/such/route", timeout=10).status_code == 404


def cors_of(r: requests.Response) -> dict[str, str]:
    return {k: v for k, v in r.headers.items() if k.lower().startswith("access-control-")}


def test_answers_to_a_trusted_origin_carry_cors_headers_and_expose_what_clients_need(server: BrainServer) -> None:
    user = new_user(server)
    headers = {**bearer(user["jwt"]), "Origin": APP}
    answers: list[requests.Response] = [
        requests.get(f"{server.api_url}/me", headers=headers, timeout=10),
        requests.post(f"{server.api_url}/events", json={"type": "a.b", "data": 1}, timeout=10,
                      headers={**headers, "Idempotency-Key": "k1"}),
        requests.post(f"{server.api_url}/events", json={"type": "a.b", "data": 1}, timeout=10,
                      headers={**headers, "Idempotency-Key": "k1"}),
        requests.get(f"{server.api_url}/me", headers={"Origin": APP}, timeout=10),  # an error: 401
        requests.get(f"{server.api_url}/nope", headers={"Origin": APP}, timeout=10),  # 404
        requests.get(f"{server.api_url}/health", headers={"Origin": APP}, timeout=10),
    ]
    with requests.get(f"{server.api_url}/events/stream", headers=headers, stream=True, timeout=10) as stream:
        answers.append(stream)
    assert [r.status_code for r in answers] == [200, 201, 201, 401, 404, 200, 200]
    assert answers[2].headers["Idempotent-Replayed"] == "true"
    for r in answers:
        assert r.headers["Access-Control-Allow-Origin"] == APP, (r.url, r.headers)
        assert r.headers["Access-Control-Allow-Credentials"] == "true"
        assert listed(r.headers["Access-Control-Expose-Headers"]) == EXPOSED_HEADERS
        assert "origin" in listed(r.headers["Vary"])
    # Another origin gets none of it; a request without Origin (a server, curl) neither.
    for origin in (OTHER, None):
        r = requests.get(f"{server.api_url}/me", timeout=10, headers={**bearer(user["jwt"]), **({"Origin": origin} if origin else {})})
        assert r.status_code == 200 and not cors_of(r)


def test_a_browser_mcp_client_may_send_and_read_the_session_headers(server: BrainServer) -> None:
    user = new_user(server)
    r = preflight(server, "/mcp", "POST", headers="authorization, content-type, mcp-session-id, mcp-protocol-version")
    assert r.status_code == 204, r.text
    assert {"mcp-session-id", "mcp-protocol-version"} <= listed(r.headers["Access-Control-Allow-Headers"])
    # A page on the auth role's own origin, which /mcp also takes: it can read the session id it got.
    origin = server.auth_url
    opened = requests.post(f"{server.api_url}/mcp", timeout=10, headers={
        **bearer(user["jwt"]), "Origin": origin, "Accept": "application/json, text/event-stream",
    }, json={"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "page", "version": "0"}}})
    assert opened.status_code == 200, opened.text
    assert opened.headers["Access-Control-Allow-Origin"] == origin
    assert "mcp-session-id" in listed(opened.headers["Access-Control-Expose-Headers"])
    session = opened.headers["Mcp-Session-Id"]
    ping = requests.post(f"{server.api_url}/mcp", timeout=10, json={"jsonrpc": "2.0", "id": 2, "method": "ping"}, headers={
        **bearer(user["jwt"]), "Origin": origin, "Accept": "application/json, text/event-stream",
        "Mcp-Session-Id": session, "MCP-Protocol-Version": "2025-11-25",
    })
    assert ping.status_code == 200 and ping.json()["result"] == {}, ping.text


def start(make_server: Any, api: dict[str, Any], name: str) -> BrainServer:
    server = make_server(name, config={"auth": {**NO_LIMITS, "trusted_origins": [APP]}, "api": api})
    return server.start()


def test_cors_origins_replace_the_auth_roles_and_a_wildcard_never_goes_with_credentials(make_server: Any) -> None:
    own = start(make_server, {"cors_origins": ["https://*.example.org", OTHER]}, "own")
    r = preflight(own, "/events", "POST", origin="https://app.example.org")
    assert r.status_code == 204 and r.headers["Access-Control-Allow-Origin"] == "https://app.example.org"
    assert preflight(own, "/events", "POST", origin=OTHER).status_code == 204
    assert preflight(own, "/events", "POST", origin=APP).status_code == 403  # the auth role's is not inherited
    own.stop()

    anyone = start(make_server, {"cors_origins": ["*"]}, "any")
    user = new_user(anyone)
    for origin in (APP, OTHER, "null"):
        r = preflight(anyone, "/events", "POST", origin=origin)
        assert r.status_code == 204 and r.headers["Access-Control-Allow-Origin"] == "*"
        assert "Access-Control-Allow-Credentials" not in r.headers
        r = requests.get(f"{anyone.api_url}/me", headers={**bearer(user["jwt"]), "Origin": origin}, timeout=10)
        assert r.headers["Access-Control-Allow-Origin"] == "*" and "Access-Control-Allow-Credentials" not in r.headers
    anyone.stop()

    off = start(make_server, {"cors": False}, "off")
    r = preflight(off, "/events", "POST")
    assert r.status_code == 403 and "Access-Control-Allow-Origin" not in r.headers
    r = requests.get(f"{off.api_url}/health", headers={"Origin": APP}, timeout=10)
    assert r.status_code == 200 and "Access-Control-Allow-Origin" not in r.headers


@pytest.mark.parametrize("origin", ["app.example.com", "ftp://x.example", "https://"])
def test_a_cors_origin_that_is_no_origin_is_a_config_error(origin: str) -> None:
    with pytest.raises(ConfigError, match="api.cors_origins"):
        load_settings(environ={}, overrides={"api": {"cors_origins": [origin]}})

"""The whole hostile-token catalogue of the API issue (tests/test_jwt.py) against every protected
operation that /openapi.json describes, not only /me: each route, whatever its body, refuses
each token with 401 `invalid_token`, and the valid form of the token gets past the check on
each of them (so a refusal is the token check, not a broken request).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import requests

from tests.fakes.issuer import FakeIssuer
from tests.support import BrainServer, concrete_path
from tests.test_jwt import api_server, hostile_tokens

METHODS = {"get", "post", "put", "patch", "delete"}
BODIES = {
    ("post", "/events"): {"type": "probe.event", "data": {"n": 1}},
    ("post", "/mail/connect"): {"provider": "gmail"},
    ("post", "/mail/disconnect"): {"account": "no-such-account"},
}


@pytest.fixture(scope="module")
def issuer() -> Iterator[FakeIssuer]:
    yield from FakeIssuer.running()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, issuer: FakeIssuer) -> Iterator[BrainServer]:
    s = api_server(tmp_path_factory.mktemp("tokens"), issuer, leeway_seconds=2, max_token_bytes=4096)
    try:
        yield s
    finally:
        s.close()


def protected_operations(server: BrainServer) -> list[tuple[str, str]]:
    """(method, path) of each; a path template's parameters ({account}, {id}) get a value no one
    owns, of the parameter's type: the route must still be reached."""
    spec = requests.get(f"{server.api_url}/openapi.json", timeout=10).json()
    ops = []
    for path, item in spec["paths"].items():
        if "servers" in item:
            continue  # the auth role's sessions are not bearer JWTs
        for method, op in item.items():
            if method in METHODS and op.get("security", spec["security"]) != []:
                ops.append((method, concrete_path(path, op)))
    return ops


def call(server: BrainServer, method: str, path: str, token: str | None) -> requests.Response:
    headers: dict[str, Any] = {} if token is None else {"Authorization": f"Bearer {token}"}
    body = BODIES.get((method, path))
    # Streamed, so that an accepted GET /events/stream (which never ends) answers its status.
    response = requests.request(method.upper(), server.api_url + path, headers=headers, json=body, timeout=10,
                                stream=True)
    if response.headers.get("Content-Type", "").startswith("text/event-stream"):
        response.close()
    return response


def test_every_hostile_token_is_refused_on_every_protected_operation(server: BrainServer, issuer: FakeIssuer) -> None:
    ops = protected_operations(server)
    assert {("get", "/me"), ("post", "/events"), ("get", "/events"), ("get", "/mail/status")} <= set(ops), ops
    valid = issuer.token("mallory")
    for method, path in ops:
        r = call(server, method, path, valid)
        assert r.status_code != 401 and r.status_code < 500, (method, path, r.status_code, r.text)
    failures = []
    for name, (token, _reason) in hostile_tokens(issuer).items():
        for method, path in ops:
            r = call(server, method, path, token)
            challenge = r.headers.get("WWW-Authenticate", "")
            if r.status_code != 401 or not challenge.startswith('Bearer error="invalid_token"'):
                failures.append(f"{name}: {method.upper()} {path} -> {r.status_code} {r.text[:120]}")
    assert not failures, "\n".join(failures[:30])
    # Nothing a refused token named was stored: only the valid probe's own directory exists.
    users = server.data_dir / "users"
    assert sorted(p.name for p in users.iterdir()) == ["mallory"]

"""/openapi.json stays true: it describes exactly the routes both roles' real routers serve."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import requests

from brain.api.openapi import INFO
from brain.config import load_settings
from brain.agents.openapi import rpc_codes
from brain.api.api_keys import REFUSALS as API_KEY_REFUSALS
from brain.openapi import TOKEN_CODES, build_spec, error_codes
from brain.routes import Route
from brain.runtime import Runtime
from tests.support import BrainServer, concrete_path

METHODS = {"get", "post", "put", "patch", "delete"}


def real_routes(tmp_path: Path) -> tuple[dict[str, set[tuple[str, str]]], dict[str, Any]]:
    """(method, path) of every route of each role, from the apps `brain serve` would run; the spec."""
    settings = load_settings(environ={}, overrides={"server": {"data_dir": str(tmp_path / "data")}})
    rt = Runtime(settings)
    routes: dict[str, set[tuple[str, str]]] = {}
    for role in ("auth", "api"):
        app = rt.make_app(role)
        routes[role] = {
            (route.method, route.resource.canonical)
            for route in app.router.routes()
            if route.method not in ("HEAD", "OPTIONS", "*") and route.resource is not None
        }
    return routes, build_spec(INFO, rt.listeners.values(), {name: rt.routes(name) for name in rt.listeners}, "api")


def described(spec: dict[str, Any], *, auth: bool) -> set[tuple[str, str]]:
    return {
        (method.upper(), path)
        for path, item in spec["paths"].items()
        if ("servers" in item) == auth
        for method in item
        if method in METHODS
    }


def test_spec_describes_exactly_the_routes_of_both_roles(tmp_path: Path) -> None:
    routes, spec = real_routes(tmp_path)
    assert routes["api"] == described(spec, auth=False), "API routes and /openapi.json differ"
    assert routes["auth"] == described(spec, auth=True), "auth routes and /openapi.json differ"
    # The auth role's paths name the auth server; everything else is served by the API role.
    assert all(item["servers"][0]["description"] == "auth role" for p, item in spec["paths"].items() if "servers" in item)


def test_spec_is_well_formed(tmp_path: Path) -> None:
    _, spec = real_routes(tmp_path)
    assert spec["openapi"].startswith("3.1")
    assert spec["components"]["securitySchemes"]["bearerAuth"] == {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
    assert spec["security"] == [{"bearerAuth": []}]
    operation_ids = []

    def walk(node: Any, where: str) -> None:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if ref is not None:
                assert ref.startswith("#/"), where
                target: Any = spec
                for part in ref[2:].split("/"):
                    assert part in target, f"{where}: dangling $ref {ref}"
                    target = target[part]
            for key, value in node.items():
                walk(value, f"{where}/{key}")
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, f"{where}[{i}]")

    walk(spec, "#")
    for path, item in spec["paths"].items():
        for method, op in item.items():
            if method not in METHODS:
                continue
            operation_ids.append(op["operationId"])
            assert op.get("responses"), f"{method} {path} has no responses"
            for scheme in op.get("security", spec["security"]):
                assert set(scheme) <= set(spec["components"]["securitySchemes"]), (path, scheme)
    assert len(operation_ids) == len(set(operation_ids)), "duplicate operationId"


def test_every_json_error_of_both_roles_states_its_codes(tmp_path: Path) -> None:
    """Each error answer of an operation of either role names the `code` values it carries (schemathesis, in
    tests/test_openapi_contract.py and tests/test_openapi_contract_auth.py, then holds the live server to
    them). /mcp's own refusals are JSON-RPC errors: they state their JSON-RPC error codes instead."""
    _, spec = real_routes(tmp_path)
    unstated = []
    for path, item in spec["paths"].items():
        for method, op in item.items():
            for status, response in op.get("responses", {}).items() if method in METHODS else ():
                content = response.get("content", {})
                stated = error_codes(response) is not None or rpc_codes(response) is not None
                if status[0] in "45" and list(content) == ["application/json"] and not stated:
                    unstated.append(f"{method.upper()} {path} {status}")
    assert unstated == []
    # The guard's refusals of API keys are among the codes every such operation states.
    assert set(API_KEY_REFUSALS) <= set(TOKEN_CODES)


def test_every_api_operation_declares_what_its_guard_may_answer(tmp_path: Path) -> None:
    """The API listener's guard answers before the route's handler does (brain.api.routes.guard): the
    address's rate limit on every route; behind a token, a refused token, an API key the route does not
    take, the user's rate limit, signing keys not loaded yet. Every operation declares those answers."""
    settings = load_settings(environ={}, overrides={"server": {"data_dir": str(tmp_path / "data")}})
    rt = Runtime(settings)
    spec = build_spec(INFO, rt.listeners.values(), {name: rt.routes(name) for name in rt.listeners}, "api")
    undeclared = []
    for route in rt.routes("api"):
        if not isinstance(route, Route) or route.operation is None:
            continue
        operation = spec["paths"][route.path][route.method.lower()]
        expected = {"429": "RATE_LIMITED"}
        if not route.public:
            expected.update({"401": "INVALID_TOKEN", "503": "SERVICE_UNAVAILABLE"})
            if "x-api-key-scope" not in operation:
                expected["403"] = "INSUFFICIENT_SCOPE"
        for status, code in expected.items():
            response = operation["responses"].get(status)
            codes = None if response is None else error_codes(response)
            if response is None or code not in (codes or ()):
                undeclared.append(f"{route.method} {route.path} {status} {code}")
    assert undeclared == []


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    s = BrainServer(tmp_path_factory.mktemp("openapi") / "brain").start()
    try:
        yield s
    finally:
        s.close()


def test_openapi_json_is_served_without_a_token(server: BrainServer) -> None:
    r = requests.get(f"{server.api_url}/openapi.json", timeout=5)
    assert r.status_code == 200
    spec = r.json()
    assert spec["servers"][0]["url"] == server.api_url
    assert spec["paths"]["/api/auth/sign-up/email"]["servers"][0]["url"] == server.auth_url


def test_no_described_api_operation_skips_the_token(server: BrainServer) -> None:
    spec = requests.get(f"{server.api_url}/openapi.json", timeout=5).json()
    checked = 0
    for path, item in spec["paths"].items():
        if "servers" in item:
            continue  # auth role: sessions, not bearer JWTs
        for method, op in item.items():
            if method not in METHODS:
                continue
            public = op.get("security", spec["security"]) == []
            url = server.api_url + concrete_path(path, op)
            r = requests.request(method.upper(), url, json={}, timeout=5)
            if public:
                assert r.status_code != 401, (method, path)
            else:
                assert r.status_code == 401, (method, path, r.status_code)
                assert r.headers["WWW-Authenticate"].startswith('Bearer error="invalid_token"')
                checked += 1
    assert checked >= 3


def test_api_routes_are_all_guarded_and_a_bypass_is_refused(tmp_path: Path) -> None:
    """No middleware on the API app: every route must carry the token guard, or it won't start."""
    from aiohttp import web

    from brain.api import routes
    from brain.web import GUARDED_ATTR

    settings = load_settings(environ={}, overrides={"server": {"data_dir": str(tmp_path / "data")}})
    app = Runtime(settings).make_app("api")
    assert not app.middlewares
    assert all(getattr(route.handler, GUARDED_ATTR, False) for route in app.router.routes())

    async def sneaky(_request: web.Request) -> web.Response:
        return web.Response(text="no token needed")

    bare = web.Application()
    bare.router.add_get("/sneaky", sneaky)
    with pytest.raises(RuntimeError, match="without the token guard"):
        routes.finish_routes(bare)

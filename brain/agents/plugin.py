"""Everything the MCP door adds to a process, through the core's hooks: `/mcp` on the API
listener (behind its guard: a JWT, or an API key of any scope, the tools then checking theirs)
and the OAuth protected-resource document that tells spec-following clients where to sign in.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from brain.agents import openapi
from brain.agents.tools import Toolbox
from brain.agents.transport import McpEndpoint, SessionIds
from brain.apikeys import SCOPES, scope
from brain.contracts import EVENT_ACCESS, MAIL_ACCOUNTS
from brain.plugins import hookimpl
from brain.process import Process
from brain.routes import Route, current_user
from brain.stash import StashKey
from brain.web import json_response

LISTENER = "api"
PATH = "/mcp"
# RFC 9728: the document of the resource https://host/mcp is at /.well-known/oauth-protected-resource/mcp;
# clients that find no pointer to it try the root document too.
METADATA_PATHS = ("/.well-known/oauth-protected-resource", f"/.well-known/oauth-protected-resource{PATH}")
_ENDPOINT: StashKey[McpEndpoint] = StashKey("brain.agents.endpoint")


def endpoint(rt: Process) -> McpEndpoint:
    """The process's /mcp endpoint (made on first use, once every plugin offered its doors)."""

    def build() -> McpEndpoint:
        settings = rt.settings
        return McpEndpoint(
            sessions=SessionIds(rt.secret, settings.mcp.session_seconds),
            toolbox=Toolbox(*_described(rt)),
            events=rt.stash.get(EVENT_ACCESS),
            mail=rt.stash.get(MAIL_ACCOUNTS),
            max_result_chars=settings.mcp.max_result_chars,
            allowed_origins=frozenset(_origin(url) for url in (settings.api_public_url, settings.auth_public_url)),
        )

    return rt.stash.setdefault(_ENDPOINT, build)


@hookimpl
def register_routes(rt: Process, listener: str, register: Callable[[Route], None]) -> None:
    """POST, GET and DELETE /mcp, and the protected-resource document, on the API listener."""
    if listener != LISTENER or not rt.settings.mcp.enabled:
        return

    @scope(None)
    async def post(request: web.Request) -> web.Response:
        return await endpoint(rt).post(request, current_user(request))

    @scope(None)
    async def delete(request: web.Request) -> web.Response:
        return await endpoint(rt).delete(request, current_user(request))

    @scope(None)
    async def get(_request: web.Request) -> web.Response:
        raise web.HTTPMethodNotAllowed("GET", ["POST", "DELETE"])

    async def resource_metadata(_request: web.Request) -> web.Response:
        settings = rt.settings
        return json_response({
            "resource": settings.api_public_url + PATH,
            "authorization_servers": [settings.auth_public_url],
            "bearer_methods_supported": ["header"],
            "scopes_supported": list(SCOPES),
            "resource_name": "brain",
        })

    components = {"schemas": openapi.SCHEMAS}
    register(Route("POST", PATH, post, openapi.POST_MCP, components=components))
    register(Route("DELETE", PATH, delete, openapi.DELETE_MCP, components=components))
    register(Route("GET", PATH, get, openapi.GET_MCP))
    for path in METADATA_PATHS:
        register(Route("GET", path, resource_metadata, {**openapi.RESOURCE_METADATA,
                                                         "operationId": _operation_id(path)}, public=True))


def _described(rt: Process) -> tuple[dict[str, Any], dict[str, Any]]:
    """The API listener's OpenAPI operations by operationId, and the schemas they refer to: what the
    REST routes say they take, which the tools that mirror them take too."""
    operations: dict[str, Any] = {}
    schemas: dict[str, Any] = {}
    for entry in rt.routes(LISTENER):
        schemas.update(entry.components.get("schemas", {}))
        if isinstance(entry, Route) and entry.operation is not None:
            operations[entry.operation["operationId"]] = entry.operation
    return operations, schemas


def _operation_id(path: str) -> str:
    return "oauthProtectedResource" + ("Mcp" if path.endswith(PATH) else "")


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


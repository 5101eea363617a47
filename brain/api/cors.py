"""CORS on the API listener: browser apps on trusted origins may call every route.

Which origins: `api.cors_origins` (exact origins or `https://*.example.com` patterns), by
default the auth role's trusted origins (its public URL and `auth.trusted_origins`), so an app
that may sign in may also call the API. `"*"` allows any origin; the API's credentials are
bearer tokens a page must hold itself (no cookies), so that is safe, and it is answered with
`Access-Control-Allow-Origin: *` and never with credentials. A listed origin is echoed with
`Access-Control-Allow-Credentials: true` and `Vary: Origin`.

Every response to an allowed `Origin` carries the CORS headers (an `on_response_prepare`
signal: JSON answers, errors and event streams alike), exposing `Idempotent-Replayed`,
`Retry-After` and MCP's `Mcp-Session-Id` and `MCP-Protocol-Version` to the page. A preflight
(`OPTIONS` with `Access-Control-Request-Method`) to any route is answered by one catch-all
route: 204 with the path's methods and the request headers the API reads (`Authorization`,
`Content-Type`, `Idempotency-Key`, `Last-Event-ID`, `x-api-key`, `Mcp-Session-Id`,
`MCP-Protocol-Version`), 403 INVALID_ORIGIN for an origin not allowed, 404 for a path no route
has.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from brain.errors import Forbidden, NotFound
from brain.origins import TrustedOrigins
from brain.web import UNMATCHED_ATTR

# MCP's Streamable HTTP transport (/mcp) sends its session and version in headers of its own,
# both ways: a browser client must be allowed to send them and to read the session id back.
ALLOW_HEADERS = (
    "Authorization, Content-Type, Idempotency-Key, Last-Event-ID, x-api-key, Mcp-Session-Id, MCP-Protocol-Version"
)
EXPOSE_HEADERS = "Idempotent-Replayed, Retry-After, Mcp-Session-Id, MCP-Protocol-Version"
MAX_AGE = "600"
ANY = "*"


class Cors:
    """The API listener's CORS policy (see the module docstring)."""

    def __init__(self, origins: TrustedOrigins | None, *, any_origin: bool = False) -> None:
        self.origins = origins
        self.any_origin = any_origin
        self._resources: list[web.AbstractResource] | None = None

    @classmethod
    def from_settings(cls, settings: Any) -> Cors:
        """From `api.cors` and `api.cors_origins` (empty: the auth role's trusted origins)."""
        api = settings.api
        if not api.cors:
            return cls(None)
        if ANY in api.cors_origins:
            return cls(None, any_origin=True)
        if api.cors_origins:
            return cls(TrustedOrigins("", api.cors_origins))
        auth = settings.sections.get("auth")
        return cls(TrustedOrigins(settings.auth_public_url, auth.trusted_origins if auth is not None else ()))

    def allows(self, origin: str) -> bool:
        """Whether a page of this origin may call the API."""
        return self.any_origin or (self.origins is not None and origin in self.origins)

    async def add_headers(self, request: web.Request, response: web.StreamResponse) -> None:
        """`on_response_prepare`: the CORS headers of a response to an allowed origin."""
        origin = request.headers.get("Origin")
        if origin is None:
            return
        headers = response.headers
        if self.any_origin:
            headers["Access-Control-Allow-Origin"] = ANY
        else:
            headers.add("Vary", "Origin")
            if self.origins is None or origin not in self.origins:
                return
            headers["Access-Control-Allow-Origin"] = origin
            headers["Access-Control-Allow-Credentials"] = "true"
        headers["Access-Control-Expose-Headers"] = EXPOSE_HEADERS

    def preflight_handler(self, app: web.Application) -> Any:
        """The OPTIONS catch-all of `app` (marked so the JSON 404/405 catch-all ignores it)."""

        async def preflight(request: web.Request) -> web.Response:
            methods = await self._methods(app, request)
            if not methods:
                raise NotFound("no route has this path")
            allow = ", ".join(sorted(methods | {"OPTIONS"}))
            headers = {"Allow": allow}
            origin = request.headers.get("Origin")
            if origin is not None and "Access-Control-Request-Method" in request.headers:
                if not self.allows(origin):
                    raise Forbidden(f"origin {origin[:100]!r} may not call this API (api.cors_origins)",
                                    code="INVALID_ORIGIN")
                headers["Access-Control-Allow-Methods"] = allow
                headers["Access-Control-Allow-Headers"] = ALLOW_HEADERS
                headers["Access-Control-Max-Age"] = MAX_AGE
            return web.Response(status=204, headers=headers)

        setattr(preflight, UNMATCHED_ATTR, True)
        return preflight

    async def _methods(self, app: web.Application, request: web.Request) -> set[str]:
        """The methods the routes of the request's path answer (the catch-alls aside).

        A path with routes of its own (/events/stream) lists theirs only, not those of a pattern
        it also matches (DELETE /events/{id}, which answers it with a 404).
        """
        resources = self._resources
        if resources is None:
            # The router is frozen once the app serves: read its routes once.
            resources = self._resources = [
                resource for resource in app.router.resources()
                if not all(getattr(route.handler, UNMATCHED_ATTR, False) for route in resource)
            ]
        methods: set[str] = set()
        own: set[str] = set()
        for resource in resources:
            allowed = (await resource.resolve(request))[1]
            if isinstance(resource, web.PlainResource):
                own |= allowed
            else:
                methods |= allowed
        return own or methods

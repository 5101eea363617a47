"""Trusted origins on the auth role: CORS for browsers, and Better Auth's refusal of untrusted origins.

The server's own origins (its public URL, and the API role's, where the console is served) are
always trusted, plus `auth.trusted_origins`
(exact origins, or `https://*.example.com` for subdomains; matched by the core's
`brain.origins.TrustedOrigins`, which also checks callback URLs). A state-changing request whose
`Origin` is not trusted gets 403 INVALID_ORIGIN; one that carries a cookie but no Origin (or
Referer) gets 403 MISSING_OR_NULL_ORIGIN, as Better Auth does. Requests without cookies and
without an Origin — servers, CLIs, Better Auth's client in Node — pass.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, MutableMapping

from aiohttp import web

from brain.errors import Forbidden, HTTPError
from brain.openapi import with_error
from brain.origins import TrustedOrigins
from brain.routes import Route
from brain.web import Handler

__all__ = ["invalid_origin", "make_origin_middleware", "with_origin_check"]

_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
EXPOSED_HEADERS = "set-auth-jwt, set-auth-token"
_PREFLIGHT_MAX_AGE = "600"


def with_origin_check(route: Route) -> Route:
    """The route, its operation saying that the origin middleware may refuse it (state-changing methods)."""
    if route.operation is None or route.method.upper() in _SAFE_METHODS:
        return route
    operation = with_error(route.operation, "403", "INVALID_ORIGIN, MISSING_OR_NULL_ORIGIN (a cookie without Origin)",
                           "INVALID_ORIGIN", "MISSING_OR_NULL_ORIGIN")
    return dataclasses.replace(route, operation=operation)


def invalid_origin() -> Forbidden:
    """Better Auth's refusal of an untrusted origin."""
    return Forbidden("Invalid origin", code="INVALID_ORIGIN")


def make_origin_middleware(trusted: TrustedOrigins) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
    """CORS headers for trusted origins, preflights, and the origin check on unsafe methods."""

    @web.middleware
    async def origin_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        if request.method == "OPTIONS" and origin is not None and "Access-Control-Request-Method" in request.headers:
            if origin not in trusted:
                raise invalid_origin()
            return web.Response(status=204, headers=_preflight_headers(request, origin))
        if request.method not in _SAFE_METHODS:
            _check_origin(request, origin, trusted)
        try:
            response = await handler(request)
        except (web.HTTPException, HTTPError) as exc:
            # A trusted page must be able to read error bodies too (they become JSON outside).
            if origin is not None and origin in trusted:
                _add_cors(exc.headers, origin)
            raise
        if origin is not None and origin in trusted:
            _add_cors(response.headers, origin)
        return response

    return origin_middleware


def _check_origin(request: web.Request, origin: str | None, trusted: TrustedOrigins) -> None:
    source = origin or request.headers.get("Referer")
    if source and source != "null":
        if source not in trusted:
            raise invalid_origin()
        return
    # No usable Origin: fine for a client without cookies (not a browser form), CSRF otherwise.
    if origin == "null" or request.headers.get("Cookie"):
        raise Forbidden("Missing or null Origin", code="MISSING_OR_NULL_ORIGIN")


def _add_cors(headers: MutableMapping[str, str], origin: str) -> None:
    headers["Access-Control-Allow-Origin"] = origin
    headers["Access-Control-Allow-Credentials"] = "true"
    headers["Access-Control-Expose-Headers"] = EXPOSED_HEADERS
    headers["Vary"] = "Origin"


def _preflight_headers(request: web.Request, origin: str) -> dict[str, str]:
    headers: dict[str, str] = {}
    _add_cors(headers, origin)
    headers["Access-Control-Allow-Methods"] = "GET, POST, OPTIONS"
    headers["Access-Control-Allow-Headers"] = (
        request.headers.get("Access-Control-Request-Headers") or "content-type, authorization"
    )
    headers["Access-Control-Max-Age"] = _PREFLIGHT_MAX_AGE
    return headers

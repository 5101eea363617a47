"""HTTP listeners and routes as plugins declare them (`register_listeners`, `register_routes`).

A `Listener` is one HTTP port a process may serve (the auth role's, the API role's, the metrics
listener); a `Route` is one endpoint of a listener together with its OpenAPI operation. The
runtime builds each served listener's aiohttp application from the routes registered for it,
and `/openapi.json` is built from the very same routes (`brain.openapi.build_spec`), so the
description cannot drift from what is served.

A listener may guard its routes one by one instead of using middleware (the API role checks
the bearer token in a wrapper around each handler, which costs less per request than aiohttp's
middleware chain): its `guard` wraps every handler as it is added, `current_user(request)` then
reads the checked caller, and its `finish` runs once every route is in.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web

from brain.contracts import Caller
from brain.web import Handler

if TYPE_CHECKING:
    from brain.process import Process  # the protocol is defined in terms of these declarations

__all__ = ["CALLER_KEY", "Components", "Guard", "Handler", "Listener", "Route", "current_user"]

# Wraps one route's handler: (handler, public) -> the handler the router calls.
Guard = Callable[[Handler, bool], Handler]

# Set by a listener's guard on every request it lets through to a protected route.
CALLER_KEY: web.RequestKey[Caller] = web.RequestKey("brain.caller", object)  # type: ignore[arg-type]


def current_user(request: web.Request) -> Caller:
    """The checked caller of a protected route on a guarded listener (the API role's)."""
    return request[CALLER_KEY]


@dataclass(frozen=True)
class Route:
    """One endpoint: method and path (aiohttp syntax), handler, and its OpenAPI operation.

    `operation` is the OpenAPI operation object (None: not described, e.g. a catch-all);
    `components` are the schemas and security schemes it refers to, merged into the document.
    `public` exempts it from its listener's guard (no bearer token on the API listener).
    A GET route also answers HEAD.
    """

    method: str
    path: str
    handler: Handler
    operation: Mapping[str, Any] | None = None
    public: bool = False
    components: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class Components:
    """OpenAPI components a plugin contributes to the document without a route of their own.

    `webhooks` are the requests the server itself sends to its users' URLs (OpenAPI's top-level
    `webhooks`: a name, then a path item whose operation a receiver implements).
    """

    components: Mapping[str, Mapping[str, Any]]
    webhooks: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class Listener:
    """One HTTP port a process may serve.

    `served` says whether this process binds it (its role is configured); a listener that is
    not served here is still described in /openapi.json, with its `public_url` as its server.
    Of the served, documented listeners the one with the lowest `rank` is the process's main
    one (it serves /metrics when no metrics port is set). `port_setting` names the setting
    (`section.key`) that receives the real port once a port 0 is bound.
    """

    name: str
    host: str
    port: int
    served: bool
    public_url: str = ""
    rank: int = 100
    port_setting: str | None = None
    # Builds the per-route guard for this process; None: the app gets the JSON error middleware.
    guard: Callable[[Process], Guard] | None = None
    # Runs once every route is in (e.g. a JSON catch-all, a check that nothing bypassed the guard).
    finish: Callable[[web.Application], None] | None = None
    # What the guard may answer on any route besides the route itself: the route's operation with
    # those answers added, for /openapi.json (None: the operation as the route describes it).
    describe_guard: Callable[[Route], Mapping[str, Any] | None] | None = None
    # Whether it serves TLS when the server has a certificate, and writes access log lines.
    tls: bool = True
    access_log: bool = True
    # Whether its routes are described in /openapi.json, and the security its operations
    # default to (the document's top-level `security` when it is the main listener).
    documented: bool = True
    security: tuple[Mapping[str, Any], ...] = ()
    # Whether this process can answer on it yet (the API: once it has the issuer's keys). A
    # worker (brain.workers) accepts no connection before, leaving them to the workers that
    # can; a single process has nobody to leave them to and serves at once.
    ready: Callable[[Process], bool] | None = None

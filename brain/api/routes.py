"""The API role's HTTP surface: the bearer-token guard and the /health, /me, /events routes.

Every route needs a valid bearer token unless its handler is marked `@public`; a route marked
`@scope(...)` also takes an API key holding that scope (brain.api.api_keys). The API app has
no aiohttp middleware: each route's handler is wrapped, as it is added (`brain.web.add_route`),
in a guard that checks the token and turns every failure into a JSON error, and a catch-all
route answers what no route matches with a JSON 404 or 405. A middleware layer costs every
request aiohttp's middleware machinery besides its own work: measured at 64 connections, GET
/me went from 0.77x to 0.84x the bare GET without it. Other modules adding routes to the API
app (mail, metrics) use `add_route` and read the caller with `current_user(request)`; the app
refuses to start with a route that bypassed the guard (`finish_routes`).
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

from aiohttp import hdrs, web
from multidict import CIMultiDict

from brain.apikeys import SCOPES
from brain.api.api_keys import ApiKeyVerifier, InsufficientScope
from brain.api.events import ReservedTypes, check_key, new_event
from brain.api.store import AppendRequest
from brain.api.tokens import TokenUser, TokenVerifier
from brain.errors import BadRequest, Forbidden, PayloadTooLarge
from brain.web import (
    GUARDED_ATTR,
    UNMATCHED_ATTR,
    Handler,
    add_route,
    failure_response,
    json_response,
    read_json,
    require_bearer,
)

if TYPE_CHECKING:
    from brain.api.stores import StoreManager
    from brain.runtime import Runtime

USER_KEY: web.RequestKey[TokenUser] = web.RequestKey("brain.api.user", TokenUser)
# The scope an API key needs for a route ("" any key); absent: the route takes no keys.
SCOPE_ATTR = "brain_api_key_scope"
X_API_KEY = "x-api-key"
MAX_IDEMPOTENCY_KEY = 200
_PUBLIC_ATTR = "brain_public"
# Response headers of the JSON routes, copied per response (aiohttp copies whatever it is
# given; from a CIMultiDict that is one C call, and no Content-Type to parse or set).
_JSON_NO_STORE: CIMultiDict[str] = CIMultiDict({hdrs.CONTENT_TYPE: "application/json", hdrs.CACHE_CONTROL: "no-store"})
# A '+' in an unencoded query string arrives as a space: "...T10:00:00 02:00" meant "+02:00".
_SPACED_OFFSET = re.compile(r"(.*T\d\d:\d\d(?::\d\d(?:\.\d+)?)?) (\d\d:?\d\d)")

H = TypeVar("H", bound=Callable[[web.Request], Awaitable[web.StreamResponse]])


def public(handler: H) -> H:
    """Mark a route handler as reachable without a bearer token."""
    setattr(handler, _PUBLIC_ATTR, True)
    return handler


def current_user(request: web.Request) -> TokenUser:
    """The verified caller of a protected API route."""
    return request[USER_KEY]


def scope(name: str | None) -> Callable[[H], H]:
    """Let API keys call a route: keys holding scope `name` (brain.apikeys.SCOPES), any key when None.

    A route without it takes JWTs only; JWTs are never limited by scopes.
    """
    if name is not None and name not in SCOPES:
        raise ValueError(f"unknown scope {name!r}")

    def mark(handler: H) -> H:
        setattr(handler, SCOPE_ATTR, name or "")
        return handler

    return mark


def guard(verifier: TokenVerifier, api_keys: ApiKeyVerifier) -> Callable[[Handler], Handler]:
    """Wrap a route handler: the caller's JWT or API key first (unless @public), every failure as JSON."""

    def wrap(handler: Handler) -> Handler:
        if getattr(handler, _PUBLIC_ATTR, False):

            async def guarded(request: web.Request) -> web.StreamResponse:
                try:
                    return await handler(request)
                except Exception as exc:  # noqa: BLE001 - sorted out (or re-raised) by failure_response
                    return failure_response(request, exc)

        else:
            authenticate = verifier.authenticate
            bearer_key, cached_key, look_up_key = api_keys.bearer_key, api_keys.cached, api_keys.authenticate
            takes_keys = hasattr(handler, SCOPE_ATTR)
            needed = getattr(handler, SCOPE_ATTR, "") or None

            async def guarded(request: web.Request) -> web.StreamResponse:
                try:
                    headers = request.headers
                    authorization = headers.get(hdrs.AUTHORIZATION)
                    # A JWT has dots, an API key none: the common case costs one `in` here. A
                    # JWT in Authorization wins over an x-api-key header.
                    if authorization is not None and "." in authorization:
                        key = None
                    else:
                        key = bearer_key(authorization) or headers.get(X_API_KEY)
                    if key is None:
                        request[USER_KEY] = authenticate(authorization)
                    else:
                        user = cached_key(key) or await look_up_key(key)
                        if not takes_keys or (needed is not None and needed not in user.scopes):
                            raise InsufficientScope(needed if takes_keys else None)
                        request[USER_KEY] = user
                    return await handler(request)
                except Exception as exc:  # noqa: BLE001 - sorted out (or re-raised) by failure_response
                    return failure_response(request, exc)

        functools.update_wrapper(guarded, handler)  # keeps the handler's name and marks
        setattr(guarded, GUARDED_ATTR, True)
        return guarded

    return wrap


def finish_routes(app: web.Application) -> None:
    """Add the catch-all (JSON 404/405) last; refuse a route that is not guarded."""
    unguarded = [
        f"{route.method} {route.resource.canonical if route.resource else '?'}"
        for route in app.router.routes()
        if not getattr(route.handler, GUARDED_ATTR, False)
    ]
    if unguarded:
        raise RuntimeError(f"API routes added without the token guard (use brain.web.add_route): {unguarded}")
    resources = list(app.router.resources())

    @public
    async def unmatched(request: web.Request) -> web.StreamResponse:
        # Only requests no route took come here: which methods would the path have taken?
        allowed: set[str] = set()
        for resource in resources:
            allowed |= (await resource.resolve(request))[1]
        if allowed:
            raise web.HTTPMethodNotAllowed(request.method, allowed)
        raise web.HTTPNotFound()

    setattr(unmatched, UNMATCHED_ATTR, True)
    add_route(app, "*", "/{tail:.*}", unmatched)


def add_routes(app: web.Application, rt: Runtime, verifier: TokenVerifier, stores: StoreManager) -> None:
    """Register /health, /me and /events on the API app."""
    api = rt.settings.api
    reserved = ReservedTypes.from_plugins(rt.pm)

    detail_token = rt.settings.metrics.token.encode()

    @public  # the detail needs the metrics token, not a user's JWT
    async def health(request: web.Request) -> web.Response:
        # Degraded is still 200: the process is up; `problems` names what is missing.
        detail = "detail" in request.query
        if detail:
            if not detail_token:
                raise Forbidden(
                    "health detail is served only to the bearer of the metrics token: set metrics.token "
                    "(BRAIN_METRICS__TOKEN), or read it on the metrics listener (metrics.port)",
                    code="HEALTH_DETAIL_DISABLED",
                )
            require_bearer(request, detail_token, realm="metrics")
        return json_response(rt.health(detail=detail), headers={"Cache-Control": "no-store"})

    @scope(None)
    async def me(request: web.Request) -> web.Response:
        # The guard's verified caller; its body is rendered once per cached token or key.
        return web.Response(body=request[USER_KEY].me_body(), headers=_JSON_NO_STORE)

    @scope("events:write")
    async def post_events(request: web.Request) -> web.Response:
        user = request[USER_KEY]
        body = await read_json(request)
        key = request.headers.get("Idempotency-Key")
        if key is not None:
            key = check_key(key, "Idempotency-Key")
            if len(key) > MAX_IDEMPOTENCY_KEY:
                raise BadRequest(f"Idempotency-Key: longer than {MAX_IDEMPOTENCY_KEY} characters")
            # Namespaced so an HTTP client can never claim a key that mail sync will use.
            key = f"http:{key}"
        batch = isinstance(body, list)
        if batch:
            if not body:
                raise BadRequest("body: an empty array; send at least one event")
            if len(body) > api.max_batch:
                raise PayloadTooLarge(f"body: {len(body)} events, at most {api.max_batch} per request")
            events = [
                new_event(
                    item,
                    max_bytes=api.max_event_bytes,
                    field=f"[{i}]",
                    key=None if key is None else f"{key}#{i}",
                    strict_fields=True,
                )
                for i, item in enumerate(body)
            ]
        else:
            events = [new_event(body, max_bytes=api.max_event_bytes, field="", key=key, strict_fields=True)]
        for i, event in enumerate(events):
            reserved.check(event.type, f"[{i}].type" if batch else "type")
        results = await stores.append_events(user.id, AppendRequest(events, match=key is not None))
        if batch:
            text = '{"events":[' + ",".join(ev.json() for ev, _ in results) + "]}"
        else:
            text = results[0][0].json()
        headers = CIMultiDict(_JSON_NO_STORE)
        if key is not None and all(replayed for _, replayed in results):
            headers["Idempotent-Replayed"] = "true"
        return web.Response(body=text.encode(), status=201, headers=headers)

    @scope("events:read")
    async def get_events(request: web.Request) -> web.Response:
        user = request[USER_KEY]
        params = request.query
        for name in ("type", "since", "until", "limit", "cursor"):
            if len(params.getall(name, ())) > 1:
                raise BadRequest(f"{name}: given more than once")
        limit_text = params.get("limit")
        if limit_text is None or limit_text == "":
            limit = api.events_page_default
        else:
            try:
                limit = int(limit_text)
            except ValueError:
                raise BadRequest(f"limit: must be an integer from 1 to {api.events_page_max}") from None
        query = stores.make_query(
            user.id,
            params.get("type") or None,
            _time_param(params.get("since")),
            _time_param(params.get("until")),
            limit,
            params.get("cursor") or None,
        )
        rows, next_cursor = await stores.query_events(user.id, query)
        text = (
            '{"events":['
            + ",".join(row.json() for row in rows)
            + '],"next_cursor":'
            + (json.dumps(next_cursor) if next_cursor else "null")
            + "}"
        )
        return web.Response(body=text.encode(), headers=_JSON_NO_STORE)

    add_route(app, "GET", "/health", health)
    add_route(app, "GET", "/me", me)
    add_route(app, "POST", "/events", post_events)
    add_route(app, "GET", "/events", get_events)


def _time_param(value: str | None) -> str | None:
    if not value:
        return None
    spaced = _SPACED_OFFSET.fullmatch(value)
    return f"{spaced.group(1)}+{spaced.group(2)}" if spaced else value

"""The API role's HTTP surface: the bearer-token guard and the /health, /me, /events routes.

Every route of the API listener needs a valid bearer token unless it is registered `public`; a
route marked `@brain.apikeys.scope(...)` also takes an API key holding that scope
(brain.api.api_keys), and one marked `@takes_ticket` a stream ticket (brain.api.tickets). The
guard also applies the rate limits (brain.api.limits) to every route, and on a cluster node sends
a request for a user placed on another node there (brain.api.cluster).
The API app has no aiohttp middleware: each route's handler is wrapped, as it is added
(`brain.web.add_route`), in a guard that checks the token and turns every failure into a JSON
error, and a catch-all route answers what no route matches with a JSON 404 or 405; a
middleware layer would cost every request aiohttp's middleware machinery besides its own work
(see docs/performance.md). Other plugins' routes on the API listener (mail, metrics) get the
same guard and read the caller with `brain.routes.current_user(request)`; the app refuses to
start with a route that bypassed the guard (`finish_routes`).
"""

from __future__ import annotations

import functools
import hashlib
import re
from typing import NamedTuple, cast

from aiohttp import hdrs, web
from multidict import CIMultiDict, MultiMapping

from brain.api import openapi
from brain.api.asyncapi import build_asyncapi
from brain.api.api_keys import InsufficientScope
from brain.api.cluster import cluster_node, confirmed_append
from brain.api.events import ReservedTypes, check_key, new_event
from brain.api.pages import Page
from brain.api.state import LISTENER, api_key_verifier, api_limits, event_stream, store_manager, token_verifier, write_rate
from brain.api.user_store import AppendRequest, Query
from brain.api.verifier import TokenUser
from brain.apikeys import SCOPE_ATTR, scope
from brain.errors import BadRequest, Forbidden, PayloadTooLarge
from brain.event_types import TypeFilter
from brain.health import server_health
from brain.openapi import build_spec
from brain.process import Process
from brain.routes import CALLER_KEY, Components, Guard, Route
from brain.web import (
    GUARDED_ATTR,
    UNMATCHED_ATTR,
    Handler,
    add_route,
    failure_response,
    json_response,
    not_modified,
    read_json,
    require_bearer,
)

# The guard's caller key, typed as what the API's own guard puts there.
USER_KEY = cast("web.RequestKey[TokenUser]", CALLER_KEY)
X_API_KEY = "x-api-key"
TICKET_ATTR = "brain_takes_ticket"
MAX_IDEMPOTENCY_KEY = 200
# Response headers of the JSON routes, copied per response (aiohttp copies whatever it is
# given; from a CIMultiDict that is one C call, and no Content-Type to parse or set).
_JSON_NO_STORE: CIMultiDict[str] = CIMultiDict({hdrs.CONTENT_TYPE: "application/json", hdrs.CACHE_CONTROL: "no-store"})
# Users whose last GET /events answer is remembered (a page and its body, ~30 KB each).
_ANSWERS = 256
# GET /events query strings remembered with their parsed query (a few hundred bytes each).
_QUERIES = 4096
# Event pages may be kept by the client (never by a shared cache: they answer one bearer) and
# must be revalidated with their ETag before each use.
_REVALIDATE = "private, no-cache"
# A '+' in an unencoded query string arrives as a space: "...T10:00:00 02:00" meant "+02:00".
_SPACED_OFFSET = re.compile(r"(.*T\d\d:\d\d(?::\d\d(?:\.\d+)?)?) (\d\d:?\d\d)")


def guard(rt: Process) -> Guard:
    """The API listener's guard: rate limits, the caller's JWT, API key or stream ticket (unless
    public), every failure as JSON."""
    authenticate = token_verifier(rt).authenticate
    api_keys = api_key_verifier(rt)
    bearer_key, cached_key, look_up_key = api_keys.bearer_key, api_keys.cached, api_keys.authenticate
    limits = api_limits(rt)
    check_ip = limits.check_ip if limits.ip is not None else None
    check_user = limits.check_user if limits.user is not None else None
    redeem_ticket = event_stream(rt).tickets.redeem
    cluster = cluster_node(rt)
    route_user = cluster.route if cluster is not None else None
    serve_forwarded = cluster.serve_forwarded if cluster is not None else None
    is_forwarded = cluster.forwarder.is_forwarded if cluster is not None else None

    def wrap(handler: Handler, public: bool) -> Handler:
        if public:

            async def guarded(request: web.Request) -> web.StreamResponse:
                try:
                    if check_ip is not None:
                        check_ip(request)
                    return await handler(request)
                except Exception as exc:  # noqa: BLE001 - sorted out (or re-raised) by failure_response
                    return failure_response(request, exc)

        else:
            takes_keys = hasattr(handler, SCOPE_ATTR)
            needed = getattr(handler, SCOPE_ATTR, "") or None
            takes_tickets = getattr(handler, TICKET_ATTR, False)

            async def guarded(request: web.Request) -> web.StreamResponse:
                try:
                    # A replay of a request another node forwarded here (brain.api.forwarding):
                    # that node applied the limits; it is served here, whoever holds the user now.
                    forwarded = is_forwarded is not None and is_forwarded(request)
                    if check_ip is not None and not forwarded:
                        check_ip(request)
                    headers = request.headers
                    authorization = headers.get(hdrs.AUTHORIZATION)
                    # A JWT has dots, an API key none: the common case costs one `in` here. A
                    # JWT in Authorization wins over an x-api-key header.
                    if authorization is not None and "." in authorization:
                        key = None
                    else:
                        key = bearer_key(authorization) or headers.get(X_API_KEY)
                    ticket = request.query.get("ticket") if takes_tickets else None
                    if ticket is not None and authorization is None and key is None:
                        request[USER_KEY] = redeem_ticket(ticket)
                    elif key is None:
                        request[USER_KEY] = authenticate(authorization)
                    else:
                        user = cached_key(key) or await look_up_key(key)
                        if not takes_keys or (needed is not None and needed not in user.scopes):
                            raise InsufficientScope(needed if takes_keys else None)
                        request[USER_KEY] = user
                    if ticket is not None and (authorization is not None or key is not None):
                        # After the credentials' check, so a bad token is a 401 here as on every route.
                        raise BadRequest("ticket: send either a ticket or credentials, not both")
                    if check_user is not None and not forwarded:
                        check_user(request[USER_KEY].id)
                    if route_user is not None and not forwarded:
                        answer = await route_user(request, request[USER_KEY].id, streams=takes_tickets)
                        if answer is not None:
                            return answer
                    elif serve_forwarded is not None:  # forwarded here: served here if the user is still here
                        await serve_forwarded(request[USER_KEY].id)
                    return await handler(request)
                except Exception as exc:  # noqa: BLE001 - sorted out (or re-raised) by failure_response
                    return failure_response(request, exc)

        functools.update_wrapper(guarded, handler)  # keeps the handler's name and marks
        setattr(guarded, GUARDED_ATTR, True)
        return guarded

    return wrap


def takes_ticket(handler: Handler) -> Handler:
    """Mark a route that also accepts `?ticket=` from POST /events/stream/ticket (the event stream)."""
    setattr(handler, TICKET_ATTR, True)
    return handler


def finish_routes(app: web.Application) -> None:
    """Add the catch-all (JSON 404/405) last; refuse a route that is not guarded."""
    unguarded = [
        f"{route.method} {route.resource.canonical if route.resource else '?'}"
        for route in app.router.routes()
        if not getattr(route.handler, GUARDED_ATTR, False)
    ]
    if unguarded:
        raise RuntimeError(f"API routes added without the token guard (use brain.web.add_route): {unguarded}")
    # Not the catch-alls added before this one (the CORS preflight's): they take every path.
    resources = [
        resource for resource in app.router.resources()
        if not all(getattr(route.handler, UNMATCHED_ATTR, False) for route in resource)
    ]

    async def unmatched(request: web.Request) -> web.StreamResponse:
        # Only requests no route took come here: which methods would the path have taken?
        allowed: set[str] = set()
        for resource in resources:
            allowed |= (await resource.resolve(request))[1]
        if allowed:
            raise web.HTTPMethodNotAllowed(request.method, allowed)
        raise web.HTTPNotFound()

    setattr(unmatched, UNMATCHED_ATTR, True)
    add_route(app, "*", "/{tail:.*}", unmatched, public=True)


def routes(rt: Process) -> list[Route | Components]:
    """/health, /openapi.json, /asyncapi.json, /me and /events, each with its OpenAPI operation."""
    api = rt.settings.api
    reserved = ReservedTypes.from_plugins(rt.pm)
    stores = store_manager(rt)
    rate = write_rate(rt)
    bodies: dict[str, bytes] = {}
    # On a cluster node a write is answered once its events are on the replicated stream.
    append = confirmed_append(rt) or stores.append_events

    detail_token = rt.settings.metrics.token.encode()

    async def health(request: web.Request) -> web.Response:
        # Degraded is still 200: the process is up; `problems` names what is missing. The detail
        # needs the metrics token, not a user's JWT.
        detail = "detail" in request.query
        if detail:
            if not detail_token:
                raise Forbidden(
                    "health detail is served only to the bearer of the metrics token: set metrics.token "
                    "(BRAIN_METRICS__TOKEN), or read it on the metrics listener (metrics.port)",
                    code="HEALTH_DETAIL_DISABLED",
                )
            require_bearer(request, detail_token, realm="metrics")
        body = await server_health(rt, detail=detail)
        return json_response(body, headers={"Cache-Control": "no-store"})

    def documents() -> dict[str, bytes]:
        # Built once: the routes, and so the documents, do not change while the process runs.
        if not bodies:
            spec = build_spec(openapi.INFO, rt.listeners.values(), {n: rt.routes(n) for n in rt.listeners}, LISTENER)
            bodies["openapi"] = json_response(spec).body  # type: ignore[assignment]
            bodies["asyncapi"] = json_response(build_asyncapi(spec, rt.settings.nats)).body  # type: ignore[assignment]
        return bodies

    async def openapi_json(_request: web.Request) -> web.Response:
        return web.Response(body=documents()["openapi"], content_type="application/json")

    async def asyncapi_json(_request: web.Request) -> web.Response:
        return web.Response(body=documents()["asyncapi"], content_type="application/json")

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
        rate.take(user.id, len(events))
        results = await append(user.id, AppendRequest(events, match=key is not None))
        if batch:
            text = '{"events":[' + ",".join(ev.json() for ev, _ in results) + "]}"
        else:
            text = results[0][0].json()
        headers = CIMultiDict(_JSON_NO_STORE)
        if key is not None and all(replayed for _, replayed in results):
            headers["Idempotent-Replayed"] = "true"
        return web.Response(body=text.encode(), status=201, headers=headers)

    # Each user's last answer: a page read again (polled, or kept by the store) is answered
    # without hashing it or joining its bytes again.
    answers: dict[str, _PageAnswer] = {}
    # The queries users asked lately, by their query string: a page polled is not parsed (nor its
    # cursor's MAC checked) again. Only valid ones: a bad query string is refused every time.
    queries: dict[tuple[str, str], Query] = {}

    def events_query(user_id: str, params: MultiMapping[str]) -> Query:
        """The store query of GET /events' parameters (BadRequest naming a bad one)."""
        for name in ("since", "until", "limit", "cursor"):
            if len(params.getall(name, ())) > 1:
                raise BadRequest(f"{name}: given more than once")
        types = [value for value in params.getall("type", ()) if value]
        limit_text = params.get("limit")
        if limit_text is None or limit_text == "":
            limit = api.events_page_default
        else:
            try:
                limit = int(limit_text)
            except ValueError:
                raise BadRequest(f"limit: must be an integer from 1 to {api.events_page_max}") from None
        return stores.make_query(
            user_id,
            TypeFilter.parse(types),
            _time_param(params.get("since")),
            _time_param(params.get("until")),
            limit,
            params.get("cursor") or None,
        )

    @scope("events:read")
    async def get_events(request: web.Request) -> web.Response:
        user = request[USER_KEY]
        asked = (user.id, request.rel_url.raw_query_string)
        query = queries.get(asked)
        if query is None:
            query = events_query(user.id, request.query)
            if len(queries) >= _QUERIES:
                queries.clear()
            queries[asked] = query
        page, next_cursor = await stores.query_page(user.id, query)
        answer = answers.get(user.id)
        if answer is None or answer.page is not page or answer.next_cursor != next_cursor:
            answer = _PageAnswer.of(page, next_cursor)
            if len(answers) >= _ANSWERS:
                answers.clear()
            answers[user.id] = answer
        if not_modified(request, answer.etag):
            return web.Response(status=304, headers={hdrs.ETAG: answer.etag, hdrs.CACHE_CONTROL: _REVALIDATE})
        return web.Response(body=answer.body, headers=answer.headers)

    live = event_stream(rt)

    @scope("events:read")
    @takes_ticket
    async def stream_events(request: web.Request) -> web.StreamResponse:
        return await live.serve(request, request[USER_KEY])

    @scope("events:read")
    async def stream_ticket(request: web.Request) -> web.Response:
        return json_response(live.issue_ticket(request[USER_KEY]), status=201, headers={"Cache-Control": "no-store"})

    paths = openapi.paths(api)
    components = {"schemas": openapi.SCHEMAS, "securitySchemes": openapi.SECURITY_SCHEMES}
    return [
        Route("GET", "/health", health, paths["/health"]["get"], public=True, components=components),
        Route("GET", "/openapi.json", openapi_json, paths["/openapi.json"]["get"], public=True),
        Route("GET", "/asyncapi.json", asyncapi_json, paths["/asyncapi.json"]["get"], public=True),
        Route("GET", "/me", me, paths["/me"]["get"]),
        Route("POST", "/events", post_events, paths["/events"]["post"]),
        Route("GET", "/events", get_events, paths["/events"]["get"]),
        Route("GET", "/events/stream", stream_events, paths["/events/stream"]["get"]),
        Route("POST", "/events/stream/ticket", stream_ticket, paths["/events/stream/ticket"]["post"]),
    ]


class _PageAnswer(NamedTuple):
    """What GET /events answers with a page: its ETag, body and headers."""

    page: Page
    next_cursor: str | None
    etag: str
    body: bytes
    headers: CIMultiDict[str]

    @classmethod
    def of(cls, page: Page, next_cursor: str | None) -> _PageAnswer:
        etag = _page_etag(page.digest, next_cursor)
        # The cursor is base64url and a dot: nothing in it needs escaping in a JSON string.
        tail = b'],"next_cursor":null}' if next_cursor is None else b'],"next_cursor":"' + next_cursor.encode() + b'"}'
        headers = CIMultiDict({hdrs.CONTENT_TYPE: "application/json", hdrs.CACHE_CONTROL: _REVALIDATE, hdrs.ETAG: etag})
        return cls(page, next_cursor, etag, b"".join((b'{"events":[', page.events, tail)), headers)


def _page_etag(digest: str, next_cursor: str | None) -> str:
    """A page's strong ETag: its events' digest, and the cursor it hands out (which names the user)."""
    if next_cursor is None:
        return f'"{digest}"'
    return '"' + hashlib.blake2b(f"{digest}.{next_cursor}".encode(), digest_size=12).hexdigest() + '"'


def _time_param(value: str | None) -> str | None:
    if not value:
        return None
    spaced = _SPACED_OFFSET.fullmatch(value)
    return f"{spaced.group(1)}+{spaced.group(2)}" if spaced else value

"""Retrieval routes of the API role: GET /search, single events, deletions, the changes feed, /me/stats.

Each handler validates its parameters (a 400 naming the bad one), hands the user's store one
request (brain.api.user_store) and renders the answer through `brain.api.render`. The search
query is parsed here, on the event loop, into an FTS5 expression (brain.api.query); the store
runs it. Cursors are signed for the user and the route (`CursorSigner.make_position`).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from multidict import MultiDictProxy

from brain.api import render
from brain.api.events import commit_seq, parse_time
from brain.api.query import parse
from brain.api.quotas import WriteRate
from brain.api.retrieval_openapi import MAX_ID, paths
from brain.api.search import SearchPage, SearchPosition, SearchRequest
from brain.api.settings import SearchSettings
from brain.api.store_manager import StoreManager
from brain.api.user_store import Deleted, DeleteEvents, GetEvent, StoreStats
from brain.apikeys import scope
from brain.errors import BadRequest, NotFound
from brain.event_types import TypeFilter
from brain.process import Process
from brain.routes import Route, current_user

_JSON = {"Content-Type": "application/json", "Cache-Control": "no-store"}
# Events a bulk deletion removes per transaction (other requests of the user go in between).
DELETE_CHUNK = 500
_SEARCH_CURSOR = "search"


def routes(rt: Process, stores: StoreManager, rate: WriteRate) -> list[Route]:
    """GET /search, GET /events/changes, GET and DELETE /events/{id}, DELETE /events, GET /me/stats."""
    api, search = rt.settings.api, rt.settings.search
    operations = paths(api, search)

    @scope("search")
    async def search_events(request: web.Request) -> web.Response:
        params = request.query
        _single(params, ("q", "since", "until", "limit", "cursor"))
        q = params.get("q")
        if q is None:
            raise BadRequest("q: required, the words to search for", code="INVALID_QUERY")
        page, next_cursor = await run_search(
            stores, search, current_user(request).id, q, since=_time(params, "since"), until=_time(params, "until"),
            limit=_int(params, "limit", search.page_default, 1, search.page_max), cursor=params.get("cursor") or None,
        )
        return web.Response(body=render.search_page(page.hits, next_cursor, page.partial), headers=_JSON)

    @scope("events:read")
    async def get_event(request: web.Request) -> web.Response:
        event_id = _event_id(request)
        row = await stores.request(current_user(request).id, GetEvent(event_id))
        if row is None:
            raise NotFound(f"no event {event_id}")
        return web.Response(body=render.event(row), headers=_JSON)

    @scope("events:write")
    async def delete_event(request: web.Request) -> web.Response:
        event_id = _event_id(request)
        deleted: Deleted = await stores.request(current_user(request).id, DeleteEvents(ids=(event_id,)))
        if not deleted.ids:
            raise NotFound(f"no event {event_id}")
        return web.Response(body=render.document({"deleted": 1, "ids": deleted.ids}), headers=_JSON)

    @scope("events:write")
    async def delete_events(request: web.Request) -> web.Response:
        user_id = current_user(request).id
        params = request.query
        _single(params, ("since", "until"))
        types = _types(params)
        since, until = _time(params, "since"), _time(params, "until")
        if types is None and since is None and until is None:
            raise BadRequest("type, since or until: name what to delete (all events at once is not offered)")
        total, up_to = 0, None
        while True:
            deleted: Deleted = await stores.request(
                user_id, DeleteEvents(types=types, since=since, until=until, up_to=up_to, limit=DELETE_CHUNK)
            )
            total += len(deleted.ids)
            up_to = deleted.up_to  # events written meanwhile are not what the caller meant
            if len(deleted.ids) < DELETE_CHUNK:
                break
        return web.Response(body=render.document({"deleted": total}), headers=_JSON)

    @scope("events:read")
    async def changes(request: web.Request) -> web.Response:
        params = request.query
        _single(params, ("after", "limit"))
        after = _int(params, "after", 0, 0, MAX_ID)
        limit = _int(params, "limit", api.events_page_default, 1, api.events_page_max)
        rows = await stores.changes(current_user(request).id, after, _types(params), limit + 1)
        has_more = len(rows) > limit
        rows = rows[:limit]
        next_after = commit_seq(rows[-1]) if rows else after
        return web.Response(body=render.changes_page(rows, next_after, has_more), headers=_JSON)

    @scope("events:read")
    async def stats(request: web.Request) -> web.Response:
        user_id = current_user(request).id
        figures: dict[str, Any] = await stores.request(user_id, StoreStats())
        figures["quota"] = {
            "max_bytes": api.max_user_bytes or None,
            "max_events_per_minute": api.max_events_per_minute or None,
            "events_available": rate.available(user_id),
        }
        return web.Response(body=render.document(figures), headers=_JSON)

    return [
        Route("GET", "/search", search_events, operations["/search"]["get"]),
        Route("GET", "/events/changes", changes, operations["/events/changes"]["get"]),
        # Any other /events/<name> reaches these two behind the token guard (a name that is not
        # an id is a 404: every described path asks for credentials first). A fixed path
        # (/events/changes, /events/stream) wins for its own methods whatever the order of
        # registration, as aiohttp looks up the longest literal prefix first; a DELETE there
        # comes here, and is a 405 (`_event_id`).
        Route("GET", "/events/{id}", get_event, operations["/events/{id}"]["get"]),
        Route("DELETE", "/events/{id}", delete_event, operations["/events/{id}"]["delete"]),
        Route("DELETE", "/events", delete_events, operations["/events"]["delete"]),
        Route("GET", "/me/stats", stats, operations["/me/stats"]["get"]),
    ]


async def run_search(
    stores: StoreManager, settings: SearchSettings, user_id: str, q: str, *, since: str | None, until: str | None,
    limit: int, cursor: str | None,
) -> tuple[SearchPage, str | None]:
    """One page of a search of the user's store, and the cursor of the next (GET /search, and
    the MCP door through `EventAccess.search`). Times are normalised; BadRequest names what is wrong."""
    parsed = parse(q, max_chars=settings.max_query_chars)
    digest = parsed.digest(since, until)
    position = None
    if cursor:
        position = _position(stores.cursors.read_position(user_id, _SEARCH_CURSOR, cursor), digest)
    page: SearchPage = await stores.request(user_id, SearchRequest(parsed, digest, since, until, limit, position))
    next_cursor = None
    if page.next is not None:
        next_cursor = stores.cursors.make_position(user_id, _SEARCH_CURSOR, [digest, *page.next])
    return page, next_cursor


def _single(params: MultiDictProxy[str], names: tuple[str, ...]) -> None:
    for name in names:
        if len(params.getall(name, ())) > 1:
            raise BadRequest(f"{name}: given more than once")


def _int(params: MultiDictProxy[str], name: str, default: int, low: int, high: int) -> int:
    text = params.get(name)
    if text is None or text == "":
        return default
    try:
        value = int(text)
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise BadRequest(f"{name}: must be an integer from {low} to {high}")
    return value


def _time(params: MultiDictProxy[str], name: str) -> str | None:
    text = params.get(name)
    if not text:
        return None
    return parse_time(text, name)


def _types(params: MultiDictProxy[str]) -> TypeFilter | None:
    return TypeFilter.parse([v for v in params.getall("type", ()) if v])


def _event_id(request: web.Request) -> int:
    text = request.match_info["id"]
    if not (text.isascii() and text.isdigit() and len(text) <= 19 and 1 <= int(text) <= MAX_ID):
        for resource in request.app.router.resources():
            # A fixed path (/events/stream, /events/changes) asked with a method it does not take.
            if isinstance(resource, web.PlainResource) and resource.canonical == request.path:
                raise web.HTTPMethodNotAllowed(request.method, {route.method for route in resource})
        raise NotFound("no such event: an event id is an integer from 1")
    return int(text)


def _position(fields: list[Any], digest: str) -> SearchPosition:
    """The position a search cursor holds; BadRequest if it belongs to another query."""
    if len(fields) != 1 + len(SearchPosition._fields) or fields[0] != digest:
        raise BadRequest("cursor: made for another query (q, since and until must stay the same)")
    try:
        position = SearchPosition(*fields[1:])
    except TypeError:
        raise BadRequest("cursor: malformed") from None
    kinds = (str, int, int, float, int, float, int)
    for value, kind in zip(position, kinds):
        if isinstance(value, bool) or not isinstance(value, kind if kind is not float else (int, float)):
            raise BadRequest("cursor: malformed")
    return position

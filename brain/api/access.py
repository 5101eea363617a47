"""The user stores as other doors reach them (`brain.contracts.EventAccess`): the MCP door reads
and writes a user's events through this, under the rules GET and POST /events apply.

The REST handlers parse HTTP (query strings, headers) and render bytes; what is checked about
the events themselves (`new_event`, reserved types, idempotency keys, page sizes) is the same
code here, so a door cannot write what the REST API would refuse.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from brain.api.events import ReservedTypes, check_key, new_event, parse_time
from brain.api.quotas import WriteRate
from brain.api.retrieval import run_search
from brain.api.store_manager import AppendResult, StoreManager
from brain.api.user_store import AppendRequest, GetEvent, MatchField
from brain.config import Settings
from brain.contracts import EventPage, SearchResults
from brain.errors import BadRequest, PayloadTooLarge
from brain.event_types import TypeFilter

# Idempotency keys of this door live apart from HTTP's (`http:`) and mail sync's.
KEY_NAMESPACE = "agent:"
_FIELD_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
_MAX_ID = 2**63 - 1


class StoreAccess:
    """`EventAccess` over the process's StoreManager."""

    def __init__(
        self, stores: StoreManager, reserved: ReservedTypes, rate: WriteRate, settings: Settings,
        append: Callable[[str, AppendRequest], Awaitable[AppendResult]] | None = None,
    ) -> None:
        self._stores = stores
        # How a write is committed: the stores', or a cluster node's (answered once replicated).
        self._append = append or stores.append_events
        self._reserved = reserved
        # The same per-user write quota as POST /events: one budget, whichever door writes.
        self._rate = rate
        self._settings = settings.api
        self._search = settings.search

    async def list_events(
        self, user_id: str, *, types: str | None = None, since: Any = None, until: Any = None,
        limit: int | None = None, cursor: str | None = None, max_chars: int | None = None,
    ) -> EventPage:
        """Events newest first, as GET /events pages them, cut at `max_chars` of JSON."""
        stores = self._stores
        query = stores.make_query(
            user_id, types, since, until, self._settings.events_page_default if limit is None else limit, cursor
        )
        rows, next_cursor = await stores.query_events(user_id, query)
        if max_chars is not None:
            size = 0
            for i, row in enumerate(rows):
                size += len(row.json()) + 1
                if size > max_chars and i > 0:
                    rows, last = rows[:i], rows[i - 1]
                    next_cursor = stores.cursors.make(user_id, last.created_at, last.id)
                    break
        return EventPage([row.as_dict() for row in rows], next_cursor)

    async def add_events(
        self, user_id: str, events: Sequence[Mapping[str, Any]], *, key: str | None = None
    ) -> tuple[list[dict[str, Any]], bool]:
        """Store events all or none, as POST /events does; (stored events, whether a replay)."""
        if not events:
            raise BadRequest("events: at least one event")
        if len(events) > self._settings.max_batch:
            raise PayloadTooLarge(f"events: {len(events)} events, at most {self._settings.max_batch} at once")
        if key is not None:
            key = KEY_NAMESPACE + check_key(key, "idempotency_key")
        single = len(events) == 1
        checked = [
            new_event(
                item,
                max_bytes=self._settings.max_event_bytes,
                field="" if single else f"events[{i}]",
                key=key if key is None or single else f"{key}#{i}",
                strict_fields=True,
            )
            for i, item in enumerate(events)
        ]
        for i, event in enumerate(checked):
            self._reserved.check(event.type, "type" if single else f"events[{i}].type")
        self._rate.take(user_id, len(checked))
        results = await self._append(user_id, AppendRequest(checked, match=key is not None))
        return [stored.as_dict() for stored, _ in results], key is not None and all(replayed for _, replayed in results)

    async def get_event(self, user_id: str, event_id: int) -> dict[str, Any] | None:
        """One event by id (None: the user has none with this id)."""
        if isinstance(event_id, bool) or not isinstance(event_id, int) or not 1 <= event_id <= _MAX_ID:
            raise BadRequest("id: an event id is an integer from 1")
        row = await self._stores.request(user_id, GetEvent(event_id))
        return None if row is None else row.as_dict()

    async def search(
        self, user_id: str, q: str, *, since: Any = None, until: Any = None, limit: int | None = None,
        cursor: str | None = None,
    ) -> SearchResults:
        """A page of GET /search's results for the query language."""
        search = self._search
        if limit is not None and (isinstance(limit, bool) or not 1 <= limit <= search.page_max):
            raise BadRequest(f"limit: must be an integer from 1 to {search.page_max}")
        page, next_cursor = await run_search(
            self._stores, search, user_id, q,
            since=None if since is None else parse_time(since, "since"),
            until=None if until is None else parse_time(until, "until"),
            limit=search.page_default if limit is None else limit, cursor=cursor,
        )
        # The events' data is not parsed: a result names its event, which get_event reads whole.
        results = [
            {"id": hit.event.id, "type": hit.event.type, "created_at": hit.event.created_at, "score": hit.score,
             "highlights": hit.highlights}
            for hit in page.hits
        ]
        return SearchResults(results, next_cursor, page.partial)

    async def match_field(
        self, user_id: str, *, types: str, field: str, value: str, limit: int
    ) -> list[dict[str, Any]]:
        """Events of `types` whose data's top-level `field` is `value`, in commit order."""
        if not _FIELD_RE.fullmatch(field):
            raise BadRequest(f"field: {field[:40]!r} is not a field name")
        rows = await self._stores.request(user_id, MatchField(TypeFilter.parse([types]), field, value, limit))
        return [row.as_dict() for row in rows]

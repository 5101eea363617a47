"""GET /events/stream: the caller's committed events as Server-Sent Events, live and resumable.

Each event is one SSE message: `id:` its commit sequence (`brain.api.events.commit_seq`),
`data:` the event as GET /events returns it (unnamed, so `EventSource.onmessage` receives it).
`type` filters like GET /events (exact names, `prefix.*` or `prefix*`, repeated or
comma-separated). A deletion is an event of its own in the commit order, its tombstone
(`event.deleted`), streamed like any other.

Resuming: `Last-Event-ID` (what `EventSource` sends when it reconnects), else `?after=N`, asks
for every event committed after N first (`after=0`: from the start), then the live tail, with
no gap and no duplicate at the seam: the stream subscribes to the dispatcher *before* it reads
the history, reads the store in pages until a page comes back short, and then writes from the
subscription only what lies past the last event it wrote. An event committed while the history
was read is therefore in the history or in the subscription, or in both (written once). If the
subscription overflows while the history is read, the history is simply read on
(`brain.api.live`). On a cluster node that confirms writes, the history stops before the first
event JetStream has not acknowledged yet, and goes on from there once it has (`brain.api.live`). Without either, the stream starts with what commits from now on.

How a stream ends, always with a last SSE event saying why (unless the client left):
`token-expired` when the caller's credential expires (reconnect with a fresh token or ticket),
`too-slow` when the client reads slower than its events arrive and its buffer
(`api.stream_buffer_bytes`) is full, `revoked` when the account is deleted, `shutting-down`,
and `error` when the store cannot be read. A comment line goes out after
`api.stream_heartbeat_seconds` without an event; a client that accepts nothing for
`api.stream_write_timeout_seconds` is disconnected.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from typing import Any

from aiohttp import web
from aiohttp.client_exceptions import ClientConnectionResetError

from brain.api.events import StoredEvent, commit_seq
from brain.api.live import Dispatcher, Subscription
from brain.api.live_feed import LiveFeed
from brain.api.store_manager import StoreManager
from brain.api.tickets import StreamTickets
from brain.api.verifier import TokenUser
from brain.clock import steady_time
from brain.errors import BadRequest, HTTPError
from brain.event_types import TypeFilter

log = logging.getLogger("brain.api.stream")

# History is read from the store this many events at a time.
HISTORY_PAGE = 500
MAX_SEQUENCE = 2**63 - 1
# How soon an `EventSource` reconnects after the stream ends (milliseconds).
RETRY_MS = 1000
TOKEN_EXPIRED = "token-expired"
ERROR = "error"
_HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-store",
    # nginx and similar proxies would otherwise hold events back in their buffers.
    "X-Accel-Buffering": "no",
}
_HEARTBEAT = b": keep-alive\n\n"
_ENDINGS = {
    TOKEN_EXPIRED: "the token expired; reconnect with a fresh token (or a new ticket) and Last-Event-ID",
    "too-slow": "the client read slower than its events arrived; reconnect with Last-Event-ID",
    "revoked": "the account was deleted",
    "shutting-down": "the server is shutting down; reconnect with Last-Event-ID",
}
# Every name a stream's last event can have (the OpenAPI document lists them).
STREAM_ENDINGS = (*_ENDINGS, ERROR)


def frame(event: StoredEvent) -> bytes:
    """One event as an SSE message (the stored JSON holds no raw newline)."""
    return f"id: {commit_seq(event)}\ndata: {event.json()}\n\n".encode()


def ending(name: str, body: dict[str, Any]) -> bytes:
    """A named control event: the last thing a stream says."""
    return f"event: {name}\ndata: {json.dumps(body, separators=(',', ':'))}\n\n".encode()


def closing(name: str, last: int) -> bytes:
    """The last event of a stream ended for one of the reasons above, after event `last`."""
    return ending(name, {"message": _ENDINGS[name], "last_event_id": last})


def resume_point(request: web.Request) -> int | None:
    """Where the caller resumes: Last-Event-ID (the browser's own reconnect), else ?after=."""
    values = request.query.getall("after", [])
    if len(values) > 1:
        raise BadRequest("after: given more than once")
    # A bad ?after= is refused even when the header wins over it.
    after = _sequence(values[0], "after") if values else None
    header = request.headers.get("Last-Event-ID", "").strip()
    return _sequence(header, "Last-Event-ID") if header else after


def _sequence(text: str, field: str) -> int:
    if not text.isascii() or not text.isdigit() or len(text) > 19 or int(text) > MAX_SEQUENCE:
        raise BadRequest(f"{field}: must be an event id (a whole number from 0), got {text[:40]!r}")
    return int(text)


class EventStream:
    """The stream routes' state: the store manager, the dispatcher, the tickets and the limits."""

    def __init__(
        self, settings: Any, stores: StoreManager, dispatcher: Dispatcher, tickets: StreamTickets,
        feed: LiveFeed | None = None,
    ) -> None:
        api = settings.api
        self.stores = stores
        self.dispatcher = dispatcher
        self.tickets = tickets
        # Several workers: other workers' commits poke through NATS (brain.api.live_feed).
        self.feed = feed
        self.heartbeat = api.stream_heartbeat_seconds
        self.buffer_bytes = api.stream_buffer_bytes
        self.write_timeout = api.stream_write_timeout_seconds

    def issue_ticket(self, user: TokenUser) -> dict[str, Any]:
        """POST /events/stream/ticket's answer."""
        ticket, expires = self.tickets.issue(user)
        return {"ticket": ticket, "expires_in": round(expires - steady_time()), "stream": "/events/stream"}

    async def serve(self, request: web.Request, user: TokenUser) -> web.StreamResponse:
        """Run one stream until it ends (see the module docstring)."""
        after = resume_point(request)
        types = TypeFilter.parse(request.query.getall("type", []))
        transport = request.transport
        sub = self.dispatcher.subscribe(
            user.id, types, self.buffer_bytes, lambda: transport is None or transport.is_closing()
        )
        response = web.StreamResponse(headers=_HEADERS)
        try:
            if self.feed is not None:
                await self.feed.watch(user.id)  # before the history is read, like the subscription
                if after is None:
                    # Pokes read the store from the last id written: "from now on" is the store's
                    # head before the client hears that the stream is open, or what commits in
                    # between reaches it never.
                    after = await asyncio.get_running_loop().run_in_executor(
                        None, self.stores.head_from_thread, user.id
                    )
            await response.prepare(request)
            writer = _Writer(response, transport, self.write_timeout)
            await writer.write(f"retry: {RETRY_MS}\n: stream open\n\n".encode())
            await self._run(writer, sub, user, after, types)
            await writer.finish()
        except (ClientConnectionResetError, ConnectionError, TimeoutError):
            pass  # the client left, or stopped reading: nobody to tell
        finally:
            self.dispatcher.unsubscribe(sub)
            if self.feed is not None:
                self.feed.unwatch(user.id)
        return response

    async def _run(
        self, writer: _Writer, sub: Subscription, user: TokenUser, after: int | None, types: TypeFilter | None
    ) -> None:
        loop = asyncio.get_running_loop()
        expires = loop.time() + (user.exp - time.time()) if math.isfinite(user.exp) else math.inf
        last = 0 if after is None else after
        try:
            if after is None:
                sub.live = True
            else:
                last = await self._catch_up(writer, sub, user.id, after, types)
        except HTTPError as exc:
            await _failed(writer, exc, last)
            return
        beat = loop.time() + self.heartbeat
        while True:
            if sub.ended is not None:
                if sub.ended:
                    await writer.write(ending(sub.ended, {"message": _ENDINGS.get(sub.ended, sub.ended),
                                                          "last_event_id": last}))
                return
            if sub.missed:  # poked (several workers): the store has what was committed since
                try:
                    last = await self._catch_up(writer, sub, user.id, last, types)
                except HTTPError as exc:
                    await _failed(writer, exc, last)
                    return
                beat = loop.time() + self.heartbeat
                continue
            events = sub.take()
            if events:
                chunks = []
                for ev in events:
                    seq = commit_seq(ev)
                    if seq > last:
                        chunks.append(frame(ev))
                        last = seq
                if chunks:
                    await writer.write(b"".join(chunks))
                    beat = loop.time() + self.heartbeat
                continue
            now = loop.time()
            if now >= expires:
                await writer.write(ending(TOKEN_EXPIRED, {"message": _ENDINGS[TOKEN_EXPIRED], "last_event_id": last}))
                return
            if now >= beat:
                await writer.write(_HEARTBEAT)
                beat = now + self.heartbeat
                if self.feed is not None:
                    sub.poke()  # what NATS did not bring (it was down, an outbox publishes late)
                continue
            await sub.wait(min(beat, expires) - now)

    async def _catch_up(
        self, writer: _Writer, sub: Subscription, user_id: str, after: int, types: TypeFilter | None
    ) -> int:
        """Write the history after `after`, until the subscription can take over; the last id written."""
        last = after
        confirmations = self.dispatcher.confirmations
        while True:
            sub.missed = False
            rows = await self.stores.changes(user_id, last, types, HISTORY_PAGE)
            short = len(rows) < HISTORY_PAGE
            if confirmations is not None:
                # Only what the replicated stream holds; the rest once it does (`behind`: poked then).
                rows, held_back = confirmations.confirmed_part(user_id, rows, commit_seq)
                if held_back:
                    sub.behind = short = True
            if rows:
                await writer.write(b"".join(frame(ev) for ev in rows))
                last = commit_seq(rows[-1])
            if short and not sub.missed:
                sub.live = True
                return last
            if sub.ended is not None:
                return last


async def _failed(writer: _Writer, exc: HTTPError, last: int) -> None:
    """The store cannot be read: the stream's last event says so, and where to resume."""
    await writer.write(ending(ERROR, {**exc.body(), "last_event_id": last}))


class _Writer:
    """Writes to the client; a write the client does not take within the timeout drops it."""

    __slots__ = ("response", "transport", "timeout")

    def __init__(self, response: web.StreamResponse, transport: Any, timeout: float) -> None:
        self.response = response
        self.transport = transport
        self.timeout = timeout

    async def write(self, data: bytes) -> None:
        try:
            async with asyncio.timeout(self.timeout):
                await self.response.write(data)
        except TimeoutError:
            self._abort()
            raise

    async def finish(self) -> None:
        try:
            async with asyncio.timeout(self.timeout):
                await self.response.write_eof()
        except TimeoutError:
            self._abort()
            raise

    def _abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

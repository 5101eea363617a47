"""GET /events/stream for the clients: Server-Sent Events read line by line, and resumed.

The server sends each committed event as an unnamed SSE message (`id:` its commit sequence,
`data:` the event as JSON) and ends every stream with a named event saying why
(`StreamMessage` and `StreamEnding` in the OpenAPI document). `StreamState` is what the sync
and the async client share: where to resume (the last `id:` seen, sent back as Last-Event-ID),
and which endings a reconnect cures (`token-expired`: with a fresh JWT; `too-slow` and
`shutting-down`: after the server's `retry:` delay). A lost connection resumes the same way.
`revoked` (the account is gone) and `error` end the iteration with `StreamEnded`.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from brain_client import _calls as calls
from brain_client.errors import BrainError
from brain_client.models import Event

__all__ = ["AsyncEventStream", "EventStream", "SseMessage", "SseParser", "StreamEnded", "StreamState"]

# Endings after which the same stream continues on a new connection.
RESUMABLE = frozenset({"token-expired", "too-slow", "shutting-down"})
# Connections in a row that may fail (refused, dropped before any event) before the stream gives up.
MAX_RECONNECT_FAILURES = 5


class StreamEnded(BrainError):
    """The server ended the stream for a reason a reconnect does not cure (`revoked`, `error`), or
    the client was told not to reconnect. `reason` names the ending; `last_event_id` is where a
    later stream would resume."""

    def __init__(self, reason: str, body: Any, last_event_id: int | None) -> None:
        body = body if isinstance(body, dict) else {"message": str(body)}
        super().__init__(200, str(body.get("code") or reason), str(body.get("message") or reason), body)
        self.reason = reason
        self.last_event_id = last_event_id


@dataclass
class SseMessage:
    """One dispatched SSE message: its event name ("message" when unnamed), data and id."""

    event: str
    data: str
    id: str | None


@dataclass
class SseParser:
    """Lines of a text/event-stream in, whole messages out (the WHATWG parsing rules)."""

    retry_ms: int | None = None
    _event: str = ""
    _data: list[str] = field(default_factory=list)
    _id: str | None = None

    def line(self, line: str) -> SseMessage | None:
        """Feed one line (without its end); a message when the line completes one."""
        if line == "":
            message = SseMessage(self._event or "message", "\n".join(self._data), self._id) if self._data else None
            self._event, self._data = "", []
            return message
        if line.startswith(":"):
            return None  # a comment: the server's heartbeat
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id" and "\0" not in value:
            self._id = value
        elif name == "retry" and value.isdigit():
            self.retry_ms = int(value)
        return None


class StreamState:
    """Where a stream resumes and whether it goes on: shared by the sync and async iterators."""

    def __init__(self, types: str | Sequence[str] | None, after: int | None, reconnect: bool) -> None:
        self.types = [types] if isinstance(types, str) else list(types or [])
        self.last_event_id = after
        self.reconnect = reconnect
        self.reconnects = 0
        self.failures = 0
        self.parser = SseParser()

    def call(self) -> calls.Call:
        """The request for the next connection, resuming after the last event seen."""
        self.parser = SseParser(retry_ms=self.parser.retry_ms)
        return calls.stream_events(self.types, self.last_event_id)

    def event(self, message: SseMessage) -> Event:
        """An event message's event (and the resume point moves past it)."""
        self.failures = 0
        if message.id is not None and message.id.isdigit():
            self.last_event_id = int(message.id)
        return json.loads(message.data)  # type: ignore[no-any-return]

    def ended(self, message: SseMessage) -> float:
        """How long to wait before resuming after this ending; StreamEnded when it is final."""
        try:
            body = json.loads(message.data)
        except ValueError:
            body = {"message": message.data}
        if not self.reconnect or message.event not in RESUMABLE:
            raise StreamEnded(message.event, body, self.last_event_id)
        self.reconnects += 1
        # A fresh JWT is all an expired one needs; otherwise the server's retry: delay.
        return 0.0 if message.event == "token-expired" else (self.parser.retry_ms or 1000) / 1000

    def lost(self, failure: Exception) -> float:
        """How long to wait before resuming after a dropped or refused connection; re-raises it
        when the stream should not go on."""
        retryable = isinstance(failure, httpx.TransportError) or (
            isinstance(failure, BrainError) and failure.status in (429, 503))
        if not self.reconnect or not retryable or self.failures >= MAX_RECONNECT_FAILURES:
            raise failure
        self.failures += 1
        self.reconnects += 1
        retry_after = failure.retry_after if isinstance(failure, BrainError) else None
        return retry_after if retry_after is not None else 0.2 * 2.0 ** self.failures


class _Stream:
    """What both iterators tell about their stream."""

    def __init__(self, state: StreamState) -> None:
        self._state = state

    @property
    def last_event_id(self) -> int | None:
        """The commit sequence of the last event yielded: pass it as `after` to continue there later."""
        return self._state.last_event_id

    @property
    def reconnects(self) -> int:
        """How many times the stream was resumed on a new connection."""
        return self._state.reconnects


class EventStream(_Stream):
    """The user's events as they commit, resumed across connections (Client.stream_events)."""

    def __init__(self, state: StreamState, events: Iterator[Event]) -> None:
        super().__init__(state)
        self._events = events

    def __iter__(self) -> Iterator[Event]:
        return self._events

    def __next__(self) -> Event:
        return next(self._events)

    def close(self) -> None:
        """Stop: the open connection is closed."""
        self._events.close()  # type: ignore[attr-defined]


class AsyncEventStream(_Stream):
    """The same for asyncio (AsyncClient.stream_events)."""

    def __init__(self, state: StreamState, events: AsyncIterator[Event]) -> None:
        super().__init__(state)
        self._events = events

    def __aiter__(self) -> AsyncIterator[Event]:
        return self._events

    async def __anext__(self) -> Event:
        return await self._events.__anext__()

    async def aclose(self) -> None:
        """Stop: the open connection is closed."""
        await self._events.aclose()  # type: ignore[attr-defined]

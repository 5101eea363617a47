"""A Server-Sent Events client on aiohttp, for tests that read brain's event stream over real HTTP.

It parses the stream as the HTML standard's EventSource does (fields `id`, `event`, `data`,
`retry`; comment lines; a blank line dispatches), but leaves reconnecting to the test, which
wants to decide when and with which `Last-Event-ID`.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp


@dataclass
class SSEMessage:
    """One dispatched message: `event` is "message" unless named; `id` as the last `id:` field set it."""

    event: str
    data: str
    id: str | None

    def json(self) -> Any:
        """The data as JSON."""
        return json.loads(self.data)


@dataclass
class SSEStream:
    """An open stream; `next()` returns its messages in order, `comments` collects comment lines."""

    response: aiohttp.ClientResponse
    comments: list[str] = field(default_factory=list)
    last_id: str | None = None
    retry_ms: int | None = None
    ended: bool = False

    async def next(self, timeout: float = 10.0) -> SSEMessage | None:
        """The next message, or None at the end of the stream; TimeoutError after `timeout` seconds."""
        async with asyncio.timeout(timeout):
            return await self._read_message()

    async def _read_message(self) -> SSEMessage | None:
        event, data, seen = "", [], False
        while True:
            raw = await self.response.content.readline()
            if not raw:
                self.ended = True
                return None
            line = raw.decode().rstrip("\r\n")
            if not line:
                if seen:
                    return SSEMessage(event or "message", "\n".join(data), self.last_id)
                continue
            if line.startswith(":"):
                self.comments.append(line[1:].strip())
                continue
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "data":
                data.append(value)
                seen = True
            elif name == "event":
                event = value
            elif name == "id":
                self.last_id = value
            elif name == "retry" and value.isdigit():
                self.retry_ms = int(value)

    async def messages(self, count: int, timeout: float = 10.0) -> list[SSEMessage]:
        """The next `count` messages (fewer if the stream ends)."""
        out = []
        for _ in range(count):
            message = await self.next(timeout)
            if message is None:
                break
            out.append(message)
        return out

    def close(self) -> None:
        """Drop the connection at once (as a client that goes away does)."""
        self.response.close()


async def open_stream(
    session: aiohttp.ClientSession,
    url: str,
    *,
    token: str | None = None,
    params: Mapping[str, Any] | list[tuple[str, str]] | None = None,
    last_event_id: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> SSEStream:
    """GET an event stream; raises AssertionError (with the body) unless it answers 200 text/event-stream."""
    sent = {"Accept": "text/event-stream", **(headers or {})}
    if token is not None:
        sent["Authorization"] = f"Bearer {token}"
    if last_event_id is not None:
        sent["Last-Event-ID"] = last_event_id
    response = await session.get(url, params=params, headers=sent, timeout=aiohttp.ClientTimeout(total=None, sock_read=None))
    if response.status != 200 or not response.headers.get("Content-Type", "").startswith("text/event-stream"):
        body = await response.text()
        response.release()
        raise AssertionError(f"stream refused: {response.status} {body[:300]}")
    return SSEStream(response)

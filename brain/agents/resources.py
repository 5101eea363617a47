"""MCP resources: a user's events and mail threads by URI, for clients that attach context by
reference rather than by tool call.

- `brain://events/{id}`: one event (`events:read`), as `get_event` gives it;
- `brain://mail/threads/{id}`: a mail thread (`mail:read`, the id percent-encoded), as the first
  page of `get_mail_thread`.

There is nothing to list (a brain is too big to enumerate): `resources/list` is empty and
`resources/templates/list` names the two templates.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any
from urllib.parse import unquote, urlsplit

from brain.agents.tools import ToolCall, ToolFailed, events_of, mail_thread
from brain.contracts import Caller
from brain.errors import HTTPError, NotFound

audit = logging.getLogger("brain.agents.audit")

__all__ = ["TEMPLATES", "ResourceError", "read_resource"]

# JSON-RPC codes: the specification's "resource not found", and a request this caller may not make.
RESOURCE_NOT_FOUND = -32002
INVALID_PARAMS = -32602
INVALID_REQUEST = -32600
MIME = "application/json"
TEMPLATES = [
    {"uriTemplate": "brain://events/{id}", "name": "event", "title": "An event",
     "description": "One of the user's events by id, with its data", "mimeType": MIME},
    {"uriTemplate": "brain://mail/threads/{id}", "name": "mail_thread", "title": "A mail thread",
     "description": "The messages of a mail thread (its thread_id, percent-encoded), oldest first", "mimeType": MIME},
]


class ResourceError(Exception):
    """A resources/read that cannot be answered: its JSON-RPC code and message."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


async def read_resource(caller: Caller, uri: Any, doors: ToolCall) -> dict[str, Any]:
    """The ReadResourceResult of `uri`, read as the caller."""
    if not isinstance(uri, str) or len(uri) > 2000:
        raise ResourceError(INVALID_PARAMS, "uri: must be a brain:// URI (resources/templates/list names them)")
    started = time.perf_counter()
    kind, outcome, text = "unknown", "ok", ""
    try:
        kind, scope, read = _route(uri)
        if not caller.allows(scope):
            raise ResourceError(INVALID_REQUEST, f"this API key lacks the scope {scope!r}, which {uri[:100]} needs")
        try:
            text = json.dumps(await read(doors), separators=(",", ":"), ensure_ascii=False)
        except NotFound as exc:
            raise ResourceError(RESOURCE_NOT_FOUND, f"Resource not found: {exc.message}") from None
        except (HTTPError, ToolFailed) as exc:
            raise ResourceError(INVALID_PARAMS, getattr(exc, "message", str(exc))) from None
        return {"contents": [{"uri": uri, "mimeType": MIME, "text": text}]}
    except ResourceError as exc:
        outcome = str(exc.code)
        raise
    finally:
        audit.info("mcp resource=%s user=%s outcome=%s ms=%.2f chars=%d",
                   kind, doors.user_id, outcome, (time.perf_counter() - started) * 1000, len(text))


def _route(uri: str) -> tuple[str, str, Any]:
    parts = urlsplit(uri)
    if parts.scheme == "brain" and parts.netloc == "events":
        text = parts.path.removeprefix("/")
        if not (text.isascii() and text.isdigit() and len(text) <= 19 and 1 <= int(text) < 2**63):
            raise ResourceError(RESOURCE_NOT_FOUND, f"Resource not found: {uri[:100]} (an event id is an integer from 1)")
        event_id = int(text)

        async def event(doors: ToolCall) -> dict[str, Any]:
            found = await events_of(doors).get_event(doors.user_id, event_id)
            if found is None:
                raise NotFound(f"no event {event_id}")
            return found

        return "event", "events:read", event
    if parts.scheme == "brain" and parts.netloc == "mail" and parts.path.startswith("/threads/"):
        thread_id = unquote(parts.path.removeprefix("/threads/"))
        if not thread_id or len(thread_id) > 500:
            raise ResourceError(INVALID_PARAMS, "uri: a thread id of 1 to 500 characters")

        async def thread(doors: ToolCall) -> dict[str, Any]:
            return await mail_thread(doors, thread_id)

        return "mail_thread", "mail:read", thread
    raise ResourceError(RESOURCE_NOT_FOUND, f"Resource not found: {uri[:100]} (resources/templates/list names the URIs)")

"""The MCP tools: what each one takes and gives (JSON Schemas), whether it writes, the scope an
API key needs for it, and what it calls.

A tool reaches the user's data through `brain.contracts` only and always as the caller the
API listener's guard checked. Whatever goes wrong inside a call (bad arguments, a missing
scope, a quota) comes back as a tool error (`isError`) with a message naming the cause, which
an assistant can act on; the JSON-RPC exchange itself still succeeds. Every call writes one
audit line: who, which tool, the outcome, how long it took and how big the result was, never
what was read or written.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from brain.agents.arguments import check_arguments
from brain.agents.threads import THREAD_TYPES, thread_messages
from brain.contracts import Caller, EventAccess, MailAccounts
from brain.errors import BadRequest, Forbidden, HTTPError, NotFound, PluginError, TooManyRequests

audit = logging.getLogger("brain.agents.audit")
log = logging.getLogger("brain.agents")

__all__ = ["MIRRORED", "ToolCall", "ToolFailed", "Toolbox", "UnknownTool", "events_of", "mail_thread", "rest_input"]

NOTE_TYPE = "note.created"
# The mail events read for one thread; a longer thread shows its first ones.
MAX_THREAD_EVENTS = 2000
_MAX_TEXT = 100_000
# The REST operation each tool does what it does (its operationId in /openapi.json), and the tool's
# name for each parameter that is not a query or path parameter of the same name: a tool's input
# schema is made from that operation's parameters and request body (rest_input), never restated.
MIRRORED: dict[str, tuple[str, dict[str, str]]] = {
    "search": ("search", {}),
    "get_event": ("getEvent", {}),
    "list_events": ("listEvents", {}),
    "add_event": ("postEvents", {"Idempotency-Key": "idempotency_key"}),
    # A note is an event of type note.created: the same write, its data given field by field.
    "add_note": ("postEvents", {"Idempotency-Key": "idempotency_key"}),
}
_SCHEMA_REF = "#/components/schemas/"
EVENT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["id", "type", "data", "created_at"],
    "properties": {
        "id": {"type": "integer", "description": "the event's id in the user's store"},
        "type": {"type": "string", "description": "dotted event type, e.g. note.created or mail.message.received"},
        "data": {"description": "the event's payload (any JSON value)"},
        "created_at": {"type": "string", "description": "RFC 3339 UTC time"},
    },
}
_WRITTEN = {
    "type": "object",
    "required": ["event", "replayed"],
    "properties": {
        "event": EVENT_SCHEMA,
        "replayed": {"type": "boolean", "description": "true: an earlier call with this idempotency key wrote it"},
    },
}


class UnknownTool(LookupError):
    """A tools/call naming no tool this caller has (a JSON-RPC error, not a tool error)."""


class ToolFailed(Exception):
    """A tool could not do what it was asked; the message says why (becomes an `isError` result)."""


@dataclass(frozen=True)
class ToolCall:
    """What a tool works with: the caller and the doors to their data."""

    user_id: str
    events: EventAccess | None
    mail: MailAccounts | None
    max_result_chars: int


Handler = Callable[[ToolCall, dict[str, Any]], Awaitable[dict[str, Any]]]


@dataclass(frozen=True)
class Tool:
    """One tool: its MCP description and the coroutine that runs it."""

    name: str
    title: str
    description: str
    scope: str
    input_schema: Mapping[str, Any]
    output_schema: Mapping[str, Any]
    read_only: bool
    idempotent: bool
    run: Handler

    def describe(self) -> dict[str, Any]:
        """The tool as tools/list shows it."""
        return {
            "name": self.name,
            "title": self.title,
            "description": self.description,
            "inputSchema": self.input_schema,
            "outputSchema": self.output_schema,
            "annotations": {
                "title": self.title,
                "readOnlyHint": self.read_only,
                "destructiveHint": False,
                "idempotentHint": self.idempotent,
                # Only the user's own brain is touched, never the outside world.
                "openWorldHint": False,
            },
        }


def events_of(call: ToolCall) -> EventAccess:
    """The event stores, or ToolFailed when this process has none."""
    if call.events is None:
        raise ToolFailed("this server has no event stores (the API role's stores are not offered here)")
    return call.events


async def _list_events(call: ToolCall, args: dict[str, Any]) -> dict[str, Any]:
    page = await events_of(call).list_events(
        call.user_id, types=args.get("type"), since=args.get("since"), until=args.get("until"),
        limit=args.get("limit"), cursor=args.get("cursor"), max_chars=call.max_result_chars,
    )
    return {"events": page.events, "next_cursor": page.next_cursor}


async def _add_note(call: ToolCall, args: dict[str, Any]) -> dict[str, Any]:
    data = {"text": args["text"], **{k: args[k] for k in ("title", "tags") if k in args}}
    return await _write(call, {"type": NOTE_TYPE, "data": data}, args.get("idempotency_key"))


async def _add_event(call: ToolCall, args: dict[str, Any]) -> dict[str, Any]:
    event = {k: args[k] for k in ("type", "data", "created_at") if k in args}
    return await _write(call, event, args.get("idempotency_key"))


async def _write(call: ToolCall, event: dict[str, Any], key: str | None) -> dict[str, Any]:
    stored, replayed = await events_of(call).add_events(call.user_id, [event], key=key)
    return {"event": stored[0], "replayed": replayed}


async def _get_event(call: ToolCall, args: dict[str, Any]) -> dict[str, Any]:
    event = await events_of(call).get_event(call.user_id, args["id"])
    if event is None:
        raise NotFound(f"no event {args['id']}")
    return {"event": event}


async def _search(call: ToolCall, args: dict[str, Any]) -> dict[str, Any]:
    found = await events_of(call).search(
        call.user_id, args["q"], since=args.get("since"), until=args.get("until"), limit=args.get("limit"),
        cursor=args.get("cursor"),
    )
    return {"results": found.results, "next_cursor": found.next_cursor, "partial": found.partial}


async def mail_thread(call: ToolCall, thread_id: str, cursor: str | None = None) -> dict[str, Any]:
    """A page of a mail thread's messages (the get_mail_thread tool and the brain://mail/threads resource)."""
    events = await events_of(call).match_field(
        call.user_id, types=THREAD_TYPES, field="thread_id", value=thread_id, limit=MAX_THREAD_EVENTS
    )
    messages = thread_messages(events)
    if not messages:
        raise NotFound(f"no mail thread {thread_id[:200]!r}")
    start = 0
    if cursor is not None:
        if not (cursor.isascii() and cursor.isdigit() and 0 < int(cursor) < len(messages)):
            raise BadRequest("cursor: not a cursor of this thread")
        start = int(cursor)
    page: list[dict[str, Any]] = []
    size = 0
    for message in messages[start:]:
        size += len(json.dumps(message, separators=(",", ":"), ensure_ascii=False)) + 1
        if page and size > call.max_result_chars:
            break
        page.append(message)
    end = start + len(page)
    return {
        "thread_id": thread_id,
        "subject": messages[0].get("subject"),
        "message_count": len(messages),
        "messages": page,
        "next_cursor": str(end) if end < len(messages) else None,
    }


async def _get_mail_thread(call: ToolCall, args: dict[str, Any]) -> dict[str, Any]:
    return await mail_thread(call, args["thread_id"], args.get("cursor"))


async def _mail_accounts(call: ToolCall, _args: dict[str, Any]) -> dict[str, Any]:
    if call.mail is None:
        raise ToolFailed("this server does not sync mail")
    # mail.db is read in a worker thread, never on the event loop.
    accounts = await asyncio.get_running_loop().run_in_executor(None, call.mail.status, call.user_id)
    return {"accounts": accounts}


def rest_input(operation: Mapping[str, Any], schemas: Mapping[str, Any], renamed: Mapping[str, str],
               *, body: bool = True) -> dict[str, Any]:
    """A tool's input schema from the REST operation it mirrors: its query and path parameters (and
    the others `renamed` names, under those names), each with its schema and description, and the
    properties of its JSON body (one object where the body may also be an array of them); `$ref`s
    to the document's schemas inlined, no other argument allowed."""
    properties: dict[str, Any] = {}
    required: list[str] = []
    for parameter in operation.get("parameters", ()):
        name = renamed.get(parameter["name"], parameter["name"] if parameter["in"] in ("query", "path") else None)
        if name is None:
            continue
        schema = _inlined(parameter["schema"], schemas)
        if "description" in parameter:
            schema = {**schema, "description": parameter["description"]}
        properties[name] = schema
        if parameter.get("required"):
            required.append(name)
    content = operation.get("requestBody", {}).get("content", {}).get("application/json")
    if body and content is not None:
        # A body that is one object or an array of them (POST /events): a tool writes one.
        found = _inlined(content["schema"], schemas)
        found = next((s for s in found.get("oneOf", [found]) if s.get("type") == "object"), found)
        properties = {**found.get("properties", {}), **properties}
        required = [*found.get("required", ()), *required]
    schema: dict[str, Any] = {"type": "object", "properties": properties, "additionalProperties": False}
    if required:
        schema["required"] = required
    return schema


def _inlined(schema: Any, schemas: Mapping[str, Any]) -> Any:
    """The schema with every reference to the document's schemas replaced by what it names."""
    if isinstance(schema, list):
        return [_inlined(item, schemas) for item in schema]
    if not isinstance(schema, dict):
        return schema
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith(_SCHEMA_REF):
        return _inlined(schemas[ref[len(_SCHEMA_REF):]], schemas)
    return {key: _inlined(value, schemas) for key, value in schema.items()}


def _mirrored(operations: Mapping[str, Mapping[str, Any]], schemas: Mapping[str, Any], tool: str,
              *, body: bool = True) -> dict[str, Any]:
    operation_id, renamed = MIRRORED[tool]
    operation = operations.get(operation_id)
    if operation is None:
        raise PluginError(f"the MCP tool {tool} mirrors {operation_id}, which no route of the API listener describes")
    return rest_input(operation, schemas, renamed, body=body)


def _note_input(operations: Mapping[str, Mapping[str, Any]], schemas: Mapping[str, Any]) -> dict[str, Any]:
    """add_note's input: POST /events's own parameters, and the note's data fields instead of an event."""
    schema = _mirrored(operations, schemas, "add_note", body=False)
    note = {
        "text": {"type": "string", "minLength": 1, "maxLength": _MAX_TEXT},
        "title": {"type": "string", "maxLength": 500},
        "tags": {"type": "array", "maxItems": 50, "items": {"type": "string", "minLength": 1, "maxLength": 100}},
    }
    return {**schema, "properties": {**note, **schema["properties"]}, "required": ["text"]}


def _tools(operations: Mapping[str, Mapping[str, Any]], schemas: Mapping[str, Any]) -> list[Tool]:
    return [
        Tool(
            name="search",
            title="Search",
            description=(
                "Search the user's notes, events and mail, best match first. Words match anywhere "
                '(prefix*, "exact phrase", OR, -word); field:value filters, e.g. from:anna, '
                "subject:invoice, type:note.created, type:mail.*, label:inbox, has:attachment. Each result "
                "gives the event id and type and the matching snippets; get_event reads the whole event "
                "(for mail, its data.thread_id is what get_mail_thread takes)."
            ),
            scope="search",
            input_schema=_mirrored(operations, schemas, "search"),
            output_schema={
                "type": "object",
                "required": ["results", "next_cursor", "partial"],
                "properties": {
                    "results": {"type": "array", "items": {
                        "type": "object",
                        "required": ["id", "type", "created_at", "score", "highlights"],
                        "properties": {
                            "id": {"type": "integer"},
                            "type": {"type": "string"},
                            "created_at": {"type": "string"},
                            "score": {"type": "number", "description": "higher is better"},
                            "highlights": {"type": "object", "additionalProperties": {"type": "string"},
                                           "description": "matching snippets by field, matches marked"},
                        },
                    }},
                    "next_cursor": {"type": ["string", "null"]},
                    "partial": {"type": "boolean", "description": "true: the index is still being built"},
                },
            },
            read_only=True,
            idempotent=True,
            run=_search,
        ),
        Tool(
            name="get_event",
            title="Get an event",
            description="Read one of the user's events by id, with all its data.",
            scope="events:read",
            input_schema=_mirrored(operations, schemas, "get_event"),
            output_schema={"type": "object", "required": ["event"], "properties": {"event": EVENT_SCHEMA}},
            read_only=True,
            idempotent=True,
            run=_get_event,
        ),
        Tool(
            name="list_events",
            title="List events",
            description=(
                "List the user's events, newest first: notes, app events and synced mail "
                "(mail.message.received and friends). Filter by type and time; pass next_cursor "
                "back as cursor for the next page."
            ),
            scope="events:read",
            input_schema=_mirrored(operations, schemas, "list_events"),
            output_schema={
                "type": "object",
                "required": ["events", "next_cursor"],
                "properties": {
                    "events": {"type": "array", "items": EVENT_SCHEMA},
                    "next_cursor": {"type": ["string", "null"], "description": "null: this was the last page"},
                },
            },
            read_only=True,
            idempotent=True,
            run=_list_events,
        ),
        Tool(
            name="add_note",
            title="Add a note",
            description="Write a note into the user's brain (an event of type note.created).",
            scope="events:write",
            input_schema=_note_input(operations, schemas),
            output_schema=_WRITTEN,
            read_only=False,
            idempotent=False,
            run=_add_note,
        ),
        Tool(
            name="add_event",
            title="Add an event",
            description=(
                "Write an event of any type the user's apps use (not mail.*, which only mail sync "
                "writes): a dotted type and any JSON data."
            ),
            scope="events:write",
            input_schema=_mirrored(operations, schemas, "add_event"),
            output_schema=_WRITTEN,
            read_only=False,
            idempotent=False,
            run=_add_event,
        ),
        Tool(
            name="get_mail_thread",
            title="Get a mail thread",
            description=(
                "All messages of one mail thread, oldest first, each with its sender, recipients, "
                "date, labels and its own text (quoted replies and signatures removed)."
            ),
            scope="mail:read",
            input_schema={
                "type": "object",
                "required": ["thread_id"],
                "properties": {
                    "thread_id": {"type": "string", "minLength": 1, "maxLength": 500,
                                  "description": "a message's thread_id (search results and mail events carry it)"},
                    "cursor": {"type": "string", "maxLength": 20, "description": "next_cursor of the previous page"},
                },
                "additionalProperties": False,
            },
            output_schema={
                "type": "object",
                "required": ["thread_id", "message_count", "messages", "next_cursor"],
                "properties": {
                    "thread_id": {"type": "string"},
                    "subject": {"type": ["string", "null"]},
                    "message_count": {"type": "integer"},
                    "messages": {"type": "array", "items": {
                        "type": "object",
                        "required": ["event_id", "body", "attachments"],
                        "properties": {
                            "event_id": {"type": "integer"},
                            "message_id": {"type": "string"},
                            "subject": {"type": "string"},
                            "date": {"type": ["string", "null"]},
                            "body": {"type": "string", "description": "the message's own text"},
                            "attachments": {"type": "array", "items": {"type": "object"}},
                        },
                    }},
                    "next_cursor": {"type": ["string", "null"]},
                },
            },
            read_only=True,
            idempotent=True,
            run=_get_mail_thread,
        ),
        Tool(
            name="mail_accounts",
            title="Mail accounts",
            description="The user's connected mail accounts and how their sync stands (state, progress, last error).",
            scope="mail:read",
            input_schema={"type": "object", "properties": {}, "additionalProperties": False},
            output_schema={
                "type": "object",
                "required": ["accounts"],
                "properties": {"accounts": {"type": "array", "items": {"type": "object"}}},
            },
            read_only=True,
            idempotent=True,
            run=_mail_accounts,
        ),
    ]


class Toolbox:
    """Every tool by name; lists and calls them for a caller, within the caller's scopes."""

    def __init__(self, operations: Mapping[str, Mapping[str, Any]], schemas: Mapping[str, Any]) -> None:
        """`operations`: the API listener's OpenAPI operations by operationId, whose parameters the tools that
        mirror one take; `schemas`: the document's schemas they refer to."""
        self.tools = {tool.name: tool for tool in _tools(operations, schemas)}

    def describe(self, caller: Caller) -> list[dict[str, Any]]:
        """The tools this caller may call (an API key sees those its scopes allow)."""
        return [tool.describe() for tool in self.tools.values() if caller.allows(tool.scope)]

    async def call(self, caller: Caller, name: Any, arguments: Any, doors: ToolCall) -> dict[str, Any]:
        """A CallToolResult; UnknownTool when `name` is no tool."""
        tool = self.tools.get(name) if isinstance(name, str) else None
        if tool is None:
            raise UnknownTool(f"unknown tool {str(name)[:80]!r} (tools/list names them)")
        started = time.perf_counter()
        try:
            if not caller.allows(tool.scope):
                raise Forbidden(f"this API key lacks the scope {tool.scope!r}, which {tool.name} needs",
                                code="INSUFFICIENT_SCOPE")
            structured = await tool.run(doors, check_arguments(tool.input_schema, arguments))
            text = json.dumps(structured, separators=(",", ":"), ensure_ascii=False)
            result = {"content": [{"type": "text", "text": text}], "structuredContent": structured, "isError": False}
            outcome = "ok"
        except (HTTPError, ToolFailed) as exc:
            text = _message(exc)
            result = {"content": [{"type": "text", "text": text}], "isError": True}
            outcome = getattr(exc, "code", "TOOL_FAILED")
        except Exception:
            log.exception("MCP tool %s failed", tool.name)
            text = f"{tool.name} failed inside the server; the error is logged there"
            result = {"content": [{"type": "text", "text": text}], "isError": True}
            outcome = "INTERNAL_ERROR"
        audit.info(
            "mcp tool=%s user=%s outcome=%s ms=%.2f chars=%d",
            tool.name, doors.user_id, outcome, (time.perf_counter() - started) * 1000, len(text),
        )
        return result


def _message(exc: HTTPError | ToolFailed) -> str:
    if isinstance(exc, TooManyRequests):
        return f"{exc.message} (retry after {exc.headers.get('Retry-After', '1')} s)"
    return exc.message if isinstance(exc, HTTPError) else str(exc)

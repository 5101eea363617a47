"""The AsyncAPI 3.0 document of the event stream: what brain publishes to JetStream, and how.

A consumer of `{nats.subject_prefix}.>` (an indexer, a search service) needs the same contract an
HTTP client gets from /openapi.json: the subjects, the headers, the payloads. This document is
built from the OpenAPI document itself (`build_asyncapi(openapi, ...)`), so its schemas are the
very ones /openapi.json serves, copied in with the `#/components/schemas/...` references they
already use: nothing is described twice.

Which event types the server writes, and what their `data` holds, comes from one convention of
the OpenAPI components: a schema named after an event type (`mail.message.received`,
`webhook.disabled`: a name with a dot) describes the `data` of that type. Each such type gets a
channel of its own; every other type (what clients post) arrives on the generic channel, its
`data` any JSON. The subjects and headers are the publisher's (`brain.api.publisher`).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import brain
from brain.api.openapi import EVENT_TYPE
from brain.event_types import TYPE_RE
from brain.ids import USER_ID_RE
from brain.sections import NatsSettings

__all__ = ["build_asyncapi", "event_data_schemas"]

_REF = "#/components/schemas/"
_USER_ID: dict[str, Any] = {"type": "string", "pattern": f"^{USER_ID_RE.pattern}$"}
_EVENT_ID: dict[str, Any] = {"type": "string", "pattern": "^[1-9][0-9]{0,18}$"}
_USER_PARAMETER: dict[str, Any] = {"description": "The user's id (the payload's `user_id`)"}


def event_data_schemas(openapi: Mapping[str, Any]) -> list[str]:
    """The event types the OpenAPI document gives a `data` schema (its components named like one)."""
    names = openapi.get("components", {}).get("schemas", {})
    return sorted(name for name in names if "." in name and TYPE_RE.fullmatch(name))


def build_asyncapi(openapi: Mapping[str, Any], nats: NatsSettings) -> dict[str, Any]:
    """The AsyncAPI 3.0 document of the stream these NATS settings name, over openapi's schemas."""
    prefix = nats.subject_prefix
    typed = event_data_schemas(openapi)
    channels: dict[str, Any] = {
        "events": {
            "address": f"{prefix}.{{user_id}}.{{type}}",
            "title": "Any event of a user",
            "description": (
                "Every event a user's store commits, once, in commit order per user. `type` may span several "
                "subject tokens (`note.created`); the types listed as channels of their own arrive on this "
                f"address too, with the payload their channel describes. Subscribe to `{prefix}.<user_id>.>` "
                "for one user's events."
            ),
            "parameters": {"user_id": _USER_PARAMETER, "type": {"description": "The event's type (the payload's `type`)"}},
            "messages": {"event": {"$ref": "#/components/messages/event"}},
        }
    }
    messages: dict[str, Any] = {"event": _message("event", "An event", _generic_payload(), nats)}
    for name in typed:
        channels[name] = {
            "address": f"{prefix}.{{user_id}}.{name}",
            "title": f"{name} events",
            "description": f"Written by the server only (clients may not post this type); `data` is {name}.",
            "parameters": {"user_id": _USER_PARAMETER},
            "messages": {name: {"$ref": f"#/components/messages/{name}"}},
        }
        description = openapi["components"]["schemas"][name].get("description")
        messages[name] = _message(name, description or f"A {name} event", _typed_payload(name), nats, event_type=name)
    operations = {
        f"receive.{channel}": {
            "action": "receive",
            "title": f"Read {channel} from the stream",
            "summary": f"JetStream stream {nats.stream}: a durable or ephemeral consumer of the channel's address",
            "channel": {"$ref": f"#/channels/{channel}"},
            "messages": [{"$ref": f"#/channels/{channel}/messages/{message}"} for message in body["messages"]],
        }
        for channel, body in channels.items()
    }
    used = _referenced_schemas(openapi["components"]["schemas"], messages)
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "brain event stream",
            "version": brain.__version__,
            "description": (
                f"The events brain publishes to the NATS JetStream stream `{nats.stream}` (subjects `{prefix}.>`). "
                "Publishing follows each commit; a message is re-sent until JetStream acknowledges it, and its "
                "`Nats-Msg-Id` makes a re-send within the stream's duplicate window a no-op, so each committed "
                "event is in the stream once. The payload is the event as GET /events returns it, plus `user_id`; "
                "the schemas are those of /openapi.json."
            ),
        },
        "defaultContentType": "application/json",
        "servers": {
            "jetstream": {
                "host": "{host}",
                "protocol": "nats",
                "description": "The NATS server (or cluster) brain publishes to, with JetStream",
                "variables": {"host": {"description": "host:port of brain's nats.url, or of its embedded nats-server"}},
            }
        },
        "channels": channels,
        "operations": operations,
        "components": {"schemas": used, "messages": messages},
    }


def _generic_payload() -> dict[str, Any]:
    return {
        "allOf": [{"$ref": _REF + "Event"}],
        "type": "object",
        "required": ["user_id"],
        "properties": {"user_id": _USER_ID, "type": dict(EVENT_TYPE), "data": {"description": "Any JSON value"}},
    }


def _typed_payload(event_type: str) -> dict[str, Any]:
    return {
        "allOf": [{"$ref": _REF + "Event"}],
        "type": "object",
        "required": ["user_id"],
        "properties": {"user_id": _USER_ID, "type": {"const": event_type}, "data": {"$ref": _REF + event_type}},
    }


def _message(name: str, title: str, payload: dict[str, Any], nats: NatsSettings, *,
             event_type: str | None = None) -> dict[str, Any]:
    """One message: the publisher's headers (brain.api.publisher) and this payload."""
    return {
        "name": name,
        "title": title,
        "contentType": "application/json",
        "headers": {
            "type": "object",
            "required": ["Nats-Msg-Id", "Nats-Expected-Stream", "Brain-User-Id", "Brain-Event-Id", "Brain-Event-Type"],
            "properties": {
                "Nats-Msg-Id": {
                    "type": "string",
                    "pattern": f"^{USER_ID_RE.pattern}:[1-9][0-9]{{0,18}}$",
                    "description": "{user_id}:{event id}: JetStream drops a re-send of it within the duplicate window",
                },
                "Nats-Expected-Stream": {"const": nats.stream},
                "Brain-User-Id": _USER_ID,
                "Brain-Event-Id": {**_EVENT_ID, "description": "The payload's `id`"},
                "Brain-Event-Type": {"const": event_type} if event_type else {**EVENT_TYPE},
                "Brain-Event-Key": {
                    "type": "string",
                    "description": "The event's idempotency key, percent-encoded (only when it has one)",
                },
            },
        },
        "payload": payload,
        "correlationId": {"description": "The event's identity", "location": "$message.header#/Nats-Msg-Id"},
    }


def _referenced_schemas(schemas: Mapping[str, Any], messages: Mapping[str, Any]) -> dict[str, Any]:
    """The OpenAPI schemas the messages reach through references, and only those."""
    used: dict[str, Any] = {}
    pending = _refs(messages)
    while pending:
        name = pending.pop()
        if name in used:
            continue
        used[name] = copy.deepcopy(schemas[name])
        pending |= _refs(used[name])
    return dict(sorted(used.items()))


def _refs(value: Any) -> set[str]:
    """The names of the component schemas value refers to, at any depth."""
    if isinstance(value, list):
        return set().union(*map(_refs, value))
    if not isinstance(value, dict):
        return set()
    found = set().union(*map(_refs, value.values()))
    target = value.get("$ref")
    if isinstance(target, str) and target.startswith(_REF):
        found.add(target.removeprefix(_REF))
    return found

"""The OpenAPI description of the API role's own routes (brain.api.routes carries them).

`INFO` is the document's head: the API role serves /openapi.json, built by `brain.openapi`
from every listener's routes.
"""

from __future__ import annotations

from typing import Any

import brain
from brain.event_types import MAX_TYPE_FILTERS, MAX_TYPE_LENGTH, TYPE_RE
from brain.api.settings import ApiSettings
from brain.api.stream import MAX_SEQUENCE, STREAM_ENDINGS
from brain.apikeys import with_api_keys
from brain.errors import ServiceUnavailable
from brain.openapi import INVALID_CODES, TOKEN_CODES, UNAVAILABLE_CODES, retry_after, with_body_errors, with_error
from brain.openapi import error as _error
from brain.openapi import json_body as _json_body
from brain.openapi import ref as _ref
from brain.routes import Route

# Conditional reads (ETag / If-None-Match) of event pages and single events.
IF_NONE_MATCH: dict[str, Any] = {
    "name": "If-None-Match", "in": "header", "required": False,
    "description": "An ETag of an earlier answer to the same request: 304, without a body, if it still holds",
    "schema": {"type": "string"},
}
ETAG_HEADERS: dict[str, Any] = {
    "ETag": {"description": "Changes whenever the body would", "schema": {"type": "string"}},
    "Cache-Control": {"schema": {"type": "string", "enum": ["private, no-cache"]}},
}
NOT_MODIFIED: dict[str, Any] = {"description": "Not modified since the ETag given in If-None-Match", "headers": ETAG_HEADERS}

INFO: dict[str, Any] = {
    "title": "brain",
    "version": brain.__version__,
    "description": (
        "Two HTTP roles: auth (Better Auth-compatible sign-up/sign-in, sessions, JWTs, JWKS) "
        "and api (bearer-JWT protected per-user event stores). Paths of the auth role name "
        "their own server."
    ),
}
SECURITY_SCHEMES: dict[str, Any] = {
    "bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
    "apiKeyHeader": {"type": "apiKey", "in": "header", "name": "x-api-key",
                     "description": "An API key (also accepted as `Authorization: Bearer <key>`); "
                                    "limited to the scope a route names in x-api-key-scope"},
    "streamTicket": {"type": "apiKey", "in": "query", "name": "ticket",
                     "description": "A single-use ticket from POST /events/stream/ticket (GET /events/stream "
                                    "only, for EventSource, which cannot send headers); refused beside a token"},
}

BEARER_ERRORS = {
    "401": {
        **_error("Missing, malformed, expired or otherwise invalid bearer token (USER_DELETED: its user is gone)",
                 *TOKEN_CODES),
        "headers": {"WWW-Authenticate": {"schema": {"type": "string"}, "description": 'Bearer error="invalid_token"'}},
    },
    "429": {
        **_error("RATE_LIMITED: too many requests for this user or from this address (api.rate_limit_*)", "RATE_LIMITED"),
        "headers": {"Retry-After": {"schema": {"type": "integer"}}},
    },
    "503": {
        **_error("Signing keys not loaded yet (or too stale), or a store is restarting (SERVICE_UNAVAILABLE); "
                 "a store's storage failing (STORE_UNAVAILABLE, with its `reason`)", *UNAVAILABLE_CODES),
        "headers": {"Retry-After": {"schema": {"type": "integer"}}},
    },
}
# What the server accepts as an event type, in the words of the schema (brain.event_types.TYPE_RE).
EVENT_TYPE: dict[str, Any] = {
    "type": "string",
    "minLength": 1,
    "maxLength": MAX_TYPE_LENGTH,
    "pattern": f"^{TYPE_RE.pattern}$",
}


# A time in a query string: RFC 3339 with an offset, epoch seconds, or empty (no bound).
TIME_PARAMETER: dict[str, Any] = {
    "anyOf": [
        {"type": "string", "format": "date-time", "maxLength": 64},
        {"type": "string", "pattern": r"^-?[0-9]{1,12}(\.[0-9]{1,6})?$"},
        {"const": ""},
    ]
}


# One item of a type filter (brain.event_types.TypeFilter): `*`, a type, a `prefix.*` namespace or
# a `prefix*` name prefix.
_TYPE_FILTER_ITEM = rf" *(\*|{TYPE_RE.pattern}(\.?\*)?) *"
# The `type` parameter of the event stream.
TYPE_FILTER: dict[str, Any] = {
    "name": "type",
    "in": "query",
    "description": (
        f"Event types: exact names, `prefix.*` namespaces (mail.*) or `prefix*` name prefixes (note*), "
        f"comma-separated (or the parameter repeated), at most {MAX_TYPE_FILTERS} of them, each name at most "
        f"{MAX_TYPE_LENGTH} characters; `*`: every type"
    ),
    "schema": {
        "type": "string",
        "maxLength": MAX_TYPE_FILTERS * (MAX_TYPE_LENGTH + 3),
        "pattern": f"^{_TYPE_FILTER_ITEM}(,{_TYPE_FILTER_ITEM}){{0,{MAX_TYPE_FILTERS - 1}}}$",
    },
}
# The `type` parameter of the routes that read or delete stored events, where an empty one is no filter.
STORED_TYPE_FILTER: dict[str, Any] = {
    **TYPE_FILTER,
    "description": TYPE_FILTER["description"] + " (empty: no filter)",
    "schema": {"anyOf": [TYPE_FILTER["schema"], {"const": ""}]},
}


def paths(api: ApiSettings) -> dict[str, dict[str, Any]]:
    """The API role's operations, with the limits these settings make the server enforce."""
    operations: dict[str, dict[str, Any]] = {
        "/health": {
            "get": {
                "operationId": "health",
                "summary": "Liveness for load balancers: status, version, problems by name",
                "description": (
                    "Public: {status, problems (names), version}; degraded is still 200. With ?detail=1 "
                    "and the metrics token (Authorization: Bearer <metrics.token>): every figure (JWKS "
                    "cache, supervisor restarts, NATS, open stores) and the problems' full texts."
                ),
                "security": [],  # the detail's metrics token is checked by the route, not a user's JWT
                "parameters": [
                    {
                        "name": "detail",
                        "in": "query",
                        "required": False,
                        "description": "Any value: the detailed document (needs the metrics token)",
                        "schema": {"type": "string"},
                    }
                ],
                "responses": {
                    "200": _json_body(_ref("Health")),
                    "401": _error("Detail asked for without the metrics token", "UNAUTHORIZED"),
                    "403": _error("Detail asked for, but no metrics token is configured", "HEALTH_DETAIL_DISABLED"),
                },
            }
        },
        "/openapi.json": {
            "get": {
                "operationId": "openapi",
                "summary": "This document",
                "security": [],
                "responses": {"200": _json_body({"type": "object"})},
            }
        },
        "/asyncapi.json": {
            "get": {
                "operationId": "asyncapi",
                "summary": "The AsyncAPI 3.0 document of the JetStream event stream (subjects, headers, payloads)",
                "description": "Its schemas are this document's: the payload's `data` of a typed event is the schema "
                               "named after its type.",
                "security": [],
                "responses": {"200": _json_body({"type": "object", "required": ["asyncapi"],
                                                 "properties": {"asyncapi": {"const": "3.0.0"}}})},
            }
        },
        "/me": {
            "get": with_api_keys({
                "operationId": "me",
                "summary": "The user the bearer token (or API key) speaks for, and how the caller authenticated",
                "responses": {"200": _json_body(_ref("Me")), **BEARER_ERRORS},
            }, None)
        },
        "/events": {
            "post": {
                "operationId": "postEvents",
                "summary": "Store one event, or a JSON array of events atomically",
                "description": (
                    "Answered only after the events are committed to the user's own database. With an "
                    "Idempotency-Key header a retried request returns the first result "
                    "(Idempotent-Replayed: true) instead of storing again; reusing a key for a different "
                    "request is 422. Events are then published to JetStream as "
                    "brain.events.<user_id>.<type>."
                ),
                "parameters": [
                    {
                        "name": "Idempotency-Key",
                        "in": "header",
                        "required": False,
                        "description": "A retry with the same key returns the first write instead of writing again",
                        "schema": {"type": "string", "minLength": 1, "maxLength": 200},
                    }
                ],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "oneOf": [
                                    _ref("NewEvent"),
                                    {"type": "array", "items": _ref("NewEvent"), "minItems": 1, "maxItems": api.max_batch},
                                ]
                            }
                        }
                    },
                },
                "responses": {
                    "201": {
                        "description": "Stored (or replayed)",
                        "headers": {"Idempotent-Replayed": {"schema": {"type": "string", "enum": ["true"]}}},
                        "content": {
                            "application/json": {
                                "schema": {
                                    "oneOf": [
                                        _ref("Event"),
                                        {
                                            "type": "object",
                                            "required": ["events"],
                                            "properties": {"events": {"type": "array", "items": _ref("Event")}},
                                        },
                                    ]
                                }
                            }
                        },
                    },
                    "400": _error("Invalid body; the message names the field", *INVALID_CODES),
                    "403": _error(
                        "RESERVED_EVENT_TYPE: a type the server writes itself (mail.*, or a namespace a "
                        "plugin reserved); the body's `type` names it", "RESERVED_EVENT_TYPE"
                    ),
                    "413": _error("Body, batch or data too large", "PAYLOAD_TOO_LARGE"),
                    "415": _error("Not JSON", "UNSUPPORTED_MEDIA_TYPE"),
                    "422": _error("IDEMPOTENCY_KEY_REUSED: the Idempotency-Key was used before for a different request",
                                  "IDEMPOTENCY_KEY_REUSED"),
                    **BEARER_ERRORS,
                    "429": {
                        **_error(
                            "EVENT_QUOTA_EXCEEDED: more than api.max_events_per_minute events this minute; "
                            "or RATE_LIMITED (api.rate_limit_*)", "EVENT_QUOTA_EXCEEDED", "RATE_LIMITED"
                        ),
                        "headers": {"Retry-After": {"schema": {"type": "integer"}}},
                    },
                    "507": {
                        **_error("INSUFFICIENT_STORAGE: the user's store is at api.max_user_bytes (or the disk is "
                                 "full); delete events", "INSUFFICIENT_STORAGE"),
                        "headers": {"Retry-After": {"schema": {"type": "integer"}}},
                    },
                },
            },
            "get": {
                "operationId": "listEvents",
                "summary": "The user's events, newest first",
                "parameters": [
                    STORED_TYPE_FILTER,
                    {
                        "name": "since",
                        "in": "query",
                        "description": "Inclusive lower bound on created_at: RFC 3339 with offset, or epoch seconds",
                        "schema": TIME_PARAMETER,
                    },
                    {
                        "name": "until",
                        "in": "query",
                        "description": "Exclusive upper bound on created_at",
                        "schema": TIME_PARAMETER,
                    },
                    {
                        "name": "limit",
                        "in": "query",
                        "description": "Events per page (default api.events_page_default)",
                        "schema": {"type": "integer", "minimum": 1, "maximum": api.events_page_max},
                    },
                    {
                        "name": "cursor",
                        "in": "query",
                        "description": "next_cursor of the previous page (signed, valid only for the same user)",
                        "schema": {"type": "string"},
                    },
                    IF_NONE_MATCH,
                ],
                "responses": {
                    "200": {**_json_body(_ref("EventsPage")), "headers": ETAG_HEADERS},
                    "304": NOT_MODIFIED,
                    "400": _error("Invalid parameter; the message names it", *INVALID_CODES),
                    **BEARER_ERRORS,
                },
            },
        },
    }

    operations["/events/stream"] = {
        "get": {
            "operationId": "streamEvents",
            "summary": "The user's events as they commit, as Server-Sent Events (EventSource)",
            "description": (
                "Each event is an SSE message whose `id` is its commit sequence and whose `data` is the event "
                "as GET /events returns it; a deletion is its tombstone (type event.deleted, data {id, type, "
                "created_at} of the deleted event). `Last-Event-ID` (sent by EventSource when it reconnects) or "
                "`after` first replays every event committed after that id, then continues live, without a "
                "gap or a duplicate; without either the stream starts with what commits from now on. A "
                "comment line is sent after api.stream_heartbeat_seconds without events. The stream ends "
                "with a named event saying why: `token-expired` (reconnect with a fresh token), `too-slow` "
                "(the client fell behind by api.stream_buffer_bytes), `revoked`, `shutting-down`, `error`. "
                "Browsers, whose EventSource cannot send headers, pass a `ticket` from "
                "POST /events/stream/ticket instead of a bearer token."
            ),
            "parameters": [
                TYPE_FILTER,
                {"name": "after", "in": "query", "description": "Replay events committed after this id first",
                 "schema": {"type": "integer", "minimum": 0, "maximum": MAX_SEQUENCE}},
                {"name": "Last-Event-ID", "in": "header", "required": False,
                 "description": "As `after`; wins over it (EventSource sends it on reconnect)",
                 "schema": {"type": "integer", "minimum": 0, "maximum": MAX_SEQUENCE}},
            ],
            "responses": {
                "200": {"description": "An event stream: one StreamMessage per SSE event",
                    "content": {"text/event-stream": {"schema": _ref("StreamMessage")}}},
                "400": _error("Invalid parameter, or a ticket beside credentials; the message names it", *INVALID_CODES),
                "429": {
                    **_error("TOO_MANY_STREAMS (api.stream_max_per_user open already) or RATE_LIMITED",
                             "TOO_MANY_STREAMS", "RATE_LIMITED"),
                    "headers": {"Retry-After": {"schema": {"type": "integer"}}},
                },
                **{k: v for k, v in BEARER_ERRORS.items() if k != "429"},
            },
        }
    }
    operations["/events/stream/ticket"] = {
        "post": {
            "operationId": "streamTicket",
            "summary": "A single-use ticket that opens one event stream (for EventSource, which cannot send headers)",
            "description": (
                "Valid for api.stream_ticket_seconds and for one GET /events/stream?ticket=...; the stream "
                "ends when the credential that asked for the ticket expires."
            ),
            "responses": {"201": _json_body(_ref("StreamTicket")), **BEARER_ERRORS},
        }
    }

    # The event routes also take API keys (brain.apikeys.scope).
    operations["/events"] = {
        "post": with_api_keys(with_body_errors(operations["/events"]["post"]), "events:write"),
        "get": with_api_keys(operations["/events"]["get"], "events:read"),
    }
    # A ticket is a credential of its own, an alternative to a token or key (never beside one).
    stream = with_api_keys(operations["/events/stream"]["get"], "events:read")
    operations["/events/stream"]["get"] = {**stream, "security": [*stream["security"], {"streamTicket": []}]}
    operations["/events/stream/ticket"]["post"] = with_api_keys(operations["/events/stream/ticket"]["post"], "events:read")
    return operations


SCHEMAS: dict[str, Any] = {
    "NewEvent": {
        "type": "object",
        "required": ["type", "data"],
        "additionalProperties": False,
        "properties": {
            "type": {**EVENT_TYPE, "examples": ["note.created"]},
            "data": {"description": "Any JSON value (size capped by api.max_event_bytes)"},
            "created_at": {
                # format applies to the string, the bounds to the number (epoch seconds, years 1 to 9999).
                "type": ["string", "number", "null"],
                "format": "date-time",
                "minimum": -62135596800,
                "exclusiveMaximum": 253402300800,
                "description": "RFC 3339 with offset, or epoch seconds; absent or null: the commit time",
            },
        },
    },
    "Event": {
        "type": "object",
        "required": ["id", "type", "data", "created_at"],
        "properties": {
            "id": {"type": "integer", "description": "Its number in the user's commit sequence: increasing, never reused"},
            "type": {"type": "string"},
            "data": {},
            "created_at": {"type": "string", "format": "date-time"},
        },
    },
    "EventsPage": {
        "type": "object",
        "required": ["events", "next_cursor"],
        "properties": {
            "events": {"type": "array", "items": _ref("Event")},
            "next_cursor": {"type": ["string", "null"]},
        },
    },
    # OpenAPI 3.1 has a text/event-stream schema describe each event (the fields of the SSE format).
    "StreamMessage": {
        "description": (
            "One SSE event of GET /events/stream: an unnamed message (`id`: the commit sequence, `data`: "
            "the event as JSON), or the named event that ends the stream (`data`: a StreamEnding)"
        ),
        "type": "object",
        "required": ["data"],
        "properties": {
            "event": {"type": "string", "enum": ["message", *STREAM_ENDINGS]},
            "id": {"type": "string", "pattern": "^[0-9]{1,19}$"},
            "data": {"type": "string"},
            "retry": {"type": "integer"},
        },
        "if": {"properties": {"event": {"const": "message"}}},
        "then": {"required": ["id"], "properties": {
            "data": {"contentMediaType": "application/json", "contentSchema": _ref("Event")}}},
        "else": {"properties": {"data": {"contentMediaType": "application/json", "contentSchema": _ref("StreamEnding")}}},
    },
    "StreamEnding": {
        "type": "object",
        "required": ["message", "last_event_id"],
        "properties": {
            "message": {"type": "string"},
            "code": {"type": "string", "description": "With `error`: the store's error code"},
            "last_event_id": {"type": "integer", "description": "Resume from here (Last-Event-ID)"},
        },
    },
    "StreamTicket": {
        "type": "object",
        "required": ["ticket", "expires_in", "stream"],
        "properties": {
            "ticket": {"type": "string"},
            "expires_in": {"type": "integer", "description": "Seconds"},
            "stream": {"type": "string", "description": "The path to open with ?ticket="},
        },
    },
    "Me": {
        "type": "object",
        "required": ["id", "claims"],
        "properties": {
            "id": {"type": "string"},
            "email": {"type": ["string", "null"]},
            "name": {"type": ["string", "null"]},
            "claims": {"type": "object"},
        },
    },
    "Health": {
        "type": "object",
        "required": ["status", "version", "problems"],
        "properties": {
            "status": {"type": "string", "enum": ["ok", "degraded"]},
            "problems": {
                "type": "array",
                "items": {"type": "string"},
                "description": "Why it is degraded: names (jwks, nats); with detail, 'name: reason'",
            },
            "version": {"type": "string"},
            "uptime_seconds": {"type": "number"},
            "supervisor": {"type": "object"},
            "jwks": {"type": "object"},
            "nats": {"type": "object"},
            "stores": {"type": "object"},
            "search": {"type": "object", "description": "Whether events are indexed, and the backfills' progress"},
        },
    },
}


def describe_guard(route: Route) -> dict[str, Any] | None:
    """The route's operation with what the API listener's guard (brain.api.routes.guard) may answer
    on it besides: the address's rate limit on every route; on a route behind a token, a refused
    token (401), an API key it does not take (403), the user's rate limit and signing keys not loaded
    yet or an API key the auth server could not be asked about (503)."""
    operation = route.operation
    if operation is None:
        return None
    if route.public:
        return retry_after(with_error(operation, "429", "RATE_LIMITED: too many requests from this address "
                                      "(api.rate_limit_ip_*)", "RATE_LIMITED"), "429")
    described = retry_after(with_error(operation, "429", "RATE_LIMITED: too many requests for this user or from this "
                                       "address (api.rate_limit_*)", "RATE_LIMITED"), "429")
    described = with_error(described, "401", "Missing, malformed, expired or otherwise invalid bearer token "
                           "(USER_DELETED: its user is gone)", *TOKEN_CODES)
    described["responses"]["401"].setdefault("headers", BEARER_ERRORS["401"]["headers"])
    if "x-api-key-scope" not in described:
        described = with_error(described, "403", "INSUFFICIENT_SCOPE: an API key (this operation takes none: use "
                               "a JWT)", "INSUFFICIENT_SCOPE")
    return retry_after(with_error(described, "503", "Signing keys not loaded yet, or the auth server could not be "
                                  "asked about an API key (SERVICE_UNAVAILABLE)", ServiceUnavailable.code), "503")

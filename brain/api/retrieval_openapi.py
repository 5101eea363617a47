"""The OpenAPI description of the retrieval routes (brain.api.retrieval carries them)."""

from __future__ import annotations

from typing import Any

from brain.api.openapi import BEARER_ERRORS, STORED_TYPE_FILTER, TIME_PARAMETER
from brain.api.settings import ApiSettings, SearchSettings
from brain.apikeys import with_api_keys
from brain.openapi import INVALID_CODES, UNAVAILABLE_CODES, disk_full
from brain.openapi import error as _error
from brain.openapi import json_body as _json_body
from brain.openapi import ref as _ref

# The highest event id or sequence number (SQLite's integer).
MAX_ID = 2**63 - 1
_AUTH_ERRORS = {
    **BEARER_ERRORS,
    "503": {
        **_error("Signing keys not loaded yet, a store is restarting or its storage failing, or search is off "
                 "(search.index = false)", *UNAVAILABLE_CODES),
        "headers": {"Retry-After": {"schema": {"type": "integer"}}},
    },
}
_SINCE = {"name": "since", "in": "query", "description": "Inclusive lower bound on created_at: RFC 3339 with "
          "offset, or epoch seconds", "schema": TIME_PARAMETER}
_UNTIL = {"name": "until", "in": "query", "description": "Exclusive upper bound on created_at",
          "schema": TIME_PARAMETER}
_ID = {"name": "id", "in": "path", "required": True, "schema": {"type": "integer", "minimum": 1, "maximum": MAX_ID}}

QUERY_LANGUAGE = (
    "Words must all match (case and diacritics folded); \"exact phrase\"; lea* (a prefix of 2 letters or "
    "more); -word or NOT word excludes; a OR b (binds tighter than AND); ( ) groups; field:value looks "
    "in one top-level field of data, nested strings included (from:anna, to:bob@example.com, "
    "subject:lease, labels:inbox, account:ID, field:(a OR b)); type:note.created or type:mail.* filters "
    "by type; has:attachment; body: means body, body_text and text, people: a mail's from, to, cc, bcc "
    "and reply_to, label: and folder: labels and folders. A query the language does not allow is a 400 "
    "whose `position` is the 1-based character where it goes wrong."
)


def paths(api: ApiSettings, search: SearchSettings) -> dict[str, dict[str, Any]]:
    """The retrieval operations, with the limits these settings make the server enforce."""
    return {
        "/search": {
            "get": with_api_keys({
                "operationId": "search",
                "summary": "Full-text search over the user's events and mail, best matches first",
                "description": (
                    "Ranked by BM25 (a title or subject above people above the rest) with a "
                    "recency boost ([search] recency_weight, recency_half_life_days). " + QUERY_LANGUAGE
                ),
                "parameters": [
                    {"name": "q", "in": "query", "required": True,
                     "schema": {"type": "string", "minLength": 1, "maxLength": search.max_query_chars},
                     "description": "The query"},
                    _SINCE,
                    _UNTIL,
                    {"name": "limit", "in": "query", "description": "Results per page (default search.page_default)",
                     "schema": {"type": "integer", "minimum": 1, "maximum": search.page_max}},
                    {"name": "cursor", "in": "query", "schema": {"type": "string"},
                     "description": "next_cursor of the previous page, with the same q, since and until"},
                ],
                "responses": {
                    "200": _json_body(_ref("SearchPage")),
                    "400": _error("INVALID_QUERY (with `position`) or another invalid parameter, named",
                                  "INVALID_QUERY", *INVALID_CODES),
                    **_AUTH_ERRORS,
                },
            }, "search")
        },
        "/events/changes": {
            "get": with_api_keys({
                "operationId": "eventChanges",
                "summary": "What was committed after a sequence number, in commit order (deletions included)",
                "description": (
                    "Every commit takes the next number of the user's sequence: a stored event as its id, a "
                    "deletion as the id of its tombstone (type event.deleted, data {id, type, created_at} of "
                    "the deleted event). Numbers grow in commit order and are never reused, so polling with "
                    "after=next_after never misses an event, however old its created_at."
                ),
                "parameters": [
                    {"name": "after", "in": "query", "schema": {"type": "integer", "minimum": 0, "maximum": MAX_ID},
                     "description": "A sequence number (0: from the start)"},
                    {"name": "limit", "in": "query", "description": "Events per page (default api.events_page_default)",
                     "schema": {"type": "integer", "minimum": 1, "maximum": api.events_page_max}},
                    {**STORED_TYPE_FILTER,
                     "description": STORED_TYPE_FILTER["description"] + "; deletions are of type event.deleted"},
                ],
                "responses": {
                    "200": _json_body(_ref("ChangesPage")),
                    "400": _error("Invalid parameter; the message names it", *INVALID_CODES),
                    **_AUTH_ERRORS,
                },
            }, "events:read")
        },
        "/events/{id}": {
            "get": with_api_keys({
                "operationId": "getEvent",
                "summary": "One event by id",
                "parameters": [_ID],
                "responses": {"200": _json_body(_ref("Event")), "404": _error("No such event", "NOT_FOUND"), **_AUTH_ERRORS},
            }, "events:read"),
            "delete": with_api_keys({
                "operationId": "deleteEvent",
                "summary": "Delete one event: its row and its index entry go, a tombstone is published",
                "parameters": [_ID],
                "responses": {"200": _json_body(_ref("Deleted")), "404": _error("No such event", "NOT_FOUND"),
                              **_AUTH_ERRORS, "507": disk_full("the disk under the user's store is full")},
            }, "events:write"),
        },
        "/events": {
            "delete": with_api_keys({
                "operationId": "deleteEvents",
                "summary": "Delete the events of given types and/or created in a time range",
                "description": "At least one of type, since, until. Each deleted event leaves a tombstone (event.deleted).",
                "parameters": [STORED_TYPE_FILTER, _SINCE, _UNTIL],
                "responses": {
                    "200": _json_body({"type": "object", "required": ["deleted"], "properties": {"deleted": {"type": "integer"}}}),
                    "400": _error("No filter, or an invalid one; the message names it", *INVALID_CODES),
                    **_AUTH_ERRORS,
                    "507": disk_full("the disk under the user's store is full"),
                },
            }, "events:write")
        },
        "/me/stats": {
            "get": with_api_keys({
                "operationId": "meStats",
                "summary": "The user's event counts by type, storage, search index state and quotas",
                "responses": {"200": _json_body(_ref("Stats")), **_AUTH_ERRORS},
            }, "events:read")
        },
    }


SCHEMAS: dict[str, Any] = {
    "SearchPage": {
        "type": "object",
        "required": ["results", "next_cursor", "partial"],
        "properties": {
            "results": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["event", "score", "highlights"],
                    "properties": {
                        "event": _ref("Event"),
                        "score": {"type": "number"},
                        "highlights": {
                            "type": "object",
                            "additionalProperties": {"type": "string"},
                            "description": "By field path: the text around the matches, HTML-escaped, "
                                           "matches in <mark></mark>",
                        },
                    },
                },
            },
            "next_cursor": {"type": ["string", "null"]},
            "partial": {"type": "boolean", "description": "The index is still being built: older events may be missing"},
        },
    },
    "ChangesPage": {
        "type": "object",
        "required": ["events", "next_after", "has_more"],
        "properties": {
            "events": {"type": "array", "items": _ref("Event")},
            "next_after": {"type": "integer", "description": "Pass as after= to read on"},
            "has_more": {"type": "boolean"},
        },
    },
    # The data of a deletion's tombstone (brain.api.search.tombstone_data), the event the server writes for it.
    "event.deleted": {
        "type": "object",
        "description": "A tombstone: this event of the user was deleted (DELETE /events/{id} or DELETE /events)",
        "required": ["id", "type", "created_at"],
        "additionalProperties": False,
        "properties": {
            "id": {"type": "integer", "minimum": 1, "description": "The deleted event's id"},
            "type": {"type": "string", "description": "The deleted event's type"},
            "created_at": {"type": "string", "format": "date-time", "description": "The deleted event's created_at"},
        },
    },
    "Deleted": {
        "type": "object",
        "required": ["deleted", "ids"],
        "properties": {"deleted": {"type": "integer"}, "ids": {"type": "array", "items": {"type": "integer"}}},
    },
    "Stats": {
        "type": "object",
        "required": ["events", "by_type", "sequence", "bytes", "index", "quota"],
        "properties": {
            "events": {"type": "integer"},
            "by_type": {"type": "object", "additionalProperties": {"type": "integer"}},
            "sequence": {"type": "integer", "description": "The last number of the commit sequence"},
            "tombstones": {"type": "integer"},
            "bytes": {"type": "integer", "description": "Bytes in use (what api.max_user_bytes limits)"},
            "file_bytes": {"type": "integer"},
            "index": {
                "type": "object",
                "properties": {
                    "state": {"enum": ["ready", "backfilling", "disabled"]},
                    "documents": {"type": "integer"},
                    "pending": {"type": "integer"},
                },
            },
            "quota": {
                "type": "object",
                "properties": {
                    "max_bytes": {"type": ["integer", "null"]},
                    "max_events_per_minute": {"type": ["integer", "null"]},
                    "events_available": {"type": ["integer", "null"]},
                },
            },
        },
    },
}

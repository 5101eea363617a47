"""The OpenAPI description of the webhook routes (brain.webhooks.routes carries them), and of
the deliveries themselves: the POST a receiver gets, as the document's top-level `webhooks`.
"""

from __future__ import annotations

from typing import Any

from brain.apikeys import with_api_keys
from brain.openapi import INVALID_CODES, TOKEN_CODES, UNAVAILABLE_CODES, disk_full, with_body_errors
from brain.openapi import error as _error
from brain.openapi import json_body as _json_body
from brain.openapi import ref as _ref

_ERRORS = {
    "401": _error("Missing or invalid bearer token", *TOKEN_CODES),
    "429": _error("RATE_LIMITED", "RATE_LIMITED"),
    "503": _error("Webhooks are starting or restarting, or webhooks.db is failing (STORE_UNAVAILABLE)", *UNAVAILABLE_CODES),
}
_ID = {"name": "id", "in": "path", "required": True, "schema": {"type": "string", "maxLength": 64}}

PATHS: dict[str, dict[str, Any]] = {
    "/webhooks": {
        "post": with_api_keys(with_body_errors({
            "operationId": "createWebhook",
            "summary": "Register a URL that gets a signed copy of each of the caller's events from now on",
            "description": (
                "Deliveries are POSTs of {type, timestamp, data} (data: the event as GET /events shows it) "
                "with Standard Webhooks headers: webhook-id (the same on every retry), webhook-timestamp, "
                "webhook-signature `v1,<base64 HMAC-SHA256 of '{id}.{timestamp}.{body}'>` keyed with the "
                "bytes of the secret after `whsec_`. A 2xx answer is a delivery; anything else is retried "
                "with exponential backoff; an endpoint failing for webhooks.disable_after_days is disabled "
                "and a `webhook.disabled` event says so. The URL must resolve to public addresses unless "
                "the operator allows its network."
            ),
            "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("NewWebhook")}}},
            "responses": {
                "201": _json_body(_ref("WebhookWithSecret")),
                "400": _error("Invalid field, or a URL brain may not deliver to (ADDRESS_REFUSED); the message names it",
                              "ADDRESS_REFUSED", *INVALID_CODES),
                "422": _error("TOO_MANY_WEBHOOKS: webhooks.max_per_user reached", "TOO_MANY_WEBHOOKS"),
                **_ERRORS,
                "507": disk_full("the disk under webhooks.db is full"),
            },
        }), "events:read"),
        "get": with_api_keys({
            "operationId": "listWebhooks",
            "summary": "The caller's webhooks",
            "responses": {"200": _json_body({"type": "object", "required": ["webhooks"], "properties": {
                "webhooks": {"type": "array", "items": _ref("Webhook")}}}), **_ERRORS},
        }, "events:read"),
    },
    "/webhooks/{id}": {
        "get": with_api_keys({
            "operationId": "getWebhook",
            "summary": "One of the caller's webhooks",
            "parameters": [_ID],
            "responses": {"200": _json_body(_ref("Webhook")), "404": _error("No such webhook of the caller's", "NOT_FOUND"), **_ERRORS},
        }, "events:read"),
        "delete": with_api_keys({
            "operationId": "deleteWebhook",
            "summary": "Delete one of the caller's webhooks, with its pending deliveries",
            "parameters": [_ID],
            "responses": {"204": {"description": "Deleted"}, "404": _error("No such webhook of the caller's", "NOT_FOUND"),
                          **_ERRORS, "507": disk_full("the disk under webhooks.db is full")},
        }, "events:read"),
    },
    "/webhooks/{id}/deliveries": {
        "get": with_api_keys({
            "operationId": "listWebhookDeliveries",
            "summary": "A webhook's newest deliveries, each with its last attempts",
            "parameters": [
                _ID,
                {"name": "status", "in": "query", "schema": {"type": "string", "enum": ["pending", "delivered", "failed"]}},
                {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 100}},
            ],
            "responses": {
                "200": _json_body({"type": "object", "required": ["deliveries"], "properties": {
                    "deliveries": {"type": "array", "items": _ref("WebhookDelivery")}}}),
                "400": _error("Invalid parameter", *INVALID_CODES),
                "404": _error("No such webhook of the caller's", "NOT_FOUND"),
                **_ERRORS,
            },
        }, "events:read"),
    },
}

_WEBHOOK_PROPERTIES: dict[str, Any] = {
    "id": {"type": "string"},
    "url": {"type": "string"},
    "types": {"type": "array", "items": {"type": "string"}, "description": "[] = every type"},
    "state": {"type": "string", "enum": ["active", "disabled"]},
    "created_at": {"type": "string", "format": "date-time"},
    "failing_since": {"type": ["string", "null"], "format": "date-time"},
    "disabled_at": {"type": ["string", "null"], "format": "date-time"},
    "disabled_reason": {"type": ["string", "null"]},
}
SCHEMAS: dict[str, Any] = {
    "NewWebhook": {
        "type": "object",
        "required": ["url"],
        "additionalProperties": False,
        "properties": {
            "url": {"type": "string", "format": "uri", "maxLength": 2048},
            "types": {"type": "array", "items": {"type": "string"},
                      "description": "Exact event types or `prefix.*`; missing or [] = every type"},
            "secret": {"type": "string", "description": "whsec_ + base64 of 24-64 bytes; default: a new one"},
        },
    },
    "Webhook": {"type": "object", "required": ["id", "url", "types", "state"], "properties": _WEBHOOK_PROPERTIES},
    "WebhookWithSecret": {
        "type": "object",
        "required": ["id", "url", "types", "state", "secret"],
        "properties": {**_WEBHOOK_PROPERTIES, "secret": {"type": "string", "description": "Shown this once"}},
    },
    "WebhookPayload": {
        "type": "object",
        "description": "The body of a delivery (Standard Webhooks): the event, its type and time beside it",
        "required": ["type", "timestamp", "data"],
        "additionalProperties": False,
        "properties": {
            "type": {"type": "string", "description": "The event's type"},
            "timestamp": {"type": "string", "format": "date-time", "description": "The event's created_at"},
            "data": _ref("Event"),
        },
    },
    # The data of the event the server writes when it gives up on an endpoint (queue.DISABLED_EVENT).
    "webhook.disabled": {
        "type": "object",
        "description": "An endpoint failed for webhooks.disable_after_days and was disabled; its pending deliveries failed",
        "required": ["webhook_id", "url", "failing_since", "disabled_at", "last_error", "deliveries_failed"],
        "additionalProperties": False,
        "properties": {
            "webhook_id": {"type": "string"},
            "url": {"type": "string"},
            "failing_since": {"type": ["string", "null"], "format": "date-time"},
            "disabled_at": {"type": "string", "format": "date-time"},
            "last_error": {"type": "string", "description": "The last attempt's error, or `HTTP <status>`"},
            "deliveries_failed": {"type": "integer", "minimum": 0, "description": "Pending deliveries given up with it"},
        },
    },
    "WebhookDelivery": {
        "type": "object",
        "required": ["id", "event_id", "status", "attempts"],
        "properties": {
            "id": {"type": "string", "description": "The webhook-id header of every attempt"},
            "event_id": {"type": "integer"},
            "event_type": {"type": "string"},
            "status": {"type": "string", "enum": ["pending", "delivered", "failed"]},
            "attempts": {"type": "integer"},
            "created_at": {"type": "string", "format": "date-time"},
            "finished_at": {"type": ["string", "null"], "format": "date-time"},
            "last_status": {"type": ["integer", "null"]},
            "last_error": {"type": ["string", "null"]},
            "attempt_log": {"type": "array", "items": {"type": "object", "properties": {
                "at": {"type": "string", "format": "date-time"},
                "status": {"type": ["integer", "null"]},
                "error": {"type": ["string", "null"]},
                "duration_ms": {"type": "number"},
            }}},
        },
    },
}

# What a receiver's URL gets: one POST per event, retried until a 2xx (brain.webhooks.sender).
WEBHOOKS: dict[str, Any] = {
    "event": {
        "post": {
            "operationId": "receiveWebhookEvent",
            "summary": "One of the user's events, POSTed to a registered webhook URL",
            "description": (
                "Sent for each event committed after the webhook was registered whose type it asked for, "
                "in commit order per endpoint (at most a few in flight at once). Verify webhook-signature "
                "before trusting the body, refuse an old webhook-timestamp, and drop a webhook-id seen "
                "before: every retry of a delivery carries the same one."
            ),
            "security": [],
            "parameters": [
                {"name": "webhook-id", "in": "header", "required": True,
                 "description": "The delivery's id: the same on every attempt",
                 "schema": {"type": "string", "pattern": "^msg_[A-Za-z0-9_-]{24}$"}},
                {"name": "webhook-timestamp", "in": "header", "required": True,
                 "description": "When this attempt was signed, in seconds since the epoch",
                 "schema": {"type": "string", "pattern": "^[0-9]{1,12}$"}},
                {"name": "webhook-signature", "in": "header", "required": True,
                 "description": "`v1,` and the base64 of HMAC-SHA256 over `{webhook-id}.{webhook-timestamp}.{body}`, "
                                "keyed with the bytes of the secret after `whsec_`",
                 "schema": {"type": "string", "pattern": "^v1,[A-Za-z0-9+/]{43}=$"}},
                {"name": "User-Agent", "in": "header", "required": True,
                 "schema": {"type": "string", "pattern": "^brain-webhooks/"}},
            ],
            "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("WebhookPayload")}}},
            "responses": {
                "2XX": {"description": "Delivered: not sent again"},
                "default": {
                    "description": (
                        "Not delivered (as is no answer within webhooks.timeout_seconds, or a redirect): retried "
                        "with exponential backoff, no sooner than a Retry-After asks; an endpoint failing for "
                        "webhooks.disable_after_days is disabled (a webhook.disabled event)"
                    ),
                },
            },
        }
    }
}

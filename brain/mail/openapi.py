"""The OpenAPI description of the mail routes (merged into /openapi.json by the API role)."""

from __future__ import annotations

from typing import Any

from brain.api.openapi import with_api_keys

__all__ = ["PATHS", "SCHEMAS"]


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_ERRORS = {
    "400": _json(_ref("Error"), "Invalid body: unknown provider, missing or bad fields (named)"),
    "401": _json(_ref("Error"), "Missing or invalid bearer token"),
}
_TOO_MANY_CONNECTS = {
    **_json(
        _ref("Error"),
        "TOO_MANY_CONNECTS: `[mail] connects_per_user` connects of the caller are still in progress",
    ),
    "headers": {"Retry-After": {"schema": {"type": "integer"}, "description": "Seconds to wait"}},
}
_ACCOUNT_RESPONSE = {"type": "object", "required": ["account"], "properties": {"account": _ref("MailAccount")}}

PATHS: dict[str, dict[str, Any]] = {
    "/mail/connect": {
        "post": {
            "operationId": "mailConnect",
            "summary": "Connect a mail account: start OAuth, or hand over a refresh token",
            "description": (
                "With only `provider`, answers the provider's authorize URL carrying a signed, "
                "single-use `state` bound to the caller; the provider then redirects the browser "
                "to /mail/oauth/callback. With `refresh_token` (clients that already hold one), "
                "the account is connected at once. Either way its sync starts immediately."
            ),
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": _ref("MailConnect")}},
            },
            "responses": {
                "200": _json(
                    {"oneOf": [_ref("MailAuthorize"), _ACCOUNT_RESPONSE]},
                    "The authorize URL to send the user to, or a reconnected account",
                ),
                "201": _json(_ACCOUNT_RESPONSE, "A newly connected account (syncing)"),
                "429": _TOO_MANY_CONNECTS,
                "502": _json(_ref("Error"), "The provider could not be reached"),
                **_ERRORS,
            },
        }
    },
    "/mail/oauth/callback": {
        "get": {
            "operationId": "mailOAuthCallback",
            "summary": "Where the provider sends the browser back: exchanges the code",
            "description": (
                "Needs no token: the signed state names the user. A front end that receives the "
                "redirect itself may forward code and state with its bearer token; the state must "
                "then belong to that user."
            ),
            "security": [],
            "parameters": [
                {"name": "state", "in": "query", "required": True, "schema": {"type": "string"}},
                {"name": "code", "in": "query", "required": True, "schema": {"type": "string"}},
                {"name": "error", "in": "query", "schema": {"type": "string"}},
            ],
            "responses": {
                "200": _json(_ACCOUNT_RESPONSE, "A reconnected account"),
                "201": _json(_ACCOUNT_RESPONSE, "A newly connected account (syncing)"),
                "400": _json(_ref("Error"), "Bad, expired or replayed state; refused code; consent denied"),
                "403": _json(_ref("Error"), "A bearer token was sent and its user did not start this flow"),
                "502": _json(_ref("Error"), "The provider could not be reached"),
            },
        }
    },
    "/mail/status": {
        "get": with_api_keys({
            "operationId": "mailStatus",
            "summary": "The caller's mail accounts and their sync state",
            "responses": {
                "200": _json(
                    {
                        "type": "object",
                        "required": ["accounts"],
                        "properties": {"accounts": {"type": "array", "items": _ref("MailAccount")}},
                    },
                    "Every account of the caller, oldest first",
                ),
                "401": _ERRORS["401"],
            },
        }, "mail:read")
    },
    "/mail/disconnect": {
        "post": {
            "operationId": "mailDisconnect",
            "summary": "Stop syncing an account and delete its credentials (stored events stay)",
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "required": ["account"],
                            "properties": {"account": {"type": "string"}},
                        }
                    }
                },
            },
            "responses": {
                "200": _json(
                    {**_ACCOUNT_RESPONSE, "properties": {**_ACCOUNT_RESPONSE["properties"], "events_kept": {"const": True}}},
                    "Disconnected",
                ),
                "404": _json(_ref("Error"), "No such account of the caller"),
                **_ERRORS,
            },
        }
    },
}

SCHEMAS: dict[str, Any] = {
    "MailConnect": {
        "type": "object",
        "required": ["provider"],
        "properties": {
            "provider": {"type": "string", "description": "A registered provider: gmail, outlook, ..."},
            "refresh_token": {"type": "string", "description": "Connect directly with this token"},
        },
    },
    "MailAuthorize": {
        "type": "object",
        "required": ["provider", "authorize_url", "state", "redirect_uri"],
        "properties": {
            "provider": {"type": "string"},
            "authorize_url": {"type": "string", "format": "uri"},
            "state": {"type": "string"},
            "redirect_uri": {"type": "string", "format": "uri"},
        },
    },
    "MailAccount": {
        "type": "object",
        "required": ["account", "provider", "address", "state", "messages_synced", "initial_sync"],
        "properties": {
            "account": {"type": "string"},
            "provider": {"type": "string"},
            "address": {"type": "string"},
            "state": {"enum": ["syncing", "idle", "backoff", "needs_reauth", "error", "disconnected"]},
            "phase": {"enum": ["initial", "reconcile", "incremental"]},
            "last_sync_at": {"type": ["string", "null"], "format": "date-time"},
            "messages_synced": {"type": "integer"},
            "initial_sync": {
                "type": "object",
                "properties": {
                    "complete": {"type": "boolean"},
                    "done": {"type": "integer"},
                    "estimated_total": {"type": ["integer", "null"]},
                },
            },
            "last_error": {"type": ["string", "null"]},
            "last_error_at": {"type": ["string", "null"], "format": "date-time"},
            "retry_at": {"type": ["string", "null"], "format": "date-time"},
            "connected_at": {"type": "string", "format": "date-time"},
        },
    },
}

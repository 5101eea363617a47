"""The OpenAPI 3.1 description of both HTTP roles, served by the API role at /openapi.json.

tests/test_openapi.py builds both roles' aiohttp apps and checks that every route is described
here and every described operation exists, so this file stays true. A module that adds routes
to a role describes them with `add_paths` (at import time, next to the routes).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import brain

if TYPE_CHECKING:
    from brain.config import Settings

_EXTRA_PATHS: dict[str, dict[str, dict[str, Any]]] = {"auth": {}, "api": {}}
_EXTRA_SCHEMAS: dict[str, Any] = {}


def add_paths(role: str, paths: Mapping[str, Mapping[str, Any]], schemas: Mapping[str, Any] | None = None) -> None:
    """Describe more routes of a role ("auth" or "api"): OpenAPI path items, plus schemas."""
    if role not in _EXTRA_PATHS:
        raise ValueError(f"unknown role {role!r}")
    for path, item in paths.items():
        _EXTRA_PATHS[role].setdefault(path, {}).update(copy.deepcopy(dict(item)))
    _EXTRA_SCHEMAS.update(copy.deepcopy(dict(schemas or {})))


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json_body(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _error(description: str) -> dict[str, Any]:
    return _json_body(_ref("Error"), description)


_BEARER_ERRORS = {
    "401": {
        **_error("Missing, malformed, expired or otherwise invalid bearer token"),
        "headers": {"WWW-Authenticate": {"schema": {"type": "string"}, "description": 'Bearer error="invalid_token"'}},
    },
    "503": {
        **_error("Signing keys not loaded yet (or too stale), or a store is restarting"),
        "headers": {"Retry-After": {"schema": {"type": "integer"}}},
    },
}

def with_api_keys(operation: dict[str, Any], scope: str | None) -> dict[str, Any]:
    """An operation that also takes API keys: its security, the scope a key needs (`x-api-key-scope`,
    "any" for any key; see brain.api.routes.scope) and the 403 for a key without it."""
    responses = {**operation["responses"], "403": _error("INSUFFICIENT_SCOPE: the API key lacks the scope")}
    return {**operation, "security": [{"bearerAuth": []}, {"apiKeyHeader": []}], "x-api-key-scope": scope or "any",
            "responses": responses}


# Served on a role's port only when a metrics token is set (brain.metrics).
_METRICS_PATH: dict[str, Any] = {
    "get": {
        "operationId": "metrics",
        "summary": "Prometheus metrics (text exposition format); needs the metrics token, not a JWT",
        "security": [{"metricsToken": []}],
        "responses": {
            "200": {"description": "OK", "content": {"text/plain": {"schema": {"type": "string"}}}},
            "401": _error("Missing or wrong metrics token"),
        },
    }
}

_API_PATHS: dict[str, dict[str, Any]] = {
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
                "401": _error("Detail asked for without the metrics token"),
                "403": _error("Detail asked for, but no metrics token is configured"),
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
    "/me": {
        "get": with_api_keys({
            "operationId": "me",
            "summary": "The user the bearer token (or API key) speaks for, and how the caller authenticated",
            "responses": {"200": _json_body(_ref("Me")), **_BEARER_ERRORS},
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
                                {"type": "array", "items": _ref("NewEvent"), "minItems": 1},
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
                "400": _error("Invalid body; the message names the field"),
                "403": _error(
                    "RESERVED_EVENT_TYPE: a type the server writes itself (mail.*, or a namespace a "
                    "plugin reserved); the body's `type` names it"
                ),
                "413": _error("Body, batch or data too large"),
                "415": _error("Not JSON"),
                "422": _error("Idempotency-Key reused for a different request"),
                **_BEARER_ERRORS,
            },
        },
        "get": {
            "operationId": "listEvents",
            "summary": "The user's events, newest first",
            "parameters": [
                {"name": "type", "in": "query", "schema": {"type": "string", "maxLength": 128}},
                {
                    "name": "since",
                    "in": "query",
                    "description": "Inclusive lower bound on created_at: RFC 3339 with offset, or epoch seconds",
                    "schema": {"type": "string"},
                },
                {
                    "name": "until",
                    "in": "query",
                    "description": "Exclusive upper bound on created_at",
                    "schema": {"type": "string"},
                },
                {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1}},
                {
                    "name": "cursor",
                    "in": "query",
                    "description": "next_cursor of the previous page (signed, valid only for the same user)",
                    "schema": {"type": "string"},
                },
            ],
            "responses": {
                "200": _json_body(_ref("EventsPage")),
                "400": _error("Invalid parameter; the message names it"),
                **_BEARER_ERRORS,
            },
        },
    },
}
# The event routes also take API keys (brain.api.routes.scope).
_API_PATHS["/events"] = {
    "post": with_api_keys(_API_PATHS["/events"]["post"], "events:write"),
    "get": with_api_keys(_API_PATHS["/events"]["get"], "events:read"),
}

_AUTH_ERRORS = {"400": _error("Invalid body"), "403": _error("Untrusted origin"), "429": _error("Rate limited")}

_AUTH_PATHS: dict[str, dict[str, Any]] = {
    "/api/auth/sign-up/email": {
        "post": {
            "operationId": "signUpEmail",
            "summary": "Create a user with email and password (Better Auth)",
            "security": [],
            "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("SignUpRequest")}}},
            "responses": {
                "200": _json_body(_ref("SessionResponse")),
                "422": _error("USER_ALREADY_EXISTS_USE_ANOTHER_EMAIL"),
                **_AUTH_ERRORS,
            },
        }
    },
    "/api/auth/sign-in/email": {
        "post": {
            "operationId": "signInEmail",
            "summary": "Sign in with email and password (Better Auth)",
            "security": [],
            "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("SignInRequest")}}},
            "responses": {
                "200": _json_body(_ref("SessionResponse")),
                "401": _error("INVALID_EMAIL_OR_PASSWORD"),
                **_AUTH_ERRORS,
            },
        }
    },
    "/api/auth/get-session": {
        "get": {
            "operationId": "getSession",
            "summary": "The current session and user, or null",
            "security": [{"sessionCookie": []}, {"sessionBearer": []}, {}],
            "responses": {
                "200": _json_body(
                    {
                        "oneOf": [
                            {"type": "null"},
                            {
                                "type": "object",
                                "properties": {"session": _ref("Session"), "user": _ref("User")},
                            },
                        ]
                    }
                )
            },
        }
    },
    "/api/auth/token": {
        "get": {
            "operationId": "token",
            "summary": "A fresh JWT for the current session",
            "security": [{"sessionCookie": []}, {"sessionBearer": []}],
            "responses": {
                "200": _json_body({"type": "object", "required": ["token"], "properties": {"token": {"type": "string"}}}),
                "401": _error("No live session"),
            },
        }
    },
    "/api/auth/sign-out": {
        "post": {
            "operationId": "signOut",
            "summary": "Revoke the current session",
            "security": [{"sessionCookie": []}, {"sessionBearer": []}, {}],
            "responses": {"200": _json_body({"type": "object", "properties": {"success": {"type": "boolean"}}})},
        }
    },
    "/api/auth/jwks": {
        "get": {
            "operationId": "jwks",
            "summary": "The public signing keys",
            "security": [],
            "responses": {"200": _json_body(_ref("Jwks"))},
        }
    },
    "/api/auth/ok": {
        "get": {
            "operationId": "authOk",
            "summary": "Liveness of the auth role",
            "security": [],
            "responses": {"200": _json_body({"type": "object", "properties": {"ok": {"type": "boolean"}}})},
        }
    },
    "/.well-known/openid-configuration": {
        "get": {
            "operationId": "openidConfiguration",
            "summary": "Issuer and jwks_uri for standard verifiers",
            "security": [],
            "responses": {
                "200": _json_body(
                    {
                        "type": "object",
                        "required": ["issuer", "jwks_uri"],
                        "properties": {"issuer": {"type": "string"}, "jwks_uri": {"type": "string"}},
                    }
                )
            },
        }
    },
}

_SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["message", "code"],
        "properties": {"message": {"type": "string"}, "code": {"type": "string"}},
    },
    "NewEvent": {
        "type": "object",
        "required": ["type", "data"],
        "additionalProperties": False,
        "properties": {
            "type": {
                "type": "string",
                "maxLength": 128,
                "pattern": r"^[A-Za-z][A-Za-z0-9_-]*(\.[A-Za-z0-9_-]+)*$",
                "examples": ["note.created"],
            },
            "data": {"description": "Any JSON value (size capped by api.max_event_bytes)"},
            "created_at": {
                "oneOf": [{"type": "string", "format": "date-time"}, {"type": "number"}],
                "description": "RFC 3339 with offset, or epoch seconds; default: commit time",
            },
        },
    },
    "Event": {
        "type": "object",
        "required": ["id", "type", "data", "created_at"],
        "properties": {
            "id": {"type": "integer", "description": "Per-user, increasing"},
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
        },
    },
    "SignUpRequest": {
        "type": "object",
        "required": ["name", "email", "password"],
        "properties": {
            "name": {"type": "string"},
            "email": {"type": "string", "format": "email"},
            "password": {"type": "string", "minLength": 8, "maxLength": 128},
            "image": {"type": "string"},
            "callbackURL": {"type": "string"},
            "rememberMe": {"type": "boolean"},
        },
    },
    "SignInRequest": {
        "type": "object",
        "required": ["email", "password"],
        "properties": {
            "email": {"type": "string", "format": "email"},
            "password": {"type": "string"},
            "rememberMe": {"type": "boolean"},
            "callbackURL": {"type": "string"},
        },
    },
    "User": {
        "type": "object",
        "required": ["id", "email", "name"],
        "properties": {
            "id": {"type": "string"},
            "email": {"type": "string"},
            "name": {"type": "string"},
            "image": {"type": ["string", "null"]},
            "emailVerified": {"type": "boolean"},
            "twoFactorEnabled": {"type": "boolean"},
            "createdAt": {"type": "string", "format": "date-time"},
            "updatedAt": {"type": "string", "format": "date-time"},
        },
    },
    "Session": {
        "type": "object",
        "properties": {
            "id": {"type": "string"},
            "userId": {"type": "string"},
            "token": {"type": "string"},
            "expiresAt": {"type": "string", "format": "date-time"},
            "ipAddress": {"type": "string"},
            "userAgent": {"type": "string"},
            "createdAt": {"type": "string", "format": "date-time"},
            "updatedAt": {"type": "string", "format": "date-time"},
        },
    },
    "SessionResponse": {
        "type": "object",
        "required": ["token", "user", "session", "jwt"],
        "properties": {
            "token": {"type": ["string", "null"], "description": "Session token"},
            "user": _ref("User"),
            "session": {"oneOf": [_ref("Session"), {"type": "null"}]},
            "jwt": {"type": ["string", "null"], "description": "RS256 JWT for the API role"},
        },
    },
    "Jwks": {
        "type": "object",
        "required": ["keys"],
        "properties": {"keys": {"type": "array", "items": {"type": "object", "required": ["kty", "kid"]}}},
    },
}


def build_spec(settings: Settings) -> dict[str, Any]:
    """The whole document, with each role's server URL."""
    auth_server = [{"url": settings.auth_public_url, "description": "auth role"}]
    paths: dict[str, Any] = {}
    for path, item in {**_API_PATHS, **_EXTRA_PATHS["api"]}.items():
        paths[path] = copy.deepcopy(item)
    for path, item in {**_AUTH_PATHS, **_EXTRA_PATHS["auth"]}.items():
        paths[path] = {"servers": auth_server, **copy.deepcopy(item)}
    if settings.metrics.exposed and not settings.metrics.port:  # else on its own listener, or not at all
        metrics = copy.deepcopy(_METRICS_PATH)
        paths["/metrics"] = metrics if "api" in settings.server.roles else {"servers": auth_server, **metrics}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "brain",
            "version": brain.__version__,
            "description": (
                "Two HTTP roles: auth (Better Auth-compatible sign-up/sign-in, sessions, JWTs, JWKS) "
                "and api (bearer-JWT protected per-user event stores). Paths of the auth role name "
                "their own server."
            ),
        },
        "servers": [{"url": settings.api_public_url, "description": "api role"}],
        "security": [{"bearerAuth": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
                "sessionCookie": {"type": "apiKey", "in": "cookie", "name": "better-auth.session_token"},
                "sessionBearer": {"type": "http", "scheme": "bearer", "description": "A session token"},
                "metricsToken": {"type": "http", "scheme": "bearer", "description": "The [metrics] token"},
                "apiKeyHeader": {"type": "apiKey", "in": "header", "name": "x-api-key",
                                 "description": "An API key (also accepted as `Authorization: Bearer <key>`); "
                                                "limited to the scope a route names in x-api-key-scope"},
                "twoFactorCookie": {"type": "apiKey", "in": "cookie", "name": "better-auth.two_factor",
                                    "description": "The challenge sign-in sets for a user with two-factor"},
            },
            "schemas": {**copy.deepcopy(_SCHEMAS), **copy.deepcopy(_EXTRA_SCHEMAS)},
        },
    }

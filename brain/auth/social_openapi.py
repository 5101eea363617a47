"""The OpenAPI description of social sign-in and linked accounts (auth role, brain.auth.social_routes)."""

from __future__ import annotations

from typing import Any

from brain.auth.openapi import LIMITED, NO_SESSION
from brain.errors import PayloadTooLarge
from brain.openapi import INVALID_CODES
from brain.openapi import error as _error
from brain.openapi import json_body as _json

__all__ = ["PATHS"]

_SESSION = [{"sessionCookie": []}, {"sessionBearer": []}]
_STRING = {"type": "string"}


def _body(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": {
        "type": "object", "required": required, "properties": properties}}}}


_START = _json(
    {"type": "object", "required": ["url", "redirect"],
     "properties": {"url": _STRING, "redirect": {"type": "boolean"}}},
    "The provider's authorization URL (also in Location unless disableRedirect); sets the state cookie",
)
_START_BODY = {
    "provider": _STRING, "callbackURL": _STRING, "errorCallbackURL": _STRING, "newUserCallbackURL": _STRING,
    "disableRedirect": {"type": "boolean"}, "scopes": {"type": "array", "items": _STRING}, "loginHint": _STRING,
    "requestSignUp": {"type": "boolean"},
}
_REDIRECT = {"description": "To the callback URL (session cookie set), or to the error URL with ?error=<code>",
             "headers": {"Location": {"schema": _STRING}}}
_CALLBACK_PARAMS = [
    {"name": "provider", "in": "path", "required": True, "schema": _STRING},
    *({"name": n, "in": "query", "required": False, "schema": _STRING}
      for n in ("code", "state", "error", "error_description", "iss")),
]
# Starting a flow (brain.auth.social_routes.SocialRoutes._start): what sign-in and linking both refuse.
_START_ERRORS = {
    "400": _error("VALIDATION_ERROR", *INVALID_CODES),
    "403": _error("INVALID_CALLBACK_URL", "INVALID_CALLBACK_URL"),
    "404": _error("PROVIDER_NOT_FOUND, ID_TOKEN_NOT_SUPPORTED", "PROVIDER_NOT_FOUND", "ID_TOKEN_NOT_SUPPORTED"),
    "502": _error("PROVIDER_UNAVAILABLE: its discovery document could not be read", "PROVIDER_UNAVAILABLE"),
}
_ACCOUNT = {"type": "object", "required": ["id", "providerId", "accountId", "userId", "scopes", "createdAt", "updatedAt"],
            "properties": {"id": _STRING, "providerId": _STRING, "accountId": _STRING, "userId": _STRING,
                           "scopes": {"type": "array", "items": _STRING},
                           "createdAt": {"type": "string", "format": "date-time"},
                           "updatedAt": {"type": "string", "format": "date-time"}}}

PATHS: dict[str, dict[str, Any]] = {
    "/api/auth/sign-in/social": {"post": {
        "operationId": "socialSignIn", "summary": "Start signing in with a social or OpenID Connect provider",
        "security": [], "requestBody": _body(_START_BODY, ["provider"]),
        "responses": {"200": _START, **_START_ERRORS, **LIMITED},
    }},
    "/api/auth/callback/{provider}": {
        "get": {"operationId": "handleOAuthCallback", "summary": "Where the provider sends the browser back",
                "security": [], "parameters": _CALLBACK_PARAMS, "responses": {"302": _REDIRECT}},
        "post": {"operationId": "handleOAuthCallbackPost", "summary": "form_post callback: redirected to the GET",
                 "security": [], "parameters": _CALLBACK_PARAMS,
                 "responses": {"302": _REDIRECT, "413": _error("A form larger than server.max_body_bytes",
                                                               PayloadTooLarge.code)}},
    },
    "/api/auth/link-social": {"post": {
        "operationId": "linkSocialAccount", "summary": "Start linking a provider identity to the signed-in user",
        "security": _SESSION, "requestBody": _body(_START_BODY, ["provider"]),
        "responses": {"200": _START, **_START_ERRORS, **NO_SESSION},
    }},
    "/api/auth/list-accounts": {"get": {
        "operationId": "listUserAccounts", "summary": "The ways the user signs in: password (credential) and linked identities",
        "security": _SESSION,
        "responses": {"200": _json({"type": "array", "items": _ACCOUNT}, "Accounts"), **NO_SESSION},
    }},
    "/api/auth/unlink-account": {"post": {
        "operationId": "unlinkAccount", "summary": "Remove a linked identity or the password (never the last one)",
        "security": _SESSION, "requestBody": _body({"accountId": _STRING}, ["accountId"]),
        "responses": {"200": _json({"type": "object", "properties": {"status": {"type": "boolean"}}}, "Unlinked"),
                      "400": _error("FAILED_TO_UNLINK_LAST_ACCOUNT, ACCOUNT_NOT_FOUND, VALIDATION_ERROR",
                                    "FAILED_TO_UNLINK_LAST_ACCOUNT", "ACCOUNT_NOT_FOUND", *INVALID_CODES),
                      **NO_SESSION, "403": _error("SESSION_NOT_FRESH", "SESSION_NOT_FRESH")},
    }},
    "/api/auth/error": {"get": {
        "operationId": "errorPage", "summary": "Error page of a sign-in flow without errorCallbackURL",
        "security": [],
        "parameters": [{"name": n, "in": "query", "required": False, "schema": _STRING} for n in ("error", "error_description")],
        "responses": {"200": {"description": "HTML page", "content": {"text/html": {"schema": _STRING}}}},
    }},
}

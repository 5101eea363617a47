"""The OpenAPI description of the passkey endpoints (auth role, brain.auth.passkey_routes)."""

from __future__ import annotations

from typing import Any

# The helpers of the auth role's other descriptions.
from brain.auth.openapi import LIMITED, NO_SESSION, _body, _error, _json, _ref
from brain.auth.passkeys import MAX_CREDENTIAL_ID
from brain.auth.validation import MAX_NAME
from brain.control_chars import NO_CONTROL_PATTERN
from brain.openapi import INVALID_CODES

__all__ = ["PATHS", "SCHEMAS"]

_SESSION = [{"sessionCookie": []}, {"sessionBearer": []}]
_STRING = {"type": "string"}
_BOOL = {"type": "boolean"}
_CHALLENGE_COOKIE = "Sets the signed better-auth.better-auth-passkey cookie (the challenge, five minutes, single use)"
_DESCRIPTOR = {"type": "object", "required": ["id", "type"], "properties": {
    "id": _STRING, "type": {"type": "string", "enum": ["public-key"]},
    "transports": {"type": "array", "items": _STRING}}}
_CREDENTIAL = {"type": "object", "required": ["id"],
               "properties": {"id": {"type": "string", "minLength": 1, "maxLength": MAX_CREDENTIAL_ID}},
               "description": "The credential the browser made (its toJSON(): id, rawId, type, response, ...)"}
_FRESH = {**NO_SESSION, "403": _error("SESSION_NOT_FRESH: the session is older than session_fresh_age_seconds",
                                      "SESSION_NOT_FRESH")}
_INVALID = {"400": _error("VALIDATION_ERROR", *INVALID_CODES)}
_NOT_FOUND = {"404": _error("PASSKEY_NOT_FOUND (also another user's passkey)", "PASSKEY_NOT_FOUND")}
_SIGNED_IN = _json(
    {"type": "object", "required": ["token", "user", "session", "jwt"],
     "properties": {"token": _STRING, "user": _ref("User"), "session": _ref("Session"), "jwt": _STRING}},
    "Signed in: the session cookie, set-auth-token and set-auth-jwt are set",
)
# A passkey's new name: trimmed, something left, no control characters (PasskeyRoutes._name).
_NEW_NAME = {"type": "string", "maxLength": MAX_NAME, "allOf": [{"pattern": NO_CONTROL_PATTERN}, {"pattern": r"\S"}]}
_ID_BODY = {"id": {**_STRING, "minLength": 1, "description": "The passkey's id (not its credentialID)"}}


SCHEMAS: dict[str, Any] = {
    "Passkey": {
        "type": "object",
        "required": ["id", "name", "publicKey", "userId", "credentialID", "counter", "deviceType", "backedUp",
                     "transports", "createdAt", "aaguid"],
        "properties": {
            "id": _STRING, "name": {"type": ["string", "null"]},
            "publicKey": {**_STRING, "description": "The COSE public key, standard base64"},
            "userId": _STRING, "credentialID": {**_STRING, "description": "base64url"},
            "counter": {"type": "integer"}, "deviceType": {"type": "string", "enum": ["singleDevice", "multiDevice"]},
            "backedUp": _BOOL, "transports": {**_STRING, "description": "comma-separated, e.g. usb,nfc"},
            "createdAt": {"type": "string", "format": "date-time"}, "aaguid": {"type": ["string", "null"]},
        },
    },
}

PATHS: dict[str, dict[str, Any]] = {
    "/api/auth/passkey/generate-register-options": {"get": {
        "operationId": "generatePasskeyRegistrationOptions",
        "summary": "Options for navigator.credentials.create(): a new passkey for the signed-in user",
        "security": _SESSION,
        "parameters": [
            {"name": "authenticatorAttachment", "in": "query", "required": False,
             "schema": {"type": "string", "enum": ["platform", "cross-platform"]}},
            {"name": "name", "in": "query", "required": False,
             "schema": {"type": "string", "maxLength": MAX_NAME, "pattern": NO_CONTROL_PATTERN},
             "description": "The user name the authenticator shows (default: the user's email)"},
        ],
        "responses": {
            "200": _json({"type": "object", "required": ["challenge", "rp", "user", "pubKeyCredParams"], "properties": {
                "challenge": _STRING,
                "rp": {"type": "object", "properties": {"name": _STRING, "id": _STRING}},
                "user": {"type": "object", "properties": {"id": _STRING, "name": _STRING, "displayName": _STRING}},
                "pubKeyCredParams": {"type": "array", "items": {"type": "object", "properties": {
                    "alg": {"type": "integer"}, "type": _STRING}}},
                "timeout": {"type": "integer"}, "attestation": _STRING,
                "excludeCredentials": {"type": "array", "items": _DESCRIPTOR},
                "authenticatorSelection": {"type": "object"}, "extensions": {"type": "object"},
                "hints": {"type": "array", "items": _STRING},
            }}, _CHALLENGE_COOKIE),
            "400": _error("VALIDATION_ERROR (the message names the parameter)", *INVALID_CODES),
            **_FRESH,
        },
    }},
    "/api/auth/passkey/verify-registration": {"post": {
        "operationId": "passkeyVerifyRegistration",
        "summary": "Store the passkey the browser made for the options' challenge",
        "security": _SESSION,
        "requestBody": _body({"response": _CREDENTIAL, "name": _STRING, "createSession": _BOOL}, ["response"]),
        "responses": {
            "200": _json({"allOf": [_ref("Passkey"), {"type": "object", "properties": {
                "session": _ref("Session"), "user": _ref("User"), "token": _STRING, "jwt": _STRING}}]},
                "The passkey (with createSession: also a new session, its cookie, set-auth-token and set-auth-jwt)"),
            "400": _error("CHALLENGE_NOT_FOUND, FAILED_TO_VERIFY_REGISTRATION (the message says why), "
                          "PREVIOUSLY_REGISTERED, TOO_MANY_PASSKEYS, VALIDATION_ERROR", "CHALLENGE_NOT_FOUND",
                          "FAILED_TO_VERIFY_REGISTRATION", "PREVIOUSLY_REGISTERED", "TOO_MANY_PASSKEYS", *INVALID_CODES),
            "401": _error("No live session (UNAUTHORIZED), or YOU_ARE_NOT_ALLOWED_TO_REGISTER_THIS_PASSKEY (a challenge "
                          "made for another user)", "UNAUTHORIZED", "YOU_ARE_NOT_ALLOWED_TO_REGISTER_THIS_PASSKEY"),
            "403": _FRESH["403"],
        },
    }},
    "/api/auth/passkey/generate-authenticate-options": {"get": {
        "operationId": "passkeyGenerateAuthenticateOptions",
        "summary": "Options for navigator.credentials.get(): sign in with a passkey",
        "security": [*_SESSION, {}],
        "responses": {
            "200": _json({"type": "object", "required": ["rpId", "challenge"], "properties": {
                "rpId": _STRING, "challenge": _STRING, "allowCredentials": {"type": "array", "items": _DESCRIPTOR},
                "timeout": {"type": "integer"}, "userVerification": _STRING,
            }}, f"{_CHALLENGE_COOKIE}. allowCredentials: the signed-in user's passkeys"),
            **LIMITED,
        },
    }},
    "/api/auth/passkey/verify-authentication": {"post": {
        "operationId": "passkeyVerifyAuthentication",
        "summary": "Sign in with the assertion the browser made for the options' challenge",
        "security": [],
        "requestBody": _body({"response": _CREDENTIAL}, ["response"]),
        "responses": {
            "200": _SIGNED_IN,
            "400": _error("CHALLENGE_NOT_FOUND, AUTHENTICATION_FAILED (also a signature count that did not grow: a "
                          "cloned authenticator), MISSING_OR_NULL_ORIGIN, VALIDATION_ERROR", "CHALLENGE_NOT_FOUND",
                          "AUTHENTICATION_FAILED", "MISSING_OR_NULL_ORIGIN", *INVALID_CODES),
            "401": _error("PASSKEY_NOT_FOUND", "PASSKEY_NOT_FOUND"),
            "403": _error("EMAIL_NOT_VERIFIED", "EMAIL_NOT_VERIFIED"),
            **LIMITED,
        },
    }},
    "/api/auth/passkey/list-user-passkeys": {"get": {
        "operationId": "listPasskeys",
        "summary": "The signed-in user's passkeys, oldest first",
        "security": _SESSION,
        "responses": {"200": _json({"type": "array", "items": _ref("Passkey")}, "Passkeys"), **NO_SESSION},
    }},
    "/api/auth/passkey/update-passkey": {"post": {
        "operationId": "updatePasskey",
        "summary": "Rename one of the user's passkeys",
        "security": _SESSION,
        "requestBody": _body({**_ID_BODY, "name": _NEW_NAME}, ["id", "name"]),
        "responses": {
            "200": _json({"type": "object", "required": ["passkey"], "properties": {"passkey": _ref("Passkey")}},
                         "The renamed passkey"),
            **_INVALID, **NO_SESSION, **_NOT_FOUND,
        },
    }},
    "/api/auth/passkey/delete-passkey": {"post": {
        "operationId": "deletePasskey",
        "summary": "Delete one of the user's passkeys",
        "security": _SESSION,
        "requestBody": _body(_ID_BODY, ["id"]),
        "responses": {
            "200": _json({"type": "object", "required": ["status"], "properties": {"status": _BOOL}}, "Deleted"),
            **_INVALID, **NO_SESSION, **_NOT_FOUND,
        },
    }},
}

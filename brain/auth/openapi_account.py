"""The OpenAPI description of the account endpoints (auth role): sessions, profile changes,
two-factor and API keys."""

from __future__ import annotations

from typing import Any

# The helpers of the auth role's other descriptions.
from brain.apikeys import permissions_schema
from brain.auth.api_keys import MAX_METADATA_BYTES, MAX_PREFIX, PREFIX_RE
from brain.auth.api_keys import MAX_NAME as MAX_KEY_NAME
from brain.auth.openapi import LIMITED, NO_SESSION, _error, _json, _ref
from brain.auth.settings import AuthSettings
from brain.auth.validation import EMAIL_SCHEMA, MAX_IMAGE, NAME_SCHEMA
from brain.control_chars import NO_CONTROL_PATTERN
from brain.openapi import INVALID_CODES

__all__ = ["PROFILE_PATHS", "SESSION_PATHS", "TWO_FACTOR_PATHS", "api_key_paths"]

_SESSION = [{"sessionCookie": []}, {"sessionBearer": []}]
_STRING = {"type": "string"}
_BOOL = {"type": "boolean"}
_NULLABLE_STRING = {"type": ["string", "null"]}


def _object(properties: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        schema["required"] = required
    return schema


def _body(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": _object(properties, required)}}}


def _post(operation_id: str, summary: str, responses: dict[str, Any], *, body: dict[str, Any] | None = None,
          security: list[dict[str, list[str]]] | None = None) -> dict[str, Any]:
    op: dict[str, Any] = {"operationId": operation_id, "summary": summary,
                          "security": _SESSION if security is None else security, "responses": responses}
    if body is not None:
        op["requestBody"] = body
    return {"post": op}


_STATUS = _json(_object({"status": _BOOL}, ["status"]), "Done")
# A new password within the default auth.min_password_length and max_password_length (as sign-up's).
NEW_PASSWORD = {"type": "string", "minLength": 8, "maxLength": 128}
_INVALID = {"400": _error("VALIDATION_ERROR", *INVALID_CODES)}
_PASSWORD = {"password": _STRING}
_TOKEN_USER = _json(
    _object({"token": _NULLABLE_STRING, "user": _ref("User"), "jwt": _STRING}, ["user"]),
    "The session's token and the user (with a new session: also its cookie, set-auth-token and set-auth-jwt)",
)

SESSION_PATHS: dict[str, dict[str, Any]] = {
    "/api/auth/list-sessions": {
        "get": {
            "operationId": "listUserSessions",
            "summary": "The user's live sessions (the current one with its token, the others with their id as token)",
            "security": _SESSION,
            "responses": {
                "200": _json({"type": "array", "items": _ref("Session")}, "The sessions, oldest first"),
                **NO_SESSION,
                "403": _error("SESSION_NOT_FRESH: the session is older than session_fresh_age_seconds",
                              "SESSION_NOT_FRESH"),
            },
        }
    },
    "/api/auth/revoke-session": _post(
        "revokeSession", "Revoke one of the user's sessions (by token, or by the id list-sessions shows)",
        {"200": _STATUS, **_INVALID, **NO_SESSION},
        body=_body({"token": _STRING}, ["token"]),
    ),
    "/api/auth/revoke-sessions": _post(
        "revokeSessions", "Revoke every session of the user, this one too",
        {"200": _STATUS, **NO_SESSION},
    ),
    "/api/auth/revoke-other-sessions": _post(
        "revokeOtherSessions", "Revoke every session of the user but this one",
        {"200": _STATUS, **NO_SESSION},
    ),
}

PROFILE_PATHS: dict[str, dict[str, Any]] = {
    "/api/auth/update-user": _post(
        "updateUser", "Change the user's name and/or image",
        {"200": _STATUS, "400": _error("EMAIL_CAN_NOT_BE_UPDATED, FIELD_NOT_ALLOWED, VALIDATION_ERROR (the message "
                                       "names the field), or no fields to update (BAD_REQUEST)",
                                       "EMAIL_CAN_NOT_BE_UPDATED", "FIELD_NOT_ALLOWED", "BAD_REQUEST", *INVALID_CODES),
         **NO_SESSION},
        body={"required": True, "content": {"application/json": {"schema": {
            "type": "object",
            "properties": {"name": {**NAME_SCHEMA, "type": ["string", "null"], "description": "null: unchanged"},
                           "image": {"type": ["string", "null"], "maxLength": MAX_IMAGE, "pattern": NO_CONTROL_PATTERN,
                                     "description": "null: removed"}},
            # Something to change: a name, or an image (null included).
            "anyOf": [{"required": ["name"], "properties": {"name": {"type": "string"}}}, {"required": ["image"]}],
        }}}},
    ),
    "/api/auth/change-password": _post(
        "changePassword", "Change the password (the current one required); optionally replace every session",
        {"200": _TOKEN_USER,
         "400": _error("INVALID_PASSWORD, PASSWORD_TOO_SHORT, PASSWORD_TOO_LONG, VALIDATION_ERROR; a user without a "
                       "password (CREDENTIAL_ACCOUNT_NOT_FOUND)", "INVALID_PASSWORD", "PASSWORD_TOO_SHORT",
                       "PASSWORD_TOO_LONG", "CREDENTIAL_ACCOUNT_NOT_FOUND", *INVALID_CODES),
         **NO_SESSION, **LIMITED},
        body=_body({"currentPassword": _STRING, "newPassword": NEW_PASSWORD, "revokeOtherSessions": _BOOL},
                   ["currentPassword", "newPassword"]),
    ),
    "/api/auth/change-email": _post(
        "changeEmail", "Ask to change the address: mails a confirmation to the old address (verified users) or a "
                       "verification to the new one; the address changes when the new one is verified",
        {"200": _STATUS,
         "400": _error("INVALID_EMAIL, CHANGE_EMAIL_DISABLED, VALIDATION_ERROR, or the same address (BAD_REQUEST)",
                       "INVALID_EMAIL", "CHANGE_EMAIL_DISABLED", "BAD_REQUEST", *INVALID_CODES),
         **NO_SESSION, "403": _error("INVALID_CALLBACK_URL", "INVALID_CALLBACK_URL"),
         "429": _error("Too many emails to the address (TOO_MANY_REQUESTS)", "TOO_MANY_REQUESTS"),
         "503": _error("EMAIL_NOT_CONFIGURED, or EMAIL_DELIVERY_FAILED", "EMAIL_NOT_CONFIGURED", "EMAIL_DELIVERY_FAILED")},
        body=_body({"newEmail": EMAIL_SCHEMA, "callbackURL": _STRING}, ["newEmail"]),
    ),
}

_LIMITED = {"429": _error("Too many requests to /two-factor/* from this address, or failed password checks",
                          "TOO_MANY_REQUESTS")}
# Checking a code: also ACCOUNT_TEMPORARILY_LOCKED after auth.two_factor_max_failures wrong codes.
_CODE_LIMITED = {"429": _error("Too many requests to /two-factor/* from this address, or ACCOUNT_TEMPORARILY_LOCKED",
                               "TOO_MANY_REQUESTS", "ACCOUNT_TEMPORARILY_LOCKED")}
_CODE_BODY = {"code": _STRING, "trustDevice": _BOOL}
# What the otpauth URI's label can carry: two_factor_routes.enable refuses anything else.
_ISSUER = {"type": "string", "minLength": 1, "maxLength": 128, "pattern": "^[^:\\u0000-\\u001f]+$",
           "description": "The name an authenticator app shows; the server's own name when absent"}

TWO_FACTOR_PATHS: dict[str, dict[str, Any]] = {
    "/api/auth/two-factor/enable": _post(
        "enableTwoFactor", "Start enabling TOTP: a new secret (its URI) and backup codes; on after verify-totp",
        {"200": _json(_object({"method": _STRING, "totpURI": _STRING, "backupCodes": {"type": "array", "items": _STRING}},
                              ["method"]), "The secret's URI and the backup codes"),
         "400": _error("INVALID_PASSWORD, TOTP_ALREADY_ENABLED, OTP_NOT_CONFIGURED, VALIDATION_ERROR",
                       "INVALID_PASSWORD", "TOTP_ALREADY_ENABLED", "OTP_NOT_CONFIGURED", *INVALID_CODES),
         **NO_SESSION, **_LIMITED},
        body=_body({**_PASSWORD, "issuer": _ISSUER,
                    # Better Auth's schema allows "otp" too; without an OTP sender it is OTP_NOT_CONFIGURED.
                    "method": {"type": "string", "enum": ["totp"],
                               "description": '"otp" is refused with OTP_NOT_CONFIGURED: no code sender is set up'}},
                   ["password"]),
    ),
    "/api/auth/two-factor/get-totp-uri": _post(
        "getTOTPURI", "The TOTP URI again (password required)",
        {"200": _json(_object({"totpURI": _STRING}, ["totpURI"]), "The URI"),
         "400": _error("INVALID_PASSWORD, TOTP_NOT_ENABLED, VALIDATION_ERROR", "INVALID_PASSWORD", "TOTP_NOT_ENABLED",
                       *INVALID_CODES), **NO_SESSION, **_LIMITED},
        body=_body(_PASSWORD, ["password"]),
    ),
    "/api/auth/two-factor/verify-totp": _post(
        "verifyTOTP", "Check a TOTP code: with the two_factor cookie it completes a sign-in (a session); with a "
                      "session it finishes enabling",
        {"200": _TOKEN_USER, "400": _error("TOTP_NOT_ENABLED, TOO_MANY_ATTEMPTS_REQUEST_NEW_CODE, VALIDATION_ERROR",
                                           "TOTP_NOT_ENABLED", "TOO_MANY_ATTEMPTS_REQUEST_NEW_CODE", *INVALID_CODES),
         "401": _error("INVALID_CODE, INVALID_TWO_FACTOR_COOKIE", "INVALID_CODE", "INVALID_TWO_FACTOR_COOKIE"),
         **_CODE_LIMITED},
        body=_body(_CODE_BODY, ["code"]), security=[*_SESSION, {"twoFactorCookie": []}],
    ),
    "/api/auth/two-factor/verify-backup-code": _post(
        "verifyBackupCode", "Check a backup code (each works once), like verify-totp",
        {"200": _TOKEN_USER,
         "400": _error("BACKUP_CODES_NOT_ENABLED, TOO_MANY_ATTEMPTS_REQUEST_NEW_CODE, VALIDATION_ERROR",
                       "BACKUP_CODES_NOT_ENABLED", "TOO_MANY_ATTEMPTS_REQUEST_NEW_CODE", *INVALID_CODES),
         "401": _error("INVALID_BACKUP_CODE, INVALID_TWO_FACTOR_COOKIE", "INVALID_BACKUP_CODE",
                       "INVALID_TWO_FACTOR_COOKIE"),
         **_CODE_LIMITED},
        body=_body({**_CODE_BODY, "disableSession": _BOOL}, ["code"]), security=[*_SESSION, {"twoFactorCookie": []}],
    ),
    "/api/auth/two-factor/generate-backup-codes": _post(
        "generateBackupCodes", "New backup codes (the old ones stop working)",
        {"200": _json(_object({"status": _BOOL, "backupCodes": {"type": "array", "items": _STRING}},
                              ["status", "backupCodes"]), "The new codes"),
         "400": _error("INVALID_PASSWORD, TWO_FACTOR_NOT_ENABLED, VALIDATION_ERROR", "INVALID_PASSWORD",
                       "TWO_FACTOR_NOT_ENABLED", *INVALID_CODES), **NO_SESSION, **_LIMITED},
        body=_body(_PASSWORD, ["password"]),
    ),
    "/api/auth/two-factor/disable": _post(
        "disableTwoFactor", "Turn two-factor off (password required)",
        {"200": _STATUS, "400": _error("INVALID_PASSWORD, VALIDATION_ERROR", "INVALID_PASSWORD", *INVALID_CODES),
         **NO_SESSION, **_LIMITED},
        body=_body(_PASSWORD, ["password"]),
    ),
}

_PERMISSIONS = {"anyOf": [permissions_schema(), {"type": "null"}],
                "description": 'brain\'s scopes as Better Auth permissions: {"events": ["read", "write"], '
                               '"mail": ["read"], "search": ["read"]}; absent or null: all of them'}
_KEY = _json(_ref("ApiKey"), "The key object")
# What create and update refuse in a key's fields (brain.auth.api_keys.parse_changes), and their 401:
# no session, or a `userId` not the caller's.
_KEY_FIELD_CODES = ("SERVER_ONLY_PROPERTY", "INVALID_NAME_LENGTH", "EXPIRES_IN_IS_TOO_SMALL", "EXPIRES_IN_IS_TOO_LARGE",
                    "INVALID_METADATA_TYPE", *INVALID_CODES)
_KEY_UNAUTHORIZED = {"401": _error("No live session, or a userId not the caller's (UNAUTHORIZED_SESSION)",
                                   "UNAUTHORIZED_SESSION")}
_NOT_FOUND = {"404": _error("KEY_NOT_FOUND (also another user's key)", "KEY_NOT_FOUND")}
# A key id or a count in a query string (brain.auth.api_key_routes reads at most nine digits).
_KEY_ID = {"type": "string", "minLength": 1}
_QUERY_COUNT = {"type": "integer", "minimum": 0, "maximum": 999_999_999}


def _key_fields(auth: AuthSettings) -> dict[str, Any]:
    """The fields create and update share, with the expiry range these settings allow."""
    day = 86_400
    return {
        "name": {"type": "string", "maxLength": MAX_KEY_NAME, "pattern": NO_CONTROL_PATTERN},
        "expiresIn": {"type": ["number", "null"], "minimum": auth.api_key_min_expires_days * day,
                      "maximum": auth.api_key_max_expires_days * day,
                      "description": "seconds (auth.api_key_min_expires_days to api_key_max_expires_days); "
                                     "null on update: no expiry"},
        "metadata": {"type": ["object", "null"], "description": f"at most {MAX_METADATA_BYTES} bytes as JSON"},
        "permissions": _PERMISSIONS,
    }


def api_key_paths(auth: AuthSettings) -> dict[str, dict[str, Any]]:
    """The API key operations, with the limits these settings make the server enforce."""
    fields = _key_fields(auth)
    prefix = {"type": "string", "maxLength": MAX_PREFIX, "pattern": f"^{PREFIX_RE.pattern}$"}
    return {
        "/api/auth/api-key/create": _post(
            "createApiKey", "Create an API key for the API role (x-api-key); the key is shown only in this answer",
            {"200": _json(_ref("ApiKeyCreated"), "The key object with `key`"),
             "400": _error("VALIDATION_ERROR, SERVER_ONLY_PROPERTY, INVALID_NAME_LENGTH, INVALID_PREFIX_LENGTH, "
                           "EXPIRES_IN_IS_TOO_SMALL, EXPIRES_IN_IS_TOO_LARGE, INVALID_METADATA_TYPE; "
                           "TOO_MANY_API_KEYS (auth.api_keys_per_user)", "INVALID_PREFIX_LENGTH", "TOO_MANY_API_KEYS",
                           *_KEY_FIELD_CODES),
             **_KEY_UNAUTHORIZED},
            body=_body({**fields, "prefix": prefix}, []),
        ),
        "/api/auth/api-key/list": {
            "get": {
                "operationId": "listApiKeys",
                "summary": "The user's API keys",
                "security": _SESSION,
                "parameters": [
                    {"name": "limit", "in": "query", "required": False, "schema": _QUERY_COUNT},
                    {"name": "offset", "in": "query", "required": False, "schema": _QUERY_COUNT},
                    {"name": "sortBy", "in": "query", "required": False,
                     "schema": {"type": "string", "enum": ["createdAt", "updatedAt", "name", "expiresAt"]}},
                    {"name": "sortDirection", "in": "query", "required": False,
                     "schema": {"type": "string", "enum": ["asc", "desc"]}},
                ],
                "responses": {
                    "200": _json(_object({"apiKeys": {"type": "array", "items": _ref("ApiKey")},
                                          "total": {"type": "integer"}, "limit": {"type": "integer"},
                                          "offset": {"type": "integer"}}, ["apiKeys", "total"]), "The keys"),
                    **_INVALID, **NO_SESSION,
                },
            }
        },
        "/api/auth/api-key/get": {
            "get": {
                "operationId": "getApiKey",
                "summary": "One of the user's API keys",
                "security": _SESSION,
                "parameters": [{"name": "id", "in": "query", "required": True, "schema": _KEY_ID}],
                "responses": {"200": _KEY, **_INVALID, **NO_SESSION, **_NOT_FOUND},
            }
        },
        "/api/auth/api-key/update": _post(
            "updateApiKey", "Rename, enable/disable, re-scope or change the expiry of a key (effective at once)",
            {"200": _KEY,
             "400": _error("VALIDATION_ERROR, SERVER_ONLY_PROPERTY, INVALID_NAME_LENGTH, EXPIRES_IN_IS_TOO_SMALL, "
                           "EXPIRES_IN_IS_TOO_LARGE, INVALID_METADATA_TYPE, NO_VALUES_TO_UPDATE", "NO_VALUES_TO_UPDATE",
                           *_KEY_FIELD_CODES),
             **_KEY_UNAUTHORIZED, **_NOT_FOUND},
            body={"required": True, "content": {"application/json": {"schema": {
                **_object({"keyId": _KEY_ID, "enabled": _BOOL, **fields}, ["keyId"]),
                # Something to change (else 400 NO_VALUES_TO_UPDATE); a null metadata changes nothing.
                "anyOf": [{"required": ["enabled"]}, {"required": ["name"]}, {"required": ["expiresIn"]},
                          {"required": ["permissions"]},
                          {"required": ["metadata"], "properties": {"metadata": {"type": "object"}}}],
            }}}},
        ),
        "/api/auth/api-key/delete": _post(
            "deleteApiKey", "Delete a key (refused by every API role at once)",
            {"200": _json(_object({"success": _BOOL}, ["success"]), "Deleted"), **_INVALID, **NO_SESSION,
             **_NOT_FOUND},
            body=_body({"keyId": _KEY_ID}, ["keyId"]),
        ),
        "/api/auth/api-key/verify": _post(
            "verifyApiKey", "Check a key (what a split API role asks): valid, or the reason",
            {"200": _json(_object({"valid": _BOOL, "error": {"type": ["object", "null"]},
                                   "key": {"oneOf": [_ref("ApiKey"), {"type": "null"}]},
                                   "user": _object({"id": _STRING, "email": _STRING, "name": _STRING})},
                                  ["valid", "error", "key"]), "The verdict"),
             **_INVALID},
            body=_body({"key": _STRING, "permissions": _PERMISSIONS}, ["key"]), security=[],
        ),
    }


_DATE = {"type": "string", "format": "date-time"}
_NULL_DATE = {"type": ["string", "null"], "format": "date-time"}
_NULL_NUMBER = {"type": ["number", "null"]}

SCHEMAS: dict[str, Any] = {
    "ApiKey": _object(
        {"id": _STRING, "configId": _STRING, "name": _NULLABLE_STRING, "start": _NULLABLE_STRING,
         "prefix": _NULLABLE_STRING, "referenceId": _STRING, "enabled": _BOOL, "expiresAt": _NULL_DATE,
         "createdAt": _DATE, "updatedAt": _DATE, "lastRequest": _NULL_DATE, "lastRefillAt": _NULL_DATE,
         "remaining": _NULL_NUMBER, "refillAmount": _NULL_NUMBER, "refillInterval": _NULL_NUMBER,
         "rateLimitEnabled": _BOOL, "rateLimitTimeWindow": _NULL_NUMBER, "rateLimitMax": _NULL_NUMBER,
         "requestCount": {"type": "integer"}, "metadata": {"type": ["object", "null"]}, "permissions": _PERMISSIONS},
        ["id", "referenceId", "enabled", "rateLimitEnabled", "requestCount", "createdAt", "updatedAt"],
    ),
    "ApiKeyCreated": {"allOf": [_ref("ApiKey"), _object({"key": _STRING}, ["key"])]},
}

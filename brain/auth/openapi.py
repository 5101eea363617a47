"""The OpenAPI description of the verification, reset and deletion endpoints (auth role)."""

from __future__ import annotations

from typing import Any

__all__ = ["PATHS"]

_SESSION = [{"sessionCookie": []}, {"sessionBearer": []}]


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _error(description: str) -> dict[str, Any]:
    return _json(_ref("Error"), description)


def _body(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {
        "required": True,
        "content": {"application/json": {"schema": {"type": "object", "required": required, "properties": properties}}},
    }


_STRING = {"type": "string"}
_EMAIL = {"type": "string", "format": "email"}
_STATUS = _json({"type": "object", "required": ["status"], "properties": {"status": {"type": "boolean"}}}, "Done")
_REDIRECT = {"description": "Redirect to the callback URL", "headers": {"Location": {"schema": _STRING}}}
_LIMITS = {
    "400": _error("Invalid body (the message names the field), INVALID_EMAIL"),
    "403": _error("INVALID_ORIGIN, INVALID_CALLBACK_URL"),
    "429": _error("Rate limited"),
    "503": _error("EMAIL_NOT_CONFIGURED: no way to send mail (production without [smtp])"),
}
_RESET_REQUEST = {
    "post": {
        "operationId": "requestPasswordReset",
        "summary": "Mail a single-use password-reset link (the same answer for unknown addresses)",
        "security": [],
        "requestBody": _body({"email": _EMAIL, "redirectTo": _STRING}, ["email"]),
        "responses": {
            "200": _json(
                {"type": "object", "required": ["status", "message"],
                 "properties": {"status": {"type": "boolean"}, "message": _STRING}},
                "Accepted (whether or not the address has an account)",
            ),
            **_LIMITS,
        },
    }
}

PATHS: dict[str, dict[str, Any]] = {
    "/api/auth/send-verification-email": {
        "post": {
            "operationId": "sendVerificationEmail",
            "summary": "Mail a single-use verification link (the same answer for unknown addresses)",
            "security": [*_SESSION, {}],
            "requestBody": _body({"email": _EMAIL, "callbackURL": _STRING}, ["email"]),
            "responses": {"200": _STATUS, **_LIMITS},
        }
    },
    "/api/auth/verify-email": {
        "get": {
            "operationId": "verifyEmail",
            "summary": "Follow a verification link: marks the email verified",
            "security": [],
            "parameters": [
                {"name": "token", "in": "query", "required": True, "schema": _STRING},
                {"name": "callbackURL", "in": "query", "required": False, "schema": _STRING},
            ],
            "responses": {
                "200": _json({"type": "object", "properties": {"status": {"type": "boolean"}, "user": {"type": "null"}}},
                             "Verified"),
                "302": _REDIRECT,
                "400": _error("token missing"),
                "401": _error("INVALID_TOKEN or TOKEN_EXPIRED"),
                "403": _error("INVALID_CALLBACK_URL"),
            },
        }
    },
    "/api/auth/request-password-reset": _RESET_REQUEST,
    "/api/auth/forget-password": {"post": {**_RESET_REQUEST["post"], "operationId": "forgetPassword",
                                           "summary": "request-password-reset under its name before Better Auth 1.4"}},
    "/api/auth/reset-password/{token}": {
        "get": {
            "operationId": "resetPasswordCallback",
            "summary": "Follow a reset link: redirects to callbackURL with ?token= (or ?error=INVALID_TOKEN)",
            "security": [],
            "parameters": [
                {"name": "token", "in": "path", "required": True, "schema": _STRING},
                {"name": "callbackURL", "in": "query", "required": False, "schema": _STRING},
            ],
            "responses": {
                "200": _json({"type": "object", "properties": {"token": _STRING}}, "The token (no callbackURL given)"),
                "302": _REDIRECT,
                "400": _error("INVALID_TOKEN"),
                "403": _error("INVALID_CALLBACK_URL"),
            },
        }
    },
    "/api/auth/reset-password": {
        "post": {
            "operationId": "resetPassword",
            "summary": "Set a new password with a reset token; revokes every session of the user",
            "security": [],
            "parameters": [{"name": "token", "in": "query", "required": False, "schema": _STRING}],
            "requestBody": _body({"newPassword": _STRING, "token": _STRING}, ["newPassword"]),
            "responses": {
                "200": _STATUS,
                "400": _error("INVALID_TOKEN, PASSWORD_TOO_SHORT, PASSWORD_TOO_LONG, VALIDATION_ERROR"),
                "403": _error("INVALID_ORIGIN"),
                "429": _error("Rate limited"),
            },
        }
    },
    "/api/auth/delete-user": {
        "post": {
            "operationId": "deleteUser",
            "summary": "Delete the signed-in user and all their data (password, or a fresh session)",
            "security": _SESSION,
            "requestBody": {
                "required": False,
                "content": {"application/json": {"schema": {"type": "object", "properties": {
                    "password": _STRING, "token": _STRING, "callbackURL": _STRING}}}},
            },
            "responses": {
                "200": _json(
                    {"type": "object", "required": ["success", "message"],
                     "properties": {"success": {"type": "boolean"}, "message": _STRING}},
                    "User deleted",
                ),
                "400": _error("INVALID_PASSWORD, SESSION_EXPIRED, PASSWORD_TOO_LONG, VALIDATION_ERROR"),
                "401": _error("No live session"),
                "403": _error("INVALID_ORIGIN, INVALID_CALLBACK_URL"),
                "404": _error("Deletion disabled, or INVALID_TOKEN"),
                "429": _error("Rate limited"),
            },
        }
    },
}

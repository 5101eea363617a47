"""The OpenAPI description of the auth role's endpoints (its routes carry these operations).

`SIGN_IN_PATHS`: sign-up, sign-in, sessions, JWTs and keys (brain.auth.routes); `PATHS`:
verification, reset and deletion (brain.auth.account_routes); `COMPONENTS`: the schemas and
security schemes they refer to.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from brain.auth.issuer import EmailTaken
from brain.auth.smtp import EmailDeliveryFailed, EmailNotConfigured
from brain.auth.validation import EMAIL_SCHEMA, NAME_SCHEMA
from brain.errors import DiskFull, ServiceUnavailable, TooManyRequests, Unauthorized
from brain.openapi import INVALID_CODES, UNAVAILABLE_CODES, retry_after, with_body_errors, with_error
from brain.openapi import error as _error
from brain.openapi import json_body as _json
from brain.openapi import ref as _ref
from brain.routes import Route

__all__ = ["COMPONENTS", "LIMITED", "NO_SESSION", "PATHS", "SIGN_IN_PATHS", "with_plumbing_errors"]

_SESSION = [{"sessionCookie": []}, {"sessionBearer": []}]


def _body(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {
        "required": True,
        "content": {"application/json": {"schema": {"type": "object", "required": required, "properties": properties}}},
    }


_STRING = {"type": "string"}
_EMAIL = EMAIL_SCHEMA
# Better Auth's sessionMiddleware: no live session.
NO_SESSION = {"401": _error("No live session (UNAUTHORIZED)", Unauthorized.code)}
_STATUS = _json({"type": "object", "required": ["status"], "properties": {"status": {"type": "boolean"}}}, "Done")
_REDIRECT = {"description": "Redirect to the callback URL", "headers": {"Location": {"schema": _STRING}}}
# Too many requests from the client's address (auth.rate_limit_ip_per_minute), or failed password checks.
LIMITED = {"429": _error("Rate limited (TOO_MANY_REQUESTS, with Retry-After)", TooManyRequests.code)}
_EMAIL_REQUEST = {
    "400": _error("Invalid body (the message names the field), INVALID_EMAIL", "INVALID_EMAIL", *INVALID_CODES),
    "403": _error("INVALID_CALLBACK_URL", "INVALID_CALLBACK_URL"),
    **LIMITED,
    "503": _error("EMAIL_NOT_CONFIGURED: no way to send mail (production without [smtp])", EmailNotConfigured.code),
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
            **_EMAIL_REQUEST,
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
            "responses": {
                "200": _STATUS,
                **_EMAIL_REQUEST,
                "400": _error("Invalid body (the message names the field), INVALID_EMAIL; with a session: another "
                              "address (EMAIL_MISMATCH) or one verified already (EMAIL_ALREADY_VERIFIED)",
                              "INVALID_EMAIL", "EMAIL_MISMATCH", "EMAIL_ALREADY_VERIFIED", *INVALID_CODES),
                "503": _error("EMAIL_NOT_CONFIGURED: no way to send mail (production without [smtp]); with a session, "
                              "EMAIL_DELIVERY_FAILED: the mail was not delivered",
                              EmailNotConfigured.code, EmailDeliveryFailed.code),
            },
        }
    },
    "/api/auth/verify-email": {
        "get": {
            "operationId": "verifyEmail",
            "summary": "Follow a verification link: marks the email verified",
            "security": [],
            "parameters": [
                {"name": "token", "in": "query", "required": True, "schema": {"type": "string", "minLength": 1}},
                {"name": "callbackURL", "in": "query", "required": False, "schema": _STRING},
            ],
            "responses": {
                "200": _json({"type": "object", "properties": {"status": {"type": "boolean"}, "user": {"type": "null"}}},
                             "Verified"),
                "302": _REDIRECT,
                "400": _error("token missing (VALIDATION_ERROR)", *INVALID_CODES),
                "401": _error("INVALID_TOKEN or TOKEN_EXPIRED; a change-of-address link followed while another user "
                              "is signed in: INVALID_USER", "INVALID_TOKEN", "TOKEN_EXPIRED", "INVALID_USER"),
                "403": _error("INVALID_CALLBACK_URL", "INVALID_CALLBACK_URL"),
                "422": _error("A change-of-address link to an address taken meanwhile", EmailTaken.code),
                "503": _error("EMAIL_DELIVERY_FAILED: the confirmed change's mail to the new address was not delivered",
                              EmailDeliveryFailed.code),
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
                "400": _error("INVALID_TOKEN", "INVALID_TOKEN"),
                "403": _error("INVALID_CALLBACK_URL", "INVALID_CALLBACK_URL"),
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
                "400": _error("INVALID_TOKEN, PASSWORD_TOO_SHORT, PASSWORD_TOO_LONG, VALIDATION_ERROR",
                              "INVALID_TOKEN", "PASSWORD_TOO_SHORT", "PASSWORD_TOO_LONG", *INVALID_CODES),
                **LIMITED,
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
                "400": _error("INVALID_PASSWORD, SESSION_EXPIRED, PASSWORD_TOO_LONG, VALIDATION_ERROR",
                              "INVALID_PASSWORD", "SESSION_EXPIRED", "PASSWORD_TOO_LONG", *INVALID_CODES),
                **NO_SESSION,
                "403": _error("INVALID_CALLBACK_URL", "INVALID_CALLBACK_URL"),
                "404": _error("Deletion disabled (NOT_FOUND), or INVALID_TOKEN", "NOT_FOUND", "INVALID_TOKEN"),
                **LIMITED,
            },
        }
    },
}


SIGN_IN_PATHS: dict[str, dict[str, Any]] = {
    "/api/auth/sign-up/email": {
        "post": {
            "operationId": "signUpEmail",
            "summary": "Create a user with email and password (Better Auth)",
            "security": [],
            "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("SignUpRequest")}}},
            "responses": {
                "200": _json(_ref("SessionResponse")),
                "400": _error("Invalid body (the message names the field), INVALID_EMAIL, PASSWORD_TOO_SHORT, "
                              "PASSWORD_TOO_LONG, or a plugin refused the sign-up (SIGN_UP_REFUSED)",
                              "INVALID_EMAIL", "PASSWORD_TOO_SHORT", "PASSWORD_TOO_LONG", "SIGN_UP_REFUSED",
                              *INVALID_CODES),
                "403": _error("INVALID_CALLBACK_URL", "INVALID_CALLBACK_URL"),
                "422": _error("USER_ALREADY_EXISTS_USE_ANOTHER_EMAIL", EmailTaken.code),
                **LIMITED,
                "503": _error("EMAIL_NOT_CONFIGURED: verification is required and no mail can be sent",
                              EmailNotConfigured.code),
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
                "200": _json(_ref("SessionResponse")),
                "400": _error("Invalid body (the message names the field), INVALID_EMAIL, PASSWORD_TOO_LONG",
                              "INVALID_EMAIL", "PASSWORD_TOO_LONG", *INVALID_CODES),
                "401": _error("INVALID_EMAIL_OR_PASSWORD", "INVALID_EMAIL_OR_PASSWORD"),
                "403": _error("INVALID_CALLBACK_URL, or EMAIL_NOT_VERIFIED (auth.require_email_verification)",
                              "INVALID_CALLBACK_URL", "EMAIL_NOT_VERIFIED"),
                **LIMITED,
                "503": _error("A user with two-factor while two-factor sign-in is not available",
                              ServiceUnavailable.code),
            },
        }
    },
    "/api/auth/get-session": {
        "get": {
            "operationId": "getSession",
            "summary": "The current session and user, or null",
            "security": [{"sessionCookie": []}, {"sessionBearer": []}, {}],
            "responses": {
                "200": _json(
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
                "200": _json({"type": "object", "required": ["token"], "properties": {"token": {"type": "string"}}}),
                **NO_SESSION,
            },
        }
    },
    "/api/auth/sign-out": {
        "post": {
            "operationId": "signOut",
            "summary": "Revoke the current session",
            "security": [{"sessionCookie": []}, {"sessionBearer": []}, {}],
            "responses": {"200": _json({"type": "object", "properties": {"success": {"type": "boolean"}}})},
        }
    },
    "/api/auth/jwks": {
        "get": {
            "operationId": "jwks",
            "summary": "The public signing keys",
            "security": [],
            "responses": {"200": _json(_ref("Jwks")),
                          "503": _error("The key ring is not loaded yet", ServiceUnavailable.code)},
        }
    },
    "/api/auth/ok": {
        "get": {
            "operationId": "authOk",
            "summary": "Liveness of the auth role",
            "security": [],
            "responses": {"200": _json({"type": "object", "properties": {"ok": {"type": "boolean"}}})},
        }
    },
    "/.well-known/openid-configuration": {
        "get": {
            "operationId": "openidConfiguration",
            "summary": "Issuer and jwks_uri for standard verifiers",
            "security": [],
            "responses": {
                "200": _json(
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
    "SignUpRequest": {
        "type": "object",
        "required": ["name", "email", "password"],
        "properties": {
            "name": NAME_SCHEMA,
            "email": _EMAIL,
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
            "email": _EMAIL,
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

COMPONENTS: dict[str, dict[str, Any]] = {
    "schemas": _SCHEMAS,
    "securitySchemes": {
        "sessionCookie": {"type": "apiKey", "in": "cookie", "name": "better-auth.session_token"},
        "sessionBearer": {"type": "http", "scheme": "bearer", "description": "A session token"},
        "twoFactorCookie": {"type": "apiKey", "in": "cookie", "name": "better-auth.two_factor",
                            "description": "The challenge sign-in sets for a user with two-factor"},
    },
}


# The operations whose handlers touch neither auth.db nor the AuthIssuer (the key ring in memory,
# a fixed document, a redirect, an HTML page), and those that only read auth.db.
_STORELESS = frozenset({"authOk", "openidConfiguration", "jwks", "handleOAuthCallbackPost", "errorPage"})
_READ_ONLY = frozenset({"resetPasswordCallback"})


def with_plumbing_errors(route: Route) -> Route:
    """The route, its operation also stating what the auth role's plumbing may answer: a JSON body
    refused by brain.web.read_json (400 VALIDATION_ERROR, 408, 413, 415); the AuthIssuer starting or
    restarting (503 SERVICE_UNAVAILABLE), auth.db failing (503 STORE_UNAVAILABLE) or, for a write,
    its disk full (507 INSUFFICIENT_STORAGE)."""
    operation = route.operation
    if operation is None:
        return route
    if "requestBody" in operation:
        operation = with_body_errors(operation)
    if operation["operationId"] not in _STORELESS:
        operation = with_error(operation, "503", "the auth issuer is starting or restarting (SERVICE_UNAVAILABLE), "
                               "or auth.db is failing (STORE_UNAVAILABLE, with its `reason`)", *UNAVAILABLE_CODES)
        if operation["operationId"] not in _READ_ONLY:
            operation = retry_after(with_error(operation, "507", "INSUFFICIENT_STORAGE: the disk under auth.db is full",
                                               DiskFull.code), "507")
    return dataclasses.replace(route, operation=operation)

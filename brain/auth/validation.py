"""Checking sign-up/sign-in bodies: types, email syntax, password length; errors name the field."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from brain.auth.settings import AuthSettings
from brain.control_chars import NO_CONTROL_PATTERN, has_control
from brain.errors import BadRequest

# The addresses Better Auth's zod `z.email()` accepts: ASCII local part (no leading, trailing or
# double dot, not ending in a quote) and a dotted domain with a 2+ letter TLD. CR, LF, NUL and
# every other control character fall outside it. Written without lookaheads so that the OpenAPI
# document can carry the very same pattern (EMAIL_SCHEMA) and generators can draw from it.
EMAIL_PATTERN = r"([A-Za-z0-9_'+-]+\.)*[A-Za-z0-9_'+-]*[A-Za-z0-9_+-]@([A-Za-z0-9][A-Za-z0-9-]*\.)+[A-Za-z]{2,}"
_EMAIL_RE = re.compile(EMAIL_PATTERN)
MAX_EMAIL = 254
MAX_NAME = 256
MAX_IMAGE = 2048
# A user's name as check_name and the length limit let it through.
NAME_SCHEMA = {"type": "string", "maxLength": MAX_NAME, "pattern": NO_CONTROL_PATTERN}
EMAIL_SCHEMA = {"type": "string", "maxLength": MAX_EMAIL, "pattern": f"^{EMAIL_PATTERN}$"}


def validation_error(field: str, message: str) -> BadRequest:
    """Better Auth's shape for a schema failure: `[body.field] message`, VALIDATION_ERROR."""
    return BadRequest(f"[body.{field}] {message}", code="VALIDATION_ERROR")


def require_object(body: Any) -> dict[str, Any]:
    """The body must be a JSON object."""
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object", code="VALIDATION_ERROR")
    return body


def _text(
    body: dict[str, Any], field: str, *, required: bool, max_len: int | None = None, nullable: bool = False
) -> str | None:
    value = body.get(field)
    if value is None:
        if required:
            raise validation_error(field, "Invalid input: expected string, received undefined")
        # Better Auth's schemas (zod .optional()) refuse an explicit null unless the field clears a value.
        if field in body and not nullable:
            raise validation_error(field, "Invalid input: expected string, received null")
        return None
    if not isinstance(value, str):
        raise validation_error(field, f"Invalid input: expected string, received {_js_type(value)}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate from a \ud800 escape: not storable text
        raise validation_error(field, "must be valid Unicode text") from None
    if max_len is not None and len(value) > max_len:
        raise validation_error(field, f"must be at most {max_len} characters")
    return value


def text_field(
    body: dict[str, Any], field: str, *, required: bool = False, max_len: int | None = None, nullable: bool = False
) -> str | None:
    """A string member of a request body, checked as Better Auth's schemas check it (null only if nullable)."""
    return _text(body, field, required=required, max_len=max_len, nullable=nullable)


def _js_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def check_name(name: str) -> None:
    """A user's name: no control characters (400 naming `name`)."""
    if has_control(name):
        # A name is shown in mails, logs and the admin CLI: no line breaks, escapes or overrides.
        raise validation_error("name", "must not contain control characters (line breaks, tabs, escape sequences, "
                                       "bidi overrides)")


def normalize_email(value: str) -> str:
    """The email lower-cased, or BadRequest(INVALID_EMAIL) when it is not an address."""
    if any(c in value for c in "\r\n\x00") or any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise BadRequest("Invalid email: control characters (CR, LF, NUL, ...) are not allowed", code="INVALID_EMAIL")
    if len(value) > MAX_EMAIL or not _EMAIL_RE.fullmatch(value):
        raise BadRequest("Invalid email", code="INVALID_EMAIL")
    return value.lower()


def password_length(password: str) -> int:
    """Length as JavaScript counts it (UTF-16 code units), so limits match Better Auth's."""
    return len(password.encode("utf-16-le")) // 2


def check_password(password: str, settings: AuthSettings) -> None:
    """8-128 characters by default; no composition rules, no truncation."""
    n = password_length(password)
    if n < settings.min_password_length:
        raise BadRequest("Password too short", code="PASSWORD_TOO_SHORT")
    if n > settings.max_password_length:
        raise BadRequest("Password too long", code="PASSWORD_TOO_LONG")


def _remember_me(body: dict[str, Any]) -> bool:
    value = body.get("rememberMe", True)
    if value is None:
        return True
    if not isinstance(value, bool):
        raise validation_error("rememberMe", f"Invalid input: expected boolean, received {_js_type(value)}")
    return value


@dataclass(frozen=True)
class SignUp:
    """A checked sign-up request."""

    email: str
    name: str
    password: str
    image: str | None
    remember: bool
    callback_url: str | None


@dataclass(frozen=True)
class SignIn:
    """A checked sign-in request."""

    email: str
    password: str
    remember: bool
    callback_url: str | None


def parse_sign_up(body: Any, settings: AuthSettings) -> SignUp:
    """Check a sign-up body in Better Auth's order: shape, email, password length."""
    body = require_object(body)
    name = _text(body, "name", required=True, max_len=MAX_NAME)
    email = _text(body, "email", required=True)
    password = _text(body, "password", required=True)
    image = _text(body, "image", required=False, max_len=MAX_IMAGE)
    callback = _text(body, "callbackURL", required=False, max_len=MAX_IMAGE)
    remember = _remember_me(body)
    assert name is not None and email is not None and password is not None
    check_name(name)
    if not password:
        raise validation_error("password", "Too small: expected string to have >=1 characters")
    normalized = normalize_email(email)
    check_password(password, settings)
    return SignUp(normalized, name, password, image, remember, callback)


def parse_sign_in(body: Any, settings: AuthSettings) -> SignIn:
    """Check a sign-in body: shape, email syntax, and only the upper password bound (as Better Auth)."""
    body = require_object(body)
    email = _text(body, "email", required=True)
    password = _text(body, "password", required=True)
    callback = _text(body, "callbackURL", required=False, max_len=MAX_IMAGE)
    remember = _remember_me(body)
    assert email is not None and password is not None
    normalized = normalize_email(email)
    if password_length(password) > settings.max_password_length:
        raise BadRequest("Password too long", code="PASSWORD_TOO_LONG")
    return SignIn(normalized, password, remember, callback)


def parse_email_request(body: Any, url_field: str) -> tuple[str, str | None]:
    """`{email, <url_field>?}` (send-verification-email: callbackURL; request-password-reset: redirectTo)."""
    body = require_object(body)
    email = _text(body, "email", required=True)
    url = _text(body, url_field, required=False, max_len=MAX_IMAGE)
    assert email is not None
    return normalize_email(email), url


def parse_reset_password(body: Any, query_token: str | None, settings: AuthSettings) -> tuple[str, str]:
    """`{newPassword, token?}` (the token may come in the query instead); (token, password)."""
    body = require_object(body)
    password = _text(body, "newPassword", required=True)
    token = _text(body, "token", required=False, max_len=256) or query_token
    assert password is not None
    if not token:
        raise BadRequest("Invalid token", code="INVALID_TOKEN")
    check_password(password, settings)
    return token, password


@dataclass(frozen=True)
class DeleteUser:
    """A checked delete-user request."""

    password: str | None
    token: str | None
    callback_url: str | None


def parse_delete_user(body: Any, settings: AuthSettings) -> DeleteUser:
    """`{password?, token?, callbackURL?}`; a password over the limit is PASSWORD_TOO_LONG."""
    body = require_object(body)
    password = _text(body, "password", required=False)
    token = _text(body, "token", required=False, max_len=256)
    callback = _text(body, "callbackURL", required=False, max_len=MAX_IMAGE)
    if password is not None and password_length(password) > settings.max_password_length:
        raise BadRequest("Password too long", code="PASSWORD_TOO_LONG")
    return DeleteUser(password or None, token or None, callback)

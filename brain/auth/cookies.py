"""Better Auth's session cookie and bearer token formats.

The cookie `better-auth.session_token` holds `token.signature`, URL-encoded, where signature is
the standard base64 of HMAC-SHA256(secret, token) (better-call's signed cookie). The bearer
plugin accepts the same signed value or the raw token in `Authorization: Bearer ...`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from urllib.parse import quote, unquote

from aiohttp import web

COOKIE_NAME = "better-auth.session_token"
# Better Auth prefixes its cookies with __Secure- when its base URL is https.
SECURE_PREFIX = "__Secure-"


def token_hash(token: str) -> str:
    """What auth.db stores instead of the token."""
    return hashlib.sha256(token.encode()).hexdigest()


def _signature(secret: bytes, token: str) -> str:
    return base64.b64encode(hmac.new(secret, token.encode(), hashlib.sha256).digest()).decode()


def signed_value(secret: bytes, token: str) -> str:
    """The cookie value for a token: URL-encoded `token.signature`."""
    return quote(f"{token}.{_signature(secret, token)}", safe="")


def unsign(secret: bytes, value: str) -> str | None:
    """The token inside a signed value, or None when the signature does not match."""
    value = unquote(value)
    token, dot, signature = value.rpartition(".")
    # Genuine values are ASCII; compare_digest refuses non-ASCII str (a TypeError, so a 500).
    if not dot or not token or len(signature) != 44 or not value.isascii():
        return None
    return token if hmac.compare_digest(signature, _signature(secret, token)) else None


def cookie_name(secure: bool) -> str:
    """The session cookie's name (with Better Auth's __Secure- prefix over https)."""
    return SECURE_PREFIX + COOKIE_NAME if secure else COOKIE_NAME


def request_token(request: web.Request, secret: bytes) -> str | None:
    """The session token a request carries: Bearer (raw or signed) first, else the cookie."""
    auth = request.headers.get("Authorization", "")
    if auth[:7].lower() == "bearer ":
        raw = auth[7:].strip()
        # Tokens are ASCII; other bytes (surrogate-escaped by aiohttp) would not even hash.
        if raw and raw.isascii():
            # A raw token has no dot (ids are alphanumeric); a signed one must verify.
            return unsign(secret, raw) if "." in raw else raw
    return read_signed_cookie(request, secret, COOKIE_NAME)


def read_signed_cookie(request: web.Request, secret: bytes, name: str) -> str | None:
    """The value inside a signed cookie (`__Secure-` prefixed or not), or None if absent or forged."""
    for full_name in (SECURE_PREFIX + name, name):
        value = request.cookies.get(full_name)
        if value:
            return unsign(secret, value)
    return None


def write_cookie(response: web.StreamResponse, name: str, value: str, *, max_age: int | None, secure: bool) -> None:
    """Add a Set-Cookie as Better Auth writes its cookies (Path=/, HttpOnly, SameSite=Lax, Secure over https).

    aiohttp's set_cookie would quote a value holding '%'; the header is written directly.
    """
    parts = [f"{name}={value}"]
    if max_age is not None:
        parts.append(f"Max-Age={max_age}")
    parts += ["Path=/", "HttpOnly", "SameSite=Lax"]
    if secure:
        parts.append("Secure")
    response.headers.add("Set-Cookie", "; ".join(parts))


def set_session_cookie(
    response: web.StreamResponse, secret: bytes, token: str, *, max_age: int | None, secure: bool
) -> str:
    """Set the session cookie; return its value."""
    value = signed_value(secret, token)
    write_cookie(response, cookie_name(secure), value, max_age=max_age, secure=secure)
    return value


def clear_session_cookie(response: web.StreamResponse, *, secure: bool) -> None:
    """Expire the session cookie."""
    write_cookie(response, cookie_name(secure), "", max_age=0, secure=secure)

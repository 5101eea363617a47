"""Browser flows in progress (OAuth sign-in state, WebAuthn challenges): single use, bound to a cookie.

Starting a flow stores its data under the SHA-256 of a fresh random value and sets that value,
signed like the session cookie, in a short-lived cookie; finishing it needs both the cookie and
(for OAuth) the same value coming back from the provider, and deletes the row, so a flow cannot
be finished twice, nor in another browser. This is Better Auth's "state" cookie plus verification
row (`auth-state:<state>`), and its `better-auth-passkey` challenge cookie.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from brain.auth.cookies import COOKIE_NAME, SECURE_PREFIX, signed_value, token_hash, unsign
from brain.auth.db import FlowState
from brain.ids import new_id

_COOKIE_PREFIX = COOKIE_NAME.split(".", 1)[0] + "."  # "better-auth."


def cookie_name(name: str, *, secure: bool) -> str:
    """Better Auth's name for an auth cookie: `better-auth.<name>`, `__Secure-` over https."""
    return (SECURE_PREFIX if secure else "") + _COOKIE_PREFIX + name


def set_flow_cookie(response: web.StreamResponse, secret: bytes, name: str, value: str, *, max_age: int, secure: bool) -> None:
    """Set the signed flow cookie (HttpOnly, SameSite=Lax so it comes back on the provider's redirect)."""
    parts = [f"{cookie_name(name, secure=secure)}={signed_value(secret, value)}", f"Max-Age={max_age}", "Path=/",
             "HttpOnly", "SameSite=Lax"]
    if secure:
        parts.append("Secure")
    response.headers.add("Set-Cookie", "; ".join(parts))


def clear_flow_cookie(response: web.StreamResponse, name: str, *, secure: bool) -> None:
    """Expire the flow cookie."""
    parts = [f"{cookie_name(name, secure=secure)}=", "Max-Age=0", "Path=/", "HttpOnly", "SameSite=Lax"]
    if secure:
        parts.append("Secure")
    response.headers.add("Set-Cookie", "; ".join(parts))


def flow_cookie(request: web.Request, secret: bytes, name: str) -> str | None:
    """The value in the request's signed flow cookie, or None (absent or a bad signature)."""
    for secure in (True, False):
        raw = request.cookies.get(cookie_name(name, secure=secure))
        if raw:
            return unsign(secret, raw)
    return None


def new_flow_value() -> str:
    """A fresh random value naming a flow (OAuth `state`, or the challenge cookie's token)."""
    return new_id()


def store(*, now: int, new_session: Any, kind: str, value: str, data: dict[str, Any], ttl_s: int) -> None:
    """AuthIssuer.write: keep a flow's data under the hash of its value."""
    FlowState.delete().where(FlowState.expires_at <= now).execute()  # the table stays small
    FlowState.create(key_hash=token_hash(value), kind=kind, data=json.dumps(data), expires_at=now + ttl_s * 1000)


def take(*, now: int, new_session: Any, kind: str, value: str) -> dict[str, Any] | None:
    """AuthIssuer.write: the flow's data, deleted in the same step (None if absent, used or expired)."""
    row = FlowState.get_or_none((FlowState.key_hash == token_hash(value)) & (FlowState.kind == kind))
    if row is None or not FlowState.delete().where(FlowState.key_hash == row.key_hash).execute():
        return None
    return json.loads(row.data) if row.expires_at > now else None

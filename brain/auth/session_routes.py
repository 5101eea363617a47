"""A user's sessions: Better Auth 1.7's list-sessions, revoke-session, revoke-sessions and
revoke-other-sessions.

| endpoint | answer |
|----------|--------|
| `GET /api/auth/list-sessions` | `[session, ...]`, the user's live sessions (403 `SESSION_NOT_FRESH` from a session older than `session_fresh_age_seconds`) |
| `POST /api/auth/revoke-session` `{token}` | `{status: true}` |
| `POST /api/auth/revoke-sessions` | `{status: true}`; every session of the user, this one too |
| `POST /api/auth/revoke-other-sessions` | `{status: true}`; all but this one |

brain keeps only the SHA-256 of a session token, so unlike Better Auth it cannot list the
tokens of a user's other sessions: in list-sessions the current session carries its token and
every other one its id in `token`, a handle revoke-session accepts (from the same user only; a
handle or token of someone else's session is ignored, as Better Auth ignores it). A revoked
session's cookie and bearer token stop at once — every request looks its session up — while
JWTs minted from it run out within `jwt_ttl_seconds`.
"""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

from brain.auth import openapi_account
from brain.auth.context import AuthContext
from brain.auth.cookies import clear_session_cookie, token_hash
from brain.auth.db import Session, now_ms
from brain.auth.routes import AuthRoutes, described
from brain.auth.validation import require_object, text_field
from brain.routes import Route
from brain.web import json_response, read_json

# A session id or token is 32 characters; anything much longer is neither.
_MAX_TOKEN = 256



def revoke_tx(*, now: int, new_session: Callable[..., Session], user_id: str, token: str) -> str | None:
    """Delete the user's session whose token (or id) this is; the id of the one deleted."""
    row = (
        Session.select(Session.id)
        .where((Session.user == user_id) & ((Session.token_hash == token_hash(token)) | (Session.id == token)))
        .first()
    )
    if row is None:
        return None
    Session.delete().where(Session.id == row.id).execute()
    return str(row.id)


def revoke_all_tx(*, now: int, new_session: Callable[..., Session], user_id: str, keep: str | None) -> int:
    """Delete every session of the user but `keep` (a session id); how many went."""
    query = Session.delete().where(Session.user == user_id)
    if keep is not None:
        query = query.where(Session.id != keep)
    return int(query.execute())


class SessionRoutes:
    """The session endpoints, on the sign-in routes' helpers."""

    def __init__(self, base: AuthRoutes) -> None:
        self.base = base
        self.auth = base.auth

    @property
    def ctx(self) -> AuthContext:
        """The process's AuthContext (made on first use, see AuthRoutes)."""
        return self.base.ctx

    def routes(self) -> list[Route]:
        """The endpoints, each with its OpenAPI operation."""
        return described(
            openapi_account.SESSION_PATHS,
            (
                ("GET", "/api/auth/list-sessions", self.list_sessions),
                ("POST", "/api/auth/revoke-session", self.revoke_session),
                ("POST", "/api/auth/revoke-sessions", self.revoke_sessions),
                ("POST", "/api/auth/revoke-other-sessions", self.revoke_other_sessions),
            ),
        )

    async def list_sessions(self, request: web.Request) -> web.Response:
        """GET /api/auth/list-sessions -> the user's live sessions (Better Auth's freshSessionMiddleware)."""
        current, user, token, _ = await self.base.require_fresh_session(request)
        rows = (Session.select().where((Session.user == user.id) & (Session.expires_at > now_ms()))
                .order_by(Session.created_at))
        body = [row.public(token if row.id == current.id else row.id) for row in rows]
        return json_response(body, headers={"Cache-Control": "no-store"})

    async def revoke_session(self, request: web.Request) -> web.Response:
        """POST /api/auth/revoke-session {token} -> {status: true}."""
        current, user, _token, _ = await self.base.require_session(request)
        body = require_object(await read_json(request, limit=self.auth.max_body_bytes))
        token = text_field(body, "token", required=True)
        assert token is not None
        revoked = None
        if 0 < len(token) <= _MAX_TOKEN and token.isascii():
            revoked = await self.ctx.issuer("write", fn=revoke_tx, user_id=user.id, token=token)
        response = json_response({"status": True})
        if revoked == current.id:
            clear_session_cookie(response, secure=self.base.secure)
        return response

    async def revoke_sessions(self, request: web.Request) -> web.Response:
        """POST /api/auth/revoke-sessions -> {status: true}; this session too."""
        _current, user, _token, _ = await self.base.require_session(request)
        await self.ctx.issuer("write", fn=revoke_all_tx, user_id=user.id, keep=None)
        response = json_response({"status": True})
        clear_session_cookie(response, secure=self.base.secure)
        return response

    async def revoke_other_sessions(self, request: web.Request) -> web.Response:
        """POST /api/auth/revoke-other-sessions -> {status: true}; all but this session."""
        current, user, _token, _ = await self.base.require_session(request)
        await self.ctx.issuer("write", fn=revoke_all_tx, user_id=user.id, keep=current.id)
        return json_response({"status": True})

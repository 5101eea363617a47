"""Changing one's own account: Better Auth 1.7's update-user, change-password and change-email.

| endpoint | answer |
|----------|--------|
| `POST /api/auth/update-user` `{name?, image?}` | `{status: true}` (400 `EMAIL_CAN_NOT_BE_UPDATED` for `email`) |
| `POST /api/auth/change-password` `{currentPassword, newPassword, revokeOtherSessions?}` | `{token, user}`: with revokeOtherSessions every session is replaced by a new one (its token, cookie and `set-auth-token`), else `token: null` |
| `POST /api/auth/change-email` `{newEmail, callbackURL?}` | `{status: true}`; the change happens when the mailed links are followed (brain.auth.email_change) |

Better Auth's `set-password` is server-only (`createAuthEndpoint.serverOnly`): its client cannot
call it, so brain has no such route.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web

from brain.auth import email_change, openapi_account
from brain.auth.context import AuthContext
from brain.auth.account_routes import with_params
from brain.auth.cookies import token_hash
from brain.auth.db import EmailChange, Session, User
from brain.auth.emails import AuthMail
from brain.auth.issuer import EmailTaken
from brain.auth.routes import AuthRoutes, described, too_many
from brain.auth.validation import (
    MAX_IMAGE, MAX_NAME, check_name, check_password, normalize_email, password_length, require_object, text_field,
    validation_error,
)
from brain.control_chars import has_control
from brain.errors import BadRequest, Unauthorized
from brain.ids import new_id
from brain.routes import Route
from brain.web import json_response, read_json

# update-user fields the client may not set (Better Auth's input: false), refused when truthy.
_NOT_SETTABLE = ("twoFactorEnabled", "emailVerified", "createdAt", "updatedAt", "id")



def update_user_tx(*, now: int, new_session: Callable[..., Session], user_id: str, changes: dict[str, Any]) -> None:
    """Set name and/or image."""
    User.update(**changes, updated_at=now).where(User.id == user_id).execute()


def change_password_tx(*, now: int, new_session: Callable[..., Session], user_id: str, password_hash: str,
                       session: dict[str, Any] | None) -> Session | None:
    """Store the new password hash; with session fields, replace every session by a new one."""
    User.update(password_hash=password_hash, updated_at=now).where(User.id == user_id).execute()
    if session is None:
        return None
    Session.delete().where(Session.user == user_id).execute()
    return new_session(user_id, **session)


def parse_update_user(body: Any) -> dict[str, Any]:
    """The columns an update-user body changes; 400 naming the field for anything wrong."""
    body = require_object(body)
    if body.get("email"):
        raise BadRequest("Email can not be updated", code="EMAIL_CAN_NOT_BE_UPDATED")
    for field in _NOT_SETTABLE:
        if body.get(field):
            raise BadRequest(f"{field} is not allowed to be set", code="FIELD_NOT_ALLOWED")
    changes: dict[str, Any] = {}
    if "name" in body and body["name"] is not None:
        name = text_field(body, "name", required=True, max_len=MAX_NAME)
        assert name is not None
        check_name(name)
        changes["name"] = name
    if "image" in body:
        image = text_field(body, "image", required=False, max_len=MAX_IMAGE, nullable=True)
        if image is not None and has_control(image):
            raise validation_error("image", "must not contain control characters")
        changes["image"] = image
    if not changes:
        raise BadRequest("No fields to update", code="BAD_REQUEST")
    return changes


class ProfileRoutes:
    """update-user, change-password and change-email, on the sign-in routes' helpers."""

    def __init__(self, base: AuthRoutes) -> None:
        self.base = base
        self.auth = base.auth

    @property
    def ctx(self) -> AuthContext:
        """The process's AuthContext (made on first use, see AuthRoutes)."""
        return self.base.ctx

    @property
    def mail(self) -> AuthMail:
        """Verification and change-of-address mail."""
        return self.base.mail

    def routes(self) -> list[Route]:
        """The endpoints, each with its OpenAPI operation."""
        return described(
            openapi_account.PROFILE_PATHS,
            (
                ("POST", "/api/auth/update-user", self.update_user),
                ("POST", "/api/auth/change-password", self.change_password),
                ("POST", "/api/auth/change-email", self.change_email),
            ),
        )

    async def _body(self, request: web.Request) -> dict[str, Any]:
        return require_object(await read_json(request, limit=self.auth.max_body_bytes))

    async def update_user(self, request: web.Request) -> web.Response:
        """POST /api/auth/update-user {name?, image?} -> {status: true}."""
        _session, user, _token, _ = await self.base.require_session(request)
        changes = parse_update_user(await read_json(request, limit=self.auth.max_body_bytes))
        await self.ctx.issuer("write", fn=update_user_tx, user_id=user.id, changes=changes)
        return json_response({"status": True})

    async def change_password(self, request: web.Request) -> web.Response:
        """POST /api/auth/change-password {currentPassword, newPassword, revokeOtherSessions?} -> {token, user}."""
        await self.base._limit_ip(self.base._ip(request))
        current, user, _token, _ = await self.base.require_session(request)
        body = await self._body(request)
        new = text_field(body, "newPassword", required=True)
        old = text_field(body, "currentPassword", required=True)
        # Optional, but a boolean when given (Better Auth's z.boolean().optional() refuses null too).
        revoke = body.get("revokeOtherSessions", False)
        if not isinstance(revoke, bool):
            raise validation_error("revokeOtherSessions", "Invalid input: expected boolean")
        assert new is not None and old is not None
        check_password(new, self.auth)
        if password_length(old) > self.auth.max_password_length:
            raise BadRequest("Password too long", code="PASSWORD_TOO_LONG")
        if not user.has_password:  # a social-only account (brain.auth.social)
            raise BadRequest("Credential account not found", code="CREDENTIAL_ACCOUNT_NOT_FOUND")
        await self.base.confirm_password(user, old)
        password_hash = await self.ctx.passwords.hash(new)
        token, fields = None, None
        if revoke:
            token, fields = self.base._new_session_fields(request, self.base._ip(request), current.remember)
        session = await self.ctx.issuer("write", fn=change_password_tx, user_id=user.id, password_hash=password_hash,
                                        session=fields)
        fresh = User.get_by_id(user.id).public()
        response = json_response({"token": token, "user": fresh}, headers={"Cache-Control": "no-store"})
        if session is not None and token is not None:
            self.base._set_cookie(response, token, session)
            response.headers["set-auth-jwt"] = self.base._jwt(fresh)
        return response

    async def change_email(self, request: web.Request) -> web.Response:
        """POST /api/auth/change-email {newEmail, callbackURL?} -> {status: true}; mails the link(s)."""
        _session, user, _token, _ = await self.base.require_session(request)
        body = await self._body(request)
        if not self.auth.change_email_enabled:
            raise BadRequest("Change email is disabled", code="CHANGE_EMAIL_DISABLED")
        raw = text_field(body, "newEmail", required=True)
        callback = text_field(body, "callbackURL", required=False, max_len=MAX_IMAGE)
        assert raw is not None
        try:
            new_email = normalize_email(raw)
        except BadRequest as exc:
            raise BadRequest(f"[body.newEmail] {exc.message}", code=exc.code) from None
        callback = self.base._callback(callback)
        if new_email == user.email:
            raise BadRequest("Email is the same", code="BAD_REQUEST")
        self.mail.check_available()
        confirm = user.email_verified and self.auth.change_email_confirm_old_address
        to = user.email if confirm else new_email
        # The budget is counted the same whether or not the new address is taken: the answer must
        # not tell which.
        if not await self.mail.allow(new_email) or (confirm and not await self.mail.allow(user.email)):
            raise too_many(3600.0, "Too many emails to this address. Please try again later.")
        if User.select().where(User.email == new_email).exists():
            return json_response({"status": True})
        kind = email_change.CONFIRM_OLD if confirm else email_change.VERIFY_NEW
        token = new_id()
        await self.ctx.issuer(
            "write", fn=email_change.request_tx, kind=kind, user_id=user.id, email=user.email, new_email=new_email,
            token_hash=token_hash(token), ttl_s=self.auth.email_verification_ttl_seconds,
        )
        await self.mail.send(to, kind, self.mail.email_change(kind, user.public(), new_email, token, callback))
        return json_response({"status": True})

    # --- the links of the change mails (verify-email hands them over) ---

    @staticmethod
    def change_of(hashed: str) -> str | None:
        """The user a verify-email token changes the address of, or None if it is no such token."""
        row = EmailChange.select(EmailChange.user).where(EmailChange.token_hash == hashed).first()
        return None if row is None else str(row.user_id)

    async def follow(self, request: web.Request, hashed: str, user_id: str, callback: str | None) -> web.Response:
        """GET verify-email with a change token: confirm (mail the new address) or change the address."""
        found = await self.base._current(request)
        if found is not None and found[1].id != user_id:
            # Better Auth refuses a link followed in another user's signed-in browser.
            return self._failed("INVALID_USER", "Invalid user", callback)
        next_token = new_id()
        result: email_change.Followed = await self.ctx.issuer(
            "write", fn=email_change.follow_tx, token_hash=hashed, next_token_hash=token_hash(next_token),
            ttl_s=self.auth.email_verification_ttl_seconds,
        )
        if result.outcome == "taken":
            if callback:
                return self._failed(EmailTaken.code, "", callback)
            raise EmailTaken()
        if result.outcome in ("invalid", "expired"):
            expired = result.outcome == "expired"
            return self._failed("TOKEN_EXPIRED" if expired else "INVALID_TOKEN",
                                "Token expired" if expired else "Invalid token", callback)
        assert result.user is not None
        if result.outcome == "confirmed":
            text = self.mail.email_change(email_change.VERIFY_NEW, result.user.public(), result.new_email, next_token,
                                          callback)
            await self.mail.send(result.new_email, email_change.VERIFY_NEW, text)
            body: dict[str, Any] = {"status": True}
        else:
            body = {"status": True, "user": result.user.public()}
        if callback:
            return _redirect(callback)
        return json_response(body)

    @staticmethod
    def _failed(code: str, message: str, callback: str | None) -> web.Response:
        """Better Auth's redirectOnError: to the callback with ?error=, else 401."""
        if callback:
            return _redirect(with_params(callback, {"error": code}))
        raise Unauthorized(message, code=code)


def _redirect(location: str) -> web.Response:
    return web.Response(status=302, headers={"Location": location, "Cache-Control": "no-store"})

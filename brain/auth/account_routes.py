"""Email verification, password reset and account deletion: Better Auth 1.7's endpoints.

| endpoint | answer |
|----------|--------|
| `POST /api/auth/send-verification-email` `{email, callbackURL?}` | `{status: true}` |
| `GET /api/auth/verify-email?token&callbackURL?` | `{status: true, user: null}`, or a redirect to callbackURL |
| `POST /api/auth/request-password-reset` `{email, redirectTo?}` (also `/forget-password`) | `{status: true, message}` |
| `GET /api/auth/reset-password/{token}?callbackURL` | redirect to callbackURL with `?token=` (or `?error=INVALID_TOKEN`) |
| `POST /api/auth/reset-password` `{newPassword, token}` | `{status: true}`; every session of the user is revoked |
| `POST /api/auth/delete-user` `{password?, token?, callbackURL?}` | `{success: true, message: "User deleted"}` |

Without a session, the two mail-sending endpoints answer the same, after at least
RESPONSE_FLOOR_S, whether or not the address is known (and send in the background), as Better
Auth does, so neither the body nor the timing tells who has an account.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode, urljoin

from aiohttp import web

from brain.auth import accounts
from brain.auth.context import AuthContext
from brain.auth.cookies import clear_session_cookie, token_hash
from brain.auth.db import User, now_ms
from brain.auth.deletion import AccountDeletions
from brain.auth.emails import AuthMail
from brain.auth.openapi import PATHS
from brain.auth.routes import AuthRoutes, described, too_many
from brain.auth.validation import parse_delete_user, parse_email_request, parse_reset_password, validation_error
from brain.errors import BadRequest, NotFound, Unauthorized
from brain.routes import Route
from brain.web import json_response, read_json

if TYPE_CHECKING:
    from brain.auth.profile_routes import ProfileRoutes

# Better Auth's constant-time floor for send-verification-email without a session (500 ms).
RESPONSE_FLOOR_S = 0.5
RESET_MESSAGE = "If this email exists in our system, check your email for the reset link"
# Emailed tokens are 32 alphanumerics; anything far off is simply not one.
_MAX_TOKEN = 256


def emailed_token_hash(token: str | None) -> str | None:
    """The stored hash of a token from a link, or None for anything that cannot be one."""
    if not token or len(token) > _MAX_TOKEN or not token.isascii():
        return None
    return token_hash(token)


def with_params(url: str, params: dict[str, str]) -> str:
    """url with query parameters appended (before any #fragment)."""
    base, hash_, fragment = url.partition("#")
    joined = base + ("&" if "?" in base else "?") + urlencode(params)
    return joined + hash_ + fragment


def _redirect(location: str) -> web.Response:
    return web.Response(status=302, headers={"Location": location, "Cache-Control": "no-store"})


class AccountRoutes:
    """Handlers that share the sign-in routes' helpers (session lookup, limits, callbacks)."""

    def __init__(self, base: AuthRoutes, deletions: AccountDeletions) -> None:
        self.base = base
        self.auth = base.auth
        self.deletions = deletions
        # Set by brain.auth.plugin: verify-email also follows the links of a change of address.
        self.profile: ProfileRoutes | None = None

    @property
    def ctx(self) -> AuthContext:
        """The process's AuthContext (made on first use, see AuthRoutes)."""
        return self.base.ctx

    @property
    def mail(self) -> AuthMail:
        """Verification and reset mail."""
        return self.base.mail

    def routes(self) -> list[Route]:
        """The endpoints, each with its OpenAPI operation."""
        return described(
            PATHS,
            (
                ("POST", "/api/auth/send-verification-email", self.send_verification_email),
                ("GET", "/api/auth/verify-email", self.verify_email),
                ("POST", "/api/auth/request-password-reset", self.request_password_reset),
                # Its name before Better Auth 1.4.
                ("POST", "/api/auth/forget-password", self.request_password_reset),
                ("GET", "/api/auth/reset-password/{token}", self.reset_password_callback),
                ("POST", "/api/auth/reset-password", self.reset_password),
                ("POST", "/api/auth/delete-user", self.delete_user),
            ),
        )

    async def _floor(self, started: float) -> None:
        await asyncio.sleep(max(0.0, RESPONSE_FLOOR_S - (asyncio.get_running_loop().time() - started)))

    # --- email verification ---

    async def send_verification_email(self, request: web.Request) -> web.Response:
        """POST /api/auth/send-verification-email {email, callbackURL?} -> {status: true}."""
        started = asyncio.get_running_loop().time()
        await self.base._limit_ip(self.base._ip(request))
        email, url = parse_email_request(await read_json(request, limit=self.auth.max_body_bytes), "callbackURL")
        callback = self.base._callback(url)
        self.mail.check_available()
        found = await self.base._current(request)
        if found is not None:
            user = found[1]
            if user.email != email:
                raise BadRequest("Email mismatch", code="EMAIL_MISMATCH")
            if user.email_verified:
                raise BadRequest("Email is already verified", code="EMAIL_ALREADY_VERIFIED")
            if not await self.mail.allow(email):
                raise self._too_many()
            text = await self.mail.verification(user.public(), callback)
            await self.mail.send(email, accounts.VERIFY_EMAIL, text)
            return json_response({"status": True})
        user = User.get_or_none(User.email == email)
        if user is not None and not user.email_verified and await self.mail.allow(email):
            text = await self.mail.verification(user.public(), callback)
            self.mail.send_later(email, accounts.VERIFY_EMAIL, text)
        await self._floor(started)
        return json_response({"status": True})

    def _too_many(self) -> Exception:
        return too_many(3600.0, "Too many emails to this address. Please try again later.")

    async def send_sign_up_verification(self, user: dict[str, Any], callback: str | None) -> None:
        """The verification mail of a new account (token now, delivery in the background)."""
        if await self.mail.allow(user["email"]):
            text = await self.mail.verification(user, callback)
            self.mail.send_later(user["email"], accounts.VERIFY_EMAIL, text)

    async def verify_email(self, request: web.Request) -> web.Response:
        """GET /api/auth/verify-email?token&callbackURL -> {status: true, user: null} or a redirect."""
        token = request.query.get("token")
        callback = self.base._callback(request.query.get("callbackURL") or None)
        if not token:
            raise validation_error("token", "Invalid input: expected string, received undefined")
        hashed = emailed_token_hash(token)
        changing = hashed and self.profile is not None and self.profile.change_of(hashed)
        if changing:  # a link of a change of address (brain.auth.profile_routes)
            assert self.profile is not None and hashed is not None
            return await self.profile.follow(request, hashed, changing, callback)
        fields = None
        if self.auth.auto_sign_in_after_verification:
            session_token, fields = self.base._new_session_fields(request, self.base._ip(request), True)
        status, user, session = ("invalid", None, None)
        if hashed is not None:
            status, user, session = await self.ctx.issuer("verify_email", token_hash=hashed, session=fields)
        if user is None:
            code, message = ("TOKEN_EXPIRED", "Token expired") if status == "expired" else ("INVALID_TOKEN", "Invalid token")
            if callback:
                return _redirect(with_params(callback, {"error": code}))
            raise Unauthorized(message, code=code)
        response = _redirect(callback) if callback else json_response({"status": True, "user": None})
        if session is not None:
            self.base._set_cookie(response, session_token, session)
        return response

    # --- password reset ---

    async def request_password_reset(self, request: web.Request) -> web.Response:
        """POST /api/auth/request-password-reset {email, redirectTo?} -> {status: true, message}."""
        started = asyncio.get_running_loop().time()
        await self.base._limit_ip(self.base._ip(request))
        email, url = parse_email_request(await read_json(request, limit=self.auth.max_body_bytes), "redirectTo")
        redirect_to = self.base._callback(url)
        self.mail.check_available()
        user = User.get_or_none(User.email == email)
        if user is not None and await self.mail.allow(email):
            text = await self.mail.password_reset(user.public(), redirect_to)
            self.mail.send_later(email, accounts.RESET_PASSWORD, text)
        await self._floor(started)
        return json_response({"status": True, "message": RESET_MESSAGE})

    async def reset_password_callback(self, request: web.Request) -> web.Response:
        """GET /api/auth/reset-password/{token}?callbackURL -> redirect with ?token= (or ?error=)."""
        token = request.match_info["token"]
        callback = self.base._callback(request.query.get("callbackURL") or None)
        hashed = emailed_token_hash(token)
        valid = hashed is not None and accounts.peek_token(accounts.RESET_PASSWORD, hashed, now_ms())
        if callback is None:
            # Better Auth would redirect to its /error page; without one, answer JSON.
            if not valid:
                raise BadRequest("Invalid token", code="INVALID_TOKEN")
            return json_response({"token": token}, headers={"Cache-Control": "no-store"})
        target = urljoin(self.ctx.settings.auth_public_url + "/", callback)
        return _redirect(with_params(target, {"token": token} if valid else {"error": "INVALID_TOKEN"}))

    async def reset_password(self, request: web.Request) -> web.Response:
        """POST /api/auth/reset-password {newPassword, token} -> {status: true}; all sessions revoked."""
        await self.base._limit_ip(self.base._ip(request))
        body = await read_json(request, limit=self.auth.max_body_bytes)
        token, password = parse_reset_password(body, request.query.get("token") or None, self.auth)
        hashed = emailed_token_hash(token)
        if hashed is None:
            raise BadRequest("Invalid token", code="INVALID_TOKEN")
        password_hash = await self.ctx.passwords.hash(password)
        status, user_id = await self.ctx.issuer("reset_password", token_hash=hashed, password_hash=password_hash)
        if user_id is None:
            raise BadRequest("Invalid token", code="INVALID_TOKEN")
        return json_response({"status": True})

    # --- deletion ---

    async def delete_user(self, request: web.Request) -> web.Response:
        """POST /api/auth/delete-user {password?, token?, callbackURL?} -> {success, message}."""
        if not self.auth.delete_user_enabled:
            raise NotFound("Not found", code="NOT_FOUND")
        await self.base._limit_ip(self.base._ip(request))
        found = await self.base._current(request)
        if found is None:
            raise Unauthorized("Unauthorized", code="UNAUTHORIZED")
        session, user = found[0], found[1]
        # Better Auth's client may send no body at all: that is `{}`.
        empty = not request.body_exists or request.content_length == 0
        body = {} if empty else await read_json(request, limit=self.auth.max_body_bytes)
        req = parse_delete_user(body, self.auth)
        # Better Auth redirects there after an emailed confirmation, which brain does not send;
        # an unsafe one is still refused, as on every other endpoint.
        self.base._callback(req.callback_url)
        if req.password is not None:
            wait = await self.ctx.account_failures.take(user.email)
            if wait > 0:
                raise too_many(wait, "Too many failed attempts. Please try again later.")
            ok, _ = await self.ctx.passwords.verify(user.password_hash, req.password)
            if not ok:
                raise BadRequest("Invalid password", code="INVALID_PASSWORD")
            await self.ctx.account_failures.reset(user.email)
        if req.token is not None:
            # Better Auth's emailed deletion confirmations (sendDeleteAccountVerification) are
            # not issued by brain, so no token can match one.
            raise NotFound("Invalid token", code="INVALID_TOKEN")
        if req.password is None and not self.base.is_fresh(session):
            raise BadRequest("Session expired. Re-authenticate to perform this action.", code="SESSION_EXPIRED")
        if await self.deletions.delete(user.id) is None:
            raise Unauthorized("Unauthorized", code="UNAUTHORIZED")  # deleted meanwhile
        response = json_response({"success": True, "message": "User deleted"})
        clear_session_cookie(response, secure=self.base.secure)
        return response

"""The auth role's HTTP endpoints: Better Auth's paths, bodies, shapes and error codes."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from aiohttp import web

from brain.auth import minting
from brain.auth.context import AuthContext, context_for
from brain.auth.cookies import clear_session_cookie, cookie_name, request_token, set_session_cookie, token_hash
from brain.auth.db import Session, User, iso, now_ms
from brain.auth.emails import AuthMail
from brain.auth.issuer import EmailTaken
from brain.auth.openapi import COMPONENTS, SIGN_IN_PATHS
from brain.ratelimit import client_block
from brain.auth.settings import jwt_issuer
from brain.auth.validation import SignIn, SignUp, parse_sign_in, parse_sign_up
from brain.errors import BadRequest, Forbidden, ServiceUnavailable, TooManyRequests, Unauthorized
from brain.ids import new_id
from brain.origins import TrustedOrigins
from brain.process import Process
from brain.routes import Route
from brain.web import Handler, client_ip, json_response, read_json

if TYPE_CHECKING:
    from brain.auth.account_routes import AccountRoutes
    from brain.auth.two_factor_routes import TwoFactorRoutes

log = logging.getLogger("brain.auth")

_MAX_USER_AGENT = 512


def _synthetic_user(req: SignUp) -> dict[str, Any]:
    """A user object for an address that already has an account (never stored)."""
    now = iso(now_ms())
    return {
        "id": new_id(), "email": req.email, "name": req.name, "image": req.image, "emailVerified": False,
        "twoFactorEnabled": False, "createdAt": now, "updatedAt": now,
    }


def too_many(wait_s: float, message: str = "Too many requests. Please try again later.") -> TooManyRequests:
    """429 with Retry-After (and Better Auth's X-Retry-After)."""
    exc = TooManyRequests(message, retry_after=wait_s)
    exc.headers["X-Retry-After"] = exc.headers["Retry-After"]
    return exc


def described(
    paths: Mapping[str, Mapping[str, Any]],
    table: Iterable[tuple[str, str, Handler]],
    components: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[Route]:
    """Routes from (method, path, handler), each with its operation from `paths` (OpenAPI path
    items) and the auth role's components (plus `components`)."""
    merged = {kind: {**COMPONENTS.get(kind, {}), **(components or {}).get(kind, {})} for kind in {*COMPONENTS, *(components or {})}}
    return [Route(method, path, handler, paths[path][method.lower()], components=merged) for method, path, handler in table]


class AuthRoutes:
    """Handlers of one process's auth role.

    Building them has no side effect: the AuthContext (auth.db, the hash pool) is made on the
    first request that needs it, so a process that only describes these routes in its
    /openapi.json (it does not serve the auth role) never opens auth.db.
    """

    def __init__(self, rt: Process, trusted: TrustedOrigins) -> None:
        self.rt = rt
        settings = rt.settings
        # Set by brain.auth.plugin: the verification, reset and deletion endpoints, and the
        # second factor that sign-in hands a user with two-factor to.
        self.accounts: AccountRoutes | None = None
        self.two_factor: TwoFactorRoutes | None = None
        self.auth = settings.auth
        self.trusted = trusted
        self.trusted_proxies = frozenset(settings.server.trusted_proxies)
        self.secure = settings.auth_public_url.startswith("https://")
        issuer = jwt_issuer(settings)
        self.openid_bytes = json.dumps(
            {
                "issuer": issuer,
                "jwks_uri": f"{settings.auth_public_url}/api/auth/jwks",
                "id_token_signing_alg_values_supported": ["RS256"],
                "subject_types_supported": ["public"],
                "response_types_supported": ["id_token"],
                "claims_supported": ["iss", "sub", "aud", "iat", "exp", "email", "name", "emailVerified"],
            },
            separators=(",", ":"),
        ).encode()

    @functools.cached_property
    def ctx(self) -> AuthContext:
        """The process's AuthContext."""
        return context_for(self.rt)

    @functools.cached_property
    def mail(self) -> AuthMail:
        """Verification and reset mail."""
        return AuthMail(self.ctx)

    def routes(self) -> list[Route]:
        """Every sign-up, sign-in, session and key route, with its OpenAPI operation."""
        return described(
            SIGN_IN_PATHS,
            (
                ("POST", "/api/auth/sign-up/email", self.sign_up),
                ("POST", "/api/auth/sign-in/email", self.sign_in),
                ("GET", "/api/auth/get-session", self.get_session),
                ("GET", "/api/auth/token", self.token),
                ("POST", "/api/auth/sign-out", self.sign_out),
                ("GET", "/api/auth/jwks", self.jwks),
                ("GET", "/api/auth/ok", self.ok),
                ("GET", "/.well-known/openid-configuration", self.openid_configuration),
            ),
        )

    # --- helpers ---

    def _ip(self, request: web.Request) -> str:
        return client_ip(request, self.trusted_proxies)

    async def _limit_ip(self, ip: str) -> None:
        block = client_block(ip)
        wait = await self.ctx.ip_limiter.take(block)
        if wait > 0:
            log.warning("rate limit: %s over %d auth requests/minute", block, self.auth.rate_limit_ip_per_minute)
            raise too_many(wait)

    def _callback(self, url: str | None) -> str | None:
        """The callback to use (rebuilt from its checked parts); 403 INVALID_CALLBACK_URL if unsafe."""
        if url is None:
            return None
        safe = self.trusted.safe_callback(url)
        if safe is None:
            raise Forbidden("Invalid callbackURL", code="INVALID_CALLBACK_URL")
        return safe

    def _new_session_fields(self, request: web.Request, ip: str, remember: bool) -> tuple[str, dict[str, Any]]:
        token = new_id()
        return token, {
            "token_hash": token_hash(token),
            "ip_address": ip,
            "user_agent": request.headers.get("User-Agent", "")[:_MAX_USER_AGENT],
            "remember": remember,
        }

    def _jwt(self, user: dict[str, Any]) -> str:
        return minting.mint(self.ctx.current_ring(), self.ctx.settings, self.ctx.rt.pm, user)

    def _session_response(
        self, body: dict[str, Any], user: dict[str, Any], session: Session | None, token: str | None,
        *, jwt: str | None = None,
    ) -> web.Response:
        """The sign-up/sign-in answer; with a session: cookie, set-auth-token and set-auth-jwt (minted
        here unless the caller made it already)."""
        if session is None or token is None:
            # Sign-up while email verification is required: an account, no session yet.
            body.update({"token": None, "user": user, "session": None, "jwt": None})
            return json_response(body, headers={"Cache-Control": "no-store"})
        jwt = jwt or self._jwt(user)
        body.update({"token": token, "user": user, "session": session.public(token), "jwt": jwt})
        response = json_response(body, headers={"Cache-Control": "no-store", "set-auth-jwt": jwt})
        self._set_cookie(response, token, session)
        return response

    def _set_cookie(self, response: web.Response, token: str, session: Session) -> None:
        # rememberMe: false -> a browser-session cookie, as Better Auth sets it.
        max_age = self.auth.session_ttl_seconds if session.remember else None
        value = set_session_cookie(response, self.ctx.secret, token, max_age=max_age, secure=self.secure)
        response.headers["set-auth-token"] = value

    async def _run_hook(self, fn: Any, **kwargs: Any) -> Any:
        # Plugins are synchronous and may do I/O: keep them off the event loop.
        return await asyncio.get_running_loop().run_in_executor(None, functools.partial(fn, **kwargs))

    async def _current(self, request: web.Request) -> tuple[Session, User, str, bool] | None:
        """The request's live session (extended when due): (session, user, token, refreshed)."""
        token = request_token(request, self.ctx.secret)
        if not token:
            return None
        row = (
            Session.select(Session, User)
            .join(User)
            .where(Session.token_hash == token_hash(token))
            .get_or_none()
        )
        now = now_ms()
        if row is None or row.expires_at <= now:
            return None
        user = row.user
        ttl_ms = self.auth.session_ttl_seconds * 1000
        if row.remember and row.expires_at - ttl_ms + self.auth.session_update_age_seconds * 1000 <= now:
            updated = await self.ctx.issuer("extend_session", session_id=row.id)
            if updated is None:
                return None
            return updated, user, token, True
        return row, user, token, False

    async def confirm_password(self, user: User, password: str) -> None:
        """The user's own password, as account changes ask for it: 400 INVALID_PASSWORD when wrong
        (failures count against the account's sign-in limit)."""
        wait = await self.ctx.account_failures.take(user.email)
        if wait > 0:
            raise too_many(wait, "Too many failed attempts. Please try again later.")
        ok, _ = await self.ctx.passwords.verify(user.password_hash, password)
        if not ok:
            raise BadRequest("Invalid password", code="INVALID_PASSWORD")
        await self.ctx.account_failures.reset(user.email)

    async def require_session(self, request: web.Request) -> tuple[Session, User, str, bool]:
        """The request's live session, or 401 UNAUTHORIZED (Better Auth's sessionMiddleware)."""
        found = await self._current(request)
        if found is None:
            raise Unauthorized("Unauthorized", code="UNAUTHORIZED")
        return found

    def is_fresh(self, session: Session) -> bool:
        """Whether the session is younger than `session_fresh_age_seconds` (0: every session is)."""
        fresh_ms = self.auth.session_fresh_age_seconds * 1000
        return not fresh_ms or now_ms() - session.created_at < fresh_ms

    async def require_fresh_session(self, request: web.Request) -> tuple[Session, User, str, bool]:
        """The request's live session, 401 without one, 403 SESSION_NOT_FRESH when it is too old
        (Better Auth's freshSessionMiddleware)."""
        found = await self.require_session(request)
        if not self.is_fresh(found[0]):
            raise Forbidden("Session is not fresh", code="SESSION_NOT_FRESH")
        return found

    # --- endpoints ---

    async def sign_up(self, request: web.Request) -> web.Response:
        """POST /api/auth/sign-up/email {name, email, password, image?, rememberMe?}."""
        ip = self._ip(request)
        await self._limit_ip(ip)
        req = parse_sign_up(await read_json(request, limit=self.auth.max_body_bytes), self.auth)
        callback = self._callback(req.callback_url)
        reasons = await self._run_hook(self.ctx.rt.pm.hook.validate_sign_up, email=req.email, name=req.name)
        refusal = next((r for r in reasons if r is not None), None)
        if refusal is not None:
            raise BadRequest(refusal if isinstance(refusal, str) and refusal else "sign-up refused", code="SIGN_UP_REFUSED")
        verify = self.auth.require_email_verification
        if verify:
            self.mail.check_available()  # nobody could ever sign in: refuse before creating anyone
        if User.select().where(User.email == req.email).exists():
            if verify:
                # Better Auth's answer when verification is required: the same as for a new
                # address (after the same hashing work), so sign-up does not reveal accounts.
                await self.ctx.passwords.hash(req.password)
                return self._session_response({}, _synthetic_user(req), None, None)
            raise EmailTaken()
        password_hash = await self.ctx.passwords.hash(req.password)
        token, fields = None, None
        if not verify:
            token, fields = self._new_session_fields(request, ip, req.remember)
        try:
            user, session = await self.ctx.issuer(
                "create_user", email=req.email, name=req.name, image=req.image, password_hash=password_hash,
                session=fields,
            )
        except EmailTaken:
            if verify:
                return self._session_response({}, _synthetic_user(req), None, None)
            raise
        public = user.public()
        log.info("user %s signed up", user.id)
        if (verify or self.auth.send_verification_on_sign_up) and self.accounts is not None:
            await self.accounts.send_sign_up_verification(public, callback)
        hook = self._run_hook(self.ctx.rt.pm.hook.after_sign_up, user=dict(public))
        self.ctx.in_background(asyncio.ensure_future(hook), "after_sign_up hook")
        return self._session_response({}, public, session, token)

    async def sign_in(self, request: web.Request) -> web.Response:
        """POST /api/auth/sign-in/email {email, password, rememberMe?}."""
        ip = self._ip(request)
        await self._limit_ip(ip)
        req = parse_sign_in(await read_json(request, limit=self.auth.max_body_bytes), self.auth)
        callback = self._callback(req.callback_url)
        # Every attempt counts as a failure until the password checks out, so concurrent
        # guesses cannot all slip in before the first failure is recorded.
        wait = await self.ctx.account_failures.take(req.email)
        if wait > 0:
            log.warning("sign-in for a locked-out account from %s", ip)
            raise too_many(wait, "Too many failed sign-in attempts. Please try again later.")
        user = User.get_or_none(User.email == req.email)
        # An unknown email is verified against a dummy hash: same work, same answer.
        checking = self.ctx.passwords.verify(user.password_hash if user else None, req.password)
        # While argon2 runs on the hash pool, make what a successful sign-in sends (the session
        # token and the JWT), so that only the session's insert follows the verification; a failed
        # attempt throws them away unseen. This takes far less than the hash, so a known email's
        # failure takes no longer than an unknown one's.
        try:
            ready = None if user is None or user.two_factor_enabled else self._prepared_session(request, ip, req, user)
        except BaseException:
            checking.cancel()
            raise
        ok, rehash = await checking
        if not ok or user is None:
            raise Unauthorized("Invalid email or password", code="INVALID_EMAIL_OR_PASSWORD")
        await self.ctx.account_failures.reset(req.email)
        if self.auth.require_email_verification and not user.email_verified:
            raise Forbidden("Email not verified", code="EMAIL_NOT_VERIFIED")
        new_hash = await self.ctx.passwords.hash(req.password) if rehash else None
        if user.two_factor_enabled:
            # No session yet: the second factor completes the sign-in (Better Auth's twoFactorRedirect).
            if self.two_factor is None:
                raise ServiceUnavailable("two-factor sign-in is not available")
            return await self.two_factor.challenge(request, user, req.remember, new_hash)
        assert ready is not None  # prepared for every user without two-factor
        token, fields, public, jwt = ready
        session = await self.ctx.issuer("create_session", user_id=user.id, new_password_hash=new_hash, **fields)
        body: dict[str, Any] = {"redirect": callback is not None}
        if callback is not None:
            body["url"] = callback
        return self._session_response(body, public, session, token, jwt=jwt)

    def _prepared_session(
        self, request: web.Request, ip: str, req: SignIn, user: User
    ) -> tuple[str, dict[str, Any], dict[str, Any], str]:
        """(session token, session fields, public user, JWT) for a sign-in not yet verified."""
        token, fields = self._new_session_fields(request, ip, req.remember)
        public = user.public()
        return token, fields, public, self._jwt(public)

    async def get_session(self, request: web.Request) -> web.Response:
        """GET /api/auth/get-session -> {session, user} or null, plus set-auth-jwt."""
        found = await self._current(request)
        headers = {"Cache-Control": "no-store"}
        if found is None:
            response = json_response(None, headers=headers)
            if any(request.cookies.get(cookie_name(s)) for s in (True, False)):
                clear_session_cookie(response, secure=self.secure)
            return response
        session, user, token, refreshed = found
        public = user.public()
        headers["set-auth-jwt"] = self._jwt(public)
        response = json_response({"session": session.public(token), "user": public}, headers=headers)
        if refreshed:
            self._set_cookie(response, token, session)
        return response

    async def token(self, request: web.Request) -> web.Response:
        """GET /api/auth/token -> {token: <fresh JWT>} for a live session, else 401."""
        found = await self._current(request)
        if found is None:
            raise Unauthorized("Unauthorized", code="UNAUTHORIZED")
        session, user, token, refreshed = found
        response = json_response({"token": self._jwt(user.public())}, headers={"Cache-Control": "no-store"})
        if refreshed:
            self._set_cookie(response, token, session)
        return response

    async def sign_out(self, request: web.Request) -> web.Response:
        """POST /api/auth/sign-out: revoke the session server-side and clear the cookie."""
        token = request_token(request, self.ctx.secret)
        if token:
            revoked = await self.ctx.issuer("revoke_session", token_hash=token_hash(token))
            if revoked:
                log.info("session signed out")
        response = json_response({"success": True})
        clear_session_cookie(response, secure=self.secure)
        return response

    async def jwks(self, _request: web.Request) -> web.Response:
        """GET /api/auth/jwks: the public keys, from memory."""
        return web.Response(
            body=self.ctx.current_ring().jwks_bytes,
            content_type="application/json",
            headers={"Cache-Control": f"public, max-age={self.auth.jwks_max_age_seconds}"},
        )

    async def openid_configuration(self, _request: web.Request) -> web.Response:
        """GET /.well-known/openid-configuration: where standard verifiers find issuer and keys."""
        return web.Response(
            body=self.openid_bytes,
            content_type="application/json",
            headers={"Cache-Control": f"public, max-age={self.auth.jwks_max_age_seconds}"},
        )

    async def ok(self, _request: web.Request) -> web.Response:
        """GET /api/auth/ok (Better Auth's liveness endpoint)."""
        return json_response({"ok": True})

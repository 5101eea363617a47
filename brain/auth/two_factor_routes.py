"""Two-factor endpoints: Better Auth 1.7's twoFactor plugin (TOTP and backup codes).

| endpoint | answer |
|----------|--------|
| `POST /api/auth/two-factor/enable` `{password, issuer?}` | `{method: "totp", totpURI, backupCodes}`; on once a code is verified |
| `POST /api/auth/two-factor/get-totp-uri` `{password}` | `{totpURI}` |
| `POST /api/auth/two-factor/verify-totp` `{code}` | `{token, user}` (+ `jwt`): a session from the two_factor cookie, or with a session the enabling step |
| `POST /api/auth/two-factor/verify-backup-code` `{code, disableSession?}` | `{token, user}` as verify-totp (a code works once) |
| `POST /api/auth/two-factor/generate-backup-codes` `{password}` | `{status: true, backupCodes}` (the old ones stop working) |
| `POST /api/auth/two-factor/disable` `{password}` | `{status: true}` |

Sign-in of a user with two-factor on answers `{twoFactorRedirect: true, twoFactorMethods:
["totp"]}` with the `better-auth.two_factor` cookie (a signed challenge token, valid
`two_factor_challenge_seconds`) instead of a session; verify-totp or verify-backup-code with
that cookie then creates the session. Better Auth's trusted devices (`trustDevice`) and email
OTP (`send-otp`, `verify-otp`) are not offered: every such sign-in asks for the code.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from brain.auth import openapi_account, two_factor
from brain.auth.context import AuthContext
from brain.auth.cookies import (
    SECURE_PREFIX, clear_session_cookie, read_signed_cookie, signed_value, token_hash, write_cookie,
)
from brain.auth.db import Session, TwoFactor, User, now_ms
from brain.ratelimit import shared_limit
from brain.auth.routes import AuthRoutes, described, too_many
from brain.auth.validation import require_object, validation_error
from brain.errors import BadRequest, TooManyRequests, Unauthorized
from brain.ids import new_id
from brain.routes import Route
from brain.web import json_response, read_json

COOKIE_NAME = "better-auth.two_factor"
MAX_CODE = 64



class TwoFactorRoutes:
    """The two-factor endpoints and the sign-in challenge, sharing the sign-in routes' helpers."""

    def __init__(self, base: AuthRoutes) -> None:
        self.base = base
        self.auth = base.auth
        self.sealer = two_factor.Sealer(self.ctx.secret)
        self.limiter = shared_limit(
            self.ctx.rt, "auth.two_factor", self.auth.two_factor_rate_limit_max,
            float(self.auth.two_factor_rate_limit_window_seconds),
        )

    @property
    def ctx(self) -> AuthContext:
        """The process's AuthContext (made on first use, see AuthRoutes)."""
        return self.base.ctx

    def routes(self) -> list[Route]:
        """The endpoints, each with its OpenAPI operation."""
        return described(
            openapi_account.TWO_FACTOR_PATHS,
            (
                ("POST", "/api/auth/two-factor/enable", self.enable),
                ("POST", "/api/auth/two-factor/get-totp-uri", self.get_totp_uri),
                ("POST", "/api/auth/two-factor/verify-totp", self.verify_totp),
                ("POST", "/api/auth/two-factor/verify-backup-code", self.verify_backup_code),
                ("POST", "/api/auth/two-factor/generate-backup-codes", self.generate_backup_codes),
                ("POST", "/api/auth/two-factor/disable", self.disable),
            ),
        )

    async def _limit(self, request: web.Request) -> None:
        # Better Auth's rule for /two-factor/*: a few requests per client IP per short window.
        wait = await self.limiter.take(self.base._ip(request))
        if wait > 0:
            raise too_many(wait)

    async def _body(self, request: web.Request) -> dict[str, Any]:
        return require_object(await read_json(request, limit=self.auth.max_body_bytes))

    async def _password(self, user: User, body: dict[str, Any]) -> None:
        """The user's password must be in the body and right (400 INVALID_PASSWORD otherwise)."""
        password = body.get("password")
        if password is None:
            raise validation_error("password", "Invalid input: expected string, received undefined")
        if not isinstance(password, str):
            raise validation_error("password", "Invalid input: expected string")
        await self.base.confirm_password(user, password)

    def _uri(self, secret: str, issuer: str | None, user: User) -> str:
        return two_factor.totp_uri(secret, issuer or self.auth.two_factor_issuer, user.email)

    def _cookie_name(self) -> str:
        return SECURE_PREFIX + COOKIE_NAME if self.base.secure else COOKIE_NAME

    def _set_challenge_cookie(self, response: web.StreamResponse, token: str) -> None:
        write_cookie(response, self._cookie_name(), signed_value(self.ctx.secret, token),
                     max_age=self.auth.two_factor_challenge_seconds, secure=self.base.secure)

    def _expire_challenge_cookie(self, response: web.StreamResponse) -> None:
        write_cookie(response, self._cookie_name(), "", max_age=0, secure=self.base.secure)

    def _challenge_hash(self, request: web.Request) -> str | None:
        token = read_signed_cookie(request, self.ctx.secret, COOKIE_NAME)
        return token_hash(token) if token else None

    # --- sign-in's second step ---

    async def challenge(self, request: web.Request, user: User, remember: bool, new_hash: str | None) -> web.Response:
        """Sign-in's answer for a user with two-factor: no session, a challenge in the two_factor cookie."""
        token = new_id()
        await self.ctx.issuer(
            "write", fn=two_factor.challenge_tx, user_id=user.id, token_hash=token_hash(token), remember=remember,
            ttl_s=self.auth.two_factor_challenge_seconds, new_password_hash=new_hash,
        )
        response = json_response({"twoFactorRedirect": True, "twoFactorMethods": ["totp"]},
                                 headers={"Cache-Control": "no-store"})
        clear_session_cookie(response, secure=self.base.secure)
        self._set_challenge_cookie(response, token)
        return response

    async def _check(self, request: web.Request, kind: str, code: str, *, open_session: bool = True) -> web.Response:
        """Check a code for the signed-in user or the sign-in challenge; answer {token, user}."""
        found = await self.base._current(request)
        if found is not None:
            user, token = found[1], found[2]
            attempt = two_factor.Attempt(kind=kind, code=code, user_id=user.id)  # type: ignore[arg-type]
        else:
            hashed = self._challenge_hash(request)
            if hashed is None:
                raise Unauthorized("Invalid two factor cookie", code="INVALID_TWO_FACTOR_COOKIE")
            session_token, fields = self.base._new_session_fields(request, self.base._ip(request), True)
            fields.pop("remember")  # the challenge remembers what sign-in asked for
            attempt = two_factor.Attempt(
                kind=kind, code=code, challenge_hash=hashed, session_fields=fields, open_session=open_session,  # type: ignore[arg-type]
            )
        result: two_factor.Check = await self.ctx.issuer(
            "write", fn=two_factor.check_tx, attempt=attempt, sealer=self.sealer,
            max_failures=self.auth.two_factor_max_failures, lockout_s=self.auth.two_factor_lockout_seconds,
        )
        self._refuse(result, kind)
        assert result.user is not None
        public = result.user.public()
        if found is not None:
            return json_response({"token": token, "user": public}, headers={"Cache-Control": "no-store"})
        if result.session is None:  # a backup code with disableSession: the challenge stays open
            return json_response({"user": public}, headers={"Cache-Control": "no-store"})
        return self._signed_in(public, result.session, session_token)

    def _refuse(self, result: two_factor.Check, kind: str) -> None:
        outcome = result.outcome
        if outcome == "ok":
            return
        if outcome == "no-challenge":
            raise Unauthorized("Invalid two factor cookie", code="INVALID_TWO_FACTOR_COOKIE")
        if outcome == "not-enabled":
            if kind == "totp":
                raise BadRequest("TOTP not enabled", code="TOTP_NOT_ENABLED")
            raise BadRequest("Backup codes aren't enabled", code="BACKUP_CODES_NOT_ENABLED")
        if outcome == "locked":
            wait = max(1.0, (result.locked_until - now_ms()) / 1000)
            exc = TooManyRequests(
                "Too many failed verification attempts. Your account is temporarily locked. Please try again later.",
                retry_after=wait, code="ACCOUNT_TEMPORARILY_LOCKED",
            )
            exc.headers["X-Retry-After"] = exc.headers["Retry-After"]
            raise exc
        if outcome == "too-many-attempts":
            raise BadRequest("Too many attempts. Please request a new code.", code="TOO_MANY_ATTEMPTS_REQUEST_NEW_CODE")
        if kind == "totp":
            raise Unauthorized("Invalid code", code="INVALID_CODE")
        raise Unauthorized("Invalid backup code", code="INVALID_BACKUP_CODE")

    def _signed_in(self, user: dict[str, Any], session: Session, token: str) -> web.Response:
        jwt = self.base._jwt(user)
        response = json_response({"token": token, "user": user, "jwt": jwt},
                                 headers={"Cache-Control": "no-store", "set-auth-jwt": jwt})
        self.base._set_cookie(response, token, session)
        self._expire_challenge_cookie(response)
        return response

    # --- endpoints ---

    async def enable(self, request: web.Request) -> web.Response:
        """POST /api/auth/two-factor/enable {password, issuer?, method?} -> {method, totpURI, backupCodes}."""
        await self._limit(request)
        _session, user, _token, _ = await self.base.require_session(request)
        body = await self._body(request)
        method = body.get("method", "totp")
        if method not in ("totp", "otp"):
            raise validation_error("method", 'Invalid option: expected one of "otp"|"totp"')
        # Absent is the server's own name; null is not absent (Better Auth's schema: an optional string).
        issuer = body.get("issuer")
        if "issuer" in body and (not isinstance(issuer, str) or not issuer or len(issuer) > 128
                                 or any(ord(c) < 0x20 or c == ":" for c in issuer)):
            raise validation_error("issuer", "must be a non-empty string of at most 128 characters, without ':' or "
                                             "control characters")
        await self._password(user, body)
        if method == "otp":
            raise BadRequest("OTP is not available", code="OTP_NOT_CONFIGURED")
        secret, codes = two_factor.new_secret(), two_factor.new_backup_codes()
        started = await self.ctx.issuer(
            "write", fn=two_factor.start_tx, user_id=user.id, secret_sealed=self.sealer.seal_secret(user.id, secret),
            codes_sealed=self.sealer.seal_codes(user.id, codes),
        )
        if not started:
            raise BadRequest("TOTP is already enabled", code="TOTP_ALREADY_ENABLED")
        return json_response({"method": "totp", "totpURI": self._uri(secret, issuer, user), "backupCodes": codes},
                             headers={"Cache-Control": "no-store"})

    async def get_totp_uri(self, request: web.Request) -> web.Response:
        """POST /api/auth/two-factor/get-totp-uri {password} -> {totpURI}."""
        await self._limit(request)
        _session, user, _token, _ = await self.base.require_session(request)
        body = await self._body(request)
        row = TwoFactor.get_or_none(TwoFactor.user == user.id)
        if row is None:
            raise BadRequest("TOTP not enabled", code="TOTP_NOT_ENABLED")
        await self._password(user, body)
        secret = self.sealer.open_secret(user.id, row.secret_sealed)
        return json_response({"totpURI": self._uri(secret, None, user)}, headers={"Cache-Control": "no-store"})

    async def verify_totp(self, request: web.Request) -> web.Response:
        """POST /api/auth/two-factor/verify-totp {code, trustDevice?} -> {token, user}."""
        await self._limit(request)
        code = self._code(await self._body(request))
        return await self._check(request, "totp", code)

    async def verify_backup_code(self, request: web.Request) -> web.Response:
        """POST /api/auth/two-factor/verify-backup-code {code, disableSession?, trustDevice?} -> {token, user}."""
        await self._limit(request)
        body = await self._body(request)
        code = self._code(body)
        disable = body.get("disableSession", False)
        if not isinstance(disable, bool):
            raise validation_error("disableSession", "Invalid input: expected boolean")
        return await self._check(request, "backup", code, open_session=not disable)

    def _code(self, body: dict[str, Any]) -> str:
        code = body.get("code")
        if code is None:
            raise validation_error("code", "Invalid input: expected string, received undefined")
        if not isinstance(code, str) or len(code) > MAX_CODE:
            raise validation_error("code", f"Invalid input: expected a string of at most {MAX_CODE} characters")
        trust = body.get("trustDevice")
        if trust is not None and not isinstance(trust, bool):
            raise validation_error("trustDevice", "Invalid input: expected boolean")
        return code

    async def generate_backup_codes(self, request: web.Request) -> web.Response:
        """POST /api/auth/two-factor/generate-backup-codes {password} -> {status: true, backupCodes}."""
        await self._limit(request)
        _session, user, _token, _ = await self.base.require_session(request)
        body = await self._body(request)
        if not user.two_factor_enabled:
            raise BadRequest("Two factor isn't enabled", code="TWO_FACTOR_NOT_ENABLED")
        await self._password(user, body)
        codes = two_factor.new_backup_codes()
        if not await self.ctx.issuer("write", fn=two_factor.replace_codes_tx, user_id=user.id,
                                     codes_sealed=self.sealer.seal_codes(user.id, codes)):
            raise BadRequest("Two factor isn't enabled", code="TWO_FACTOR_NOT_ENABLED")
        return json_response({"status": True, "backupCodes": codes}, headers={"Cache-Control": "no-store"})

    async def disable(self, request: web.Request) -> web.Response:
        """POST /api/auth/two-factor/disable {password} -> {status: true}."""
        await self._limit(request)
        _session, user, _token, _ = await self.base.require_session(request)
        body = await self._body(request)
        await self._password(user, body)
        await self.ctx.issuer("write", fn=two_factor.disable_tx, user_id=user.id)
        return json_response({"status": True})

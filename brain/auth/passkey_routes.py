"""Passkey endpoints: Better Auth 1.7's passkey plugin (`@better-auth/passkey`, routes.ts).

| endpoint | answer |
|----------|--------|
| `GET /api/auth/passkey/generate-register-options?authenticatorAttachment&name` (fresh session) | creation options (`challenge, rp, user, pubKeyCredParams, timeout, attestation, excludeCredentials, authenticatorSelection, extensions, hints`), challenge cookie |
| `POST /api/auth/passkey/verify-registration` `{response, name?, createSession?}` (fresh session) | the passkey; with `createSession` also `{session, user, token, jwt}` and a new session's cookie |
| `GET /api/auth/passkey/generate-authenticate-options` | request options (`rpId, challenge, allowCredentials?, timeout, userVerification`), challenge cookie |
| `POST /api/auth/passkey/verify-authentication` `{response}` | a sign-in: `{session, user, token, jwt}`, session cookie, `set-auth-token`, `set-auth-jwt` |
| `GET /api/auth/passkey/list-user-passkeys` | `[passkey]`, oldest first |
| `POST /api/auth/passkey/update-passkey` `{id, name}` | `{passkey}` |
| `POST /api/auth/passkey/delete-passkey` `{id}` | `{status: true}` |

A passkey is `{id, name, publicKey, userId, credentialID, counter, deviceType, backedUp,
transports, createdAt, aaguid}`. The challenge cookie is `better-auth.better-auth-passkey`
(signed, five minutes, single use; see brain.auth.passkeys). Errors are Better Auth's:
`CHALLENGE_NOT_FOUND` (no cookie, a used, expired or other ceremony's challenge),
`FAILED_TO_VERIFY_REGISTRATION`, `YOU_ARE_NOT_ALLOWED_TO_REGISTER_THIS_PASSKEY` (401: the
challenge was made for another user), `PASSKEY_NOT_FOUND` (401 at sign-in, 404 for list
changes), `AUTHENTICATION_FAILED`. As in Better Auth, signing in with a passkey does not ask for
the second factor of a user with two-factor: the passkey is a factor of its own.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from aiohttp import web

from brain.auth import flows, passkey_openapi, passkeys
from brain.auth.context import AuthContext
from brain.auth.db import Passkey, User
from brain.auth.routes import AuthRoutes, described
from brain.auth.validation import MAX_NAME, check_name, require_object, text_field, validation_error
from brain.control_chars import has_control
from brain.errors import BadRequest, Forbidden, NotFound, Unauthorized
from brain.routes import Route
from brain.web import json_response, read_json

log = logging.getLogger("brain.auth.passkeys")

CHALLENGE_COOKIE = "better-auth-passkey"  # Better Auth's advanced.webAuthnChallengeCookie
_MAX_PASSKEY_ID = 64
_ATTACHMENTS = ("platform", "cross-platform")


def _not_found() -> NotFound:
    return NotFound("Passkey not found", code="PASSKEY_NOT_FOUND")


def _challenge_not_found() -> BadRequest:
    return BadRequest("Challenge not found", code="CHALLENGE_NOT_FOUND")


class PasskeyRoutes:
    """The passkey endpoints, on the sign-in routes' helpers (sessions, limits, answers)."""

    def __init__(self, base: AuthRoutes) -> None:
        self.base = base
        self.auth = base.auth
        self.rp_id = passkeys.rp_id(base.rt.settings)
        self.require_uv = self.auth.passkey_user_verification == "required"

    @property
    def ctx(self) -> AuthContext:
        """The process's AuthContext (made on first use, see AuthRoutes)."""
        return self.base.ctx

    def routes(self) -> list[Route]:
        """The endpoints, each with its OpenAPI operation."""
        return described(
            passkey_openapi.PATHS,
            (
                ("GET", "/api/auth/passkey/generate-register-options", self.generate_register_options),
                ("POST", "/api/auth/passkey/verify-registration", self.verify_registration),
                ("GET", "/api/auth/passkey/generate-authenticate-options", self.generate_authenticate_options),
                ("POST", "/api/auth/passkey/verify-authentication", self.verify_authentication),
                ("GET", "/api/auth/passkey/list-user-passkeys", self.list_user_passkeys),
                ("POST", "/api/auth/passkey/update-passkey", self.update_passkey),
                ("POST", "/api/auth/passkey/delete-passkey", self.delete_passkey),
            ),
            {"schemas": passkey_openapi.SCHEMAS},
        )

    # --- the challenge, bound to the browser ---

    async def _options_response(self, options: dict[str, Any], ceremony: str, user: User | None) -> web.Response:
        """Keep the options' challenge for the verify step and answer with the options and its cookie."""
        user_data = {"id": user.id, "name": user.email, "displayName": user.email} if user else {"id": ""}
        value = flows.new_flow_value()
        await self.ctx.issuer(
            "write", fn=flows.store, kind=passkeys.FLOW_KIND, value=value, ttl_s=passkeys.CHALLENGE_TTL_S,
            data={"type": ceremony, "expectedChallenge": options["challenge"], "userData": user_data},
        )
        response = json_response(options, headers={"Cache-Control": "no-store"})
        flows.set_flow_cookie(response, self.ctx.secret, CHALLENGE_COOKIE, value, max_age=passkeys.CHALLENGE_TTL_S,
                              secure=self.base.secure)
        return response

    async def _take_challenge(self, request: web.Request, ceremony: str) -> dict[str, Any]:
        """The challenge the request's cookie names, used up; 400 CHALLENGE_NOT_FOUND if there is
        none (no cookie, used, expired) or another ceremony made it."""
        value = flows.flow_cookie(request, self.ctx.secret, CHALLENGE_COOKIE)
        if value is None:
            raise _challenge_not_found()
        data = await self.ctx.issuer("write", fn=flows.take, kind=passkeys.FLOW_KIND, value=value)
        if data is None or data.get("type") != ceremony:
            raise _challenge_not_found()
        return data

    def _done(self, response: web.Response) -> web.Response:
        flows.clear_flow_cookie(response, CHALLENGE_COOKIE, secure=self.base.secure)
        return response

    async def _body(self, request: web.Request) -> tuple[dict[str, Any], dict[str, Any]]:
        """The JSON body and its `response` (the authenticator's answer): an object."""
        body = require_object(await read_json(request, limit=self.auth.max_body_bytes))
        response = body.get("response")
        if not isinstance(response, dict):
            raise validation_error("response", "Invalid input: expected an object (the credential the browser made)")
        return body, response

    def _name(self, body: dict[str, Any], *, required: bool) -> str | None:
        """A passkey's name from the body: trimmed (Better Auth's z.string().trim()), no control characters."""
        name = text_field(body, "name", required=required, max_len=MAX_NAME)
        if name is None:
            return None
        name = name.strip()
        if required and not name:
            raise validation_error("name", "Too small: expected string to have >=1 characters")
        check_name(name)
        return name or None

    # --- registration (signed in, with a fresh session) ---

    async def generate_register_options(self, request: web.Request) -> web.Response:
        """GET /api/auth/passkey/generate-register-options?authenticatorAttachment&name -> creation options."""
        _session, user, _token, _ = await self.base.require_fresh_session(request)
        attachment = request.query.get("authenticatorAttachment")
        if attachment is not None and attachment not in _ATTACHMENTS:
            raise BadRequest('[query.authenticatorAttachment] Invalid option: expected one of '
                             '"platform"|"cross-platform"', code="VALIDATION_ERROR")
        user_name = request.query.get("name") or user.email
        if len(user_name) > MAX_NAME or has_control(user_name):
            raise BadRequest(f"[query.name] must be at most {MAX_NAME} characters, without control characters",
                             code="VALIDATION_ERROR")
        options = passkeys.registration_options(
            rp_id=self.rp_id, rp_name=self.auth.passkey_rp_name, user_name=user_name, display_name=user.email,
            user_verification=self.auth.passkey_user_verification, attachment=attachment,
            existing=list(Passkey.select().where(Passkey.user == user.id).order_by(Passkey.created_at)),
        )
        return await self._options_response(options, passkeys.REGISTRATION, user)

    async def verify_registration(self, request: web.Request) -> web.Response:
        """POST /api/auth/passkey/verify-registration {response, name?, createSession?} -> the passkey."""
        _session, user, _token, _ = await self.base.require_fresh_session(request)
        body, credential = await self._body(request)
        name = self._name(body, required=False)
        create_session = body.get("createSession", False)
        if not isinstance(create_session, bool):
            raise validation_error("createSession", "Invalid input: expected boolean")
        origin = request.headers.get("Origin")
        if not origin:
            raise BadRequest("Failed to verify registration: the request has no Origin",
                             code="FAILED_TO_VERIFY_REGISTRATION")
        challenge = await self._take_challenge(request, passkeys.REGISTRATION)
        if challenge["userData"]["id"] != user.id:
            raise Unauthorized("You are not allowed to register this passkey",
                               code="YOU_ARE_NOT_ALLOWED_TO_REGISTER_THIS_PASSKEY")
        new = passkeys.verify_registration(credential, challenge=challenge["expectedChallenge"], origin=origin,
                                           rp_id=self.rp_id, require_uv=self.require_uv)
        token, fields = None, None
        if create_session:
            token, fields = self.base._new_session_fields(request, self.base._ip(request), True)
        row, session = await self.ctx.issuer("write", fn=passkeys.register_tx, user_id=user.id,
                                             passkey=dataclasses.asdict(new), name=name, session=fields)
        log.info("user %s registered a passkey", user.id)
        if session is None:
            return self._done(json_response(passkeys.passkey_json(row), headers={"Cache-Control": "no-store"}))
        return self._done(self.base._session_response(passkeys.passkey_json(row), user.public(), session, token))

    # --- sign-in ---

    async def generate_authenticate_options(self, request: web.Request) -> web.Response:
        """GET /api/auth/passkey/generate-authenticate-options -> request options (a signed-in
        user's passkeys as allowCredentials)."""
        await self.base._limit_ip(self.base._ip(request))
        found = await self.base._current(request)
        user = found[1] if found is not None else None
        allowed = list(Passkey.select().where(Passkey.user == user.id).order_by(Passkey.created_at)) if user else []
        options = passkeys.authentication_options(
            rp_id=self.rp_id, user_verification=self.auth.passkey_user_verification, allowed=allowed,
        )
        return await self._options_response(options, passkeys.AUTHENTICATION, user)

    async def verify_authentication(self, request: web.Request) -> web.Response:
        """POST /api/auth/passkey/verify-authentication {response} -> {session, user, token, jwt}."""
        ip = self.base._ip(request)
        await self.base._limit_ip(ip)
        _body, credential = await self._body(request)
        credential_id = credential.get("id")
        if not isinstance(credential_id, str) or not 0 < len(credential_id) <= passkeys.MAX_CREDENTIAL_ID:
            raise validation_error("response.id", f"Invalid input: expected the credential id (a string of at most "
                                                  f"{passkeys.MAX_CREDENTIAL_ID} characters)")
        origin = request.headers.get("Origin")
        if not origin:
            raise BadRequest("origin missing", code="MISSING_OR_NULL_ORIGIN")
        challenge = await self._take_challenge(request, passkeys.AUTHENTICATION)
        row = Passkey.select(Passkey, User).join(User).where(Passkey.credential_id == credential_id).get_or_none()
        if row is None:
            raise Unauthorized("Passkey not found", code="PASSKEY_NOT_FOUND")
        new_counter = passkeys.verify_authentication(
            credential, challenge=challenge["expectedChallenge"], origin=origin, rp_id=self.rp_id,
            require_uv=self.require_uv, passkey=row,
        )
        user = row.user
        if self.auth.require_email_verification and not user.email_verified:
            raise Forbidden("Email not verified", code="EMAIL_NOT_VERIFIED")
        token, fields = self.base._new_session_fields(request, ip, True)
        session = await self.ctx.issuer("write", fn=passkeys.sign_in_tx, passkey_id=row.id, counter=row.counter,
                                        new_counter=new_counter, session=fields)
        if session is None:
            log.warning("passkey sign-in of user %s refused: its signature count was used by another sign-in", user.id)
            raise BadRequest("Authentication failed", code="AUTHENTICATION_FAILED")
        log.info("user %s signed in with a passkey", user.id)
        return self._done(self.base._session_response({}, user.public(), session, token))

    # --- the user's passkeys ---

    async def list_user_passkeys(self, request: web.Request) -> web.Response:
        """GET /api/auth/passkey/list-user-passkeys -> the user's passkeys."""
        _session, user, _token, _ = await self.base.require_session(request)
        rows = Passkey.select().where(Passkey.user == user.id).order_by(Passkey.created_at)
        return json_response([passkeys.passkey_json(row) for row in rows], headers={"Cache-Control": "no-store"})

    async def _passkey_id(self, request: web.Request) -> tuple[User, dict[str, Any], str]:
        """(the signed-in user, the body, the `id` of one of their passkeys it names)."""
        _session, user, _token, _ = await self.base.require_session(request)
        body = require_object(await read_json(request, limit=self.auth.max_body_bytes))
        passkey_id = text_field(body, "id", required=True)
        assert passkey_id is not None
        if not passkey_id:
            raise BadRequest("Missing required parameter: id", code="VALIDATION_ERROR")
        return user, body, passkey_id

    async def update_passkey(self, request: web.Request) -> web.Response:
        """POST /api/auth/passkey/update-passkey {id, name} -> {passkey}."""
        user, body, passkey_id = await self._passkey_id(request)
        name = self._name(body, required=True)
        # Another user's passkey is answered as if it did not exist (Better Auth: 401).
        row = None
        if len(passkey_id) <= _MAX_PASSKEY_ID:
            row = await self.ctx.issuer("write", fn=passkeys.rename_tx, user_id=user.id, passkey_id=passkey_id,
                                        name=name)
        if row is None:
            raise _not_found()
        return json_response({"passkey": passkeys.passkey_json(row)})

    async def delete_passkey(self, request: web.Request) -> web.Response:
        """POST /api/auth/passkey/delete-passkey {id} -> {status: true}."""
        user, _body, passkey_id = await self._passkey_id(request)
        deleted = len(passkey_id) <= _MAX_PASSKEY_ID and await self.ctx.issuer(
            "write", fn=passkeys.delete_tx, user_id=user.id, passkey_id=passkey_id,
        )
        if not deleted:
            raise _not_found()
        log.info("user %s deleted a passkey", user.id)
        return json_response({"status": True})

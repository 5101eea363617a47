"""Social sign-in and linked accounts: Better Auth 1.7's endpoints (api/routes/sign-in.ts,
callback.ts, account.ts, oauth2/link-account.ts).

| endpoint | answer |
|----------|--------|
| `POST /api/auth/sign-in/social` `{provider, callbackURL?, errorCallbackURL?, newUserCallbackURL?, disableRedirect?, scopes?, loginHint?, requestSignUp?}` | `{url, redirect}` (+ `Location`), state cookie |
| `GET/POST /api/auth/callback/{provider}` `?code&state[&iss]` | 302 to callbackURL (newUserCallbackURL for a new user) with the session cookie, or to errorCallbackURL `?error=<code>` |
| `POST /api/auth/link-social` `{provider, callbackURL?, errorCallbackURL?, scopes?, disableRedirect?}` | `{url, redirect}`; the callback links the identity to the signed-in user |
| `GET /api/auth/list-accounts` | `[{id, providerId, accountId, userId, scopes, createdAt, updatedAt}]` (the password is the `credential` account) |
| `POST /api/auth/unlink-account` `{accountId}` | `{status: true}`; never the last way to sign in (400 `FAILED_TO_UNLINK_LAST_ACCOUNT`) |
| `GET /api/auth/error?error&error_description` | Better Auth's error page, for flows without an errorCallbackURL |

The state is bound to the browser twice, as Better Auth binds it: a random `state` (stored as its
hash with the PKCE verifier, the OIDC nonce and the callback URLs, 10 minutes, single use) and the
signed `better-auth.state` cookie holding the same value. A callback without that cookie, with
another browser's, a replayed or an expired state is `state_mismatch`.

Linking by email follows Better Auth's rules, made stricter on purpose (docs/better-auth-differences.md):
an identity signs in to an existing account with the same email only when its provider is in
`[social] trusted_providers`, the provider says the email is verified, and the account's own email
is verified; otherwise `account_not_linked`.
"""

from __future__ import annotations

import html
import logging
from typing import Any
from urllib.parse import urlencode

import aiohttp
from aiohttp import web

from brain.auth import flows, social_openapi
from brain.auth.context import AuthContext
from brain.auth.cookies import token_hash
from brain.auth.db import LinkedAccount, Session, User, iso
from brain.auth.social import Identity, Provider, ProviderError, close_quietly, load_providers
from brain.auth.validation import require_object, text_field, validation_error
from brain.errors import BadRequest, Forbidden, NotFound, Unauthorized
from brain.auth.routes import AuthRoutes, described
from brain.ids import new_id
from brain.routes import Route
from brain.web import json_response, read_json

log = logging.getLogger("brain.auth.social")

STATE_COOKIE = "state"
_STATE_KIND = "oauth-state"
_STATE_TTL_S = 600  # Better Auth: the verification row lives 10 minutes...
_STATE_COOKIE_S = 300  # ...and the cookie 5
_VERIFIER_LEN = 128
_MAX_URL = 2048
_MAX_SCOPES = 20
CREDENTIAL = "credential"


def credential_account_id(user_id: str) -> str:
    """The id list-accounts gives a user's password (brain keeps it on the user, not as a row)."""
    return f"credential-{user_id}"


def _account_json(*, id: str, provider: str, account_id: str, user_id: str, scope: str, created: int, updated: int) -> dict[str, Any]:
    return {
        "id": id, "providerId": provider, "accountId": account_id, "userId": user_id,
        "scopes": [s.strip() for s in scope.split(",") if s.strip()],
        "createdAt": iso(created), "updatedAt": iso(updated),
    }


def accounts_of(user: User) -> list[dict[str, Any]]:
    """Better Auth's account list for a user: the password (if any) and each linked identity."""
    out = []
    if user.has_password:
        out.append(_account_json(id=credential_account_id(user.id), provider=CREDENTIAL, account_id=user.id,
                                 user_id=user.id, scope="", created=user.created_at, updated=user.updated_at))
    for row in LinkedAccount.select().where(LinkedAccount.user == user.id).order_by(LinkedAccount.created_at):
        out.append(_account_json(id=row.id, provider=row.provider_id, account_id=row.account_id, user_id=user.id,
                                 scope=row.scope, created=row.created_at, updated=row.updated_at))
    return out


# --- writes, run in the AuthIssuer (AuthIssuer.write) ---------------------------------------


def sign_in_with(
    *, now: int, new_session: Any, provider: str, identity: dict[str, Any], trusted: bool, require_verified: bool,
    session: dict[str, Any],
) -> dict[str, Any]:
    """Find (or create, or link) the user of a provider identity and open a session; or {error}."""
    email = identity["email"].strip().lower()
    linked = LinkedAccount.get_or_none(
        (LinkedAccount.provider_id == provider) & (LinkedAccount.account_id == identity["account_id"])
    )
    registered = False
    if linked is not None:
        user = User.get_by_id(linked.user_id)  # type: ignore[attr-defined]
    else:
        user = User.get_or_none(User.email == email)
        if user is not None:
            if not (trusted and identity["email_verified"] and user.email_verified):
                return {"error": "account_not_linked"}
            _link(user.id, provider, identity, now)
        else:
            user = User.create(
                id=new_id(), email=email, name=identity["name"], image=identity["image"],
                email_verified=identity["email_verified"], password_hash="", created_at=now, updated_at=now,
            )
            _link(user.id, provider, identity, now)
            registered = True
    if identity["email_verified"] and not user.email_verified and email == user.email:
        User.update(email_verified=True, updated_at=now).where(User.id == user.id).execute()
        user = User.get_by_id(user.id)
    if require_verified and not user.email_verified:
        return {"error": "email_not_verified"}
    return {"user": user, "session": new_session(user.id, **session), "registered": registered}


def link_to(*, now: int, new_session: Any, provider: str, identity: dict[str, Any], trusted: bool,
            link: dict[str, Any]) -> str | None:
    """Link a provider identity to the user who asked (link-social); None, or the error code."""
    live = Session.get_or_none(
        (Session.token_hash == link["sessionTokenHash"]) & (Session.user == link["userId"]) & (Session.expires_at > now)
    )
    if live is None:
        return "unable_to_link_account"
    if not trusted and not identity["email_verified"]:
        return "unable_to_link_account"
    if (identity["email"] or "").strip().lower() != link["email"]:
        return "email_does_not_match"
    existing = LinkedAccount.get_or_none(
        (LinkedAccount.provider_id == provider) & (LinkedAccount.account_id == identity["account_id"])
    )
    if existing is not None:
        if existing.user_id != link["userId"]:  # type: ignore[attr-defined]
            return "account_already_linked_to_different_user"
        return None
    _link(link["userId"], provider, identity, now)
    return None


def unlink(*, now: int, new_session: Any, user_id: str, account_id: str) -> None:
    """Remove one way of signing in (a linked identity, or the password), never the last one."""
    user = User.get_by_id(user_id)
    accounts = accounts_of(user)
    if len(accounts) <= 1:
        raise BadRequest("You can't unlink your last account", code="FAILED_TO_UNLINK_LAST_ACCOUNT")
    if not any(a["id"] == account_id for a in accounts):
        raise BadRequest("Account not found", code="ACCOUNT_NOT_FOUND")
    if account_id == credential_account_id(user_id):
        User.update(password_hash="", updated_at=now).where(User.id == user_id).execute()
    else:
        LinkedAccount.delete().where((LinkedAccount.id == account_id) & (LinkedAccount.user == user_id)).execute()


def _link(user_id: str, provider: str, identity: dict[str, Any], now: int) -> None:
    LinkedAccount.create(
        id=new_id(), user=user_id, provider_id=provider, account_id=identity["account_id"],
        scope=",".join(identity["scope"].replace(",", " ").split()), created_at=now, updated_at=now,
    )


# --- the endpoints --------------------------------------------------------------------------


def _redirect(location: str, **params: str) -> web.HTTPFound:
    if params:
        base, hash_, fragment = location.partition("#")
        location = base + ("&" if "?" in base else "?") + urlencode(params) + hash_ + fragment
    return web.HTTPFound(location, headers={"Cache-Control": "no-store"})


class SocialRoutes:
    """Handlers sharing the sign-in routes' helpers (sessions, limits, callback checks)."""

    def __init__(self, base: AuthRoutes) -> None:
        settings = base.rt.settings
        self.base = base
        self.auth = base.auth
        self.providers: dict[str, Provider] = load_providers(settings)
        self.trusted = frozenset(settings.social.trusted_providers)
        self.api_base = f"{settings.auth_public_url}/api/auth"
        self._http: aiohttp.ClientSession | None = None

    @property
    def ctx(self) -> AuthContext:
        """The process's AuthContext (made on first use, see AuthRoutes)."""
        return self.base.ctx

    def routes(self) -> list[Route]:
        """The endpoints, each with its OpenAPI operation."""
        return described(
            social_openapi.PATHS,
            (
                ("POST", "/api/auth/sign-in/social", self.sign_in_social),
                ("GET", "/api/auth/callback/{provider}", self.callback),
                ("POST", "/api/auth/callback/{provider}", self.callback_post),
                ("POST", "/api/auth/link-social", self.link_social),
                ("GET", "/api/auth/list-accounts", self.list_accounts),
                ("POST", "/api/auth/unlink-account", self.unlink_account),
                ("GET", "/api/auth/error", self.error_page),
            ),
        )

    async def close(self) -> None:
        """Close the providers' HTTP session (the app's clean-up)."""
        await close_quietly(self._http)

    @property
    def http(self) -> aiohttp.ClientSession:
        """One client session for every provider call (made on the loop, on first use)."""
        if self._http is None or self._http.closed:
            self._http = aiohttp.ClientSession(trust_env=False)
        return self._http

    def _provider(self, provider_id: Any) -> Provider:
        provider = self.providers.get(provider_id) if isinstance(provider_id, str) else None
        if provider is None:
            raise NotFound("Provider not found", code="PROVIDER_NOT_FOUND")
        return provider

    async def _signed_in(self, request: web.Request) -> tuple[Session, User, str]:
        """The request's live (session, user, token); 401 without one."""
        found = await self.base._current(request)
        if found is None:
            raise Unauthorized("Unauthorized", code="UNAUTHORIZED")
        return found[0], found[1], found[2]

    def _url(self, body: dict[str, Any], field: str) -> str | None:
        return self.base._callback(text_field(body, field, max_len=_MAX_URL))

    async def _start(self, request: web.Request, body: dict[str, Any], link: dict[str, Any] | None) -> web.Response:
        """Store the flow, set the state cookie, answer with the provider's authorization URL."""
        provider = self._provider(body.get("provider"))
        if body.get("idToken") is not None:
            raise NotFound("id_token not supported", code="ID_TOKEN_NOT_SUPPORTED")
        scopes = body.get("scopes") or []
        if not isinstance(scopes, list) or len(scopes) > _MAX_SCOPES or not all(
            isinstance(s, str) and 0 < len(s) < 200 and s.isprintable() and " " not in s for s in scopes
        ):
            raise validation_error("scopes", "must be a list of scope names")
        disable_redirect = body.get("disableRedirect", False)
        if not isinstance(disable_redirect, bool):
            raise validation_error("disableRedirect", "Invalid input: expected boolean")
        login_hint = text_field(body, "loginHint", max_len=320)
        data = {
            "provider": provider.id,
            "callbackURL": self._url(body, "callbackURL") or self.ctx.settings.auth_public_url,
            "errorURL": self._url(body, "errorCallbackURL"),
            "newUserURL": self._url(body, "newUserCallbackURL"),
            "codeVerifier": new_id(_VERIFIER_LEN),
            "idTokenNonce": new_id(),
            "link": link,
        }
        state = flows.new_flow_value()
        try:
            url = await provider.authorization_url(
                self.http, state=state, verifier=data["codeVerifier"], nonce=data["idTokenNonce"],
                redirect_uri=self._redirect_uri(provider), scopes=scopes, login_hint=login_hint,
            )
        except ProviderError as exc:
            log.error("social sign-in with %s unavailable: %s", provider.id, exc)
            raise BadRequest(f"{provider.id} is unreachable; try again later", code="PROVIDER_UNAVAILABLE", status=502) from None
        await self.ctx.issuer("write", fn=flows.store, kind=_STATE_KIND, value=state, data=data, ttl_s=_STATE_TTL_S)
        headers = {"Cache-Control": "no-store"}
        if not disable_redirect:
            headers["Location"] = url
        response = json_response({"url": url, "redirect": not disable_redirect}, headers=headers)
        flows.set_flow_cookie(response, self.ctx.secret, STATE_COOKIE, state, max_age=_STATE_COOKIE_S, secure=self.base.secure)
        return response

    def _redirect_uri(self, provider: Provider) -> str:
        return f"{self.api_base}/callback/{provider.id}"

    async def sign_in_social(self, request: web.Request) -> web.Response:
        """POST /api/auth/sign-in/social -> {url, redirect}."""
        await self.base._limit_ip(self.base._ip(request))
        body = require_object(await read_json(request, limit=self.auth.max_body_bytes))
        return await self._start(request, body, None)

    async def link_social(self, request: web.Request) -> web.Response:
        """POST /api/auth/link-social (signed in) -> {url, redirect}; the callback links the identity."""
        _session, user, token = await self._signed_in(request)
        body = require_object(await read_json(request, limit=self.auth.max_body_bytes))
        link = {"userId": user.id, "email": user.email, "sessionTokenHash": token_hash(token)}
        return await self._start(request, body, link)

    async def callback_post(self, request: web.Request) -> web.Response:
        """POST /api/auth/callback/{provider} (response_mode=form_post): on to the GET, as Better Auth does."""
        form = await request.post() if request.content_type == "application/x-www-form-urlencoded" else {}
        params = {k: v for k, v in {**form, **request.query}.items() if isinstance(v, str)}
        raise _redirect(f"{self.api_base}/callback/{request.match_info['provider']}", **params)

    async def callback(self, request: web.Request) -> web.Response:
        """GET /api/auth/callback/{provider}: check the flow, verify the identity, sign in; redirects."""
        error_page = f"{self.api_base}/error"
        q = request.query
        state = q.get("state")
        if not state:
            raise _redirect(error_page, error="state_not_found")
        cookie = flows.flow_cookie(request, self.ctx.secret, STATE_COOKIE)
        data = None
        if cookie is not None and cookie == state:
            data = await self.ctx.issuer("write", fn=flows.take, kind=_STATE_KIND, value=state)
        if data is None:
            log.warning("social callback refused: state missing, used, expired or from another browser")
            raise self._clearing(_redirect(error_page, error="state_mismatch"))
        error_url = data.get("errorURL") or error_page

        def fail(code: str, description: str | None = None) -> web.HTTPFound:
            params = {"error": code}
            if description:
                params["error_description"] = description[:300]
            return self._clearing(_redirect(error_url, **params))

        provider = self.providers.get(request.match_info["provider"])
        if provider is None or provider.id != data["provider"]:
            raise fail("oauth_provider_not_found")
        if q.get("error"):
            raise fail(q["error"][:100], q.get("error_description"))
        if not q.get("code"):
            raise fail("no_code")
        try:
            identity = await provider.identity(
                self.http, code=q["code"], verifier=data["codeVerifier"], nonce=data["idTokenNonce"],
                redirect_uri=self._redirect_uri(provider), iss=q.get("iss"),
            )
        except ProviderError as exc:
            log.warning("social sign-in with %s failed (%s): %s", provider.id, exc.code, exc)
            raise fail(exc.code) from None
        if data.get("link"):
            error = await self.ctx.issuer(
                "write", fn=link_to, provider=provider.id, identity=_plain(identity),
                trusted=provider.id in self.trusted, link=data["link"],
            )
            raise fail(error) if error else self._clearing(_redirect(data["callbackURL"]))
        if not identity.email:
            raise fail("email_not_found")
        token, fields = self.base._new_session_fields(request, self.base._ip(request), True)
        result = await self.ctx.issuer(
            "write", fn=sign_in_with, provider=provider.id, identity=_plain(identity),
            trusted=provider.id in self.trusted, require_verified=self.auth.require_email_verification, session=fields,
        )
        if "error" in result:
            log.info("social sign-in with %s refused: %s", provider.id, result["error"])
            raise fail(result["error"])
        log.info("user %s signed in with %s%s", result["user"].id, provider.id, " (new account)" if result["registered"] else "")
        target = (data.get("newUserURL") or data["callbackURL"]) if result["registered"] else data["callbackURL"]
        response = self._clearing(_redirect(target))
        self.base._set_cookie(response, token, result["session"])  # type: ignore[arg-type]
        raise response

    def _clearing(self, response: web.HTTPFound) -> web.HTTPFound:
        flows.clear_flow_cookie(response, STATE_COOKIE, secure=self.base.secure)
        return response

    async def list_accounts(self, request: web.Request) -> web.Response:
        """GET /api/auth/list-accounts."""
        _session, user, _token = await self._signed_in(request)
        return json_response(accounts_of(user), headers={"Cache-Control": "no-store"})

    async def unlink_account(self, request: web.Request) -> web.Response:
        """POST /api/auth/unlink-account {accountId} (a fresh session) -> {status: true}."""
        session, user, _token = await self._signed_in(request)
        body = require_object(await read_json(request, limit=self.auth.max_body_bytes))
        account_id = text_field(body, "accountId", required=True, max_len=256)
        if not self.base.is_fresh(session):
            raise Forbidden("Session is not fresh", code="SESSION_NOT_FRESH")
        await self.ctx.issuer("write", fn=unlink, user_id=user.id, account_id=account_id)
        log.info("user %s unlinked an account", user.id)
        return json_response({"status": True})

    async def error_page(self, request: web.Request) -> web.Response:
        """GET /api/auth/error: where a failed flow without an errorCallbackURL lands."""
        error = request.query.get("error", "unknown_error")[:100]
        description = request.query.get("error_description", "")[:300]
        body = (
            "<!doctype html><meta charset=utf-8><title>Sign-in failed</title>"
            f"<h1>Sign-in failed</h1><p><code>{html.escape(error)}</code></p><p>{html.escape(description)}</p>"
        )
        return web.Response(text=body, content_type="text/html", headers={"Cache-Control": "no-store"})


def _plain(identity: Identity) -> dict[str, Any]:
    return {"account_id": identity.account_id, "email": identity.email, "email_verified": identity.email_verified,
            "name": identity.name, "image": identity.image, "scope": identity.scope}

"""A small generic OpenID Connect / OAuth 2 provider, for brain's social sign-in tests.

Serves a discovery document, a JWKS, an authorize endpoint that "signs in" whichever user the test
chose (`fake.login = "alice"`) and redirects back with a code, a token endpoint that checks the
client, the redirect URI and PKCE (S256) and answers with an RS256 id_token carrying the flow's
nonce, and `/userinfo`. With `github=True` it speaks GitHub's dialect instead: no id_token, and
`/api/user` + `/api/user/emails`.

    with FakeOidc(users={"alice": {"email": "a@x.test", "email_verified": True}}) as idp:
        idp.login = "alice"
        # [social.acme] discovery_url = idp.discovery_url, client_id = idp.client_id ...

Hostile tests set `id_token_claims` (merged into the next id_tokens; None deletes a claim).
`issuer` may hold `{tenantid}` (Microsoft's multi-tenant form); tokens then carry the user's `tid`.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import time
from typing import Any
from urllib.parse import urlencode

import jwt
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from brain.testing.fakes import FakeServer

__all__ = ["FakeOidc"]


class FakeOidc(FakeServer):
    """An OIDC (or GitHub-like OAuth) provider in a background thread."""

    def __init__(self, *, users: dict[str, dict[str, Any]] | None = None, github: bool = False,
                 issuer: str | None = None, port: int = 0) -> None:
        super().__init__(port=port)
        self.github = github
        self.users = dict(users or {})
        self.login: str | None = None
        self.client_id = "client-" + secrets.token_hex(4)
        self.client_secret = "secret-" + secrets.token_hex(8)
        self._issuer = issuer
        self.kid = "k-" + secrets.token_hex(4)
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.id_token_claims: dict[str, Any] = {}
        self.authorize_requests: list[dict[str, str]] = []
        self._codes: dict[str, dict[str, Any]] = {}
        self._tokens: dict[str, str] = {}

    @property
    def issuer(self) -> str:
        """The issuer in the discovery document (default: the base URL)."""
        return (self._issuer or "{base}").replace("{base}", self.base_url)

    @property
    def discovery_url(self) -> str:
        """Where the discovery document is."""
        return f"{self.base_url}/.well-known/openid-configuration"

    def table(self, **extra: Any) -> dict[str, Any]:
        """A `[social.NAME]` table for brain pointing here."""
        base = {"client_id": self.client_id, "client_secret": self.client_secret}
        if self.github:
            base |= {"authorize_url": f"{self.base_url}/login/oauth/authorize",
                     "token_url": f"{self.base_url}/login/oauth/access_token", "api_url": f"{self.base_url}/api"}
        else:
            base["discovery_url"] = self.discovery_url
        return base | extra

    def code_for(self, user: str, *, redirect_uri: str, challenge: str, nonce: str = "") -> str:
        """A code as the authorize endpoint would issue it (for an attacker's own flow)."""
        code = secrets.token_urlsafe(16)
        with self.lock:
            self._codes[code] = {"user": user, "redirect_uri": redirect_uri, "challenge": challenge, "nonce": nonce}
        return code

    # -- HTTP -------------------------------------------------------------------------------

    def add_routes(self, app: web.Application) -> None:
        if self.github:
            app.router.add_get("/login/oauth/authorize", self._authorize)
            app.router.add_post("/login/oauth/access_token", self._token)
            app.router.add_get("/api/user", self._github_user)
            app.router.add_get("/api/user/emails", self._github_emails)
            return
        app.router.add_get("/.well-known/openid-configuration", self._discovery)
        app.router.add_get("/jwks", self._jwks)
        app.router.add_get("/authorize", self._authorize)
        app.router.add_post("/token", self._token)
        app.router.add_get("/userinfo", self._userinfo)

    async def _discovery(self, _request: web.Request) -> web.Response:
        b = self.base_url
        return web.json_response({
            "issuer": self.issuer, "authorization_endpoint": f"{b}/authorize", "token_endpoint": f"{b}/token",
            "userinfo_endpoint": f"{b}/userinfo", "jwks_uri": f"{b}/jwks", "response_types_supported": ["code"],
            "id_token_signing_alg_values_supported": ["RS256"], "code_challenge_methods_supported": ["S256"],
        })

    async def _jwks(self, _request: web.Request) -> web.Response:
        jwk = RSAAlgorithm.to_jwk(self.key.public_key(), as_dict=True)
        return web.json_response({"keys": [{**jwk, "kid": self.kid, "alg": "RS256", "use": "sig"}]})

    async def _authorize(self, request: web.Request) -> web.Response:
        q = dict(request.query)
        with self.lock:
            self.authorize_requests.append(q)
            user = self.login
        if q.get("client_id") != self.client_id or user is None or q.get("response_type") != "code":
            return web.json_response({"error": "invalid_request"}, status=400)
        if q.get("code_challenge_method") != "S256" or not q.get("code_challenge"):
            return web.json_response({"error": "invalid_request", "error_description": "PKCE required"}, status=400)
        code = self.code_for(user, redirect_uri=q["redirect_uri"], challenge=q["code_challenge"], nonce=q.get("nonce", ""))
        raise web.HTTPFound(q["redirect_uri"] + "?" + urlencode({"code": code, "state": q.get("state", "")}))

    async def _token(self, request: web.Request) -> web.Response:
        form = await request.post()
        with self.lock:
            grant = self._codes.pop(str(form.get("code")), None)
        verifier = str(form.get("code_verifier") or "")
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
        if (form.get("client_id") != self.client_id or form.get("client_secret") != self.client_secret
                or grant is None or form.get("redirect_uri") != grant["redirect_uri"]):
            return web.json_response({"error": "invalid_grant"}, status=200 if self.github else 400)
        if not verifier or challenge != grant["challenge"]:
            return web.json_response({"error": "invalid_grant", "error_description": "PKCE verification failed"},
                                     status=200 if self.github else 400)
        access = secrets.token_urlsafe(24)
        with self.lock:
            self._tokens[access] = grant["user"]
        body: dict[str, Any] = {"access_token": access, "token_type": "Bearer", "scope": "openid email profile"}
        if not self.github:
            body["id_token"] = self._id_token(grant["user"], grant["nonce"])
        return web.json_response(body)

    def _claims(self, user: str) -> dict[str, Any]:
        profile = dict(self.users[user])
        profile.setdefault("sub", "sub-" + user)
        return profile

    def _id_token(self, user: str, nonce: str) -> str:
        now = int(time.time())
        claims = {"iss": self.issuer, "aud": self.client_id, "iat": now, "exp": now + 600, "nonce": nonce,
                  **self._claims(user)}
        if "{tenantid}" in self.issuer:
            claims["iss"] = self.issuer.replace("{tenantid}", claims["tid"])
        for name, value in self.id_token_claims.items():
            if value is None:
                claims.pop(name, None)
            else:
                claims[name] = value
        return jwt.encode(claims, self.key, algorithm="RS256", headers={"kid": self.kid})

    def _bearer_user(self, request: web.Request) -> str | None:
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        with self.lock:
            return self._tokens.get(token)

    async def _userinfo(self, request: web.Request) -> web.Response:
        user = self._bearer_user(request)
        if user is None:
            return web.json_response({"error": "invalid_token"}, status=401)
        return web.json_response(self._claims(user))

    async def _github_user(self, request: web.Request) -> web.Response:
        user = self._bearer_user(request)
        if user is None:
            return web.json_response({"message": "Bad credentials"}, status=401)
        p = self.users[user]
        return web.json_response({"id": p["id"], "login": user, "name": p.get("name"), "email": p.get("public_email"),
                                  "avatar_url": f"{self.base_url}/avatars/{p['id']}"})

    async def _github_emails(self, request: web.Request) -> web.Response:
        user = self._bearer_user(request)
        if user is None:
            return web.json_response({"message": "Bad credentials"}, status=401)
        return web.json_response(self.users[user]["emails"])

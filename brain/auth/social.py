"""Social sign-in providers: Google, Microsoft, GitHub and any OpenID Connect provider.

What Better Auth's social providers do (its `social-providers/*` and the generic-oauth plugin,
1.7.25), from the server side: build the authorization URL (PKCE S256 always, an OIDC `nonce`),
exchange the code at the token endpoint (client_secret_post, redirects refused), and turn the
answer into a verified identity. Unlike Better Auth, which trusts the `id_token` it got from the
token endpoint for Google and Microsoft, every id_token is verified here: signature against the
provider's JWKS, `iss`, `aud` = our client id, `exp`/`iat`, and the nonce of this very flow.

Google and Microsoft reuse the OAuth clients configured for mail (`[plugins.gmail]`,
`[plugins.outlook]`, or GOOGLE_/MICROSOFT_ env vars) unless `[social.NAME]` names its own, with
sign-in scopes only (`openid email profile`); both are OpenID Connect providers found through
their discovery document, like any `[social.NAME]` with a `discovery_url`.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import ipaddress
import json
import logging
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode, urlsplit

import aiohttp
import jwt

from brain.config import Settings
from brain.errors import ConfigError

log = logging.getLogger("brain.auth.social")

SIGN_IN_SCOPES = ("openid", "email", "profile")
GITHUB_SCOPES = ("read:user", "user:email")
# What an id_token may be signed with (the provider's discovery narrows it further); never
# "none" or HMAC.
_ID_TOKEN_ALGS = ("RS256", "ES256", "EdDSA")
_LEEWAY_S = 30  # Better Auth's (and openid-client's) clock tolerance for id_tokens
_METADATA_TTL_S = 3600.0
_JWKS_TTL_S = 600.0
_JWKS_REFETCH_S = 30.0
_TIMEOUT = aiohttp.ClientTimeout(total=10)
_MAX_RESPONSE = 1_048_576
_TABLE_KEYS = frozenset({"client_id", "client_secret", "discovery_url", "scopes", "name", "ca_bundle", "tenant",
                         "authority_host", "authorize_url", "token_url", "api_url"})


class ProviderError(Exception):
    """A provider step failed; `code` is Better Auth's callback error (`?error=<code>`)."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code


@dataclass(frozen=True)
class Identity:
    """Who the provider says signed in."""

    account_id: str
    email: str | None
    email_verified: bool
    name: str
    image: str | None
    scope: str


def _ssl_context(ca_bundle: str | None) -> ssl.SSLContext | None:
    return ssl.create_default_context(cafile=ca_bundle) if ca_bundle else None


def check_url(url: str, what: str) -> str:
    """An endpoint must be https, or http on a loopback address (local test providers)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    loopback = host == "localhost"
    try:
        loopback = loopback or ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    if parts.scheme != "https" and not (parts.scheme == "http" and loopback):
        raise ConfigError(f"{what}: must be an https URL (http only on loopback), got {url!r}")
    return url


def pkce_challenge(verifier: str) -> str:
    """The S256 code_challenge of a PKCE verifier."""
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode("ascii")).digest()).rstrip(b"=").decode()


def _verified(value: Any) -> bool:
    """Better Auth's parseStringBoolean: true or "true"."""
    return value is True or value == "true"


@dataclass
class Provider:
    """One configured provider; OIDC metadata and keys are fetched on first use and cached."""

    id: str
    kind: str  # "oidc" or "github"
    client_id: str
    client_secret: str
    scopes: tuple[str, ...]
    ssl: ssl.SSLContext | None = None
    discovery_url: str = ""
    account_claim: str = "sub"  # Microsoft: "oid"
    extra_issuers: tuple[str, ...] = ()  # Google also writes iss without the scheme
    authorize_url: str = ""
    token_url: str = ""
    api_url: str = ""
    _metadata: tuple[float, dict[str, Any]] | None = field(default=None, repr=False)
    _jwks: tuple[float, dict[str, Any]] | None = field(default=None, repr=False)
    _jwks_refetched: float = field(default=float("-inf"), repr=False)

    # -- the authorization request --------------------------------------------------------

    async def authorization_url(
        self, http: aiohttp.ClientSession, *, state: str, verifier: str, nonce: str, redirect_uri: str,
        scopes: list[str], login_hint: str | None,
    ) -> str:
        """Where to send the browser: code flow, PKCE S256, our state (and nonce for OIDC)."""
        endpoint = self.authorize_url if self.kind == "github" else (await self.metadata(http))["authorization_endpoint"]
        wanted = list(dict.fromkeys([*self.scopes, *scopes]))
        params = {"response_type": "code", "client_id": self.client_id, "state": state, "scope": " ".join(wanted),
                  "redirect_uri": redirect_uri}
        if login_hint:
            params["login_hint"] = login_hint
        if self.kind == "oidc":
            params["nonce"] = nonce
        params |= {"code_challenge_method": "S256", "code_challenge": pkce_challenge(verifier)}
        return endpoint + ("&" if "?" in endpoint else "?") + urlencode(params)

    # -- the callback -----------------------------------------------------------------------

    async def identity(
        self, http: aiohttp.ClientSession, *, code: str, verifier: str, nonce: str, redirect_uri: str, iss: str | None
    ) -> Identity:
        """Exchange the code and verify who signed in; ProviderError with Better Auth's code."""
        if self.kind == "oidc" and iss is not None and iss != (await self.metadata(http))["issuer"]:
            raise ProviderError("issuer_mismatch", f"callback iss {iss!r} is not the provider's")
        tokens = await self._exchange(http, code=code, verifier=verifier, redirect_uri=redirect_uri)
        if self.kind == "github":
            return await self._github_identity(http, tokens)
        return await self._oidc_identity(http, tokens, nonce)

    async def _exchange(self, http: aiohttp.ClientSession, *, code: str, verifier: str, redirect_uri: str) -> dict[str, Any]:
        endpoint = self.token_url if self.kind == "github" else (await self.metadata(http))["token_endpoint"]
        form = {"grant_type": "authorization_code", "code": code, "code_verifier": verifier,
                "redirect_uri": redirect_uri, "client_id": self.client_id, "client_secret": self.client_secret}
        try:
            status, body = await _request(http, "POST", endpoint, self.ssl, data=form)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise ProviderError("invalid_code", f"token endpoint: {exc}") from None
        if status != 200 or not isinstance(body, dict) or "error" in body or not isinstance(body.get("access_token"), str):
            error = body.get("error") if isinstance(body, dict) else None
            raise ProviderError("invalid_code", f"token endpoint answered {status} {error or ''}".strip())
        return body

    async def _oidc_identity(self, http: aiohttp.ClientSession, tokens: dict[str, Any], nonce: str) -> Identity:
        id_token = tokens.get("id_token")
        if not isinstance(id_token, str):
            raise ProviderError("unable_to_get_user_info", "no id_token in the token response")
        try:
            claims = await self.verify_id_token(http, id_token, nonce)
        except (jwt.PyJWTError, ValueError, KeyError, TypeError) as exc:
            raise ProviderError("unable_to_get_user_info", f"id_token refused: {exc}") from None
        if not claims.get("email"):
            claims = {**await self._userinfo(http, tokens["access_token"], claims["sub"]), **claims}
        account = claims.get(self.account_claim)
        if not isinstance(account, str) or not account.strip():
            raise ProviderError("unable_to_get_user_info", f"id_token has no {self.account_claim}")
        email = claims.get("email")
        verified = _verified(claims.get("email_verified"))
        if "email_verified" not in claims and isinstance(email, str):
            # Microsoft states verification through these lists instead (Better Auth reads them too).
            lists = (claims.get("verified_primary_email") or []) + (claims.get("verified_secondary_email") or [])
            verified = email in lists
        return Identity(
            account_id=account, email=email if isinstance(email, str) else None, email_verified=verified,
            name=str(claims.get("name") or ""), image=claims.get("picture") if isinstance(claims.get("picture"), str) else None,
            scope=str(tokens.get("scope") or ""),
        )

    async def verify_id_token(self, http: aiohttp.ClientSession, token: str, nonce: str) -> dict[str, Any]:
        """The claims of an id_token that this provider signed for us, in this flow; raises otherwise."""
        meta = await self.metadata(http)
        header = jwt.get_unverified_header(token)
        alg = header.get("alg")
        offered = meta.get("id_token_signing_alg_values_supported") or ["RS256"]
        if alg not in _ID_TOKEN_ALGS or alg not in offered:
            raise ValueError(f"algorithm {alg!r} not accepted")
        key = await self._key(http, header.get("kid"), alg)
        claims = jwt.decode(
            token, key, algorithms=[alg], audience=self.client_id, leeway=_LEEWAY_S,
            options={"require": ["iss", "sub", "aud", "exp", "iat"], "verify_iss": False},
        )
        issuer = meta["issuer"]
        if "{tenantid}" in issuer:
            # Microsoft's multi-tenant endpoints: the issuer must name the token's own tenant.
            tid = claims.get("tid")
            if not isinstance(tid, str) or not tid:
                raise ValueError("no tid claim for a multi-tenant issuer")
            issuer = issuer.replace("{tenantid}", tid)
        if claims["iss"] not in (issuer, *self.extra_issuers):
            raise ValueError("issuer mismatch")
        claimed = claims.get("nonce")
        if not isinstance(claimed, str) or not hmac.compare_digest(claimed.encode(), nonce.encode()):
            raise ValueError("nonce mismatch")
        return claims

    async def _key(self, http: aiohttp.ClientSession, kid: Any, alg: str) -> Any:
        for attempt in range(2):
            jwks = await self._jwks_doc(http, refresh=attempt == 1)
            for jwk in jwks.get("keys", []):
                if isinstance(jwk, dict) and jwk.get("kid") == kid and jwk.get("use", "sig") == "sig":
                    return jwt.PyJWK({k: v for k, v in jwk.items() if k not in ("d", "p", "q", "dp", "dq", "qi")}, alg).key
        raise ValueError(f"no key {kid!r} in the provider's JWKS")

    async def _jwks_doc(self, http: aiohttp.ClientSession, *, refresh: bool) -> dict[str, Any]:
        now = time.monotonic()
        cached = self._jwks
        stale = cached is None or now - cached[0] > _JWKS_TTL_S
        if refresh and now - self._jwks_refetched >= _JWKS_REFETCH_S:
            self._jwks_refetched = now
            stale = True
        if stale:
            uri = check_url((await self.metadata(http))["jwks_uri"], f"{self.id} jwks_uri")
            status, body = await _request(http, "GET", uri, self.ssl)
            if status != 200 or not isinstance(body, dict):
                raise ValueError(f"jwks_uri answered {status}")
            self._jwks = cached = (now, body)
        assert cached is not None
        return cached[1]

    async def metadata(self, http: aiohttp.ClientSession) -> dict[str, Any]:
        """The provider's OpenID configuration (cached for an hour)."""
        cached = self._metadata
        if cached is not None and time.monotonic() - cached[0] < _METADATA_TTL_S:
            return cached[1]
        try:
            status, doc = await _request(http, "GET", self.discovery_url, self.ssl)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise ProviderError("oauth_provider_not_found", f"discovery: {exc}") from None
        if status != 200 or not isinstance(doc, dict):
            raise ProviderError("oauth_provider_not_found", f"discovery answered {status}")
        for key in ("issuer", "authorization_endpoint", "token_endpoint", "jwks_uri"):
            if not isinstance(doc.get(key), str):
                raise ProviderError("oauth_provider_not_found", f"discovery document has no {key}")
        for key in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
            check_url(doc[key], f"{self.id} {key}")
        self._metadata = (time.monotonic(), doc)
        return doc

    async def _userinfo(self, http: aiohttp.ClientSession, access_token: str, sub: str) -> dict[str, Any]:
        endpoint = (await self.metadata(http)).get("userinfo_endpoint")
        if not isinstance(endpoint, str):
            return {}
        status, info = await _request(http, "GET", check_url(endpoint, f"{self.id} userinfo_endpoint"), self.ssl,
                                      headers={"Authorization": f"Bearer {access_token}"})
        if status != 200 or not isinstance(info, dict) or info.get("sub") != sub:
            raise ProviderError("unable_to_get_user_info", "userinfo missing or for another subject")
        return {k: info[k] for k in ("email", "email_verified", "name", "picture") if k in info}

    async def _github_identity(self, http: aiohttp.ClientSession, tokens: dict[str, Any]) -> Identity:
        headers = {"Authorization": f"Bearer {tokens['access_token']}", "User-Agent": "brain",
                   "Accept": "application/vnd.github+json"}
        status, profile = await _request(http, "GET", f"{self.api_url}/user", self.ssl, headers=headers)
        if status != 200 or not isinstance(profile, dict) or not isinstance(profile.get("id"), int):
            raise ProviderError("unable_to_get_user_info", f"GitHub /user answered {status}")
        status, emails = await _request(http, "GET", f"{self.api_url}/user/emails", self.ssl, headers=headers)
        emails = [e for e in emails if isinstance(e, dict)] if status == 200 and isinstance(emails, list) else []
        email = profile.get("email") or next((e.get("email") for e in emails if e.get("primary")), None)
        if email is None and emails:
            email = emails[0].get("email")
        verified = any(e.get("email") == email and e.get("verified") is True for e in emails)
        return Identity(
            account_id=str(profile["id"]), email=email if isinstance(email, str) else None, email_verified=verified,
            name=str(profile.get("name") or profile.get("login") or ""),
            image=profile.get("avatar_url") if isinstance(profile.get("avatar_url"), str) else None,
            scope=str(tokens.get("scope") or ""),
        )


async def _request(
    http: aiohttp.ClientSession, method: str, url: str, ssl_context: ssl.SSLContext | None, **kwargs: Any
) -> tuple[int, Any]:
    """(status, parsed JSON or None); redirects are refused (a provider never needs one here)."""
    headers = {"Accept": "application/json", **kwargs.pop("headers", {})}
    async with http.request(method, url, headers=headers, allow_redirects=False, ssl=ssl_context or True,
                            timeout=_TIMEOUT, **kwargs) as response:
        raw = await response.content.read(_MAX_RESPONSE + 1)
        if len(raw) > _MAX_RESPONSE:
            raise ValueError("response too large")
        try:
            return response.status, json.loads(raw) if raw else None
        except ValueError:
            return response.status, None


def _table(settings: Settings, name: str, fallback: str | None) -> dict[str, Any]:
    """[social.NAME], over the mail plugin's table for the OAuth client it may reuse."""
    table = dict(settings.social.settings.get(name, {}))
    unknown = set(table) - _TABLE_KEYS
    if unknown:
        raise ConfigError(f"unknown setting social.{name}.{sorted(unknown)[0]} (known: {', '.join(sorted(_TABLE_KEYS))})")
    if fallback:
        mail: Mapping[str, Any] = settings.plugin_settings(fallback)
        for key in ("client_id", "client_secret", "tenant", "authority_host", "ca_bundle"):
            if key not in table and mail.get(key):
                table[key] = mail[key]
    return table


def _strings(table: dict[str, Any], name: str, key: str, default: tuple[str, ...]) -> tuple[str, ...]:
    value = table.get(key, list(default))
    if isinstance(value, str):
        value = value.split()
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"social.{name}.{key}: must be a list of strings")
    return tuple(value)


def load_providers(settings: Settings) -> dict[str, Provider]:
    """The providers `[social] providers` names, checked now so a mistake stops start-up."""
    providers: dict[str, Provider] = {}
    for name in settings.social.providers:
        fallback = {"google": "gmail", "microsoft": "outlook"}.get(name)
        table = _table(settings, name, fallback)
        client_id, secret = table.get("client_id"), table.get("client_secret")
        if not isinstance(client_id, str) or not client_id or not isinstance(secret, str) or not secret:
            where = f" (or [plugins.{fallback}])" if fallback else ""
            raise ConfigError(f"social.{name}: client_id and client_secret are required in [social.{name}]{where}")
        common = {"id": name, "client_id": client_id, "client_secret": secret,
                  "ssl": _ssl_context(table.get("ca_bundle"))}
        if name == "github":
            providers[name] = Provider(
                kind="github", scopes=_strings(table, name, "scopes", GITHUB_SCOPES),
                authorize_url=check_url(table.get("authorize_url", "https://github.com/login/oauth/authorize"), f"social.{name}.authorize_url"),
                token_url=check_url(table.get("token_url", "https://github.com/login/oauth/access_token"), f"social.{name}.token_url"),
                api_url=check_url(table.get("api_url", "https://api.github.com"), f"social.{name}.api_url").rstrip("/"),
                **common,
            )
            continue
        if name == "google":
            discovery = table.get("discovery_url", "https://accounts.google.com/.well-known/openid-configuration")
            extra: dict[str, Any] = {"extra_issuers": ("accounts.google.com",)}
        elif name == "microsoft":
            authority = str(table.get("authority_host") or "https://login.microsoftonline.com").rstrip("/")
            tenant = table.get("tenant") or "common"
            discovery = table.get("discovery_url", f"{authority}/{tenant}/v2.0/.well-known/openid-configuration")
            extra = {"account_claim": "oid"}
        else:
            discovery = table.get("discovery_url")
            if not isinstance(discovery, str) or not discovery:
                raise ConfigError(f"social.{name}: discovery_url is required (an OpenID Connect provider)")
            extra = {}
        providers[name] = Provider(
            kind="oidc", scopes=_strings(table, name, "scopes", SIGN_IN_SCOPES),
            discovery_url=check_url(discovery, f"social.{name}.discovery_url"), **common, **extra,
        )
    for name in settings.social.trusted_providers:
        if name not in providers:
            raise ConfigError(f"social.trusted_providers: {name!r} is not in social.providers")
    return providers


async def close_quietly(http: aiohttp.ClientSession | None) -> None:
    """Close the providers' HTTP session at shutdown."""
    if http is not None and not http.closed:
        await http.close()
        await asyncio.sleep(0)

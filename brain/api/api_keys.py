"""API keys on the API role: `x-api-key: <key>` instead of a JWT, or `Authorization: Bearer <key>`
for a key with the default prefix (`auth.api_key_prefix`; a JWT always has dots, a key none).

A key is looked up once through the process's `KeyDirectory` (auth.db when the auth role runs
here, else `POST {AUTH_SERVER_URL}/api/auth/api-key/verify`) and then served from memory:
at most `api_key_cache_size` keys, each for at most `api_key_cache_seconds` and never past its
expiry. A revocation (deleted, disabled or changed key) drops the entry at once: directly when
the auth role runs in this process, else through a message the issuer signs with its JWT key
(audience `brain-control`), checked here against the JWKS this role already holds. A lookup
that was under way when a revocation arrived is not cached, so it cannot bring the key back; and
when the control connection was away, the whole cache is dropped.

A route states the scope a key needs (`brain.api.routes.scope`); a key without it gets 403
`INSUFFICIENT_SCOPE`, and a route that states none takes no API keys at all. JWTs are never
limited by scopes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import jwt as pyjwt

from brain.apikeys import CONTROL_AUDIENCE, KEY_RE, KeyDirectory, KeyRecord, hash_key, scopes_of
from brain.api.jwks import JwksState
from brain.api.verifier import TokenUser, TokenVerifier
from brain.errors import Forbidden, InvalidToken, ServiceUnavailable

log = logging.getLogger("brain.api.api_keys")

# How long "no such key" is remembered: a flood of made-up keys costs one lookup each per minute.
NEGATIVE_SECONDS = 60.0
# Better Auth's codes and messages for a refused API key (each a 401).
REFUSALS = {"INVALID_API_KEY": "Invalid API key.", "KEY_DISABLED": "API Key is disabled",
            "KEY_EXPIRED": "API Key has expired"}


class InvalidApiKey(InvalidToken):
    """An API key was refused: 401 with Better Auth's code and `WWW-Authenticate: Bearer error="invalid_token"`."""

    def __init__(self, code: str) -> None:
        super().__init__(REFUSALS[code])
        self.code = code


class InsufficientScope(Forbidden):
    """A key without the scope a route needs: 403 (RFC 6750's insufficient_scope)."""

    code = "INSUFFICIENT_SCOPE"

    def __init__(self, needed: str | None) -> None:
        if needed is None:
            super().__init__("This route does not accept API keys; use a JWT")
        else:
            super().__init__(f"This API key lacks the scope {needed!r}")
        self.headers["WWW-Authenticate"] = (
            f'Bearer error="insufficient_scope", scope="{needed}"' if needed else 'Bearer error="insufficient_scope"'
        )


@dataclass(frozen=True)
class ApiKeyUser(TokenUser):
    """The caller of a request made with an API key."""

    key_id: str = ""
    scopes: frozenset[str] = frozenset()
    key_email: str | None = None
    key_name: str | None = None

    @property
    def email(self) -> str | None:
        """The user's email when the key was looked up."""
        return self.key_email

    def allows(self, scope: str) -> bool:
        """Whether the key holds `scope`."""
        return scope in self.scopes

    def me_body(self) -> bytes:
        """GET /me: the user, and that the caller used this API key with these scopes."""
        body: bytes | None = self.__dict__.get("_me_body")
        if body is None:
            doc = {"id": self.id, "email": self.key_email, "name": self.key_name, "claims": {},
                   "auth": {"method": "api_key", "keyId": self.key_id, "scopes": sorted(self.scopes)}}
            body = json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()
            object.__setattr__(self, "_me_body", body)
        return body


class _Entry:
    __slots__ = ("user", "refusal", "until")

    def __init__(self, user: ApiKeyUser | None, refusal: str | None, until: float) -> None:
        self.user = user
        self.refusal = refusal
        self.until = until


class ApiKeyVerifier:
    """Finds API keys through a directory and keeps what it found; the hub's revocation listener."""

    def __init__(
        self,
        directory: Callable[[], KeyDirectory],
        tokens: TokenVerifier,
        *,
        cache_size: int,
        cache_seconds: float,
        bearer_prefix: str = "brain_",
    ) -> None:
        self._directory = directory
        self.bearer_prefix = bearer_prefix
        self._bearer = f"Bearer {bearer_prefix}"
        # Its `revoked` set (deleted users, kept by brain.auth.deletion) stops their keys too.
        self._tokens = tokens
        self.cache_size = cache_size
        self.cache_seconds = cache_seconds
        self._cache: dict[str, _Entry] = {}
        self._by_hash: dict[str, str] = {}
        # Bumped by every revocation: a lookup that started before one is not cached.
        self._epoch = 0
        self._pending: dict[str, asyncio.Future[_Entry]] = {}
        self.hits = 0
        self.misses = 0
        self.revocations = 0

    # -- the request path ----------------------------------------------------------------

    def bearer_key(self, authorization: str | None) -> str | None:
        """The API key in an `Authorization: Bearer` value, or None: a value without dots (a JWT
        always has two) that starts with the key prefix (`auth.api_key_prefix`)."""
        if authorization is None or "." in authorization:
            return None
        # "Bearer <key>" as clients write it costs one comparison; other spellings the slow way.
        if authorization.startswith(self._bearer):
            return authorization[7:]
        if authorization[:7].lower() != "bearer ":
            return None
        value = authorization[7:].strip()
        return value if value.startswith(self.bearer_prefix) else None

    def cached(self, key: str) -> ApiKeyUser | None:
        """The key's user from memory (raises if it is refused), or None when it must be looked up."""
        entry = self._cache.get(key)
        if entry is None or time.time() >= entry.until:
            return None
        self.hits += 1
        user = entry.user
        # The request path: _accept's checks, inline.
        if user is None or user.id in self._tokens.revoked:
            return self._accept(entry)  # raises
        return user

    async def authenticate(self, key: str) -> ApiKeyUser:
        """The key's user, looked up when it is not in memory; InvalidApiKey when it is refused."""
        user = self.cached(key)
        if user is not None:
            return user
        if not KEY_RE.fullmatch(key):
            raise InvalidApiKey("INVALID_API_KEY")
        pending = self._pending.get(key)
        if pending is None:
            pending = asyncio.ensure_future(self._look_up(key))
            self._pending[key] = pending
            pending.add_done_callback(lambda _f: self._pending.pop(key, None))
        return self._accept(await asyncio.shield(pending))

    def _accept(self, entry: _Entry) -> ApiKeyUser:
        if entry.refusal is not None:
            raise InvalidApiKey(entry.refusal)
        assert entry.user is not None
        if entry.user.id in self._tokens.revoked:
            raise InvalidToken("the account was deleted")
        return entry.user

    async def _look_up(self, key: str) -> _Entry:
        self.misses += 1
        epoch = self._epoch
        found = await self._directory().find(key)
        now = time.time()
        entry = self._entry(found, now)
        if epoch == self._epoch:
            if len(self._cache) >= self.cache_size:
                self._evict(now)
            self._cache[key] = entry
            self._by_hash[hash_key(key)] = key
        return entry

    def _entry(self, found: KeyRecord | None, now: float) -> _Entry:
        if found is None:
            return _Entry(None, "INVALID_API_KEY", now + NEGATIVE_SECONDS)
        until = now + self.cache_seconds
        if not found.enabled:
            return _Entry(None, "KEY_DISABLED", until)
        if found.expires_at_ms is not None:
            if found.expires_at_ms <= now * 1000:
                return _Entry(None, "KEY_EXPIRED", until)
            until = min(until, found.expires_at_ms / 1000)
        user = ApiKeyUser(
            id=found.user_id, claims={}, exp=until, key_id=found.id, scopes=found.scopes, key_email=found.email,
            key_name=found.name,
        )
        return _Entry(user, None, until)

    def _evict(self, now: float) -> None:
        cache = self._cache
        for key in list(cache)[:8]:
            if cache[key].until <= now:
                self._forget(key)
        while len(cache) >= self.cache_size:
            self._forget(next(iter(cache)))

    def _forget(self, key: str) -> None:
        self._cache.pop(key, None)
        self._by_hash.pop(hash_key(key), None)

    @staticmethod
    def require(user: TokenUser, scope: str | None, routes_taking_keys: bool) -> None:
        """A key must hold the route's scope; a route that names no scope takes no key."""
        if not isinstance(user, ApiKeyUser):
            return
        if not routes_taking_keys:
            raise InsufficientScope(None)
        if scope is not None and scope not in user.scopes:
            raise InsufficientScope(scope)

    # -- revocation (brain.apikeys.RevocationListener) -------------------------------------

    def drop(self, key_hashes: Iterable[str]) -> None:
        """Forget these keys at once (deleted, disabled or changed)."""
        self._epoch += 1
        for key_hash in key_hashes:
            key = self._by_hash.pop(key_hash, None)
            if key is not None:
                self._cache.pop(key, None)
                self.revocations += 1

    def clear(self) -> None:
        """Forget every key."""
        self._epoch += 1
        self._cache.clear()
        self._by_hash.clear()

    def stats(self) -> dict[str, Any]:
        """Cache figures for /health."""
        return {"size": len(self._cache), "max": self.cache_size, "hits": self.hits, "misses": self.misses,
                "revocations": self.revocations}


class HttpDirectory:
    """The directory of a split API role: the auth role's `POST /api/auth/api-key/verify`."""

    def __init__(self, url: str, opener: urllib.request.OpenerDirector, timeout: float) -> None:
        self.url = url
        self.opener = opener
        self.timeout = timeout

    async def find(self, key: str) -> KeyRecord | None:
        """Ask the auth role about a key (in a worker thread: urllib blocks)."""
        loop = asyncio.get_running_loop()
        try:
            answer = await loop.run_in_executor(None, self._ask, key)
        except urllib.error.HTTPError as exc:
            if exc.code in (404, 405):
                return None  # an issuer without API keys (not brain): no key is valid
            log.warning("API key lookup at %s failed: %s", self.url, exc)
            raise ServiceUnavailable("the auth server could not be asked about the API key") from None
        except (OSError, ValueError, urllib.error.URLError) as exc:
            log.warning("API key lookup at %s failed: %s", self.url, exc)
            raise ServiceUnavailable("the auth server could not be asked about the API key") from None
        return record_from_verify(answer)

    def _ask(self, key: str) -> Any:
        request = urllib.request.Request(
            self.url, data=json.dumps({"key": key}).encode(), method="POST",
            headers={"Content-Type": "application/json", "Accept": "application/json"},
        )
        with self.opener.open(request, timeout=self.timeout) as response:
            return json.loads(response.read(65536))


def record_from_verify(answer: Any) -> KeyRecord | None:
    """The record in a verify answer ({valid, error, key, user}); disabled/expired keys say so."""
    if not isinstance(answer, dict):
        raise ServiceUnavailable("the auth server's answer about the API key is not JSON")
    if answer.get("valid") is not True:
        code = (answer.get("error") or {}).get("code") if isinstance(answer.get("error"), dict) else None
        if code == "KEY_DISABLED":
            return KeyRecord(id="", user_id="", scopes=frozenset(), enabled=False)
        if code == "KEY_EXPIRED":
            return KeyRecord(id="", user_id="", scopes=frozenset(), expires_at_ms=0)
        return None
    key, user = answer.get("key") or {}, answer.get("user") or {}
    try:
        scopes = scopes_of(key.get("permissions") or {})
        expires = key.get("expiresAt")
        expires_ms = None if expires is None else int(_parse_iso(expires) * 1000)
        return KeyRecord(id=str(key["id"]), user_id=str(user["id"]), scopes=scopes, enabled=True,
                         expires_at_ms=expires_ms, email=user.get("email"), name=user.get("name"))
    except (KeyError, TypeError, ValueError):
        raise ServiceUnavailable("the auth server's answer about the API key is malformed") from None


def _parse_iso(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def control_checker(state: JwksState, issuer: str, algorithms: Iterable[str]) -> Callable[[str], dict[str, Any] | None]:
    """Checks a revocation message: a JWT for the control audience, signed by a key in the JWKS."""
    allowed = list(algorithms)

    def check(token: str) -> dict[str, Any] | None:
        snap = state.current(time.time())
        try:
            kid = pyjwt.get_unverified_header(token).get("kid")
            key = snap.keys.get(kid) if snap is not None and isinstance(kid, str) else None
            if key is None:
                state.request_refetch()
                return None
            claims = pyjwt.decode(token, key.key, algorithms=allowed, audience=CONTROL_AUDIENCE, issuer=issuer,
                                  options={"require": ["exp", "iat", "iss", "aud"]})
        except pyjwt.PyJWTError:
            return None
        return claims if isinstance(claims, dict) else None

    return check

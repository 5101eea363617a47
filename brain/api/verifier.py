"""The bearer-token check: strict JWT verification against the cached JWKS snapshot.

Rules (each rejection is `InvalidToken`: 401 with `WWW-Authenticate: Bearer
error="invalid_token"` and a short reason; keys missing or too stale is 503):

- `Authorization: Bearer <token>` only; the token's size is capped before any decoding;
- three base64url segments; header and payload are JSON objects, parsed here with a hook that
  refuses duplicate member names (pyjwt would silently keep the last one);
- `alg` from the configured allow-list (never `none` or HMAC), `kid` required and present in
  the JWKS, the key's type (and `alg`, if the JWK names one) matching; no key is ever taken
  from the token (`jwk`, `jku`, `x5u`, `x5c`, `x5t`), and any `crit` is refused, since brain
  understands no extension;
- exact `iss`; `aud` equal to (or, as a list, containing) the audience — for a key imported from
  another issuer (its JWK names `iss` and `aud`), that issuer's instead; `exp` required,
  `exp`/`nbf`/`iat` finite numbers, checked with a small leeway; `sub` a valid user id
  (`brain.ids.USER_ID_RE`), because it becomes a directory name and a NATS subject token.

A verified token is cached (bounded) until its `exp`, and only for the key snapshot it was
verified with, so a client's repeated token does not pay the signature check again and a key
dropped from the JWKS stops its tokens at once. The cache is keyed by the token, not by the
header it came in: the scheme's case and surrounding whitespace do not make a new entry, and a
segment in a non-canonical base64url spelling (spare bits set in its last character, which
decodes to the same bytes) is refused, so one JWT can occupy one entry only.
"""

from __future__ import annotations

import binascii
import json
import math
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec

from brain.api.jwks import JwksState, KeySnapshot
from brain.errors import InvalidToken, ServiceUnavailable
from brain.ids import is_valid_user_id
from brain.jwk import KTY_FOR_ALG

# Signature checks by algorithm: pyjwt's implementations, called directly (its decode() would
# re-parse the segments we have already parsed strictly).
_VERIFIERS = {
    "RS256": RSAAlgorithm(RSAAlgorithm.SHA256),
    "ES256": ECAlgorithm(ECAlgorithm.SHA256),
    "EdDSA": OKPAlgorithm(),
}
# Header members that would let a token name its own key.
_EMBEDDED_KEY_MEMBERS = ("jwk", "jku", "x5u", "x5c", "x5t", "x5t#S256")
_SEGMENT_RE = re.compile(r"[A-Za-z0-9_-]+")
MAX_HEADER_SEGMENT = 2048  # a JOSE header is ~100 bytes; anything huge is an attack
_HEADER_CACHE_SIZE = 64


class _DuplicateKey(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise _DuplicateKey(key)
        obj[key] = value
    return obj


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


# One decoder for every segment (json.loads with hooks builds a new one per call).
_OBJECT_DECODER = json.JSONDecoder(object_pairs_hook=_no_duplicates, parse_constant=_reject_constant)
_FROM_URLSAFE = bytes.maketrans(b"-_", b"+/")
_PADDING = ("", "===", "==", "=")
_B64URL_VALUE = {c: i for i, c in enumerate("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")}
# By segment length mod 4: the bits of the last character that encode nothing (length 1 mod 4
# is no base64 at all: every bit of the character would be spare).
_SPARE_BITS = (0, 0b111111, 0b1111, 0b11)


def _b64decode(segment: str, what: str) -> bytes:
    if not _SEGMENT_RE.fullmatch(segment):
        raise InvalidToken(f"malformed token: {what} is not base64url")
    spare = _SPARE_BITS[len(segment) % 4]
    if spare and _B64URL_VALUE[segment[-1]] & spare:
        # Another spelling of the same bytes: it would verify, and take a cache entry of its own.
        raise InvalidToken(f"malformed token: {what} is not canonical base64url")
    try:
        # base64.urlsafe_b64decode, minus its re-checks of what the pattern just established.
        return binascii.a2b_base64((segment + _PADDING[len(segment) % 4]).encode("ascii").translate(_FROM_URLSAFE))
    except (binascii.Error, ValueError):
        raise InvalidToken(f"malformed token: {what} is not base64url") from None


def _json_object(raw: bytes, what: str) -> dict[str, Any]:
    try:
        # RFC 7519: the segments are UTF-8 JSON (json.loads would also guess UTF-16/32).
        value = _OBJECT_DECODER.decode(raw.decode("utf-8"))
    except _DuplicateKey as exc:
        raise InvalidToken(f"duplicate member {str(exc)[:40]!r} in {what}") from None
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise InvalidToken(f"malformed token: {what} is not JSON") from None
    if not isinstance(value, dict):
        raise InvalidToken(f"malformed token: {what} is not a JSON object")
    return value


def _number(claims: dict[str, Any], name: str, *, required: bool) -> float | None:
    value = claims.get(name)
    if value is None:
        if required or name in claims:
            raise InvalidToken(f"{name} claim missing" if name not in claims else f"{name} claim must be a number")
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidToken(f"{name} claim must be a number")
    return float(value)


@dataclass(frozen=True)
class TokenUser:
    """Who a verified token speaks for."""

    id: str
    claims: dict[str, Any]
    exp: float

    @property
    def email(self) -> str | None:
        """The email claim, if the issuer put one in."""
        value = self.claims.get("email")
        return value if isinstance(value, str) else None

    def allows(self, scope: str) -> bool:
        """A JWT is never limited by scopes."""
        return True

    def me_body(self) -> bytes:
        """The JSON body of GET /me (computed once per user object, i.e. per cached token)."""
        body: bytes | None = self.__dict__.get("_me_body")
        if body is None:
            name = self.claims.get("name")
            doc = {
                "id": self.id,
                "email": self.email,
                "name": name if isinstance(name, str) else None,
                "claims": self.claims,
                "auth": {"method": "jwt"},
            }
            body = json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()
            # Frozen dataclass: a cache slot outside the fields (not part of eq/hash/repr).
            object.__setattr__(self, "_me_body", body)
        return body


class _Entry:
    __slots__ = ("user", "exp", "snapshot")

    def __init__(self, user: TokenUser, snapshot: KeySnapshot) -> None:
        self.user = user
        self.exp = user.exp
        self.snapshot = snapshot


class TokenVerifier:
    """Verifies bearer tokens against the JwksState's current snapshot; keeps a token cache."""

    def __init__(
        self,
        state: JwksState,
        *,
        issuer: str,
        audience: str,
        algorithms: Iterable[str],
        leeway: float = 30,
        cache_size: int = 10_000,
        max_token_bytes: int = 8192,
    ) -> None:
        self.state = state
        self.issuer = issuer
        self.audience = audience
        self.algorithms = frozenset(a for a in algorithms if a in KTY_FOR_ALG)
        self.leeway = leeway
        self.cache_size = cache_size
        self.max_token_bytes = max_token_bytes
        # Token -> entry. Insertion-ordered: eviction drops the oldest entry (cheaper than a
        # true LRU, and a token's useful life is short anyway).
        self._cache: dict[str, _Entry] = {}
        self.cache_hits = 0
        self.cache_misses = 0
        # Users whose tokens stop at once (deleted accounts; brain.auth.deletion keeps it, on the
        # loop thread). Checked only when a token is verified: `forget_user` drops cached ones.
        self.revoked: set[str] | frozenset[str] = frozenset()
        # Header segment -> (alg, kid) once it passed every header rule: an issuer signs all its
        # tokens with a handful of distinct headers (one per key), and none of the rules depend
        # on time or keys, so a repeated header is not parsed and checked again.
        self._headers: dict[str, tuple[str, str]] = {}

    # -- the request path ---------------------------------------------------------------

    def authenticate(self, authorization: str | None) -> TokenUser:
        """The user of an `Authorization` header value; raises InvalidToken / ServiceUnavailable."""
        return self._entry(authorization).user

    def _entry(self, authorization: str | None) -> _Entry:
        now = time.time()
        if not authorization:
            raise InvalidToken("missing bearer token")
        if len(authorization) > self.max_token_bytes + 7:
            raise InvalidToken("token too large")
        if authorization[:7].lower() != "bearer ":
            raise InvalidToken("authorization scheme must be Bearer")
        # Keyed by the token itself: however the header spells the scheme or pads the token,
        # one JWT is one entry (and a repeated token costs a slice and one dict lookup).
        token = authorization[7:].strip()
        entry = self._cache.get(token)
        if entry is not None:
            if entry.snapshot is self.state.current(now) and self._earliest(now) < entry.exp:
                self.cache_hits += 1
                return entry
            del self._cache[token]
        self.cache_misses += 1
        user, snap, cacheable = self._verify(token, now)
        entry = _Entry(user, snap)
        if cacheable:
            cache = self._cache
            if len(cache) >= self.cache_size:
                self._evict(now)
            cache[token] = entry
        return entry

    def _earliest(self, now: float) -> float:
        """The earlier of our time and the issuer's (brain.api.jwks.IssuerClock): a token is
        expired only when both clocks say so."""
        issuer = self.state.issuer_clock.now()
        return now if issuer is None or issuer > now else issuer

    def _evict(self, now: float) -> None:
        cache = self._cache
        # Drop expired entries first (bounded work: at most a few per insert on average),
        # then the oldest.
        for key in list(cache)[:8]:
            if cache[key].exp <= now:
                del cache[key]
        while len(cache) >= self.cache_size:
            del cache[next(iter(cache))]

    def verify(self, token: str) -> TokenUser:
        """Verify one token (no cache); raises InvalidToken or ServiceUnavailable."""
        if len(token) > self.max_token_bytes:
            raise InvalidToken("token too large")
        return self._verify(token, time.time())[0]

    def _verify(self, token: str, now: float) -> tuple[TokenUser, KeySnapshot, bool]:
        if not token:
            raise InvalidToken("missing bearer token")
        if len(token) > self.max_token_bytes:
            raise InvalidToken("token too large")
        parts = token.split(".")
        if len(parts) != 3:
            raise InvalidToken("malformed token: expected three segments")
        head_b64, body_b64, sig_b64 = parts
        if len(head_b64) > MAX_HEADER_SEGMENT:
            raise InvalidToken("token header too large")
        checked = self._headers.get(head_b64)
        if checked is None:
            checked = self._check_header(head_b64)
        alg, kid = checked
        claims = _json_object(_b64decode(body_b64, "payload"), "payload")
        signature = _b64decode(sig_b64, "signature")

        snap = self.state.current(now)
        if snap is None:
            raise ServiceUnavailable("signing keys are not loaded yet", retry_after=2)
        key = snap.keys.get(kid)
        if key is None:
            self.state.misses += 1
            self.state.request_refetch()
            raise InvalidToken("unknown key id")
        self.state.hits += 1
        if KTY_FOR_ALG[alg] != key.kty or (key.alg is not None and key.alg != alg):
            raise InvalidToken("algorithm does not match the key")
        if alg == "ES256" and not isinstance(key.key.curve, ec.SECP256R1):
            raise InvalidToken("algorithm does not match the key")

        sub, exp, cacheable = self._check_claims(claims, now, key.issuer or self.issuer, key.audience or self.audience)
        signing_input = f"{head_b64}.{body_b64}".encode("ascii")
        if not _VERIFIERS[alg].verify(signing_input, key.key, signature):
            raise InvalidToken("signature verification failed")
        return TokenUser(id=sub, claims=claims, exp=exp), snap, cacheable

    def _check_header(self, head_b64: str) -> tuple[str, str]:
        """(alg, kid) of a JOSE header segment that passes every header rule; remembered."""
        header = _json_object(_b64decode(head_b64, "header"), "header")
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self.algorithms:
            raise InvalidToken(f"algorithm not allowed: {str(alg)[:20]}")
        for member in _EMBEDDED_KEY_MEMBERS:
            if member in header:
                raise InvalidToken(f"keys embedded in the token are not accepted ({member})")
        if "crit" in header:
            raise InvalidToken("unsupported critical header parameter")
        if header.get("b64", True) is not True:
            raise InvalidToken("unencoded payloads are not accepted")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise InvalidToken("kid missing from token header")
        typ = header.get("typ")
        if typ is not None and (not isinstance(typ, str) or typ.lower() not in ("jwt", "at+jwt", "application/jwt")):
            raise InvalidToken("token type is not JWT")
        headers = self._headers
        if len(headers) >= _HEADER_CACHE_SIZE:
            headers.clear()
        headers[head_b64] = (alg, kid)
        return alg, kid

    def _check_claims(self, claims: dict[str, Any], local: float, issuer: str, audience: str) -> tuple[str, float, bool]:
        iss = claims.get("iss")
        if not isinstance(iss, str) or iss != issuer:
            raise InvalidToken("issuer mismatch")
        aud = claims.get("aud")
        if isinstance(aud, str):
            ok = aud == audience
        elif isinstance(aud, list):
            ok = all(isinstance(a, str) for a in aud) and audience in aud
        else:
            ok = False
        if not ok:
            raise InvalidToken("audience mismatch")
        exp = _number(claims, "exp", required=True)
        nbf = _number(claims, "nbf", required=False)
        iat = _number(claims, "iat", required=False)
        assert exp is not None
        # Judged by the issuer's clock as well as ours: a token is expired only when both say
        # so, and from the future only when both do. A wall clock that steps (or runs behind
        # the issuer's) then neither refuses fresh tokens nor keeps them longer than it would
        # on its own.
        issuer_now = self.state.issuer_clock.now()
        now, late = (local, local) if issuer_now is None else (min(local, issuer_now), max(local, issuer_now))
        if now >= exp + self.leeway:
            raise InvalidToken("token expired")
        if nbf is not None and late + self.leeway < nbf:
            raise InvalidToken("token not valid yet")
        if iat is not None and late + self.leeway < iat:
            raise InvalidToken("token issued in the future")
        sub = claims.get("sub")
        if not is_valid_user_id(sub):
            raise InvalidToken("sub claim is not a valid user id")
        if sub in self.revoked:
            raise InvalidToken("the account was deleted")
        # Tokens accepted only thanks to the leeway are not cached: the cache would keep them.
        cacheable = now < exp and (nbf is None or nbf <= late)
        return sub, exp, cacheable

    def forget_user(self, user_id: str) -> int:
        """Drop every cached token of a user (account deleted); how many were dropped."""
        stale = [token for token, entry in self._cache.items() if entry.user.id == user_id]
        for token in stale:
            del self._cache[token]
        return len(stale)

    def stats(self) -> dict[str, Any]:
        """Token-cache figures for /health."""
        return {"size": len(self._cache), "max": self.cache_size, "hits": self.cache_hits, "misses": self.cache_misses}

"""JWT validation in-process: brain's own `TokenVerifier`, uncached and cached, no HTTP.

Tokens are shaped like the ones brain's issuer mints (RS256, 2048-bit key, `kid`, the same
claims) and signed here with a fresh key whose public half is handed to the verifier as a
`KeySnapshot`, exactly what the `JwksCache` actor publishes after a fetch.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

ISSUER = "http://127.0.0.1:3000"
AUDIENCE = "brain"


@dataclass(frozen=True)
class JwtTimings:
    """Per-call latencies in seconds."""

    uncached: list[float]
    cached: list[float]


def _tokens(count: int) -> tuple[dict, list[str]]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    kid = uuid.uuid4().hex[:16]
    jwk = {**RSAAlgorithm.to_jwk(key.public_key(), as_dict=True), "kid": kid, "alg": "RS256", "use": "sig"}
    now = int(time.time())
    tokens = []
    for i in range(count):
        sub = f"benchUser{i:05d}{uuid.uuid4().hex[:8]}"
        claims = {
            "iss": ISSUER, "aud": AUDIENCE, "sub": sub, "iat": now, "exp": now + 3600,
            "email": f"{sub.lower()}@example.com", "name": f"Bench User {i}", "emailVerified": False,
        }
        tokens.append(jwt.encode(claims, key, algorithm="RS256", headers={"kid": kid}))
    return {"keys": [jwk]}, tokens


def measure(samples: int, *, distinct_tokens: int = 200) -> JwtTimings:
    """Time `TokenVerifier.verify` (every check, no cache) and a cached `authenticate`."""
    from brain.api.jwks import JwksState, KeySnapshot, parse_jwks
    from brain.api.tokens import TokenVerifier

    doc, tokens = _tokens(distinct_tokens)
    keys, skipped = parse_jwks(doc)
    if skipped or not keys:
        raise RuntimeError(f"brain refused the benchmark's JWKS: {skipped}")
    state = JwksState(url="http://127.0.0.1:0/jwks", refetch_min_interval=30.0, max_staleness=3600.0)
    state.snapshot = KeySnapshot(keys=keys, fetched_at=time.time())
    verifier = TokenVerifier(state, issuer=ISSUER, audience=AUDIENCE, algorithms=["RS256"])
    headers = [f"Bearer {t}" for t in tokens]
    for h in headers:  # warm up, and fill the cache for the cached pass
        verifier.authenticate(h)
    uncached = _time_each(verifier.verify, [tokens[i % len(tokens)] for i in range(samples)])
    cached = _time_each(verifier.authenticate, [headers[i % len(headers)] for i in range(samples)])
    return JwtTimings(uncached=uncached, cached=cached)


def _time_each(fn: Callable[[str], object], args: list[str]) -> list[float]:
    """Seconds taken by each call fn(arg)."""
    clock = time.perf_counter
    out: list[float] = []
    for arg in args:
        start = clock()
        fn(arg)
        out.append(clock() - start)
    return out

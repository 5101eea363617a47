"""JWT validation in-process: brain's own `TokenVerifier`, uncached and cached, no HTTP.

Tokens are shaped like the ones brain's issuer mints (RS256, 2048-bit key, `kid`, the same
claims) and signed here with a fresh key whose public half is handed to the verifier as a
`KeySnapshot`, exactly what the `JwksCache` actor publishes after a fetch. The RSA signature
check alone (cryptography, the same tokens, calls alternated with brain's) is the floor the
uncached figure is read against.
"""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import jwt
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from jwt.algorithms import RSAAlgorithm

ISSUER = "http://127.0.0.1:3000"
AUDIENCE = "brain"


@dataclass(frozen=True)
class JwtTimings:
    """Per-call latencies in seconds."""

    uncached: list[float]
    cached: list[float]
    signature_only: list[float]  # the RS256 check by itself, interleaved with `uncached`


def _tokens(count: int) -> tuple[dict, list[str], rsa.RSAPublicKey]:
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
    return {"keys": [jwk]}, tokens, key.public_key()


def measure(samples: int, *, distinct_tokens: int = 200) -> JwtTimings:
    """Time `TokenVerifier.verify` (every check, no cache) and a cached `authenticate`."""
    from brain.api.jwks import JwksState, KeySnapshot, parse_jwks
    from brain.api.verifier import TokenVerifier

    doc, tokens, public = _tokens(distinct_tokens)
    keys, skipped = parse_jwks(doc)
    if skipped or not keys:
        raise RuntimeError(f"brain refused the benchmark's JWKS: {skipped}")
    state = JwksState(url="http://127.0.0.1:0/jwks", refetch_min_interval=30.0, max_staleness=3600.0)
    state.snapshot = KeySnapshot(keys=keys, fetched_at=time.time())
    verifier = TokenVerifier(state, issuer=ISSUER, audience=AUDIENCE, algorithms=["RS256"])
    headers = [f"Bearer {t}" for t in tokens]
    for h in headers:  # warm up, and fill the cache for the cached pass
        verifier.authenticate(h)
    signed = [_signing_parts(t) for t in tokens]

    def signature_check(i: int) -> None:
        signing_input, signature = signed[i % len(signed)]
        public.verify(signature, signing_input, padding.PKCS1v15(), hashes.SHA256())

    uncached, signature_only = _time_alternating(
        lambda i: verifier.verify(tokens[i % len(tokens)]), signature_check, samples
    )
    cached, _ = _time_alternating(lambda i: verifier.authenticate(headers[i % len(headers)]), None, samples)
    return JwtTimings(uncached=uncached, cached=cached, signature_only=signature_only)


def _signing_parts(token: str) -> tuple[bytes, bytes]:
    head, body, sig = token.split(".")
    return f"{head}.{body}".encode(), base64.urlsafe_b64decode(sig + "=" * (-len(sig) % 4))


def _time_alternating(
    first: Callable[[int], object], second: Callable[[int], object] | None, samples: int
) -> tuple[list[float], list[float]]:
    """Seconds taken by each call of first(i) (and of second(i), called right after it)."""
    clock = time.perf_counter
    a: list[float] = []
    b: list[float] = []
    for i in range(samples):
        start = clock()
        first(i)
        a.append(clock() - start)
        if second is not None:
            start = clock()
            second(i)
            b.append(clock() - start)
    return a, b

"""JSON Web Keys: which public keys brain accepts for verifying JWTs, parsed strictly.

Used by the API role's JWKS cache (the issuer's keys) and by the auth role's Better Auth import
(the keys of the issuer it replaces): one set of rules for both.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm
from jwt.exceptions import InvalidKeyError

__all__ = ["KTY_FOR_ALG", "MIN_RSA_BITS", "VerifyKey", "parse_jwks"]

# The key type each allowed algorithm needs (the allow-list itself lives in the settings).
KTY_FOR_ALG = {"RS256": "RSA", "ES256": "EC", "EdDSA": "OKP"}
MIN_RSA_BITS = 2048


@dataclass(frozen=True)
class VerifyKey:
    """One usable public key from an issuer's JWKS."""

    kid: str
    kty: str
    alg: str | None  # the JWK's own "alg", when it names one: the token must then use it
    key: Any  # a cryptography public key
    # A key imported from another issuer names the `iss` and `aud` its tokens carry (its JWK's
    # "iss" and "aud" members); its tokens must then have those instead of the configured ones.
    issuer: str | None = None
    audience: str | None = None


def parse_jwks(doc: Any) -> tuple[dict[str, VerifyKey], list[str]]:
    """The usable signing keys of a JWKS document by kid, and why each other key was skipped."""
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise ValueError('JWKS document must be an object with a "keys" array')
    keys: dict[str, VerifyKey] = {}
    skipped: list[str] = []
    for index, jwk in enumerate(doc["keys"]):
        try:
            key = _parse_jwk(jwk)
        except (ValueError, TypeError, InvalidKeyError) as exc:
            # One bad key must not cost us the good ones next to it.
            skipped.append(f"keys[{index}]: {exc}")
            continue
        if key.kid in keys:
            skipped.append(f"keys[{index}]: duplicate kid {key.kid!r}")
            continue
        keys[key.kid] = key
    return keys, skipped


def _parse_jwk(jwk: Any) -> VerifyKey:
    if not isinstance(jwk, dict):
        raise ValueError("not an object")
    kid = jwk.get("kid")
    if not isinstance(kid, str) or not kid or len(kid) > 256:
        raise ValueError("missing or bad kid")
    use = jwk.get("use")
    if use is not None and use != "sig":
        raise ValueError(f"use {use!r} is not a signing key")
    alg = jwk.get("alg")
    if alg is not None and alg not in KTY_FOR_ALG:
        raise ValueError(f"alg {alg!r} is not supported")
    kty = jwk.get("kty")
    # Only the public members are read: a JWKS that leaks a private part must not make us
    # hold a private key.
    if kty == "RSA":
        public = {k: jwk[k] for k in ("kty", "n", "e") if k in jwk}
        key = RSAAlgorithm.from_jwk(public)
        if not isinstance(key, rsa.RSAPublicKey) or key.key_size < MIN_RSA_BITS:
            raise ValueError(f"RSA key shorter than {MIN_RSA_BITS} bits")
    elif kty == "EC":
        public = {k: jwk[k] for k in ("kty", "crv", "x", "y") if k in jwk}
        key = ECAlgorithm.from_jwk(public)
        if not isinstance(key, ec.EllipticCurvePublicKey):
            raise ValueError("not an EC public key")
    elif kty == "OKP":
        public = {k: jwk[k] for k in ("kty", "crv", "x") if k in jwk}
        key = OKPAlgorithm.from_jwk(public)
        if not isinstance(key, (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey)):
            raise ValueError("not an Ed25519/Ed448 public key")
    else:
        raise ValueError(f"unsupported kty {kty!r}")
    if alg is not None and KTY_FOR_ALG[alg] != kty:
        raise ValueError(f"alg {alg} does not fit kty {kty}")
    issuer, audience = jwk.get("iss"), jwk.get("aud")
    if (issuer is None) != (audience is None) or not isinstance(issuer, (str, type(None))) or not isinstance(
        audience, (str, type(None))
    ):
        raise ValueError("iss and aud must both be strings, or both absent")
    return VerifyKey(kid=kid, kty=kty, alg=alg, key=key, issuer=issuer or None, audience=audience or None)

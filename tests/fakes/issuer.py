"""A fake foreign JWT issuer: a JWKS endpoint plus token minting, for the API role's tests.

It serves ``GET /api/auth/jwks`` (where brain looks, given ``AUTH_SERVER_URL``) and
``/.well-known/openid-configuration`` from a background thread (``FakeServer``), holds RS256,
ES256 and EdDSA key pairs, rotates and removes keys, and signs tokens with pyjwt — or, for
hostile tests, assembles tokens from raw header/payload text so they can carry what pyjwt
would never produce (duplicate members, ``alg: none``, embedded keys, bad base64).

    with FakeIssuer() as issuer:
        server = BrainServer(..., roles="api", env={"AUTH_SERVER_URL": issuer.base_url},
                             config={"api": {"issuer": issuer.issuer}})
        token = issuer.token("alice")
"""

from __future__ import annotations

import base64
import json
import secrets
import time
from dataclasses import dataclass
from typing import Any

import jwt
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from brain.testing.fakes import FakeServer

__all__ = ["FakeIssuer", "b64url"]

JWKS_PATH = "/api/auth/jwks"


def b64url(raw: bytes | str) -> str:
    """Unpadded base64url, as JWS uses it."""
    if isinstance(raw, str):
        raw = raw.encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


@dataclass
class _Key:
    kid: str
    alg: str
    private: Any
    published: bool = True

    def public_jwk(self) -> dict[str, Any]:
        public = self.private.public_key()
        if self.alg == "RS256":
            jwk = RSAAlgorithm.to_jwk(public, as_dict=True)
        elif self.alg == "ES256":
            jwk = ECAlgorithm.to_jwk(public, as_dict=True)
        else:
            jwk = OKPAlgorithm.to_jwk(public, as_dict=True)
        return {**jwk, "kid": self.kid, "alg": self.alg, "use": "sig"}


def _generate(alg: str) -> Any:
    if alg == "RS256":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if alg == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    if alg == "EdDSA":
        return ed25519.Ed25519PrivateKey.generate()
    raise ValueError(f"unsupported alg {alg!r}")


class FakeIssuer(FakeServer):
    """A JWKS server and token minter in a background thread; keys and documents change live."""

    def __init__(self, *, issuer: str = "https://issuer.test", audience: str = "brain", alg: str = "RS256", port: int = 0) -> None:
        super().__init__(port=port)
        self.issuer = issuer
        self.audience = audience
        self._keys: dict[str, _Key] = {}
        self.current_kid = self.add_key(alg)
        # Raw entries served after the real keys (malformed-key tests), or a whole raw document.
        self.extra_jwks: list[Any] = []
        self.raw_document: bytes | None = None

    # -- keys ---------------------------------------------------------------------------

    def add_key(self, alg: str = "RS256", *, kid: str | None = None, publish: bool = True) -> str:
        """Create a key pair; published in the JWKS unless told otherwise. Returns its kid."""
        kid = kid or f"{alg.lower()}-{secrets.token_hex(6)}"
        with self.lock:
            self._keys[kid] = _Key(kid, alg, _generate(alg), publish)
        return kid

    def rotate(self, alg: str | None = None) -> str:
        """Publish a new key and sign with it from now on; the old ones stay published."""
        with self.lock:
            alg = alg or self._keys[self.current_kid].alg
        kid = self.add_key(alg)
        self.current_kid = kid
        return kid

    def remove_key(self, kid: str) -> None:
        """Take a key out of the JWKS (it can still sign, for tests of dropped keys)."""
        with self.lock:
            self._keys[kid].published = False

    def key(self, kid: str | None = None) -> Any:
        """The private key of kid (default: the current one)."""
        with self.lock:
            return self._keys[kid or self.current_kid].private

    def jwks(self) -> dict[str, Any]:
        """The JWKS document as served."""
        with self.lock:
            keys = [k.public_jwk() for k in self._keys.values() if k.published]
            return {"keys": keys + list(self.extra_jwks)}

    @property
    def jwks_fetches(self) -> int:
        """How many times the JWKS was fetched."""
        return self.request_count(JWKS_PATH)

    # -- tokens ---------------------------------------------------------------------------

    def claims(self, sub: str, /, *, ttl: float = 300, **extra: Any) -> dict[str, Any]:
        """Standard claims for sub (iss, aud, iat, exp), updated with extra (None deletes)."""
        now = int(time.time())
        claims: dict[str, Any] = {"iss": self.issuer, "aud": self.audience, "sub": sub, "iat": now, "exp": now + int(ttl)}
        for name, value in extra.items():
            if value is None:
                claims.pop(name, None)
            else:
                claims[name] = value
        return claims

    def token(
        self,
        sub: str,
        /,
        *,
        kid: str | None = None,
        alg: str | None = None,
        ttl: float = 300,
        headers: dict[str, Any] | None = None,
        **claims: Any,
    ) -> str:
        """A token for sub, signed by pyjwt with kid's key (default: the current key)."""
        with self.lock:
            key = self._keys[kid or self.current_kid]
        header = {"kid": key.kid, **(headers or {})}
        return jwt.encode(self.claims(sub, ttl=ttl, **claims), key.private, algorithm=alg or key.alg, headers=header)

    def sign_raw(self, header: dict[str, Any] | str, payload: dict[str, Any] | str, *, kid: str | None = None) -> str:
        """A token from raw header/payload (dicts are dumped; strings go in verbatim), signed with kid's key."""
        with self.lock:
            key = self._keys[kid or self.current_kid]
        head = header if isinstance(header, str) else json.dumps(header)
        body = payload if isinstance(payload, str) else json.dumps(payload)
        signing_input = f"{b64url(head)}.{b64url(body)}"
        algorithm = jwt.get_algorithm_by_name(key.alg)
        signature = algorithm.sign(signing_input.encode(), key.private)
        return f"{signing_input}.{b64url(signature)}"

    # -- HTTP -------------------------------------------------------------------------------

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get(JWKS_PATH, self._jwks)
        app.router.add_get("/.well-known/openid-configuration", self._openid)

    async def _jwks(self, _request: web.Request) -> web.Response:
        with self.lock:
            raw = self.raw_document
        body = raw if raw is not None else json.dumps(self.jwks()).encode()
        return web.Response(body=body, content_type="application/json")

    async def _openid(self, _request: web.Request) -> web.Response:
        return web.json_response({"issuer": self.issuer, "jwks_uri": self.base_url + JWKS_PATH})

"""The JWT signing key ring: RSA keys sealed at rest, and the immutable snapshot that signs.

A key is *pending* (published in the JWKS, not yet signing) until its `activates_at`, then
*current* (the newest active key signs), then *retired* when a newer key activates: still
published for `retired_key_keep_seconds` so tokens it signed keep verifying, then pruned.

Keys imported from another issuer (`ImportedKey`, see brain.auth.importer) are published next
to these until they expire, each with the `iss` and `aud` its tokens carry, and never sign.

Request handlers never ask the actor for keys: the actor builds a `KeyRing` (decrypted keys,
the JWKS document as ready-made bytes) and swaps it in with one reference assignment.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from brain.auth.db import ImportedKey, SigningKey, database, iso, now_ms
from brain.ids import new_id

log = logging.getLogger("brain.auth.keys")

ALG = "RS256"
RSA_BITS = 2048
_HKDF_INFO = b"brain auth.db signing keys v1"


def sealing_key(secret: bytes, info: bytes = _HKDF_INFO) -> AESGCM:
    """The AES-256-GCM key that seals private keys (or, with another `info`, other secrets at
    rest), derived from the server secret."""
    return AESGCM(HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(secret))


def seal(aead: AESGCM, kid: str, plaintext: bytes) -> bytes:
    """nonce || ciphertext, bound to the kid (a sealed key moved to another row will not open)."""
    nonce = os.urandom(12)
    return nonce + aead.encrypt(nonce, plaintext, kid.encode())


def unseal(aead: AESGCM, kid: str, sealed: bytes) -> bytes:
    """Open what `seal` made; raises InvalidTag for a wrong secret or kid."""
    return aead.decrypt(sealed[:12], sealed[12:], kid.encode())


class WrongSecret(RuntimeError):
    """The stored private keys were sealed with another server secret."""


@dataclass(frozen=True)
class Key:
    """One decrypted key of the ring."""

    kid: str
    alg: str
    created_at: int
    activates_at: int
    private_key: rsa.RSAPrivateKey
    public_jwk: dict[str, Any]


@dataclass(frozen=True)
class KeyRing:
    """An immutable snapshot of the keys: which one signs at a given time, and the JWKS bytes."""

    keys: tuple[Key, ...]  # by activates_at, oldest first
    jwks_bytes: bytes
    published: frozenset[str]

    def signer(self, at_ms: int | None = None) -> Key:
        """The key that signs at `at_ms`: the newest one already active."""
        at_ms = now_ms() if at_ms is None else at_ms
        active = [k for k in self.keys if k.activates_at <= at_ms]
        # A ring always holds an active key (see ensure_active_key); fall back to the oldest
        # rather than fail if a clock stepped backwards.
        return active[-1] if active else self.keys[0]

    def sign(self, claims: dict[str, Any]) -> str:
        """A compact JWS of claims with the current key and its kid in the header."""
        key = self.signer()
        return jwt.encode(claims, key.private_key, algorithm=key.alg, headers={"kid": key.kid})


def public_jwk(kid: str, private_key: rsa.RSAPrivateKey) -> dict[str, Any]:
    """The public half as a JWK with kid, alg and use."""
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(private_key.public_key()))
    return {"kty": jwk["kty"], "n": jwk["n"], "e": jwk["e"], "kid": kid, "alg": ALG, "use": "sig"}


def new_key(aead: AESGCM) -> dict[str, Any]:
    """Generate a 2048-bit RSA key: the row to store, private key sealed (no database work)."""
    private_key = rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)
    kid = new_id(22)
    pem = private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return {
        "kid": kid,
        "alg": ALG,
        "public_jwk": json.dumps(public_jwk(kid, private_key)),
        "private_sealed": seal(aead, kid, pem),
    }


def _store(fields: dict[str, Any], *, delay_ms: int) -> SigningKey:
    now = now_ms()
    return SigningKey.create(**fields, created_at=now, activates_at=now + delay_ms)


def published_rows(rows: Sequence[SigningKey], at_ms: int, keep_ms: int) -> list[SigningKey]:
    """The rows still worth publishing at `at_ms`: pending, current, and recently retired."""
    rows = sorted(rows, key=lambda r: (r.activates_at, r.created_at))
    out: list[SigningKey] = []
    for i, row in enumerate(rows):
        successor = next((r for r in rows[i + 1:] if r.activates_at <= at_ms), None)
        # Retired when a newer key became active; its tokens live at most keep_ms after that.
        if successor is None or successor.activates_at + keep_ms > at_ms:
            out.append(row)
    return out


def ensure_active_key(aead: AESGCM) -> bool:
    """Create a key that signs at once if none is active (first start); True if it did."""
    if SigningKey.select().where(SigningKey.activates_at <= now_ms()).exists():
        return False
    fields = new_key(aead)  # slow (RSA generation): outside the write lock
    with database.atomic(lock_type="IMMEDIATE"):
        # `brain keys rotate --now` may have raced us; one active key is enough.
        if SigningKey.select().where(SigningKey.activates_at <= now_ms()).exists():
            return False
        row = _store(fields, delay_ms=0)
    log.info("created signing key %s", row.kid)
    return True


def rotate(aead: AESGCM, *, publish_delay_s: float) -> SigningKey:
    """Add a new key that is published now and signs after `publish_delay_s`."""
    fields = new_key(aead)
    with database.atomic(lock_type="IMMEDIATE"):
        row = _store(fields, delay_ms=int(publish_delay_s * 1000))
    log.info("rotated: new signing key %s signs from %s", row.kid, iso(row.activates_at))
    return row


def prune(keep_ms: int) -> list[str]:
    """Delete retired keys whose tokens have all expired (and expired imported keys); their kids."""
    rows = list(SigningKey.select())
    now = now_ms()
    keep = {r.kid for r in published_rows(rows, now, keep_ms)}
    gone = [r.kid for r in rows if r.kid not in keep]
    if gone:
        # Only ever-older keys fall out of the window, so deleting what we saw is safe.
        SigningKey.delete().where(SigningKey.kid.in_(gone)).execute()
        log.info("pruned retired signing keys %s", ", ".join(gone))
    imported = [r.kid for r in ImportedKey.select(ImportedKey.kid).where(ImportedKey.expires_at <= now)]
    if imported:
        ImportedKey.delete().where(ImportedKey.kid.in_(imported)).execute()
        log.info("pruned expired imported keys %s", ", ".join(imported))
    return gone + imported


def imported_jwks(at_ms: int) -> list[dict[str, Any]]:
    """The verify-only keys of other issuers, as JWKs that name the `iss` and `aud` they sign for."""
    rows = ImportedKey.select().where(ImportedKey.expires_at > at_ms).order_by(ImportedKey.imported_at)
    return [{**json.loads(r.public_jwk), "kid": r.kid, "use": "sig", "iss": r.issuer, "aud": r.audience} for r in rows]


def load_ring(aead: AESGCM, keep_ms: int) -> KeyRing:
    """Read and decrypt the published keys into a snapshot (raises if the secret is wrong)."""
    rows = published_rows(list(SigningKey.select()), now_ms(), keep_ms)
    keys: list[Key] = []
    for row in rows:
        try:
            pem = unseal(aead, row.kid, bytes(row.private_sealed))
        except InvalidTag:
            raise WrongSecret(
                f"signing key {row.kid} in auth.db does not open with this server secret "
                "(server.secret / BRAIN_SECRET, or data/secret.key, changed)"
            ) from None
        private_key = serialization.load_pem_private_key(pem, password=None)
        assert isinstance(private_key, rsa.RSAPrivateKey)
        keys.append(Key(row.kid, row.alg, row.created_at, row.activates_at, private_key, json.loads(row.public_jwk)))
    if not keys:
        raise RuntimeError("the key ring is empty")
    published = [k.public_jwk for k in keys] + imported_jwks(now_ms())
    jwks = json.dumps({"keys": published}, separators=(",", ":")).encode()
    return KeyRing(keys=tuple(keys), jwks_bytes=jwks, published=frozenset(k["kid"] for k in published))


def describe(keep_ms: int) -> list[dict[str, Any]]:
    """Every stored key with its state (pending/current/retired/expired), for `brain keys list`."""
    rows = sorted(SigningKey.select(), key=lambda r: (r.activates_at, r.created_at))
    now = now_ms()
    published = {r.kid for r in published_rows(rows, now, keep_ms)}
    active = [r for r in rows if r.activates_at <= now]
    current = active[-1].kid if active else None
    out = []
    for r in rows:
        if r.kid == current:
            state = "current"
        elif r.activates_at > now:
            state = "pending"
        else:
            state = "retired" if r.kid in published else "expired"
        out.append(
            {"kid": r.kid, "alg": r.alg, "state": state, "created": iso(r.created_at), "activates": iso(r.activates_at)}
        )
    return out

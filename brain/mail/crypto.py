"""Keys derived from the server secret: credentials sealed at rest, OAuth `state` signed, PKCE
verifiers made.

Each purpose gets its own key (HKDF-SHA256 with a distinct `info`), so the key that encrypts
tokens is never the one that signs URLs a browser carries around.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from typing import Any

from brain import sealing

__all__ = ["CredentialBox", "InvalidState", "StateSigner", "derive_key", "pkce_challenge"]

_SALT = b"brain.mail"


def derive_key(secret: bytes, purpose: str, length: int = 32) -> bytes:
    """A key for one purpose of mail sync, derived from the server secret (HKDF-SHA256)."""
    return sealing.derive_key(secret, purpose, salt=_SALT, length=length)


class CredentialBox:
    """AES-256-GCM for credentials; the account id is bound in as associated data."""

    def __init__(self, secret: bytes) -> None:
        self._box = sealing.SealedBox(secret, "mail credentials v1", salt=_SALT)

    def seal(self, plaintext: bytes, *, account_id: str) -> bytes:
        """Encrypt; a blob copied to another account's row will not open."""
        return self._box.seal(plaintext, bound_to=account_id)

    def open(self, blob: bytes, *, account_id: str) -> bytes:
        """Decrypt; ValueError when the blob was tampered with or sealed with another secret."""
        try:
            return self._box.open(blob, bound_to=account_id)
        except ValueError:
            raise ValueError("credentials cannot be decrypted (tampered, or another server secret)") from None


class InvalidState(ValueError):
    """An OAuth `state` that is malformed, forged, expired or for another provider."""


class StateSigner:
    """Signed OAuth `state`: bound to user, provider, expiry and a single-use nonce."""

    def __init__(self, secret: bytes) -> None:
        self._key = derive_key(secret, "mail oauth state v1")
        self._pkce_key = derive_key(secret, "mail oauth pkce v1")

    def code_verifier(self, nonce: str) -> str:
        """The PKCE `code_verifier` of the flow with this nonce (RFC 7636: 43 characters).

        Derived rather than stored: nothing in mail.db (or in the browser) lets anyone who has
        the flow's state and an authorization code redeem the code without the server secret.
        """
        return _b64(hmac.new(self._pkce_key, nonce.encode(), hashlib.sha256).digest())

    def sign(self, *, user_id: str, provider: str, ttl: float) -> tuple[str, str, float]:
        """A new state string; returns (state, nonce, expires_at)."""
        nonce = secrets.token_urlsafe(16)
        expires_at = time.time() + ttl
        payload = _b64(json.dumps({"u": user_id, "p": provider, "n": nonce, "e": int(expires_at)}, separators=(",", ":")).encode())
        return f"{payload}.{self._mac(payload)}", nonce, expires_at

    def verify(self, state: str) -> dict[str, Any]:
        """The payload ({u, p, n, e}) of a genuine, unexpired state; InvalidState otherwise."""
        payload, sep, mac = state.partition(".")
        # Genuine states are base64url; compare_digest refuses non-ASCII str (TypeError -> 500).
        if not sep or not payload or not mac or not state.isascii():
            raise InvalidState("state is malformed")
        if not hmac.compare_digest(mac, self._mac(payload)):
            raise InvalidState("state signature is invalid")
        try:
            data = json.loads(_unb64(payload))
        except ValueError:
            raise InvalidState("state is malformed") from None
        if not isinstance(data, dict) or not all(k in data for k in ("u", "p", "n", "e")):
            raise InvalidState("state is malformed")
        if not isinstance(data["e"], int) or data["e"] < time.time():
            raise InvalidState("state has expired; start the connection again")
        return data

    def _mac(self, payload: str) -> str:
        return _b64(hmac.new(self._key, payload.encode(), hashlib.sha256).digest())


def pkce_challenge(verifier: str) -> str:
    """The S256 `code_challenge` of a PKCE `code_verifier`."""
    return _b64(hashlib.sha256(verifier.encode()).digest())


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (ValueError, TypeError):
        raise ValueError("bad base64") from None

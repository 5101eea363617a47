"""Secrets sealed at rest under keys derived from the server secret (AES-256-GCM).

A credential brain must use later (a mail account's OAuth tokens, a webhook's signing secret)
is stored encrypted, so a copy of the database alone gives nothing away. Each purpose gets its
own key (HKDF-SHA256 with a distinct `info`), and each blob is bound to the row it belongs to
(associated data), so a blob copied to another row does not open.
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

__all__ = ["SealedBox", "derive_key"]

_NONCE_BYTES = 12
_VERSION = b"\x01"


def derive_key(secret: bytes, purpose: str, *, salt: bytes, length: int = 32) -> bytes:
    """A key for one purpose, derived from the server secret (HKDF-SHA256)."""
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=purpose.encode()).derive(secret)


class SealedBox:
    """AES-256-GCM under the key of one purpose; every blob is bound to a name (its row)."""

    def __init__(self, secret: bytes, purpose: str, *, salt: bytes) -> None:
        self._aead = AESGCM(derive_key(secret, purpose, salt=salt))

    def seal(self, plaintext: bytes, *, bound_to: str) -> bytes:
        """Encrypt; the blob opens only for the same name."""
        nonce = os.urandom(_NONCE_BYTES)
        return _VERSION + nonce + self._aead.encrypt(nonce, plaintext, bound_to.encode())

    def open(self, blob: bytes, *, bound_to: str) -> bytes:
        """Decrypt; ValueError when the blob was tampered with, moved, or sealed with another secret."""
        if not blob or blob[:1] != _VERSION:
            raise ValueError("unknown sealed format")
        nonce, ciphertext = blob[1 : 1 + _NONCE_BYTES], blob[1 + _NONCE_BYTES :]
        try:
            return self._aead.decrypt(nonce, ciphertext, bound_to.encode())
        except InvalidTag:
            raise ValueError("cannot be decrypted (tampered, or another server secret)") from None

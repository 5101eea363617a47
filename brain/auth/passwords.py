"""Password hashing (argon2id) on a worker pool: never on the event loop, never in the actor.

argon2-cffi releases the GIL while it hashes, so `hash_workers` threads keep that many cores
busy; the single AuthIssuer thread only writes rows.

Users imported from Better Auth (`brain import better-auth`) arrive with its scrypt hashes,
`salt:key` in hex; they verify here and are rehashed to argon2id at their first sign-in.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import re
import secrets
import unicodedata
from concurrent.futures import ThreadPoolExecutor

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError

from brain.auth.settings import AuthSettings

# Better Auth's scrypt parameters (@better-auth/utils/password): N=16384, r=16, p=1, 64-byte key;
# the salt is the 32 hex characters themselves (as text), the password NFKC-normalised.
_SCRYPT = {"n": 16384, "r": 16, "p": 1, "dklen": 64, "maxmem": 64 * 1024 * 1024}
_BETTER_AUTH_HASH = re.compile(r"([0-9a-f]{32}):([0-9a-f]{128})")


def is_better_auth_hash(stored: str) -> bool:
    """Whether a stored hash is Better Auth's scrypt `salt:key` (imported, not yet rehashed)."""
    return _BETTER_AUTH_HASH.fullmatch(stored) is not None


def verify_better_auth(stored: str, password: str) -> bool:
    """Check a password against Better Auth's scrypt `salt:key` hash."""
    match = _BETTER_AUTH_HASH.fullmatch(stored)
    if match is None:
        return False
    salt, key = match.groups()
    derived = hashlib.scrypt(unicodedata.normalize("NFKC", password).encode(), salt=salt.encode(), **_SCRYPT)
    return hmac.compare_digest(derived.hex(), key)


class Passwords:
    """Hash and verify passwords on a dedicated thread pool."""

    def __init__(self, settings: AuthSettings) -> None:
        self._hasher = PasswordHasher(
            time_cost=settings.argon2_time_cost,
            memory_cost=settings.argon2_memory_kib,
            parallelism=settings.argon2_parallelism,
            type=Type.ID,
        )
        self._pool = ThreadPoolExecutor(max_workers=settings.hash_workers, thread_name_prefix="brain-hash")
        # Sign-in for an unknown email verifies against this, so it costs what a wrong password
        # costs and the two cannot be told apart by timing.
        self._dummy_hash = self._hasher.hash(secrets.token_urlsafe(24))

    def _verify(self, stored: str | None, password: str) -> tuple[bool, bool]:
        if stored and is_better_auth_hash(stored):
            ok = verify_better_auth(stored, password)
            return ok, ok  # always rehashed to argon2id once it has verified
        try:
            ok = self._hasher.verify(stored or self._dummy_hash, password)
        except (VerificationError, InvalidHashError):
            return False, False
        return (ok and stored is not None), ok and stored is not None and self._hasher.check_needs_rehash(stored)

    async def hash(self, password: str) -> str:
        """The argon2id hash of password (computed on the pool)."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._hasher.hash, password)

    def verify(self, stored: str | None, password: str) -> asyncio.Future[tuple[bool, bool]]:
        """(matches, needs_rehash) when awaited; `stored=None` verifies against the dummy hash and fails.

        Not a coroutine: the work is on the pool as soon as this returns, so a caller may do other
        work on the event loop while argon2 runs (it releases the GIL) and await the answer after.
        """
        return asyncio.get_running_loop().run_in_executor(self._pool, self._verify, stored, password)

    def close(self) -> None:
        """Stop the pool (queued work is dropped; running hashes finish)."""
        self._pool.shutdown(wait=False, cancel_futures=True)

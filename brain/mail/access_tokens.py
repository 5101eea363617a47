"""The token provider: one account's credentials, refreshed ahead of expiry under a lock.

Several holders may use one account's credentials at once (its sync actor, a reconnect
request); the per-account lock and a reload of the stored credentials inside it make sure one
refresh serves them all. A refresh response without a refresh token keeps the stored one.
"""

from __future__ import annotations

import dataclasses
import threading
import time
import weakref
from collections.abc import Callable

from brain.mail.provider import Credentials, MailProvider

__all__ = ["TokenProvider", "merge_credentials"]

_locks: weakref.WeakValueDictionary[str, threading.Lock] = weakref.WeakValueDictionary()
_locks_guard = threading.Lock()


def _lock_for(key: str) -> threading.Lock:
    with _locks_guard:
        lock = _locks.get(key)
        if lock is None:
            lock = threading.Lock()
            _locks[key] = lock
        return lock


def merge_credentials(old: Credentials, new: Credentials, *, now: float | None = None) -> Credentials:
    """``new`` on top of ``old``: a missing refresh token or extra key keeps the old value."""
    return Credentials(
        access_token=new.access_token,
        expires_at=new.expires_at,
        refresh_token=new.refresh_token or old.refresh_token,
        extra={**old.extra, **new.extra},
        obtained_at=new.obtained_at or (time.time() if now is None else now),
    )


class TokenProvider:
    """Valid credentials for one account, refreshing through its provider when needed."""

    def __init__(
        self,
        provider: MailProvider,
        credentials: Credentials,
        *,
        skew: float,
        key: str,
        persist: Callable[[Credentials], None] | None = None,
        reload: Callable[[], Credentials | None] | None = None,
    ) -> None:
        self.provider = provider
        self.skew = skew
        self.refreshes = 0
        self._creds = credentials
        self._persist = persist
        self._reload = reload
        # Keeping a strong reference keeps the shared lock alive while this holder exists.
        self._lock = _lock_for(key)
        self._refused: str | None = None

    def credentials(self) -> Credentials:
        """Credentials whose access token is good for a while (refreshed if it was not)."""
        creds = self._creds
        if self._usable(creds):
            return creds
        with self._lock:
            if self._reload is not None:
                stored = self._reload()
                if stored is not None and self._usable(stored):
                    # Another holder refreshed while we waited for the lock.
                    self._creds = stored
                    return stored
                if stored is not None:
                    creds = self._creds = stored
            fresh = merge_credentials(creds, self.provider.refresh(creds))
            self.refreshes += 1
            if self._persist is not None:
                self._persist(fresh)
            self._creds = fresh
            return fresh

    def access_token(self) -> str:
        """A usable access token."""
        token = self.credentials().access_token
        assert token is not None, "provider.refresh returned no access token"
        return token

    def invalidate(self, access_token: str | None) -> None:
        """The service refused ``access_token`` (401): the next use refreshes."""
        if access_token is None or access_token == self._creds.access_token:
            self._refused = self._creds.access_token
            self._creds = dataclasses.replace(self._creds, expires_at=0.0)

    @property
    def current(self) -> Credentials:
        """The credentials as they are now, without refreshing."""
        return self._creds

    def _usable(self, creds: Credentials) -> bool:
        return creds.access_token != self._refused and not creds.expires_within(self.skew)

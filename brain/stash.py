"""Per-process state in one typed place: a stash keyed by typed keys (after pytest's `Stash`).

Everything one `brain serve` process owns and shares between its parts (the user stores, the
JWKS state, the mail service, the health and metrics registries, what one role offers another)
lives in the runtime's stash under a `StashKey` declared next to the code that owns it. The core
never needs to know those types, nobody keeps module-level dictionaries keyed by the runtime,
and the runtime carries no attribute per subsystem.

`setdefault` creates a value on first use, exactly once even when threads race for it; a key
is set once (a second `set` is an error, so two plugins cannot silently replace each other's
offer).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

__all__ = ["Stash", "StashKey"]

T = TypeVar("T")


class StashKey(Generic[T]):
    """A typed key: `StashKey[StoreManager]("api.stores")`; compared by identity."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"StashKey({self.name!r})"


class Stash:
    """Values by typed key, for one process (one per Runtime)."""

    def __init__(self) -> None:
        self._values: dict[StashKey[Any], Any] = {}
        # Re-entrant: a factory may create what it depends on through setdefault.
        self._lock = threading.RLock()

    def __getitem__(self, key: StashKey[T]) -> T:
        try:
            value: T = self._values[key]
        except KeyError:
            raise KeyError(f"nothing in this process's stash under {key.name!r}") from None
        return value

    def get(self, key: StashKey[T]) -> T | None:
        """The value under key, or None."""
        value: T | None = self._values.get(key)
        return value

    def __contains__(self, key: StashKey[Any]) -> bool:
        return key in self._values

    def set(self, key: StashKey[T], value: T) -> None:
        """Store value under key; a key already set is a ValueError naming it."""
        with self._lock:
            if key in self._values:
                raise ValueError(f"{key.name!r} is already set in this process's stash")
            self._values[key] = value

    def setdefault(self, key: StashKey[T], factory: Callable[[], T]) -> T:
        """The value under key, created by factory() on first use (once, whatever the threads)."""
        try:
            value: T = self._values[key]
            return value
        except KeyError:
            pass
        with self._lock:
            if key not in self._values:
                self._values[key] = factory()
            value = self._values[key]
            return value

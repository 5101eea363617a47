"""Sliding-window limits for sign-up/sign-in: requests per client IP, failures per account.

Both live in memory on the event loop thread (no locks, no thread hop): a limit is a per-process
guard, and one `brain serve` runs one auth role.
"""

from __future__ import annotations

import time
from collections import deque


class SlidingWindow:
    """At most `limit` events per `window_s` seconds for each key."""

    def __init__(self, limit: int, window_s: float, *, max_keys: int = 100_000) -> None:
        self.limit = limit
        self.window_s = window_s
        self.max_keys = max_keys
        self._events: dict[str, deque[float]] = {}

    def retry_after(self, key: str, now: float | None = None) -> float:
        """Seconds until `key` may act again (0: it may now)."""
        now = time.monotonic() if now is None else now
        events = self._events.get(key)
        if events is None:
            return 0.0
        while events and events[0] <= now - self.window_s:
            events.popleft()
        if not events:
            del self._events[key]
            return 0.0
        if len(events) < self.limit:
            return 0.0
        return events[0] + self.window_s - now

    def hit(self, key: str, now: float | None = None) -> None:
        """Record one event for `key`."""
        now = time.monotonic() if now is None else now
        events = self._events.get(key)
        if events is None:
            if len(self._events) >= self.max_keys:
                self._prune(now)
            events = self._events[key] = deque(maxlen=self.limit)
        events.append(now)

    def take(self, key: str, now: float | None = None) -> float:
        """Record an event unless over the limit; return 0 when allowed, else seconds to wait."""
        now = time.monotonic() if now is None else now
        wait = self.retry_after(key, now)
        if wait <= 0:
            self.hit(key, now)
        return wait

    def reset(self, key: str) -> None:
        """Forget `key` (a successful sign-in clears its failures)."""
        self._events.pop(key, None)

    def _prune(self, now: float) -> None:
        # Memory stays bounded under a flood of distinct keys: drop idle ones, then the oldest.
        stale = [k for k, ev in self._events.items() if not ev or ev[-1] <= now - self.window_s]
        for k in stale:
            del self._events[k]
        while len(self._events) >= self.max_keys:
            del self._events[next(iter(self._events))]

    def __len__(self) -> int:
        return len(self._events)

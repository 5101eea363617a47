"""Per-user write rate: `api.max_events_per_minute` events through the HTTP API, as a token bucket.

A user may write a burst of that many events, and then as many a minute, refilled evenly; past
it, POST /events is 429 with Retry-After saying when the request would fit. The byte quota
(`api.max_user_bytes`) is the store's to check (brain.api.user_store), where the size is known.
Mail sync's writes are the server's own and are not counted here.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

from brain.errors import PayloadTooLarge, TooManyRequests

# Buckets remembered at once; the least recently used go first (a forgotten bucket is a full one).
MAX_BUCKETS = 100_000


class WriteRate:
    """Token buckets by user (the event loop's only: no locking)."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.capacity = float(per_minute)
        self.per_second = per_minute / 60.0
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # user -> (tokens, as of)

    @property
    def enabled(self) -> bool:
        """False when the quota is 0 (none)."""
        return self.capacity > 0

    def take(self, user_id: str, events: int) -> None:
        """Count `events` against the user's quota; TooManyRequests (429) if they do not fit now."""
        if not self.enabled:
            return
        if events > self.capacity:
            raise PayloadTooLarge(
                f"body: {events} events exceed the quota of {int(self.capacity)} a minute (api.max_events_per_minute)"
            )
        now = self._clock()
        tokens, then = self._buckets.pop(user_id, (self.capacity, now))
        tokens = min(self.capacity, tokens + (now - then) * self.per_second)
        if tokens < events:
            self._buckets[user_id] = (tokens, now)
            raise TooManyRequests(
                f"more than {int(self.capacity)} events a minute (api.max_events_per_minute)",
                retry_after=(events - tokens) / self.per_second,
                code="EVENT_QUOTA_EXCEEDED",
            )
        self._buckets[user_id] = (tokens - events, now)
        if len(self._buckets) > MAX_BUCKETS:
            self._buckets.popitem(last=False)

    def available(self, user_id: str) -> int | None:
        """Events the user may write right now (None: no quota)."""
        if not self.enabled:
            return None
        now = self._clock()
        tokens, then = self._buckets.get(user_id, (self.capacity, now))
        return int(min(self.capacity, tokens + (now - then) * self.per_second))

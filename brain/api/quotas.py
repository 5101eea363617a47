"""Per-user write rate: `api.max_events_per_minute` events through the HTTP API, as a token bucket.

A user may write a burst of that many events, and then as many a minute, refilled evenly; past
it, POST /events is 429 with Retry-After saying when the request would fit. The byte quota
(`api.max_user_bytes`) is the store's to check (brain.api.user_store), where the size is known.
Mail sync's writes are the server's own and are not counted here.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from brain.api.limits import BucketsFactory, local_buckets
from brain.errors import PayloadTooLarge, TooManyRequests


class WriteRate:
    """Token buckets by user, one token an event: this process's, or those its workers share."""

    def __init__(
        self, per_minute: int, clock: Callable[[], float] = time.monotonic, buckets: BucketsFactory = local_buckets
    ) -> None:
        self.capacity = per_minute
        self._clock = clock
        self._buckets = buckets("writes", per_minute / 60.0, per_minute) if per_minute else None

    @property
    def enabled(self) -> bool:
        """False when the quota is 0 (none)."""
        return self._buckets is not None

    def take(self, user_id: str, events: int) -> None:
        """Count `events` against the user's quota; TooManyRequests (429) if they do not fit now."""
        buckets = self._buckets
        if buckets is None:
            return
        if events > self.capacity:
            raise PayloadTooLarge(
                f"body: {events} events exceed the quota of {self.capacity} a minute (api.max_events_per_minute)"
            )
        wait = buckets.take(user_id, self._clock(), events)
        if wait:
            raise TooManyRequests(
                f"more than {self.capacity} events a minute (api.max_events_per_minute)",
                retry_after=wait,
                code="EVENT_QUOTA_EXCEEDED",
            )

    def available(self, user_id: str) -> int | None:
        """Events the user may write right now (None: no quota)."""
        buckets = self._buckets
        return None if buckets is None else int(buckets.available(user_id, self._clock()))

"""Request rate limits of the API role, per user and per client address: one client cannot starve the rest.

Token buckets (`api.rate_limit_user_per_second` and `_burst`, `api.rate_limit_ip_per_second` and
`_burst`): each key may make `burst` requests at once and `rate` a second after that; over it,
429 RATE_LIMITED with `Retry-After`. The address limit is checked before the credentials are
(so a flood of bad tokens is cut off cheaply), the user limit right after, for every route of
the API listener. The client address is the peer's, or the X-Forwarded-For hop a trusted proxy
(`server.trusted_proxies`) names.

In a single process the buckets live in memory on the event loop thread. With several
workers (brain.workers) they live in memory the workers share (brain.workers.shared_buckets),
so a client gets the configured rate whichever worker its connections reach.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol

from aiohttp import web

from brain.errors import TooManyRequests
from brain.web import client_ip

RATE_LIMITED = "RATE_LIMITED"


class TokenBuckets:
    """`rate` requests a second for each key, `burst` at most at once; memory bounded by `max_keys`."""

    __slots__ = ("rate", "burst", "max_keys", "_buckets")

    def __init__(self, rate: float, burst: int, *, max_keys: int = 100_000) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.max_keys = max_keys
        self._buckets: dict[str, list[float]] = {}  # key -> [tokens left, when they were counted]

    def take(self, key: str, now: float, cost: float = 1.0) -> float:
        """Spend `cost` tokens of `key`: 0 when allowed, else the seconds until they are there."""
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self.max_keys:
                self._prune(now)
            bucket = self._buckets[key] = [self.burst, now]
        tokens = bucket[0] + (now - bucket[1]) * self.rate
        if tokens > self.burst:
            tokens = self.burst
        bucket[1] = now
        if tokens >= cost:
            bucket[0] = tokens - cost
            return 0.0
        bucket[0] = tokens
        return (cost - tokens) / self.rate

    def available(self, key: str, now: float) -> float:
        """The tokens `key` could spend now."""
        bucket = self._buckets.get(key)
        if bucket is None:
            return self.burst
        return min(self.burst, bucket[0] + (now - bucket[1]) * self.rate)

    def _prune(self, now: float) -> None:
        # A bucket that has refilled is the same as no bucket: drop those, then the oldest.
        full = [k for k, (tokens, then) in self._buckets.items() if tokens + (now - then) * self.rate >= self.burst]
        for key in full:
            del self._buckets[key]
        while len(self._buckets) >= self.max_keys:
            del self._buckets[next(iter(self._buckets))]

    def __len__(self) -> int:
        return len(self._buckets)


class Buckets(Protocol):
    """Token buckets as the limits use them: this process's (TokenBuckets) or the workers' shared ones."""

    rate: float

    def take(self, key: str, now: float, cost: float = 1.0) -> float:
        """Spend `cost` tokens of `key`: 0 when allowed, else the seconds until they are there."""

    def available(self, key: str, now: float) -> float:
        """The tokens `key` could spend now."""

    def __len__(self) -> int:
        """How many keys are tracked."""


# Makes the buckets of one limit: (its name, "ip", "user" or "writes"; rate; burst).
BucketsFactory = Callable[[str, float, int], Buckets]


def local_buckets(_name: str, rate: float, burst: int) -> Buckets:
    """Buckets held by this process alone."""
    return TokenBuckets(rate, burst)


class ApiLimits:
    """The API role's two limits (either may be off); the guard calls `check_ip` and `check_user`."""

    def __init__(self, api: Any, trusted_proxies: tuple[str, ...], buckets: BucketsFactory = local_buckets) -> None:
        self.ip = buckets("ip", api.rate_limit_ip_per_second, api.rate_limit_ip_burst) if api.rate_limit_ip_per_second else None
        self.user = (
            buckets("user", api.rate_limit_user_per_second, api.rate_limit_user_burst)
            if api.rate_limit_user_per_second else None
        )
        self.trusted_proxies = frozenset(trusted_proxies)
        self.refused_ip = 0
        self.refused_user = 0

    def check_ip(self, request: web.Request) -> None:
        """429 when the client address is over its limit."""
        assert self.ip is not None
        wait = self.ip.take(client_ip(request, self.trusted_proxies), time.monotonic())
        if wait:
            self.refused_ip += 1
            raise TooManyRequests("too many requests from this address; slow down", retry_after=wait, code=RATE_LIMITED)

    def check_user(self, user_id: str) -> None:
        """429 when the user is over their limit."""
        assert self.user is not None
        wait = self.user.take(user_id, time.monotonic())
        if wait:
            self.refused_user += 1
            raise TooManyRequests("too many requests for this user; slow down", retry_after=wait, code=RATE_LIMITED)

    def stats(self) -> dict[str, Any]:
        """Figures for /health."""
        return {
            "user_per_second": self.user.rate if self.user else 0,
            "ip_per_second": self.ip.rate if self.ip else 0,
            "refused_user": self.refused_user,
            "refused_ip": self.refused_ip,
            "tracked_users": len(self.user) if self.user else 0,
            "tracked_ips": len(self.ip) if self.ip else 0,
        }

"""Sliding-window limits (the auth role's requests per client IP, failures per account, mails per
address), held for the whole server.

A `SlidingWindow` lives in memory, used from one thread (no locks, no thread hop). What the
roles use is a `Limit` from `shared_limit(rt, ...)`: in a single process, a window of its own;
with several workers, the window is the master's (brain.workers.hub), asked over the worker's
link, so a client is limited the same whichever worker it reaches (docs/workers.md).

Memory is bounded and every operation is O(1), whatever an attacker sends. Keys live in one of
two tables, each an OrderedDict of at most `max_keys` entries:

- `_open`: keys under their limit, least recently seen first. A new key beyond the bound pushes
  out the least recently seen one (`popitem`, no scan). Losing such a record forgets fewer than
  `limit` events of a key nobody touched for the longest time.
- `_full`: keys that reached their limit (locked out, or over their request budget), in the order
  they filled, which is the order their lockouts end. New keys never enter it, so flooding the
  limiter with other keys cannot push a lockout out. Only more lockouts than it holds can: each
  costs an attacker `limit` requests, and the one displaced is the lockout nearest its end.

IPv6 clients are limited per /64 (`client_block`): one host commonly owns a whole /64, so
per-address budgets would let it pick a fresh address for every request.
"""

from __future__ import annotations

import ipaddress
import time
from collections import OrderedDict, deque
from typing import Protocol

from brain.process import Process
from brain.workers.peers import Peers, peers_for

# How many stale records at the head of each table one call may drop (bounded work per call).
_EXPIRE_PER_CALL = 2


def client_block(ip: str) -> str:
    """The rate-limit key of a client address: IPv4 as is, IPv6 as its /64 (IPv4-mapped as IPv4)."""
    try:
        address = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return ip  # not an address (a unix socket peer): its own key
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


class SlidingWindow:
    """At most `limit` events per `window_s` seconds for each key."""

    def __init__(self, limit: int, window_s: float, *, max_keys: int = 100_000) -> None:
        self.limit = limit
        self.window_s = window_s
        self.max_keys = max_keys
        self._open: OrderedDict[str, deque[float]] = OrderedDict()
        self._full: OrderedDict[str, deque[float]] = OrderedDict()

    def retry_after(self, key: str, now: float | None = None) -> float:
        """Seconds until `key` may act again (0: it may now)."""
        now = time.monotonic() if now is None else now
        self._expire(now)
        full = key in self._full
        events = self._full[key] if full else self._open.get(key)
        if events is None:
            return 0.0
        while events and events[0] <= now - self.window_s:
            events.popleft()
        if len(events) >= self.limit:
            return events[0] + self.window_s - now
        if full:  # its lockout is over: back among the open keys (or forgotten, if idle)
            del self._full[key]
            if events:
                self._admit(key, events)
        elif not events:
            del self._open[key]
        return 0.0

    def hit(self, key: str, now: float | None = None) -> None:
        """Record one event for `key`."""
        now = time.monotonic() if now is None else now
        events = self._full.get(key)
        if events is not None:
            events.append(now)  # still at its limit; its lockout now ends later
            self._full.move_to_end(key)
            return
        events = self._open.get(key)
        if events is None:
            self._expire(now)
            events = deque(maxlen=self.limit)
            self._admit(key, events)
        else:
            self._open.move_to_end(key)
        events.append(now)
        if len(events) >= self.limit:
            del self._open[key]
            if len(self._full) >= self.max_keys:
                self._full.popitem(last=False)  # the lockout nearest its end
            self._full[key] = events

    def take(self, key: str, now: float | None = None) -> float:
        """Record an event unless over the limit; return 0 when allowed, else seconds to wait."""
        now = time.monotonic() if now is None else now
        wait = self.retry_after(key, now)
        if wait <= 0:
            self.hit(key, now)
        return wait

    def reset(self, key: str) -> None:
        """Forget `key` (a successful sign-in clears its failures)."""
        self._open.pop(key, None)
        self._full.pop(key, None)

    def _admit(self, key: str, events: deque[float]) -> None:
        if len(self._open) >= self.max_keys:
            self._open.popitem(last=False)  # the least recently seen key under its limit
        self._open[key] = events

    def _expire(self, now: float) -> None:
        # Drop records whose window has passed from the head of each table: the oldest are
        # there, so a few checks per call keep both tables clean without ever scanning.
        horizon = now - self.window_s
        for table in (self._open, self._full):
            for _ in range(_EXPIRE_PER_CALL):
                if not table:
                    break
                key, events = next(iter(table.items()))
                if events and events[-1] > horizon:
                    break
                del table[key]

    def __len__(self) -> int:
        return len(self._open) + len(self._full)


class Limit(Protocol):
    """A sliding window as the roles use it (coroutines: it may live in another process)."""

    async def take(self, key: str) -> float:
        """Record an event unless over the limit; 0 when allowed, else seconds to wait."""

    async def reset(self, key: str) -> None:
        """Forget `key`."""


class LocalLimit:
    """A Limit held in this process."""

    def __init__(self, window: SlidingWindow) -> None:
        self.window = window

    async def take(self, key: str) -> float:
        """See Limit."""
        return self.window.take(key)

    async def reset(self, key: str) -> None:
        """See Limit."""
        self.window.reset(key)


class SharedLimit:
    """A Limit held by the master for every worker (one round trip over the worker's link)."""

    def __init__(self, peers: Peers, name: str, limit: int, window_s: float, max_keys: int) -> None:
        self.peers = peers
        self.name = name
        self.spec = (limit, window_s, max_keys)

    async def take(self, key: str) -> float:
        """See Limit."""
        return float(await self.peers.request("limit", table=self.name, spec=self.spec, call="take", key=key))

    async def reset(self, key: str) -> None:
        """See Limit."""
        await self.peers.request("limit", table=self.name, spec=self.spec, call="reset", key=key)


def shared_limit(rt: Process, name: str, limit: int, window_s: float, *, max_keys: int = 100_000) -> Limit:
    """At most `limit` events per `window_s` for each key, across every worker of the server.

    `name` tells the master's windows apart (one per limit, e.g. "auth.ip").
    """
    if rt.worker.several:
        return SharedLimit(peers_for(rt), name, limit, window_s, max_keys)
    return LocalLimit(SlidingWindow(limit, window_s, max_keys=max_keys))

"""Scale: activate many distinct users' stores in turn and watch the server's resources.

Each user's first request (`POST /events` with a token brain has never seen) creates and opens
that user's store; the server must keep open stores, and with them file descriptors, threads
and memory, within `[api] max_open_stores`, whatever the number of users. The server process
is read from /proc (RSS, open fds, threads) at regular points. At the end, some of the first
users (long since evicted) come back, to time a reopened cold store too.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from bench.client import KeepAliveClient, expect
from bench.servers import ProcSample, proc_sample
from bench.users import event_body

# (user id, Authorization header value) of user i.
TokenSource = Callable[[int], tuple[str, str]]


@dataclass
class ScaleResult:
    """Resources and first-request latencies over one activation run."""

    users: int  # activated (fewer than asked if the time cap hit first)
    idle: ProcSample
    points: list[tuple[int, ProcSample]] = field(default_factory=list)  # (users activated, reading)
    new_store: list[float] = field(default_factory=list)  # seconds, a user's very first request
    reopened: list[float] = field(default_factory=list)  # seconds, first request after eviction
    open_stores: dict = field(default_factory=dict)  # /health's stores figures at the end
    seconds: float = 0.0

    def peak(self, attr: str) -> float:
        """The largest reading of one ProcSample attribute during the run."""
        return max(getattr(s, attr) for _, s in self.points)

    def at_fraction(self, fraction: float) -> ProcSample:
        """The reading closest to having activated `fraction` of the users."""
        want = self.users * fraction
        return min(self.points, key=lambda p: abs(p[0] - want))[1]


def measure(
    *, pid: int, api_port: int, detail_headers: Mapping[str, str], tokens: TokenSource, users: int, max_open: int,
    points: int = 20,
    reopen: int = 200, max_seconds: float = 900.0, progress: Callable[[str], None] = lambda _m: None,
) -> ScaleResult:
    """Activate up to `users` stores one after another (bounded by max_seconds); sample `points` times."""
    every = max(1, users // points)
    auths: dict[int, tuple[str, str]] = {}
    with KeepAliveClient(api_port) as c:
        health = c.encode("GET", "/health")
        expect(c.send(health), 200, what="GET /health")
        result = ScaleResult(users=users, idle=proc_sample(pid))
        result.points.append((0, result.idle))
        started = time.monotonic()
        for i in range(users):
            if time.monotonic() - started > max_seconds:
                progress(f"time is up after {i} of {users} users")
                result.users = i
                result.points.append((i, proc_sample(pid)))
                break
            user_id, authorization = tokens(i)
            if i < reopen:
                auths[i] = (user_id, authorization)
            raw = c.encode("POST", "/events", headers={"Authorization": authorization}, body=event_body(i, kind="bench.scale"))
            result.new_store.append(expect(c.send(raw), 201, what=f"first POST /events of user {i}").elapsed)
            if (i + 1) % every == 0 or i + 1 == users:
                result.points.append((i + 1, proc_sample(pid)))
                if (i + 1) % (every * 5) == 0:
                    progress(f"{i + 1}/{users} users activated")
        # The first users were evicted long ago (LRU): their next request reopens the store.
        for i in range(max(0, min(reopen, result.users - max_open))):
            _uid, authorization = auths[i]
            raw = c.encode("GET", "/events?limit=1", headers={"Authorization": authorization})
            result.reopened.append(expect(c.send(raw), 200, what=f"GET /events of evicted user {i}").elapsed)
        result.points.append((users, proc_sample(pid)))
        result.seconds = time.monotonic() - started
        detail = c.request("GET", "/health?detail=1", headers=detail_headers)
        result.open_stores = expect(detail, 200, what="GET /health?detail=1").json().get("stores", {})
    return result

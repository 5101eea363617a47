"""The live dispatcher: each user's committed events to that user's open streams, in commit order.

One `Dispatcher` per process, on the serving event loop. Its source calls `post(user_id,
events)` from any thread with events just committed, in each user's commit order; today the
source is the Doorbell that every UserStore of this process rings after a commit
(`brain.api.outbox`), so a stream costs no JetStream consumer and no poll.

With several workers (`pokes_only`) a user's commits come through every worker in one order
only the store knows, so events handed in are not queued: each is a poke (`Subscription.poke`),
and the stream reads its store from the last id it wrote. The other workers' commits poke
through `poke(user_id)`, from brain.api.live_feed (docs/live.md).

`post` for a user nobody streams is one dict lookup on the committing thread: no loop wake-up.
Otherwise the events reach the loop in one batched call (`brain.actors.bridge`) and are offered
to each of the user's `Subscription`s, which keep what their writer has not written yet, up to a
bound in bytes:

- a subscription still catching up on history (`live` False) that overflows drops what it
  holds and notes that it `missed` events: its writer reads them from the store instead;
- a live one that overflows ends with `too-slow`: its client reads slower than the user's
  events arrive, and is cut off rather than buffered without bound (it resumes with
  Last-Event-ID and loses nothing).

The subscriptions of a connection that went away are ended by a sweep every few seconds, so an
idle stream whose client vanished does not wait for its next heartbeat to be noticed.

A cluster node that answers writes once the replicated stream holds them (`confirmations`,
brain.api.outbox.Confirmations) also streams only what the stream holds: an event committed
here and lost with this node before JetStream acknowledged it must not have been shown (its id
may be drawn again for another event on the node that takes the user over). Posted events are
held per user until every event up to them is acknowledged (`confirmed`), then offered in
commit order; a stream whose history read stopped at an unacknowledged event (`behind`) is
poked then, and reads the store from where it stopped.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from brain.actors import bridge
from brain.api.events import StoredEvent
from brain.api.outbox import Confirmations
from brain.errors import TooManyRequests
from brain.event_types import TypeFilter

log = logging.getLogger("brain.api.live")

# Every this often, the subscriptions of closed connections are ended.
SWEEP_SECONDS = 2.0
# An event's cost against a buffer, besides its data: id, type, time and framing.
EVENT_OVERHEAD_BYTES = 100
# Confirmations: events of one user held until the stream holds them; past this (NATS away) they
# are dropped, and the user's streams read the store once the stream holds more.
MAX_HELD = 10_000

# Why a stream ended, as its last SSE event names it (None: the client went away, nothing to say).
TOO_SLOW = "too-slow"
REVOKED = "revoked"
SHUTTING_DOWN = "shutting-down"


class Subscription:
    """One stream's view of its user's commits: what its writer has yet to write, and why it must end."""

    __slots__ = (
        "user_id", "types", "max_bytes", "is_gone", "queue", "bytes", "live", "missed", "ended", "behind", "_waiter",
    )

    def __init__(
        self, user_id: str, types: TypeFilter | None, max_bytes: int, is_gone: Callable[[], bool] = lambda: False
    ) -> None:
        self.user_id = user_id
        self.types = types
        self.max_bytes = max_bytes
        self.is_gone = is_gone
        self.queue: deque[StoredEvent] = deque()
        self.bytes = 0
        self.live = False
        self.missed = False
        self.ended: str | None = None
        # Its history read stopped at an event not yet on the replicated stream (cluster mode).
        self.behind = False
        self._waiter: asyncio.Future[None] | None = None

    def offer(self, events: Iterable[StoredEvent]) -> None:
        """Take the user's new events (on the loop): queue the wanted ones, or overflow."""
        if self.ended is not None:
            return
        types = self.types
        added = False
        for ev in events:
            if types is None or types.matches(ev.type):
                self.queue.append(ev)
                self.bytes += len(ev.data) + EVENT_OVERHEAD_BYTES
                added = True
        if not added:
            return
        if self.bytes > self.max_bytes:
            self.queue.clear()
            self.bytes = 0
            if self.live:
                self.end(TOO_SLOW)
                return
            self.missed = True
        self._wake()

    def poke(self) -> None:
        """The user committed something: the writer reads the store from the last id it wrote."""
        if self.ended is None:
            self.missed = True
            self._wake()

    def take(self) -> list[StoredEvent]:
        """Everything queued, oldest first."""
        events = list(self.queue)
        self.queue.clear()
        self.bytes = 0
        return events

    def end(self, reason: str | None) -> None:
        """The stream must end (`reason`: the last event its client gets; None: none)."""
        if self.ended is None:
            self.ended = reason or ""
            self.queue.clear()
            self.bytes = 0
            self._wake()

    async def wait(self, timeout: float) -> None:
        """Until something is queued, the stream must end, or `timeout` seconds pass."""
        if self.queue or self.ended is not None or self.missed:
            return
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        timer = loop.call_later(timeout, _settle, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiter = None

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            _settle(waiter)


def _settle(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class Dispatcher:
    """The process's fan-out of committed events to open streams (see the module docstring)."""

    def __init__(
        self, *, max_streams: int, max_per_user: int, pokes_only: bool = False,
        confirmations: Confirmations | None = None,
    ) -> None:
        self.max_streams = max_streams
        self.max_per_user = max_per_user
        self.pokes_only = pokes_only
        self.confirmations = confirmations
        self.loop: asyncio.AbstractEventLoop | None = None
        self._by_user: dict[str, set[Subscription]] = {}
        # Confirmations only: posted events of streamed users, until the stream holds them.
        self._held: dict[str, deque[StoredEvent]] = {}
        self._count = 0
        self._sweeper: asyncio.TimerHandle | None = None
        self.opened = 0
        self.posted = 0
        self.cut_off = 0

    # -- the source's side (any thread) ----------------------------------------------------------

    def post(self, user_id: str, events: list[StoredEvent]) -> None:
        """Committed events of a user, in commit order (any thread; never blocks)."""
        # Read without the loop: a subscription added after this check was added after these
        # events committed, and its writer reads them from the store.
        if user_id not in self._by_user:
            return
        loop = self.loop
        if loop is not None:
            bridge.call_soon_threadsafe(loop, self._deliver, user_id, events)

    def _deliver(self, user_id: str, events: list[StoredEvent]) -> None:
        subs = self._by_user.get(user_id)
        if subs:
            self.posted += len(events)
            if self.pokes_only:
                for sub in subs:
                    sub.poke()  # the store's read stops at what is not confirmed (brain.api.stream)
                return
            if self.confirmations is not None:
                held = self._held.setdefault(user_id, deque())
                held.extend(events)
                if len(held) > MAX_HELD:
                    del self._held[user_id]
                    for sub in subs:
                        sub.behind = True
                    return
                events = self._release(user_id)
            self._offer(subs, events)

    def _offer(self, subs: set[Subscription], events: list[StoredEvent]) -> None:
        if not events:
            return
        for sub in list(subs):
            sub.offer(events)
            if sub.ended == TOO_SLOW:
                self.cut_off += 1
                self._drop(sub)

    def _release(self, user_id: str) -> list[StoredEvent]:
        """The held events of the user that are confirmed now, oldest first."""
        held = self._held.get(user_id)
        if not held:
            return []
        assert self.confirmations is not None
        lowest = self.confirmations.lowest(user_id)
        if lowest is None:
            del self._held[user_id]
            return list(held)
        released = []
        while held and held[0].id < lowest:
            released.append(held.popleft())
        return released

    def confirmed(self, user_id: str, _upto: int) -> None:
        """Every event of the user up to `_upto` is on the replicated stream now (on the loop)."""
        subs = self._by_user.get(user_id)
        if not subs:
            return
        for sub in subs:
            if sub.behind:
                sub.behind = False
                sub.poke()
        if not self.pokes_only:
            self._offer(subs, self._release(user_id))

    def poke(self, user_id: str) -> None:
        """The user committed through another process (on the loop): their streams read the store."""
        for sub in self._by_user.get(user_id, ()):
            sub.poke()

    # -- streams' side (the loop) --------------------------------------------------------------

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Serve on this loop (the app's start-up)."""
        self.loop = loop
        self._sweeper = loop.call_later(SWEEP_SECONDS, self._sweep)

    def stop(self) -> None:
        """End every stream (the app's shutdown): each client is told, and reconnects elsewhere."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for subs in list(self._by_user.values()):
            for sub in list(subs):
                sub.end(SHUTTING_DOWN)
                self._drop(sub)

    def subscribe(
        self, user_id: str, types: TypeFilter | None, max_bytes: int, is_gone: Callable[[], bool]
    ) -> Subscription:
        """A new stream of a user (429 beyond the per-user or per-process bound)."""
        subs = self._by_user.get(user_id)
        if subs is not None and len(subs) >= self.max_per_user:
            raise TooManyRequests(
                f"at most {self.max_per_user} open streams per user; close one first", retry_after=5,
                code="TOO_MANY_STREAMS",
            )
        if self._count >= self.max_streams:
            raise TooManyRequests("this server holds as many streams as it may; try again shortly", retry_after=5,
                                  code="TOO_MANY_STREAMS")
        sub = Subscription(user_id, types, max_bytes, is_gone)
        self._by_user.setdefault(user_id, set()).add(sub)
        self._count += 1
        self.opened += 1
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        """The stream is over (its writer returns)."""
        self._drop(sub)

    def end_user(self, user_id: str, reason: str) -> None:
        """End every stream of a user (the account was deleted)."""
        for sub in list(self._by_user.get(user_id, ())):
            sub.end(reason)
            self._drop(sub)

    def _drop(self, sub: Subscription) -> None:
        subs = self._by_user.get(sub.user_id)
        if subs is not None and sub in subs:
            subs.discard(sub)
            self._count -= 1
            if not subs:
                del self._by_user[sub.user_id]
                self._held.pop(sub.user_id, None)

    def _sweep(self) -> None:
        for subs in list(self._by_user.values()):
            for sub in list(subs):
                if sub.is_gone():
                    sub.end(None)
                    self._drop(sub)
        loop = self.loop
        if loop is not None and not loop.is_closed():
            self._sweeper = loop.call_later(SWEEP_SECONDS, self._sweep)

    def stats(self) -> dict[str, Any]:
        """Figures for /health and /metrics."""
        return {
            "open": self._count,
            "users": len(self._by_user),
            "max": self.max_streams,
            "opened": self.opened,
            "events_posted": self.posted,
            "cut_off": self.cut_off,
            # Cluster mode: committed events not yet on the replicated stream (held from the streams).
            **({"unconfirmed": self.confirmations.pending()} if self.confirmations is not None else {}),
        }

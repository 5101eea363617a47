"""Where committed events go after their commit: the Doorbell, and the `event_stored` hooks.

A UserStore rings the doorbell with the events it has just committed (never blocking, never
failing: the rows are in its outbox anyway); the doorbell hands them to its listeners (the
live dispatcher of the event streams, the plugins' `event_stored` hooks) and to the running
EventBus's publisher. It outlives the EventBus's restarts.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import heapq
import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from brain.api.events import StoredEvent
from brain.api.publisher import Publisher
from brain.api.repair import RepairError, StreamRead, read_stream_blocking

log = logging.getLogger("brain.api.bus")

T = TypeVar("T")


def event_stored_notifier(pm: Any) -> Callable[[str, list[StoredEvent]], None] | None:
    """Hand committed events to plugins' `event_stored` hooks, or None when no plugin listens.

    The hooks run on one worker thread of their own, in commit order, so a slow plugin never
    holds up a store, the event loop or the publisher.
    """
    if not pm.hook.event_stored.get_hookimpls():
        return None
    pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="brain-event-hooks")

    def deliver(user_id: str, events: list[StoredEvent]) -> None:
        for event in events:
            try:
                pm.hook.event_stored(user_id=user_id, event=event.as_dict())
            except Exception:
                log.exception("an event_stored hook failed for an event of user %s", user_id)

    def notify(user_id: str, events: list[StoredEvent]) -> None:
        try:
            pool.submit(deliver, user_id, list(events))
        except RuntimeError:
            pass  # shutting down: the interpreter no longer takes new work

    return notify

class Confirmations:
    """Cluster mode (`cluster.confirm_writes`): the committed events JetStream has not acknowledged yet.

    A live stream or a webhook must show only events a failover keeps: an event committed here
    but not on the replicated stream is lost with this node, and its id may be drawn again on the
    node that takes the user over. So, per user, the ids committed and not yet acknowledged are
    kept here, registered on the committing thread before anyone is told of the commit (so any
    read of the store that returns an event comes after its registration, which brain.api.user_store's
    one thread per store guarantees), and dropped as the acknowledgements arrive. What lies below
    the lowest of them is confirmed; readers stop there (`confirmed_part`) and go on when told
    the frontier moved (`Doorbell.on_confirmed`).

    Memory: one entry per unacknowledged event (while NATS is away, per event committed meanwhile).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # user -> (heap of ids, the unacknowledged ids among them, the highest id registered)
        self._open: dict[str, tuple[list[int], set[int], list[int]]] = {}

    def committed(self, user_id: str, events: list[StoredEvent]) -> None:
        """The user committed these events (the committing thread, before anyone else hears of them)."""
        with self._lock:
            found = self._open.get(user_id)
            if found is None:
                found = self._open[user_id] = ([], set(), [0])
            heap, unacked, top = found
            for ev in events:
                heapq.heappush(heap, ev.id)
                unacked.add(ev.id)
            top[0] = max(top[0], events[-1].id)

    def acked(self, user_id: str, event_id: int) -> int | None:
        """JetStream holds this event: the user's new confirmed frontier if it moved (every id up to
        it is confirmed), else None."""
        with self._lock:
            found = self._open.get(user_id)
            if found is None or event_id not in found[1]:
                return None
            heap, unacked, top = found
            unacked.discard(event_id)
            if not unacked:
                del self._open[user_id]
                return top[0]
            if heap[0] != event_id:
                return None
            while heap[0] not in unacked:
                heapq.heappop(heap)
            return heap[0] - 1

    def lowest(self, user_id: str) -> int | None:
        """The user's lowest unacknowledged event id (None: every committed event is confirmed)."""
        with self._lock:
            found = self._open.get(user_id)
            if found is None:
                return None
            heap, unacked, _ = found
            while heap[0] not in unacked:
                heapq.heappop(heap)
            return heap[0]

    def confirmed_part(self, user_id: str, rows: list[T], seq: Callable[[T], int]) -> tuple[list[T], bool]:
        """The leading rows (in commit order) that are confirmed, and whether any were held back."""
        lowest = self.lowest(user_id)
        if lowest is None or not rows or seq(rows[-1]) < lowest:
            return rows, False
        keep = 0
        while keep < len(rows) and seq(rows[keep]) < lowest:
            keep += 1
        return rows[:keep], True

    def forget(self, user_id: str) -> None:
        """The user is no longer served here (deleted, taken over elsewhere)."""
        with self._lock:
            self._open.pop(user_id, None)

    def pending(self) -> int:
        """Unacknowledged events, all users (for /health)."""
        with self._lock:
            return sum(len(unacked) for _, unacked, _ in self._open.values())


class AckWatch:
    """JetStream's acknowledgements of one user's events, gathered from before they are committed.

    Opened before the commit, so that no acknowledgement can come before the watch (cluster
    mode answers a write only once its events are on the stream: brain.api.cluster).
    """

    def __init__(self) -> None:
        self.acked: set[int] = set()
        self._wanted: set[int] = set()
        self._all_acked = asyncio.Event()

    def note(self, event_id: int) -> None:
        """JetStream holds this event of the user."""
        self.acked.add(event_id)
        wanted = self._wanted
        if wanted and event_id in wanted:
            wanted.discard(event_id)
            if not wanted:
                self._all_acked.set()

    async def wait(self, ids: Iterable[int], timeout: float) -> bool:
        """Whether every one of these events was acknowledged within `timeout` seconds."""
        self._wanted = set(ids) - self.acked
        if not self._wanted:
            return True
        try:
            await asyncio.wait_for(self._all_acked.wait(), timeout)
        except TimeoutError:
            return False
        return True


class Doorbell:
    """Where stores hand committed events; stable across EventBus restarts (`rt.event_bus`)."""

    def __init__(
        self, listeners: Iterable[Callable[[str, list[StoredEvent]], None] | None] = (),
        confirmations: Confirmations | None = None,
    ) -> None:
        self._publisher: Publisher | None = None
        # Cluster mode with writes confirmed: what is committed but not yet on the stream, and
        # who is told when more of a user's events are (the live streams, the commit log).
        self.confirmations = confirmations
        self._on_confirmed: tuple[Callable[[str, int], None], ...] = ()
        # Each is told of every commit, in commit order, and must neither block nor raise.
        self._listeners = tuple(listener for listener in listeners if listener is not None)
        self.nats_url = ""
        # The open AckWatches per user (on the bus's loop, which is the serving loop).
        self._watches: dict[str, list[AckWatch]] = {}
        # Cluster mode: whether this node may publish a user's events (brain.api.cluster).
        self.may_publish: Callable[[str], bool | None] | None = None

    def listen(self, listener: Callable[[str, list[StoredEvent]], None]) -> None:
        """Tell `listener` of every commit from now on (set up before the stores open)."""
        self._listeners = (*self._listeners, listener)

    def on_confirmed(self, listener: Callable[[str, int], None]) -> None:
        """Confirmations only: `listener(user_id, upto)` on the serving loop when every event of the user
        up to `upto` is on the stream and was not before; must neither block nor raise."""
        self._on_confirmed = (*self._on_confirmed, listener)

    def notify(self, user_id: str, events: list[StoredEvent]) -> None:
        """Queue committed events for publishing (any thread; never blocks); none: drain the user's outbox."""
        if events:
            if self.confirmations is not None:
                self.confirmations.committed(user_id, events)
            for listener in self._listeners:
                listener(user_id, events)
        publisher = self._publisher
        if publisher is not None:
            publisher.post(user_id, events)
        # No bus running (it is restarting): the rows wait in the outbox, and the marker of
        # this open store brings the next bus to them.

    def flush(self) -> None:
        """Hand acknowledged ids to their stores now (shutdown: before the stores close)."""
        publisher = self._publisher
        if publisher is not None:
            try:
                publisher.loop.call_soon_threadsafe(publisher._flush_acks)
            except RuntimeError:
                pass  # the bus loop is closed already

    @contextmanager
    def watch_acks(self, user_id: str) -> Iterator[AckWatch]:
        """Gather JetStream's acknowledgements of the user's events while the block runs (on the serving loop)."""
        watch = AckWatch()
        self._watches.setdefault(user_id, []).append(watch)
        try:
            yield watch
        finally:
            watches = self._watches[user_id]
            watches.remove(watch)
            if not watches:
                del self._watches[user_id]

    def acked(self, user_id: str, event_id: int) -> None:
        """JetStream acknowledged an event (called by the publisher, or a node flushing an outbox, on the serving loop)."""
        for watch in self._watches.get(user_id, ()):
            watch.note(event_id)
        if self.confirmations is not None:
            upto = self.confirmations.acked(user_id, event_id)
            if upto is not None:
                for listener in self._on_confirmed:
                    listener(user_id, upto)

    def attach(self, publisher: Publisher) -> None:
        publisher.on_ack = self.acked
        publisher.may_publish = self.may_publish
        self._publisher = publisher

    def detach(self, publisher: Publisher) -> None:
        if self._publisher is publisher:
            self._publisher = None

    def stats(self) -> dict[str, Any]:
        """JSON-able figures for /health."""
        publisher = self._publisher
        if publisher is None:
            return {"state": "stopped", "connected": False}
        return publisher.stats()

    def oldest_unacked_seconds(self) -> float:
        """Seconds the oldest in-flight publish has waited (0: none; read from another thread)."""
        publisher = self._publisher
        return 0.0 if publisher is None else publisher.oldest_unacked_seconds()

    def read_stream(self, user_id: str, timeout: float = 300.0) -> StreamRead:
        """Every event of a user on the stream, over the bus's connection (blocking; from a worker thread)."""
        publisher = self._publisher
        if publisher is None or not publisher.connected or publisher.js is None:
            raise RepairError("the event bus is not connected to NATS")
        return read_stream_blocking(publisher.js, publisher.loop, publisher.settings, user_id, timeout)

    def purge_user_events(self, user_id: str, timeout: float = 10.0) -> None:
        """Purge a deleted user's subjects from the event stream (blocking; best effort: when connected)."""
        publisher = self._publisher
        if publisher is None or publisher.loop.is_closed():
            return
        try:
            asyncio.run_coroutine_threadsafe(publisher.purge_user(user_id), publisher.loop).result(timeout)
        except Exception as exc:  # noqa: BLE001 - a wedged or closing bus: the events expire with the stream
            log.warning("event bus: purging the events of deleted user %s failed: %r", user_id, exc)

"""Where committed events go after their commit: the Doorbell, and the `event_stored` hooks.

A UserStore rings the doorbell with the events it has just committed (never blocking, never
failing: the rows are in its outbox anyway); the doorbell hands them to its listeners (the
live dispatcher of the event streams, the plugins' `event_stored` hooks) and to the running
EventBus's publisher. It outlives the EventBus's restarts.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from brain.api.events import StoredEvent
from brain.api.publisher import Publisher
from brain.api.repair import RepairError, StreamRead, read_stream_blocking

log = logging.getLogger("brain.api.bus")


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

    def __init__(self, listeners: Iterable[Callable[[str, list[StoredEvent]], None] | None] = ()) -> None:
        self._publisher: Publisher | None = None
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

    def notify(self, user_id: str, events: list[StoredEvent]) -> None:
        """Queue committed events for publishing (any thread; never blocks); none: drain the user's outbox."""
        if events:
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

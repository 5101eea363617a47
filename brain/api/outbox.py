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
from collections.abc import Callable, Iterable
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

class Doorbell:
    """Where stores hand committed events; stable across EventBus restarts (`rt.event_bus`)."""

    def __init__(self, listeners: Iterable[Callable[[str, list[StoredEvent]], None] | None] = ()) -> None:
        self._publisher: Publisher | None = None
        # Each is told of every commit, in commit order, and must neither block nor raise.
        self._listeners = tuple(listener for listener in listeners if listener is not None)
        self.nats_url = ""

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

    def attach(self, publisher: Publisher) -> None:
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

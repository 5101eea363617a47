"""EventBus: publishes every committed event to JetStream, through the per-user outbox.

Subject `{nats.subject_prefix}.{user_id}.{type}`, header `Nats-Msg-Id: {user_id}:{event id}`
(plus `Brain-User-Id`, `Brain-Event-Id`, `Brain-Event-Type`), payload the event as JSON with its
`user_id`. The stream (`nats.stream`, subjects `{prefix}.>`) is created on connect if missing.

How events reach it, and why nothing is lost or doubled:

- A UserStore commits each event together with an outbox row, then rings the `Doorbell`
  with the new events (a deque append: NATS being down never fails or slows a write).
- The bus runs nats-py on its own thread and event loop. Connected, it publishes queued
  events pipelined (`publish_async`, up to `nats.max_in_flight` awaiting acks) and tells each
  store which rows JetStream acknowledged; the store deletes them.
- Disconnected, or when a publish fails or times out, it keeps no event in memory: it marks
  the user "dirty" and, once connected, drains that user's outbox rows from the database in
  batches, oldest first.
- Finding pending rows after a crash without opening 10,000 databases: a store creates its
  marker `data/outbox/{user_id}` when it opens and removes it only when it closes with an
  empty outbox. On start the bus lists that directory (at most the stores open at the crash
  plus those closed with unpublished rows) and drains those users.
- A row published but not yet deleted when brain dies is published again after the restart
  with the same Nats-Msg-Id, which JetStream drops within `nats.duplicate_window_seconds`:
  a consumer sees every event exactly once as long as the restart is shorter than the window.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import threading
import time
from collections import defaultdict, deque
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import nats
import nats.errors
import nats.js.errors
from nats.js.api import StorageType, StreamConfig

from brain.actors.base import BrainActor, Link
from brain.api.events import StoredEvent
from brain.ids import is_valid_user_id

if TYPE_CHECKING:
    from brain.api.stores import StoreManager
    from brain.config import NatsSettings

log = logging.getLogger("brain.api.bus")

DRAIN_BATCH = 500
# Events held in memory for publishing; past this, users are marked dirty and drained instead.
MAX_QUEUE = 50_000


def subject_for(prefix: str, user_id: str, event_type: str) -> str:
    """The JetStream subject of one event."""
    return f"{prefix}.{user_id}.{event_type}"


def msg_id_for(user_id: str, event_id: int) -> str:
    """The Nats-Msg-Id of one event: its identity, so a re-send is deduplicated."""
    return f"{user_id}:{event_id}"


def payload_for(user_id: str, ev: StoredEvent) -> bytes:
    """The message body: the event as the API returns it, plus its user id."""
    return (
        f'{{"id":{ev.id},"user_id":"{user_id}","type":"{ev.type}","data":{ev.data},'
        f'"created_at":"{ev.created_at}"}}'
    ).encode()


class Doorbell:
    """Where stores hand committed events; stable across EventBus restarts (`rt.event_bus`)."""

    def __init__(self) -> None:
        self._publisher: _Publisher | None = None
        self.nats_url = ""

    def notify(self, user_id: str, events: list[StoredEvent]) -> None:
        """Queue committed events for publishing (any thread; never blocks)."""
        publisher = self._publisher
        if publisher is not None:
            publisher.post(user_id, events)
        # No bus running (it is restarting): the rows wait in the outbox, and the marker of
        # this open store brings the next bus to them.

    def attach(self, publisher: _Publisher) -> None:
        self._publisher = publisher

    def detach(self, publisher: _Publisher) -> None:
        if self._publisher is publisher:
            self._publisher = None

    def stats(self) -> dict[str, Any]:
        """JSON-able figures for /health."""
        publisher = self._publisher
        if publisher is None:
            return {"state": "stopped", "connected": False}
        return publisher.stats()


class _Publisher:
    """The bus's state; every method but `post`/`stats` runs on the bus's own event loop."""

    def __init__(self, *, url: str, settings: NatsSettings, stores: StoreManager, data_path: Path) -> None:
        self.url = url
        self.settings = settings
        self.stores = stores
        self.marker_dir = data_path / "outbox"
        self.prefix = settings.subject_prefix
        self.loop = asyncio.new_event_loop()
        self.executor = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="eventbus-io")
        self.loop.set_default_executor(self.executor)
        self._incoming: deque[tuple[str, list[StoredEvent]]] = deque()
        self._wake_pending = False
        self._wake: asyncio.Event | None = None
        self._queue: deque[tuple[str, StoredEvent]] = deque()
        self._dirty: dict[str, int] = {}  # user -> drain from ids above this
        self._inflight: set[tuple[str, int]] = set()
        self.nc: Any = None
        self.js: Any = None
        self.connected = False
        self.state = "connecting"
        self.published = 0
        self.duplicates = 0
        self.failures = 0
        self.drained = 0
        self.last_error: str | None = None
        self.last_publish_at: float | None = None
        self._backoff = 0.0
        self._stopping = False

    # -- any thread ---------------------------------------------------------------------------

    def post(self, user_id: str, events: list[StoredEvent]) -> None:
        """Hand over committed events (called on store threads)."""
        self._incoming.append((user_id, events))
        # One loop wake-up per burst, not per event (see brain.actors.bridge for the same idea).
        if not self._wake_pending:
            self._wake_pending = True
            try:
                self.loop.call_soon_threadsafe(self._on_wake)
            except RuntimeError:
                pass  # the loop is closed: the rows wait in the outbox for the next bus

    def stats(self) -> dict[str, Any]:
        """Figures for /health (read without locks: approximate by design)."""
        return {
            "state": self.state,
            "connected": self.connected,
            "stream": self.settings.stream,
            "published": self.published,
            "duplicates": self.duplicates,
            "failures": self.failures,
            "drained": self.drained,
            "queued": len(self._queue) + sum(len(e) for _, e in list(self._incoming)),
            "in_flight": len(self._inflight),
            "dirty_users": len(self._dirty),
            "last_error": self.last_error,
        }

    # -- the bus loop -----------------------------------------------------------------------------

    def _on_wake(self) -> None:
        self._wake_pending = False
        if self._wake is not None:
            self._wake.set()

    async def run(self) -> None:
        """Connect, then publish whatever arrives or waits in outboxes, until stopped."""
        self._wake = wake = asyncio.Event()
        for user_id in await self.loop.run_in_executor(None, self._scan_markers):
            self._dirty.setdefault(user_id, 0)
        if self._dirty:
            log.info("event bus: %d user(s) may have unpublished events; draining", len(self._dirty))
        connector = asyncio.ensure_future(self._connect())
        try:
            while True:
                await wake.wait()
                wake.clear()
                await self._pump()
                if self._backoff:
                    await asyncio.sleep(self._backoff)
                    if self._queue or self._dirty:
                        wake.set()
        finally:
            connector.cancel()

    def _scan_markers(self) -> list[str]:
        try:
            names = os.listdir(self.marker_dir)
        except FileNotFoundError:
            return []
        return [name for name in names if is_valid_user_id(name)]

    async def _pump(self) -> None:
        while not self._stopping:
            self._take_incoming()
            if not self.connected:
                return
            if self._queue:
                batch = [self._queue.popleft() for _ in range(min(len(self._queue), self.settings.max_in_flight))]
                await self._publish(batch)
            elif self._dirty:
                await self._drain_one()
            else:
                return
            if self._backoff:
                return

    def _take_incoming(self) -> None:
        incoming = self._incoming
        while incoming:
            user_id, events = incoming.popleft()
            if not self.connected or user_id in self._dirty or len(self._queue) >= MAX_QUEUE:
                # The database has them: drain later, in order, instead of holding them here.
                self._dirty.setdefault(user_id, 0)
                continue
            for ev in events:
                self._queue.append((user_id, ev))

    async def _drain_one(self) -> None:
        user_id, after = next(iter(self._dirty.items()))
        try:
            rows = await self.loop.run_in_executor(
                None, self.stores.outbox_batch_blocking, user_id, after, DRAIN_BATCH, 10.0
            )
        except Exception as exc:  # noqa: BLE001 - retried later; never kills the bus
            self._note_error(f"reading the outbox of {user_id}: {exc!r}")
            self._requeue(user_id, after)
            self._backoff = max(self._backoff, 1.0)
            return
        if rows is None:  # no store: nothing can be pending (or we are shutting down)
            self._dirty.pop(user_id, None)
            if not self.stores.closing:
                (self.marker_dir / user_id).unlink(missing_ok=True)
            return
        failed = await self._publish([(user_id, row) for row in rows], drained=True)
        if user_id in failed:
            return  # _publish reset the user to drain from the start
        if len(rows) < DRAIN_BATCH:
            if self._dirty.get(user_id) == after:
                del self._dirty[user_id]
        else:
            self._requeue(user_id, rows[-1].id)

    def _requeue(self, user_id: str, after: int) -> None:
        # Move to the end: one busy user must not starve the others' drains.
        self._dirty.pop(user_id, None)
        self._dirty[user_id] = after

    async def _publish(self, items: Iterable[tuple[str, StoredEvent]], *, drained: bool = False) -> set[str]:
        """Publish and await the acks of a batch; ack the stores; the users that had failures."""
        js = self.js
        stream = self.settings.stream
        timeout = self.settings.publish_timeout_seconds
        sent: list[tuple[str, StoredEvent, asyncio.Future[Any]]] = []
        failed: set[str] = set()
        for user_id, ev in items:
            key = (user_id, ev.id)
            if key in self._inflight:
                continue
            headers = {
                "Nats-Msg-Id": msg_id_for(user_id, ev.id),
                "Brain-User-Id": user_id,
                "Brain-Event-Id": str(ev.id),
                "Brain-Event-Type": ev.type,
            }
            try:
                fut = await js.publish_async(
                    subject_for(self.prefix, user_id, ev.type),
                    payload_for(user_id, ev),
                    wait_stall=timeout,
                    stream=stream,
                    headers=headers,
                )
            except Exception as exc:  # noqa: BLE001 - not connected, buffer full, stalled
                self._note_error(f"publish: {exc!r}")
                failed.add(user_id)
                continue
            self._inflight.add(key)
            sent.append((user_id, ev, fut))
        if sent:
            await asyncio.wait([fut for _, _, fut in sent], timeout=timeout)
        acked: dict[str, list[int]] = defaultdict(list)
        for user_id, ev, fut in sent:
            self._inflight.discard((user_id, ev.id))
            if not fut.done():
                fut.cancel()  # releases nats-py's pending slot; the outbox row stays
                self._note_error("publish: no acknowledgement within the timeout")
                failed.add(user_id)
                continue
            exc = fut.exception()
            if exc is not None:
                self._note_error(f"publish: {exc!r}")
                failed.add(user_id)
                if isinstance(exc, nats.js.errors.NoStreamResponseError) and self.connected:
                    asyncio.ensure_future(self._ensure_stream())
                continue
            ack = fut.result()
            if ack.duplicate:
                self.duplicates += 1
            else:
                self.published += 1
            if drained:
                self.drained += 1
            acked[user_id].append(ev.id)
        if sent:
            self.last_publish_at = time.time()
        for user_id, ids in acked.items():
            self._ack(user_id, ids)
        for user_id in failed:
            self.failures += 1
            self._dirty[user_id] = 0  # drain from the start: whatever is still in the outbox
        self._backoff = min(max(self._backoff * 2, 0.2), 5.0) if failed else 0.0
        return failed

    def _ack(self, user_id: str, ids: list[int]) -> None:
        if self.stores.ack(user_id, ids):
            return
        # The store closed meanwhile: open it from a worker thread, never on this loop.
        fut = self.loop.run_in_executor(None, self.stores.ack_blocking, user_id, ids, 10.0)
        fut.add_done_callback(_log_failure)

    def _note_error(self, message: str) -> None:
        if message != self.last_error:
            log.warning("event bus: %s", message)
        self.last_error = message

    # -- connection -----------------------------------------------------------------------------------

    async def _connect(self) -> None:
        s = self.settings
        while not self._stopping:
            try:
                # max_reconnect_attempts=-1: nats-py retries the first connection too, forever.
                self.nc = await nats.connect(
                    self.url,
                    name="brain-eventbus",
                    allow_reconnect=True,
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=s.reconnect_wait_seconds,  # type: ignore[arg-type]
                    connect_timeout=2,
                    ping_interval=10,
                    max_outstanding_pings=2,
                    error_cb=self._on_error,
                    disconnected_cb=self._on_disconnected,
                    reconnected_cb=self._on_reconnected,
                    closed_cb=self._on_closed,
                )
                break
            except Exception as exc:  # noqa: BLE001
                self._note_error(f"connect to {self.url}: {exc!r}")
                await asyncio.sleep(s.reconnect_wait_seconds)
        self.js = self.nc.jetstream(timeout=s.publish_timeout_seconds, publish_async_max_pending=s.max_in_flight)
        await self._on_connected()

    async def _on_connected(self) -> None:
        if not await self._ensure_stream():
            return
        self.connected = True
        self.state = "connected"
        self._backoff = 0.0
        log.info("event bus: connected to %s (stream %s)", self.url, self.settings.stream)
        if self._wake is not None:
            self._wake.set()

    async def _ensure_stream(self) -> bool:
        """Create the stream if it is missing; retried until it works or the link drops."""
        s = self.settings
        delay = 0.2
        while not self._stopping and self.nc is not None and self.nc.is_connected:
            try:
                try:
                    await self.js.stream_info(s.stream)
                except nats.js.errors.NotFoundError:
                    await self.js.add_stream(
                        StreamConfig(
                            name=s.stream,
                            subjects=[f"{s.subject_prefix}.>"],
                            storage=StorageType.FILE,
                            max_age=s.max_age_days * 86400 if s.max_age_days > 0 else None,
                            max_bytes=s.max_bytes,
                            duplicate_window=s.duplicate_window_seconds,
                        )
                    )
                    log.info("event bus: created stream %s (%s.>)", s.stream, s.subject_prefix)
                return True
            except Exception as exc:  # noqa: BLE001 - JetStream not ready yet, timeouts
                self._note_error(f"stream {s.stream}: {exc!r}")
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        return False

    async def _on_error(self, exc: Exception) -> None:
        self.last_error = f"nats: {exc!r}"

    async def _on_disconnected(self) -> None:
        if self.connected:
            log.warning("event bus: disconnected from %s; events wait in the outboxes", self.url)
        self.connected = False
        self.state = "disconnected"

    async def _on_reconnected(self) -> None:
        # Not awaited here: nats-py runs this callback inside its reconnect logic.
        asyncio.ensure_future(self._on_connected())

    async def _on_closed(self) -> None:
        self.connected = False
        self.state = "closed"

    async def close(self) -> None:
        """Stop publishing and close the connection (runs on the bus loop)."""
        self._stopping = True
        self.connected = False
        self.state = "stopped"
        nc = self.nc
        if nc is not None and not nc.is_closed:
            try:
                await asyncio.wait_for(nc.close(), timeout=2)
            except Exception:  # noqa: BLE001 - closing anyway
                pass


def _log_failure(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled() and fut.exception() is not None:
        log.warning("event bus: ack failed: %r (the event is republished, deduplicated)", fut.exception())


@dataclass(frozen=True)
class _Crashed:
    error: BaseException


class EventBus(BrainActor):
    """The supervised owner of the publisher thread; a crash of its loop is a crash of the actor."""

    def __init__(
        self,
        *,
        link: Link | None = None,
        doorbell: Doorbell,
        stores: StoreManager,
        url: str,
        settings: NatsSettings,
        data_path: Path,
    ) -> None:
        super().__init__(link=link)
        self.doorbell = doorbell
        self.publisher = _Publisher(url=url, settings=settings, stores=stores, data_path=data_path)
        self._thread: threading.Thread | None = None
        self._main: concurrent.futures.Future[None] | None = None

    def on_start(self) -> None:
        publisher = self.publisher
        self._thread = threading.Thread(target=publisher.loop.run_forever, name="eventbus-loop", daemon=True)
        self._thread.start()
        self._main = asyncio.run_coroutine_threadsafe(publisher.run(), publisher.loop)
        ref = self.actor_ref

        def crashed(fut: concurrent.futures.Future[None]) -> None:
            if fut.cancelled() or publisher._stopping:
                return
            error = fut.exception() or RuntimeError("event bus loop ended")
            try:
                ref.tell(_Crashed(error))
            except Exception:  # noqa: BLE001 - the actor is gone already
                pass

        self._main.add_done_callback(crashed)
        self.doorbell.attach(publisher)

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, _Crashed):
            raise RuntimeError("event bus loop failed") from message.error
        return super().on_receive(message)

    def stats(self) -> dict[str, Any]:
        """The publisher's figures."""
        return self.publisher.stats()

    def on_stop(self) -> None:
        self._shutdown()

    def on_failure(self, *exc_info: object) -> None:
        self._shutdown()

    def _shutdown(self) -> None:
        publisher = self.publisher
        self.doorbell.detach(publisher)
        loop = publisher.loop
        if loop.is_closed():
            return
        publisher._stopping = True
        if self._main is not None:
            self._main.cancel()
        try:
            asyncio.run_coroutine_threadsafe(publisher.close(), loop).result(timeout=5)
        except Exception:  # noqa: BLE001 - a wedged loop is abandoned (daemon thread)
            log.warning("event bus: the NATS connection did not close cleanly")
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(timeout=5)
        if not loop.is_running():
            loop.close()
        publisher.executor.shutdown(wait=False, cancel_futures=True)

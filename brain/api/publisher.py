"""The EventBus's publisher: committed events to JetStream, pipelined, through the per-user outbox.

Subject `{nats.subject_prefix}.{user_id}.{type}`, header `Nats-Msg-Id: {user_id}:{event id}`
(plus `Brain-User-Id`, `Brain-Event-Id`, `Brain-Event-Type`, and `Brain-Event-Key`, the event's
idempotency key percent-encoded, when it has one), payload the event as JSON with its
`user_id`. Everything a store needs to be rebuilt from the stream is there (brain.api.repair). The stream (`nats.stream`, subjects `{prefix}.>`) is created on connect if missing.
How events reach it and why nothing is lost or doubled: see brain.api.bus.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import logging
import os
import re
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import quote

import nats.errors
from nats.js.api import StorageType, StreamConfig
from nats.protocol.command import hpub_cmd

from brain import jetstream
from brain.actors import bridge
from brain.api.events import StoredEvent
from brain.api.store_manager import StoreManager
from brain.api.user_store import OutboxBusy
from brain.sections import NatsSettings
from brain.ids import is_valid_user_id
from brain.redact import redact_text, redact_url

log = logging.getLogger("brain.api.bus")

DRAIN_BATCH = 500
# How long acknowledged ids gather before their stores delete the outbox rows: one store
# transaction per user per interval instead of one per publish. A crash inside it only means
# a re-send that JetStream deduplicates.
ACK_DELAY = 0.2
# Events held in memory for publishing; past this, users are marked dirty and drained instead.
MAX_QUEUE = 50_000
# A user whose outbox another worker is draining is tried again this much later.
BUSY_RETRY_S = 1.0
# While the stream's check after a (re)connect goes unanswered, a new one starts this often,
# this many at the most at once (see Publisher._ensure_stream).
STREAM_TRY_S = 1.0
STREAM_TRIES = 5


# Subject prefix and stream name that need no escaping anywhere in a protocol line or header.
_SAFE_TOKENS = re.compile(r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*")

def subject_for(prefix: str, user_id: str, event_type: str) -> str:
    """The JetStream subject of one event."""
    return f"{prefix}.{user_id}.{event_type}"


def msg_id_for(user_id: str, event_id: int) -> str:
    """The Nats-Msg-Id of one event: its identity, so a re-send is deduplicated."""
    return f"{user_id}:{event_id}"


def key_header(key: str) -> str:
    """The `Brain-Event-Key` value of an idempotency key: percent-encoded, so any key survives a header."""
    return quote(key, safe="")


def payload_for(user_id: str, ev: StoredEvent) -> bytes:
    """The message body: the event as the API returns it, plus its user id.

    The data is encoded on its own: an event just appended was bound to its INSERT, which left
    the str holding its UTF-8 (CPython keeps it), so its encode is a copy. Joined into one str
    first, a 20 KiB mail event with one non-ASCII character was encoded again, ~15 us on the
    event loop's thread per event.
    """
    return b"".join((
        f'{{"id":{ev.id},"user_id":"{user_id}","type":"{ev.type}","data":'.encode(),
        ev.data.encode(),
        f',"created_at":"{ev.created_at}"}}'.encode(),
    ))

def headers_for(user_id: str, ev: StoredEvent, stream: str) -> dict[str, str]:
    """The headers of one event's message (see the module's docstring)."""
    headers = {
        "Nats-Msg-Id": msg_id_for(user_id, ev.id),
        "Nats-Expected-Stream": stream,
        "Brain-User-Id": user_id,
        "Brain-Event-Id": str(ev.id),
        "Brain-Event-Type": ev.type,
    }
    if ev.key is not None:
        headers["Brain-Event-Key"] = key_header(ev.key)
    return headers


class AnotherWritersEvent(Exception):
    """JetStream answered a publish as a duplicate, and the stream's message under that
    Nats-Msg-Id is not this event: another process published this user's event id first (a node
    that took the user over while this one was thought dead). This event is not on the stream."""

    def __init__(self, user_id: str, event_id: int, seq: int) -> None:
        super().__init__(f"event {event_id} of {user_id} on the stream (seq {seq}) is another writer's")
        self.user_id, self.event_id, self.seq = user_id, event_id, seq


async def publish_confirmed(js: Any, settings: NatsSettings, user_id: str, ev: StoredEvent) -> None:
    """Publish one event outside the pipeline and wait for JetStream's ack. For the rare writers
    that must know: a cluster node handing a user on, a replayed write (brain.api.cluster).

    A duplicate ack confirms the event only if the stream's message it names (a duplicate's ack
    carries the first message's seq) is this event, byte for byte: AnotherWritersEvent if not.
    nats.errors.Error if there is no ack in time, or the message cannot be read."""
    payload = payload_for(user_id, ev)
    ack = await js.publish(subject_for(settings.subject_prefix, user_id, ev.type), payload,
                           headers=headers_for(user_id, ev, settings.stream))
    if ack.duplicate:
        held = await js.get_msg(settings.stream, ack.seq)
        if held.data != payload:
            raise AnotherWritersEvent(user_id, ev.id, ack.seq)


class _Sent(NamedTuple):
    user_id: str
    event_id: int
    deadline: float
    drained: bool


class Publisher:
    """The bus's state; every method but `post`/`stats` runs on the bus's own event loop.

    Publishing is pipelined by hand rather than through nats-py's `publish_async`, whose future,
    semaphore and JSON-parsed PubAck per message cost more than the publish (docs/performance.md): a
    core publish carries a reply subject `{inbox}.{seq}`, one wildcard subscription receives
    every acknowledgement, and `_sent` (ordered by send time) maps seq -> event until then.
    """

    def __init__(
        self,
        *,
        connect: Mapping[str, Any],
        settings: NatsSettings,
        stores: StoreManager,
        data_path: Path,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.connect = connect  # nats.connect() keyword arguments: servers, credentials, TLS
        self.shown_url = redact_url(",".join(connect.get("servers", ())))  # what logs say: no credentials
        self.settings = settings
        self.stores = stores
        self.marker_dir = data_path / "outbox"
        self.prefix = settings.subject_prefix
        self.loop = loop
        # Store reads and writes for drains and late acks block: they run here, never on the loop.
        self.executor = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="eventbus-io")
        self._loop_thread: int | None = None
        self._incoming: deque[tuple[str, list[StoredEvent]]] = deque()
        self._wake_pending = False
        self._wake: asyncio.Event | None = None
        self._wake_timer: asyncio.Handle | None = None
        self._window: asyncio.Event | None = None  # set while fewer than max_in_flight await acks
        self._queue: deque[tuple[str, StoredEvent]] = deque()
        self._dirty: dict[str, int] = {}  # user -> drain from ids above this
        self._busy: dict[str, float] = {}  # user -> when to try a drain again (another worker drains)
        self._busy_timer: asyncio.TimerHandle | None = None
        self._fail_count: defaultdict[str, int] = defaultdict(int)
        self._sent: dict[int, _Sent] = {}
        self._inflight: set[tuple[str, int]] = set()
        self._seq = itertools.count(1)
        self._ack_prefix = ""
        # Acknowledged ids not yet told to their stores (one delete per store per ACK_DELAY).
        self._acks: defaultdict[str, list[int]] = defaultdict(list)
        self._ack_timer: asyncio.TimerHandle | None = None
        self._expiry_timer: asyncio.TimerHandle | None = None
        self.nc: Any = None
        self.js: Any = None
        self.connected = False
        self.state = "connecting"
        self.published = 0
        self.duplicates = 0
        self.failures = 0
        self.drained = 0
        self.last_error: str | None = None
        self._backoff = 0.0
        self._stopping = False
        # Told of each event JetStream acknowledged (user id, event id), on this loop: the
        # doorbell's watches (cluster mode answers a write once its events are on the stream).
        self.on_ack: Callable[[str, int], None] | None = None
        # Cluster mode: whether this node may publish a user's events (False: placed on another
        # node, None: not known yet). A node back from the dead must not publish rows of users
        # another node took over: their ids are that node's now.
        self.may_publish: Callable[[str], bool | None] | None = None
        # Whether _publish may build frames itself (see there): the prefix and stream name are
        # plain NATS tokens, and this nats-py has the internals publish() uses.
        self._raw_frames = bool(_SAFE_TOKENS.fullmatch(self.prefix) and _SAFE_TOKENS.fullmatch(settings.stream))

    # -- any thread ---------------------------------------------------------------------------

    def post(self, user_id: str, events: list[StoredEvent]) -> None:
        """Hand over committed events (called on store threads, or on the bus's loop)."""
        self._incoming.append((user_id, events))
        if threading.get_ident() == self._loop_thread:
            self._on_wake()
            return
        # One loop wake-up per burst, not per event, shared with the replies to the requests
        # that wrote these events (brain.actors.bridge). A closed loop drops it: the rows wait
        # in the outbox for the next bus.
        if not self._wake_pending:
            self._wake_pending = True
            bridge.call_soon_threadsafe(self.loop, self._on_wake)

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
            "in_flight": len(self._sent),
            "dirty_users": len(self._dirty),
            "last_error": self.last_error,
        }

    async def purge_user(self, user_id: str) -> None:
        """Purge the user's subjects from the stream (when connected)."""
        if not self.connected or self.js is None:
            return
        try:
            await self.js.purge_stream(self.settings.stream, subject=f"{self.prefix}.{user_id}.>")
        except Exception as exc:  # noqa: BLE001 - e.g. the stream does not exist yet
            log.warning("purging the events of deleted user %s from %s failed: %r", user_id, self.settings.stream, exc)

    def oldest_unacked_seconds(self) -> float:
        """Seconds the oldest in-flight publish has waited (approximately: read off the bus loop)."""
        # In-flight publishes are kept in send order, each with its ack deadline; this runs on
        # another thread, so the read may race a change: then report nothing pending.
        try:
            first = next(iter(self._sent.values()))
        except (StopIteration, RuntimeError):
            return 0.0
        return max(0.0, time.monotonic() - (first.deadline - self.settings.publish_timeout_seconds))

    # -- the bus loop -----------------------------------------------------------------------------

    def _on_wake(self) -> None:
        self._wake_pending = False
        if self._wake is not None and self._wake_timer is None:
            # Publish on the next turn of the loop, not before the HTTP response that committed
            # the event: a store settles its requests before it tells the bus, so the handlers
            # they resume are queued first and answer first; whatever else was committed by
            # then goes out in the same batch. A delay here would only move the publish and its
            # ack into the middle of the client's next request (docs/performance.md).
            self._wake_timer = self.loop.call_soon(self._wake_now)

    def _wake_now(self) -> None:
        self._wake_timer = None
        if self._wake is not None:
            self._wake.set()

    async def run(self) -> None:
        """Connect, then publish whatever arrives or waits in outboxes, until stopped."""
        self._loop_thread = threading.get_ident()
        self._wake = wake = asyncio.Event()
        self._window = asyncio.Event()
        self._window.set()
        for user_id in await self.loop.run_in_executor(self.executor, self._scan_markers):
            self._dirty.setdefault(user_id, 0)
        if self._dirty:
            log.info("event bus: %d user(s) may have unpublished events; draining", len(self._dirty))
        self._expire()
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
                while self._queue and self.connected:
                    user_id, ev = self._queue.popleft()
                    await self._send(user_id, ev, drained=False)
            elif self._dirty:
                if not await self._drain_one():
                    return  # every dirty user is being drained elsewhere: woken when one may be tried
            else:
                return
            if self._backoff:
                return

    def _take_incoming(self) -> None:
        incoming = self._incoming
        while incoming:
            user_id, events = incoming.popleft()
            # No events: "this user's outbox holds rows" (a store opened with some, e.g. repaired).
            # A user this node may not publish for (cluster mode) is left to _drain_one to decide.
            if (not events or not self.connected or user_id in self._dirty or len(self._queue) >= MAX_QUEUE
                    or (self.may_publish is not None and self.may_publish(user_id) is not True)):
                # The database has them: drain later, in order, instead of holding them here.
                self._dirty.setdefault(user_id, 0)
                continue
            for ev in events:
                self._queue.append((user_id, ev))

    async def _drain_one(self) -> bool:
        """Drain one batch of a dirty user's outbox; False when every dirty user must wait."""
        now = time.monotonic()
        found = next(((u, a) for u, a in self._dirty.items() if self._busy.get(u, 0.0) <= now), None)
        if found is None:
            self._wake_when_drainable()
            return False
        user_id, after = found
        self._busy.pop(user_id, None)
        allowed = True if self.may_publish is None else self.may_publish(user_id)
        if allowed is None:  # where the user lives is not known yet: ask again shortly
            self._busy[user_id] = now + BUSY_RETRY_S
            self._requeue(user_id, after)
            return True
        if not allowed:
            # Placed on another node, which took it over (brain.api.cluster): these rows were never
            # acknowledged to a client, and their ids are the new owner's now. They stay in the
            # store, which the cluster node moves aside.
            self._dirty.pop(user_id, None)
            log.warning("event bus: not publishing the outbox of %s: the user is placed on another node", user_id)
            return True
        if after == 0:
            # Rows published but not yet deleted would be read (and sent) again otherwise.
            self._flush_acks(only=user_id)
        failures = self._fail_count[user_id]
        try:
            rows = await self.loop.run_in_executor(
                self.executor, self.stores.outbox_batch_blocking, user_id, after, DRAIN_BATCH, 10.0
            )
        except OutboxBusy:
            # Another worker drains it (and publishes what it finds): look again later.
            self._busy[user_id] = time.monotonic() + BUSY_RETRY_S
            self._requeue(user_id, 0)
            return True
        except Exception as exc:  # noqa: BLE001 - retried later; never kills the bus
            self._note_error(f"reading the outbox of {user_id}: {exc!r}")
            self._requeue(user_id, after)
            self._backoff = max(self._backoff, 1.0)
            return True
        if rows is None:  # no store: nothing can be pending (or we are shutting down)
            self._dirty.pop(user_id, None)
            if not self.stores.closing:
                (self.marker_dir / user_id).unlink(missing_ok=True)
            return True
        for row in rows:
            if not self.connected:
                break
            await self._send(user_id, row, drained=True)
        if self._fail_count[user_id] != failures or not self.connected:
            return True  # a send failed meanwhile: the user drains again from the start
        if len(rows) < DRAIN_BATCH:
            self._dirty.pop(user_id, None)
        else:
            self._requeue(user_id, rows[-1].id)
        return True

    def _wake_when_drainable(self) -> None:
        if self._busy_timer is not None or not self._busy:
            return
        delay = max(0.0, min(self._busy.values()) - time.monotonic())

        def wake() -> None:
            self._busy_timer = None
            if self._wake is not None:
                self._wake.set()

        self._busy_timer = self.loop.call_later(delay, wake)

    def _requeue(self, user_id: str, after: int) -> None:
        # Move to the end: one busy user must not starve the others' drains.
        self._dirty.pop(user_id, None)
        self._dirty[user_id] = after

    async def _send(self, user_id: str, ev: StoredEvent, *, drained: bool) -> None:
        """Publish one event with a reply subject; its ack (or timeout) settles it later."""
        key = (user_id, ev.id)
        if key in self._inflight:
            return
        window = self._window
        assert window is not None
        while len(self._sent) >= self.settings.max_in_flight:
            window.clear()
            await window.wait()
            if not self.connected:
                self._fail(user_id)
                return
        seq = next(self._seq)
        self._sent[seq] = _Sent(user_id, ev.id, time.monotonic() + self.settings.publish_timeout_seconds, drained)
        self._inflight.add(key)
        try:
            await self._publish(user_id, ev, f"{self._ack_prefix}.{seq}")
        except Exception as exc:  # noqa: BLE001 - connection lost, buffer full
            self._settle(seq)
            self._note_error(f"publish: {exc!r}")
            self._fail(user_id)

    async def _publish(self, user_id: str, ev: StoredEvent, reply: str) -> None:
        """Publish one event (subject, headers, payload as documented) with a reply subject."""
        nc = self.nc
        subject = subject_for(self.prefix, user_id, ev.type)
        payload = payload_for(user_id, ev)
        if not self._raw_frames or not nc.is_connected or nc.is_draining_pubs or len(payload) > nc.max_payload:
            await nc.publish(subject, payload, reply=reply, headers=headers_for(user_id, ev, self.settings.stream))
            return
        # The same HPUB frame nats-py's publish() would send, built here: publish() checks and
        # re-encodes every header (a str.translate per value), which made it the largest single
        # cost of an event on the loop. Every part is already known to be safe: user ids and
        # types match strict patterns, prefix and stream were checked at start (_raw_frames).
        key = "" if ev.key is None else f"Brain-Event-Key: {key_header(ev.key)}\r\n"
        header = (
            f"NATS/1.0\r\nNats-Msg-Id: {user_id}:{ev.id}\r\nNats-Expected-Stream: {self.settings.stream}\r\n"
            f"Brain-User-Id: {user_id}\r\nBrain-Event-Id: {ev.id}\r\nBrain-Event-Type: {ev.type}\r\n{key}\r\n"
        ).encode()
        nc.stats["out_msgs"] += 1
        nc.stats["out_bytes"] += len(payload)
        await nc._send_command(hpub_cmd(subject, reply, header, payload))  # noqa: SLF001
        if nc._flush_queue is not None and nc._flush_queue.empty():  # noqa: SLF001 - as publish() does
            await nc._flush_pending()  # noqa: SLF001

    async def _on_ack(self, msg: Any) -> None:
        """One JetStream acknowledgement (or error, or no-responders status) for a publish."""
        try:
            seq = int(msg.subject.rpartition(".")[2])
        except ValueError:
            return
        sent = self._settle(seq)
        if sent is None:
            return  # already timed out (and marked for a re-send)
        data = msg.data
        status = msg.headers.get("Status") if msg.headers else None
        if status or b'"error"' in data:
            self._note_error(f"publish rejected: {status or data[:200]!r}")
            self._fail(sent.user_id)
            if status == "503" and self.connected:
                asyncio.ensure_future(self._ensure_stream())  # no stream answered: recreate it
            return
        # Cheaper than json.loads + PubAck for every message: the ack is {"stream":..,"seq":..}, and
        # a deduplicated one adds `"duplicate": true` (nats-server writes it with a space).
        duplicate = b'"duplicate"' in data
        if duplicate:
            self.duplicates += 1
        else:
            self.published += 1
        if sent.drained:
            self.drained += 1
        self._backoff = 0.0
        self._acks[sent.user_id].append(sent.event_id)
        # An event published for the first time cannot be a duplicate, unless another process
        # published this user's id before (a cluster node that took the user over while this
        # one was thought dead): the stream holds that one, not ours, so ours is not confirmed.
        if self.on_ack is not None and (sent.drained or not duplicate):
            self.on_ack(sent.user_id, sent.event_id)
        elif duplicate:
            log.warning("event bus: event %s of %s was already on the stream from another writer",
                        sent.event_id, sent.user_id)
        if self._ack_timer is None:
            self._ack_timer = self.loop.call_later(ACK_DELAY, self._flush_acks)

    def _settle(self, seq: int) -> _Sent | None:
        sent = self._sent.pop(seq, None)
        if sent is not None:
            self._inflight.discard((sent.user_id, sent.event_id))
            window = self._window
            if window is not None and not window.is_set() and len(self._sent) < self.settings.max_in_flight:
                window.set()
        return sent

    def _fail(self, user_id: str) -> None:
        """A publish of this user failed: drain their outbox from the start (after a pause)."""
        self.failures += 1
        self._fail_count[user_id] += 1
        self._dirty[user_id] = 0
        self._backoff = min(max(self._backoff * 2, 0.2), 5.0)
        if self._wake is not None:
            self._wake.set()

    def _expire(self) -> None:
        """Fail publishes whose ack did not come within the timeout (checked periodically)."""
        now = time.monotonic()
        expired = []
        for seq, sent in self._sent.items():  # in send order: stop at the first still in time
            if sent.deadline > now:
                break
            expired.append(seq)
        for seq in expired:
            sent = self._settle(seq)
            if sent is not None:
                self._note_error("publish: no acknowledgement within the timeout")
                self._fail(sent.user_id)
        if not self._stopping:
            interval = min(1.0, self.settings.publish_timeout_seconds / 2)
            self._expiry_timer = self.loop.call_later(interval, self._expire)

    def _fail_all_sent(self) -> None:
        for seq in list(self._sent):
            sent = self._settle(seq)
            if sent is not None:
                self._fail(sent.user_id)

    def _flush_acks(self, only: str | None = None) -> None:
        """Tell the stores which outbox rows to delete (all users, or one before its drain)."""
        if only is None:
            if self._ack_timer is not None:
                self._ack_timer.cancel()
                self._ack_timer = None
            pending, self._acks = self._acks, defaultdict(list)
        else:
            ids = self._acks.pop(only, None)
            pending = {only: ids} if ids else {}
        for user_id, ids in pending.items():
            self._ack(user_id, ids)

    def _ack(self, user_id: str, ids: list[int]) -> None:
        if self.stores.ack(user_id, ids):
            return
        # The store closed meanwhile: open it from a worker thread, never on this loop.
        fut = self.loop.run_in_executor(self.executor, self.stores.ack_blocking, user_id, ids, 10.0)
        fut.add_done_callback(_log_failure)

    def _note_error(self, message: str) -> None:
        if message != self.last_error:
            log.warning("event bus: %s", message)
        self.last_error = message

    # -- connection -----------------------------------------------------------------------------------

    async def _connect(self) -> None:
        s = self.settings
        self.nc = await jetstream.connect(
            self.connect,
            stopping=lambda: self._stopping,
            note=self._note_error,
            retry_seconds=s.reconnect_wait_seconds,
            name="brain-eventbus",
            allow_reconnect=True,
            # nats-py retries the first connection too, forever.
            max_reconnect_attempts=-1,
            reconnect_time_wait=s.reconnect_wait_seconds,
            connect_timeout=2,
            ping_interval=10,
            max_outstanding_pings=2,
            error_cb=self._on_error,
            disconnected_cb=self._on_disconnected,
            reconnected_cb=self._on_reconnected,
            closed_cb=self._on_closed,
        )
        if self.nc is None:
            return  # stopped before NATS was reached
        self.js = self.nc.jetstream(timeout=s.publish_timeout_seconds)
        nc = self.nc
        if not all(hasattr(nc, name) for name in ("_send_command", "_flush_pending", "_flush_queue", "stats")):
            self._raw_frames = False  # another nats-py: publish() it is
        # One subscription for every ack; nats-py renews it after a reconnect.
        self._ack_prefix = self.nc.new_inbox()
        await self.nc.subscribe(self._ack_prefix + ".*", cb=self._on_ack)
        await self._on_connected()

    async def _on_connected(self) -> None:
        if not await self._ensure_stream():
            return
        self.connected = True
        self.state = "connected"
        self._backoff = 0.0
        log.info("event bus: connected to %s (stream %s)", self.shown_url, self.settings.stream)
        if self._wake is not None:
            self._wake.set()

    async def _ensure_stream(self) -> bool:
        """Create the stream if it is missing; retried until it works or the link drops.

        A request sent while the stream has no leader (a server lost, an election under way) is
        never answered: it ends only at its timeout (`publish_timeout_seconds`). So a new try
        starts each STREAM_TRY_S while earlier ones still wait (at most STREAM_TRIES at once) and
        the first answer counts: the bus is back within about a second of the stream's election,
        not up to a whole timeout (plus the back-off) later; a slow but answering server still gets
        the whole timeout. An error answered at once (JetStream off, a bad config) backs off."""
        s = self.settings
        config = StreamConfig(
            name=s.stream,
            subjects=[f"{s.subject_prefix}.>"],
            storage=StorageType.FILE,
            max_age=s.max_age_days * 86400 if s.max_age_days > 0 else None,
            max_bytes=s.max_bytes,
            duplicate_window=s.duplicate_window_seconds,
            num_replicas=s.replicas,
        )
        delay = 0.2
        tries: set[asyncio.Future[bool]] = set()
        try:
            while not self._stopping and self.nc is not None and self.nc.is_connected:
                if len(tries) < STREAM_TRIES:
                    tries.add(asyncio.ensure_future(jetstream.ensure_stream(self.js, config)))
                done, tries = await asyncio.wait(tries, timeout=STREAM_TRY_S, return_when=asyncio.FIRST_COMPLETED)
                failed = False
                for task in done:
                    exc = task.exception()
                    if exc is None:
                        if task.result():
                            log.info("event bus: created stream %s (%s.>)", s.stream, s.subject_prefix)
                        return True
                    self._note_error(f"stream {s.stream}: {exc!r}")  # JetStream not ready yet, timeouts
                    failed = failed or not isinstance(exc, (nats.errors.TimeoutError, asyncio.TimeoutError))
                if failed:
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 5.0)
            return False
        finally:
            for task in tries:
                task.cancel()

    async def _on_error(self, exc: Exception) -> None:
        self.last_error = f"nats: {redact_text(repr(exc))}"

    async def _on_disconnected(self) -> None:
        if self.connected:
            log.warning("event bus: disconnected from %s; events wait in the outboxes", self.shown_url)
        self.connected = False
        self.state = "disconnected"
        # Acks of what was in flight may never come: re-send it from the outboxes later.
        self._fail_all_sent()

    async def _on_reconnected(self) -> None:
        # Not awaited here: nats-py runs this callback inside its reconnect logic.
        asyncio.ensure_future(self._on_connected())

    async def _on_closed(self) -> None:
        self.connected = False
        self.state = "closed"

    async def close(self) -> None:
        """Stop publishing and close the connection (runs on the bus loop)."""
        for timer in (self._ack_timer, self._expiry_timer, self._wake_timer, self._busy_timer):
            if timer is not None:
                timer.cancel()
        if not self.stores.closing:
            self._flush_acks()  # the stores are still open (the bus alone is restarting)
        self._stopping = True
        self.connected = False
        self.state = "stopped"
        await jetstream.close_quietly(self.nc)

def _log_failure(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled() and fut.exception() is not None:
        log.warning("event bus: ack failed: %r (the event is republished, deduplicated)", fut.exception())

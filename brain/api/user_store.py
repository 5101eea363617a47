"""UserStore: the actor that owns one user's SQLite database, `data/users/{user_id}/events.db`.

It is a virtual actor (see `brain.api.store_manager.StoreManager`): started on first use, it keeps its
connection open while it lives and stops itself after `api.store_idle_seconds` without use.
Its own thread uses the connection, and another only while holding `StoreInbox.db_lock` with
the store between messages: the event loop, to take a kept page (`StoreInbox.cached_page`) or
to commit a lone append itself when no other request waits for a store (`append_now`).

Every commit takes the next numbers of the user's commit sequence (`NEXT_SEQ`): a stored event
its id, a deleted event the `seq` of its tombstone (a row of `tombstones`, published as an
`event.deleted` event). The sequence never goes back, not even when the newest event is
deleted, so readers of the commit order (the changes feed, the event stream, webhooks, the
outbox) can resume from a number.

Every event is committed together with a row in the `outbox` table; after the commit the new
events are handed to the EventBus (`Outbox.notify`, non-blocking), which publishes them to
JetStream and then hands back the acknowledged ids through the store's `acks` deque. The store
deletes those rows inside its next grouped append transaction, or at the latest
ACK_FLUSH_SECONDS after an append (no message, no extra commit per acknowledgement on the hot
path). A lone event is one INSERT (a trigger adds the outbox row) and its search index row,
in one transaction. Rows still present after a crash are found again through the outbox marker
(`data/outbox/{user_id}`), which exists from a store's start until it stops with an empty
outbox.

Several worker processes (brain.workers) may each have a store of one user open: they share
its database (SQLite's locking serialises their writes; `busy_timeout` makes a writer wait for
another rather than fail) and its marker, on which each holds a shared record lock while open
(`OutboxMarker`): the last one to close with an empty outbox removes it, never one while another
still has rows in flight. A drain (reading back unpublished rows, brain.api.publisher) takes the
marker's drain lock, so one process at a time drains a user's outbox (`OutboxBusy` for the
others, which try again later); the kernel drops both locks with a process that dies.

Requests from the event loop do not use pykka asks (a future with its own condition, a
callback, a reply each): they are queued in the store's inbox object (`StoreInbox.submit`),
and only the first request since the store last looked is announced with a tell. The store
takes everything queued at once, commits all the appends among it in one transaction (one
savepoint each) and settles the loop's futures through `brain.actors.bridge`, one loop
wake-up per burst. A busy user's concurrent writes thereby share one commit, and a burst of
requests costs one thread wake-up per store, not per request. But a lone request pays two
thread wake-ups (to the store and back), the larger part of its time on an otherwise idle
server: while no other request waits for a store, the loop commits a lone event itself, as the
thread would, never waiting on a lock or a checkpoint (`UserStore.append_now`). Threads (mail
sync, the bus) still ask, and wait.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import json
import logging
import os
import queue
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import pykka
from pykka._envelope import Envelope

from brain.actors.base import BrainActor, Link
from brain.actors.bridge import settle_threadsafe
from brain.api.events import TOMBSTONE_TYPE, NewEvent, StoredEvent, now_timestamp
from brain.api.pages import (
    RENDERED, Page, PageCache, backfill_step, ensure_rendered, next_descriptor, render_sql, stored_render_sql,
)
from brain.api.quarantine import FileMemory, move_aside, pending
from brain.api.search import (
    TAIL_ROWS, WRITTEN_ROWS, IndexOptions, IndexUnavailable, SearchIndex, SearchRequest, tombstone_data,
)
from brain.api.search import SCHEMA as SEARCH_SCHEMA
from brain.api.settings import SearchSettings
from brain.errors import (
    InsufficientStorage, ReadOnlyStorage, ServiceUnavailable, StorageFault, StoreCorrupt, StoreQuarantined, Unprocessable,
)
from brain.event_types import TypeFilter
from brain.ids import is_valid_user_id
from brain.storage import StorageFaults, classify, fault, quick_check, read_only_file_system

log = logging.getLogger("brain.api.user_store")

SCHEMA_VERSION = 3
SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    type TEXT NOT NULL,
    data TEXT NOT NULL,
    created_at TIMESTAMP NOT NULL,
    key TEXT UNIQUE,
    -- The event's public JSON, written with it (brain.api.pages; older stores get it on open).
    rendered TEXT
);
CREATE INDEX IF NOT EXISTS events_created_at ON events (created_at);
CREATE INDEX IF NOT EXISTS events_type_created_at ON events (type, created_at);
CREATE TABLE IF NOT EXISTS outbox (event_id INTEGER PRIMARY KEY);
-- Version 2: the outbox row is written by the INSERT itself, so a lone event is one statement
-- (one implicit transaction) and can never be stored without its outbox row.
CREATE TRIGGER IF NOT EXISTS events_outbox AFTER INSERT ON events
BEGIN
    INSERT INTO outbox (event_id) VALUES (new.id);
END;
-- Version 3: deletions. A tombstone takes a sequence number of its own (see the module
-- docstring), and its outbox row (outbox.event_id holds any sequence number) publishes it.
CREATE TABLE IF NOT EXISTS tombstones (
    seq INTEGER PRIMARY KEY,
    event_id INTEGER NOT NULL,
    data TEXT NOT NULL,
    deleted_at TIMESTAMP NOT NULL
);
CREATE TRIGGER IF NOT EXISTS tombstones_outbox AFTER INSERT ON tombstones
BEGIN
    INSERT INTO outbox (event_id) VALUES (new.seq);
END;
""" + SEARCH_SCHEMA
# The next number of the commit sequence (see the module docstring).
NEXT_SEQ = (
    "(SELECT max(ifnull((SELECT max(id) FROM events), 0), ifnull((SELECT max(seq) FROM tombstones), 0)) + 1)"
)
# An event with its public JSON (brain.api.pages; none for long data) in one statement, its
# number drawn from the commit sequence and named here so that the JSON can carry it.
_INSERT_EVENT = (
    "INSERT INTO events (id, type, data, created_at, key, rendered) SELECT next.seq, ?1, ?2, ?3, ?4, "
    + stored_render_sql("next.seq", "?1", "?2", "?3")
    + f" FROM (SELECT {NEXT_SEQ} AS seq) AS next"
)
_EVENT_COLUMNS = "id, type, data, created_at, key"
# The outbox rows of acknowledged events, given as a JSON array of their ids.
_DELETE_ACKED = "DELETE FROM outbox WHERE event_id IN (SELECT value FROM json_each(?))"
# Pages in the database (WAL included) and pages free among them, in one statement.
_SIZE = "SELECT * FROM pragma_page_count(), pragma_freelist_count()"
# Writes refused for want of space may be tried again once the user has deleted events.
FULL_RETRY_SECONDS = 600.0


class StorePathError(ValueError):
    """A user id that must not become a path."""


def users_dir(data_path: Path) -> Path:
    """`data/users`, resolved."""
    return (data_path / "users").resolve()


def store_path(data_path: Path, user_id: str) -> Path:
    """`data/users/{user_id}/events.db`; refuses any id or resolved path outside `data/users/`."""
    if not is_valid_user_id(user_id):
        raise StorePathError(f"not a valid user id: {user_id[:80]!r}" if isinstance(user_id, str) else "user id must be a string")
    base = users_dir(data_path)
    path = (base / user_id / "events.db").resolve()
    # The pattern already excludes separators and dots-only names; this also catches a
    # symlinked user directory pointing elsewhere.
    if path.parent.parent != base or path.parent.name != user_id:
        raise StorePathError(f"store path for {user_id!r} escapes {base}")
    return path


def marker_path(data_path: Path, user_id: str) -> Path:
    """The outbox marker of a user: present while their outbox may hold unpublished rows."""
    return data_path / "outbox" / user_id


class OutboxBusy(Exception):
    """Another process is draining this user's outbox: try again later."""


class OutboxMarker:
    """A user's outbox marker, held open (and record-locked) while this process has the store open.

    Byte 0: a shared lock per process with the store open (the marker is removed only by a
    process that can make it exclusive: nobody else has the store open). Byte 1: the lock of the
    one process draining the outbox. POSIX record locks belong to the process and go when any of
    its descriptors of the file closes, so the store keeps one descriptor and takes both on it.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = -1
        self.draining = False

    def open(self) -> None:
        """Create (or find) the marker and hold it shared."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.lockf(fd, fcntl.LOCK_SH, 1, 0)
                # A process that was removing it held it exclusively until it had: then this
                # descriptor is of the removed file, and a new one must be made.
                if os.fstat(fd).st_ino == os.stat(self.path).st_ino:
                    self.fd = fd
                    return
            except FileNotFoundError:
                pass
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)

    def alone(self) -> bool:
        """Whether no other process has the store open (nobody else holds the marker shared)."""
        if not _lock_exclusive(self.fd, 0):
            return False
        fcntl.lockf(self.fd, fcntl.LOCK_SH, 1, 0)  # back to sharing it
        return True

    def try_drain(self) -> bool:
        """Take the drain lock (held until `drained`); False if another process holds it."""
        if not self.draining:
            self.draining = _lock_exclusive(self.fd, 1)
        return self.draining

    def drained(self) -> None:
        """The drain is over: let another process drain."""
        if self.draining:
            fcntl.lockf(self.fd, fcntl.LOCK_UN, 1, 1)
            self.draining = False

    def close(self, *, empty: bool) -> None:
        """Release the marker; remove it if the outbox is empty and no other process has the store open."""
        fd, self.fd = self.fd, -1
        if fd < 0:
            return
        try:
            if empty and _lock_exclusive(fd, 0):
                self.path.unlink(missing_ok=True)
        finally:
            os.close(fd)
            self.draining = False


def _lock_exclusive(fd: int, byte: int) -> bool:
    """Take the record lock of one byte of `fd` exclusively; False if another process holds it."""
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, byte)
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EAGAIN):
            return False
        raise
    return True


class Outbox(Protocol):
    """Where a store hands committed events for publishing (the EventBus's doorbell)."""

    def notify(self, user_id: str, events: list[StoredEvent]) -> None:
        """Queue committed events for publishing (none: the user's outbox holds rows); never blocks or raises."""


class AppendRequest(NamedTuple):
    """One caller's events: committed all together or not at all."""

    events: Sequence[NewEvent]
    # HTTP's Idempotency-Key semantics: a replay must carry the same events as the original.
    match: bool = False


class AppendMany(NamedTuple):
    """Several callers' requests, grouped into one transaction (one savepoint each)."""

    requests: Sequence[AppendRequest]


class Query(NamedTuple):
    """Newest first, optionally by type and time range, strictly older than `before`."""

    types: TypeFilter | None
    since: str | None
    until: str | None
    before: tuple[str, int] | None
    limit: int


class ReadPage(NamedTuple):
    """The page a Query selects (`limit` events, not one more), as bytes (brain.api.pages)."""

    query: Query


class GetEvent(NamedTuple):
    """One event by id (None if there is none)."""

    id: int


class Changes(NamedTuple):
    """Events and tombstones committed after `after`, in commit order (`SEQUENCE`), optionally by type.

    A tombstone passes a type filter as its own type, `event.deleted`.
    """


    after: int
    types: TypeFilter | None
    limit: int


class DeleteEvents(NamedTuple):
    """Delete events by id, or up to `limit` matching the filters among ids up to `up_to`."""

    ids: tuple[int, ...] | None = None
    types: TypeFilter | None = None
    since: str | None = None
    until: str | None = None
    up_to: int | None = None
    limit: int = 500


class Deleted(NamedTuple):
    """What a DeleteEvents removed, and the highest id it considered (for the next chunk)."""

    ids: list[int]
    up_to: int


class StoreStats(NamedTuple):
    """Counts by type, bytes, index state and sequence of the store."""


class MatchField(NamedTuple):
    """Events of these types whose data's top-level `field` equals `value`, in commit order
    (at most `limit`): e.g. the mail events of one thread."""

    types: TypeFilter | None
    field: str
    value: str
    limit: int


# The column that orders a user's events in the commit sequence (see brain.api.events.commit_seq,
# which reads it back; tombstones take their numbers from the same sequence: NEXT_SEQ).
SEQUENCE = "id"
# Thread asks only: the last commit's sequence (0: none yet).
HEAD = "head"
# Requests the loop may submit besides appends (each answered on its own, between commits).
Request = Query | ReadPage | GetEvent | Changes | DeleteEvents | StoreStats | SearchRequest | MatchField


# The requests that never change the events (searches write only to the index): a drain of
# appends and these can carry a kept page past it (PageCache.keep_through); any other drops it.
_LEAVES_EVENTS = (Query, ReadPage, GetEvent, Changes, StoreStats, SearchRequest, MatchField)


class OutboxBatch(NamedTuple):
    """Up to `limit` unpublished events with ids above `after`, oldest first."""

    after: int
    limit: int


class Ack(NamedTuple):
    """These events are in JetStream: drop their outbox rows now (the slow path)."""

    ids: Sequence[int]


_IDLE_CHECK = "idle-check"
_RENDER_BACKFILL = "render-backfill"
_FLUSH_ACKS = "flush-acks"
_BACKFILL = "backfill"
_MERGE = "merge-index"
_INDEX_TAIL = "index-tail"
_INDEX_TAIL_DUE = "index-tail-due"  # the same, from the timer a write arms (`_published`)
_CHECKPOINT = "checkpoint"
# How long a store waits for a free backfill slot, and how long it must be idle before it merges.
BACKFILL_RETRY_SECONDS = 0.5
MERGE_IDLE_SECONDS = 1.0
_DRAIN = "drain-submitted"
_DRAIN_ENVELOPE = Envelope(_DRAIN)
_OPEN = "open"
_OPEN_ENVELOPE = Envelope(_OPEN)
# The store's own work, which can write as much as the events it indexes: a look at the size
# follows each (`_note_checkpoint_growth`). Not _DRAIN: that is the requests' appends.
_OWN_WORK = frozenset({_FLUSH_ACKS, _BACKFILL, _MERGE, _INDEX_TAIL, _INDEX_TAIL_DUE, _RENDER_BACKFILL})
# How long a write waits for another worker's write lock on the store's thread (SQLite's
# busy_timeout); an append the event loop commits itself (`append_now`) does not wait.
BUSY_TIMEOUT_MS = 5000
# Dirty pages a transaction keeps in memory before SQLite writes them to the WAL before its
# COMMIT (PRAGMA cache_spill). At SQLite's default (the 2 MB page cache) a page of 100 mail
# events (~4.5 MB then, each event's data stored twice; ~2.3 MB since long data keeps no rendered
# copy, brain.api.pages) was spilled page by
# page as it was inserted: in-process, insert + commit 165-178 -> 132-141 us of CPU an event on
# the store's thread (docs/performance.md). The memory is held only while the transaction runs:
# at its end SQLite frees the clean pages beyond the cache's own size.
SPILL_BYTES = 16 << 20
# A checkpoint gives way to a waiting append (`_checkpoint`) until the WAL holds this many times
# SQLite's automatic checkpoint's frames (4 MB at its default); then it runs first.
CHECKPOINT_DEFER = 4
# Acknowledged outbox rows are deleted at most this long after the append that made them.
ACK_FLUSH_SECONDS = 1.0
# A store looks at its file's size (for the disk guard and the quota) after a write once this
# many bytes of events were committed since it last looked, or this long after it last did
# (the ack flush, ACK_FLUSH_SECONDS after an append, makes sure it does): each look is a few
# statements and a stat, every one of which gives up the GIL (docs/performance.md).
SIZE_LOOK_BYTES = 16 << 10
SIZE_LOOK_SECONDS = 0.25


class StoreClosed(Exception):
    """The store stopped before it took a submitted request: submit again to a new store."""


class StoreInbox(queue.SimpleQueue):  # type: ignore[type-arg]
    """A UserStore's pykka inbox, plus the requests the event loop submitted to it.

    `ref.actor_inbox` is pykka's public handle on an actor's inbox, so whoever holds a store's
    ref reaches its request queue without another lookup.
    """

    __slots__ = (
        "_lock", "_requests", "_asked_appends", "_announced", "_closed", "_refusal", "db_lock", "_db", "pages",
        "last_read", "store",
    )

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._requests: list[tuple[Any, asyncio.Future[Any]]] = []
        self._asked_appends = 0  # AppendMany asks (from threads: mail sync) put and not taken yet
        self._announced = False
        self._closed = False
        # Why the store could not open (a storage fault): the answer to every later request.
        self._refusal: Exception | None = None
        # Held by the store's thread while it handles a message, by the event loop while it
        # looks for a kept page (`cached_page`): whoever holds it alone uses the connection.
        self.db_lock = threading.Lock()
        self._db: sqlite3.Connection | None = None  # the store's open connection, between messages
        self.pages = PageCache()
        self.last_read = 0.0  # time.monotonic() of the last page the loop took from `pages`
        self.store: UserStore | None = None  # set by the store as it starts (`append_now`)

    def submit(self, message: AppendRequest | Request, fut: asyncio.Future[Any]) -> bool:
        """Queue a request (any thread); True if the store must now be told to look.

        Raises StoreClosed if the store has stopped taking requests (or why it could not open).
        Once this returns, `fut` is always settled: with the answer, or with StoreClosed if the
        store stops first.
        """
        with self._lock:
            if self._closed:
                raise self._refusal or StoreClosed()
            self._requests.append((message, fut))
            if self._announced:
                return False
            self._announced = True
            return True

    def publish(self, db: sqlite3.Connection | None, near: int | None = None) -> None:
        """The store's connection as it leaves it between messages (its thread, holding `db_lock`);
        `near`: the descriptor free just before it opened (brain.api.pages.next_descriptor)."""
        if db is not self._db:
            self._db = db
            self.pages.close()
            self.pages = PageCache(db, near)  # another connection: its versions are not comparable

    def cached_page(self, message: ReadPage) -> Page | None:
        """The page, if the store is between messages and keeps it from an unchanged database
        (the event loop's thread); None: ask the store."""
        if not self.db_lock.acquire(blocking=False):
            return None  # it is busy: the request waits its turn like any other
        try:
            db = self._db
            if db is None or db.in_transaction:
                return None
            try:
                page = self.pages.get(message.query)
            except sqlite3.Error:
                return None  # the store meets it too as it reads, and deals with it
            if page is not None:
                self.last_read = time.monotonic()
            return page
        finally:
            self.db_lock.release()

    def append_now(self, request: AppendRequest) -> list[tuple[StoredEvent, bool]] | None:
        """Commit a lone append on the calling thread (the event loop's) if the store is idle:
        between messages, with nothing submitted or queued before it. None: not done, nothing
        written; submit it (see `UserStore.append_now`)."""
        store = self.store
        if store is None or not self.db_lock.acquire(blocking=False):
            return None
        try:
            with self._lock:
                if self._closed or self._requests or not self.empty():
                    return None  # what came before it goes first
            return store.append_now(request)
        finally:
            self.db_lock.release()

    def holds_appends(self) -> bool:
        """Whether an append waits among the submitted requests (the store's thread)."""
        with self._lock:
            return any(isinstance(message, AppendRequest) for message, _ in self._requests)

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        """pykka's way in (`tell`, `ask`): counts the appends asked by threads (`appends_wait`)."""
        if isinstance(getattr(item, "message", None), AppendMany):
            with self._lock:
                self._asked_appends += 1
        super().put(item, block, timeout)

    def took_asked_append(self) -> None:
        """The store's thread took an AppendMany from the inbox (its `on_receive`)."""
        with self._lock:
            self._asked_appends -= 1

    def appends_wait(self) -> bool:
        """Whether an append waits for the store's thread: submitted by the event loop, or asked
        by a thread (mail sync's pages). The store's own background work gives way to it."""
        return self._asked_appends > 0 or self.holds_appends()

    def take(self) -> list[tuple[Any, asyncio.Future[Any]]]:
        """Everything submitted so far (the store's thread)."""
        with self._lock:
            requests, self._requests = self._requests, []
            self._announced = False
        return requests

    def close(self, refusal: Exception | None = None) -> list[tuple[Any, asyncio.Future[Any]]]:
        """Refuse further requests (with `refusal`, or StoreClosed); the ones still queued (the store's thread)."""
        with self._lock:
            self._closed = True
            if refusal is not None:
                self._refusal = refusal
            requests, self._requests = self._requests, []
        return requests


# The store's own messages whose writes touch the outbox or the search index, never the events.
_OUTSIDE_EVENTS = frozenset({_FLUSH_ACKS, _INDEX_TAIL, _INDEX_TAIL_DUE, _MERGE})


def _appends_at_most(message: Any, inbox: StoreInbox) -> bool:
    """Whether a message changes the events, if at all, only by appending (a request among those
    a drain serves that may change them otherwise drops the kept page itself: `_answer`)."""
    if message is _DRAIN:
        return inbox.holds_appends()
    return isinstance(message, (Ack, OutboxBatch, AppendMany)) or (isinstance(message, str) and message in _OUTSIDE_EVENTS)


def _newest_limit(key: Any) -> int | None:
    """The limit of a page of the newest events without a filter (what appends put on top of), else None."""
    if isinstance(key, Query) and key.types is None and key.since is None and key.until is None and key.before is None:
        return key.limit
    return None


def _schedule_as(batch: bool) -> None:
    """Make this (store) thread SCHED_BATCH (``batch``) or SCHED_OTHER, where Linux offers them.

    Batch while it serves the event loop's requests: the loop wakes a store while it holds the
    GIL. A woken thread that preempts it (as Linux favours fresh wakers) can do nothing but block
    on the GIL, and the loop waits to be scheduled again: two context switches for nothing, per
    request. A batch thread is not favoured on wake-up, so it runs when a CPU is free or the loop
    blocks (docs/performance.md).

    Normal while it stores pages that a thread of its own asked for and waits on (a mail sync's
    `AppendMany`): the waiter lets go of the GIL at once, and the thread a woken store takes the
    CPU from is then mostly a conversion worker (another process, niced:
    brain.mail.conversion) converting the next page. As a batch thread the store waited for the
    worker's time slice to end at every wake-up: in an ingest of 5,000 mail bodies its thread
    ran 2.5 s and waited 1.5 s for a CPU (/proc/<tid>/schedstat), and the sync cannot go faster
    than that thread (docs/mail-model.md).
    """
    try:
        os.sched_setscheduler(0, os.SCHED_BATCH if batch else os.SCHED_OTHER, os.sched_param(0))
    except (AttributeError, OSError):  # not Linux, or refused: a scheduling hint only
        pass


def submit(ref: pykka.ActorRef[Any], message: AppendRequest | Request, fut: asyncio.Future[Any]) -> None:
    """Queue a request for a store (from the event loop) and wake the store if it must look.

    Raises StoreClosed if the store stopped taking requests; otherwise `fut` is settled later,
    with the answer or with StoreClosed (the store stopped before taking it: submit it again).
    """
    inbox: StoreInbox = ref.actor_inbox  # type: ignore[assignment]
    if inbox.submit(message, fut):
        # Straight into the inbox: what ref.tell does, minus its liveness check and a new
        # envelope. A store that has stopped never reads it, harmlessly: as it closed, it
        # answered what it had not taken with StoreClosed, and refuses further submits.
        inbox.put(_DRAIN_ENVELOPE)


class IdempotencyMismatch(Unprocessable):
    """An idempotency key was reused for a different request."""

    code = "IDEMPOTENCY_KEY_REUSED"


class UserStore(BrainActor):
    """Owns one user's events.db: appends (grouped), reads, deletes, search, and the outbox rows."""

    def __init__(
        self,
        *,
        link: Link | None = None,
        user_id: str,
        data_path: Path,
        outbox: Outbox,
        idle_seconds: float,
        mmap_bytes: int = 0,
        index: IndexOptions | None = None,
        max_bytes: int = 0,
        acks: deque[int] | None = None,
        on_exit: Callable[[str, pykka.ActorRef[Any]], None] | None = None,
        faults: StorageFaults | None = None,
        files: FileMemory | None = None,
        verify: bool = False,
        on_quarantine: Callable[[str], None] | None = None,
    ) -> None:
        super().__init__(link=link)
        self.user_id = user_id
        # Without options: indexed, as [search] is by default.
        self.index_options = index or IndexOptions.from_settings(SearchSettings())
        self.index: SearchIndex | None = None
        self.max_bytes = max_bytes
        self.mmap_bytes = mmap_bytes
        self._merge_armed = False
        self._tail_armed = False
        self._tail_told = False  # an _INDEX_TAIL waits in the inbox (`_index_tail_next`)
        self._last_id = 0  # the id of the last event this store committed (`_index_tail`)
        # The connection whose checkpoints the store runs itself (`_checkpoint_later`), the WAL
        # frames past which it does, total_changes when it last looked, and whether one is asked.
        self._checkpoints_of: sqlite3.Connection | None = None
        self._checkpoint_frames = 0
        self._checkpoint_changes = -1
        self._checkpoint_armed = False
        self._render_after_index = False  # rows wait to be rendered once the index is backfilled
        self._batch = True  # its thread's scheduling policy (`_schedule_as`)
        self.last_write = 0.0
        self.path = store_path(data_path, user_id)
        self.marker = OutboxMarker(marker_path(data_path, user_id))
        self.outbox = outbox
        self.idle_seconds = idle_seconds
        # Not `_on_exit`: that name is BrainActor's own exit hook.
        self._exit_callback = on_exit
        # Filled by the EventBus's thread (deque.append is thread-safe), drained here.
        self.acks: deque[int] = deque() if acks is None else acks
        self._flush_armed = False
        self.db: sqlite3.Connection | None = None
        self._changes_noted = 0  # db.total_changes when the store last looked at its size
        self._size_looked = 0.0  # time.monotonic() of that look
        self._unlooked = 0  # bytes of events committed since
        self._page_size = 0
        self._used = 0  # bytes of pages in use (the quota's figure) at that look
        self.last_used = time.monotonic()
        # Storage faults are counted there; `files` remembers the file as this store leaves it.
        self.faults = faults
        self.files = files
        # quick_check the database as it opens (brain.api.quarantine says when).
        self.verify = verify
        self._on_quarantine = on_quarantine
        self.quarantined = False
        # Opened for reading only, its file system being read-only (`_open_read_only`).
        self.read_only = False
        self.descriptors_from: int | None = None  # brain.api.pages.next_descriptor() before it opened
        # The SQL of an event's JSON in this store (brain.api.pages; without the column only
        # in an old store opened read-only).
        self.rendered_sql = RENDERED
        # Why it could not open: what every request gets until it has stopped.
        self.refusal: Exception | None = None

    def __str__(self) -> str:
        return f"UserStore {self.user_id}"

    @staticmethod
    def _create_actor_inbox() -> StoreInbox:
        return StoreInbox()

    # -- lifecycle -------------------------------------------------------------------------

    def on_start(self) -> None:
        # Opening (and checking) the database waits for the first message: on_start runs while
        # the stores' supervisor waits for it, and a slow disk or a big quick_check there would
        # hold up every other user's store (OTP: keep init quick, continue after).
        _schedule_as(batch=True)
        self.actor_inbox.store = self  # type: ignore[attr-defined]
        self.actor_inbox.put(_OPEN_ENVELOPE)  # type: ignore[attr-defined]
        self.schedule(self.idle_seconds, _IDLE_CHECK)

    def _open_or_refuse(self) -> None:
        """Open the database; if it cannot be, answer every request with why and stop."""
        try:
            try:
                self._open()
            except Exception as exc:
                if not isinstance(classify(exc, self.path.parent), ReadOnlyStorage) or not self._open_read_only():
                    raise
        except Exception as exc:
            found = self._failed(exc)
            if self.db is not None:
                self.db.close()
                self.db = None
            refusal = found if isinstance(found, StorageFault) else StoreClosed()
            inbox: StoreInbox = self.actor_inbox  # type: ignore[assignment]
            for _, fut in inbox.close(refusal):
                settle_threadsafe(fut, error=refusal)
            self.refusal = refusal
            if not isinstance(found, StorageFault):
                log.error("%s: could not open the store: %r", self, found)
            self.stop()

    def _open(self) -> None:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not self.path.exists():
            if pending(self.path) is not None:
                # Never a fresh, empty store in place of a quarantined one: its ids would repeat.
                if self._on_quarantine is not None:
                    self._on_quarantine(self.user_id)
                raise fault(StoreQuarantined, "waiting for `brain repair`")
            # Created 0600 before SQLite opens it; the -wal/-shm files inherit the mode.
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600))
        self.marker.open()
        # Where SQLite's descriptors for the file will be: the kept pages map its WAL index.
        self.descriptors_from = next_descriptor()
        # Not only this thread's: the event loop reads the version of kept pages (StoreInbox.cached_page).
        self.db = db = sqlite3.connect(self.path, isolation_level=None, cached_statements=64, check_same_thread=False)
        # First: another worker may be writing (or creating) this database right now.
        db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        _use_wal(db)
        # NORMAL in WAL mode: a commit survives a crash of brain (kill -9); only an OS
        # crash or power loss can take the last commits back.
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute(f"PRAGMA mmap_size={int(self.mmap_bytes)}")  # api.store_mmap_mib
        db.execute(f"PRAGMA cache_spill={SPILL_BYTES // db.execute('PRAGMA page_size').fetchone()[0]}")
        self._check(db)
        migrate(db)
        unrendered = ensure_rendered(db)
        self.index = SearchIndex(db, user_id=self.user_id, options=self.index_options)
        self._last_id = db.execute("SELECT ifnull(max(id), 0) FROM events").fetchone()[0]
        self.index.open(self._last_id)
        # Both behind whatever is already asked of the store: requests go first. The index
        # first: until it is built a search misses the old events, while a page of unrendered
        # rows is only slower (brain.api.pages).
        if self.index.backfilling:
            self._render_after_index = unrendered
            self._tell_self(_BACKFILL)
        elif unrendered:
            self._tell_self(_RENDER_BACKFILL)
        if self.index.behind:  # written before a crash, not indexed yet
            self._index_tail_next()
        if db.execute("SELECT EXISTS (SELECT 1 FROM outbox)").fetchone()[0] and self.marker.alone():
            # Unpublished rows the bus may not know of (a store rebuilt by `brain repair`). Not
            # while another worker has the store open: they are its own, in flight, and it
            # publishes them (or, should it die, its successor drains every marked outbox).
            self.outbox.notify(self.user_id, [])
        self._look_at_size()

    def _open_read_only(self) -> bool:
        """Open for reading only, the file system being read-only; False if that cannot show everything.

        A store closed cleanly is read as it is (immutable); one whose WAL and WAL index were
        left behind is read through them; commits in a WAL without its index cannot be. Writes are refused (`_commit`) until the file system
        is writable again; then the store stops, and its next generation opens read-write.
        """
        if self.db is not None:
            self.db.close()
            self.db = None
        if not self.path.exists():
            return False
        wal, shm = Path(f"{self.path}-wal"), Path(f"{self.path}-shm")
        if shm.exists():
            # Left by a store that could not finish closing: SQLite reads its WAL through it.
            uri = f"file:{self.path}?mode=ro"
        elif wal.exists() and wal.stat().st_size > 0:
            return False  # commits only the WAL holds, and no way to read them
        else:
            # immutable: no locks, no -shm; nobody can change the file while its file system is read-only.
            uri = f"file:{self.path}?immutable=1"
        self.db = db = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
        self._check(db)
        if db.execute("PRAGMA user_version").fetchone()[0] < SCHEMA_VERSION:
            return False
        if "rendered" not in {row[1] for row in db.execute("PRAGMA table_info(events)")}:
            # Written before events carried their JSON, and it cannot be given the column now.
            self.rendered_sql = render_sql("id", "type", "data", "created_at")
        index = SearchIndex(db, user_id=self.user_id, options=self.index_options)
        try:
            index.open(db.execute("SELECT ifnull(max(id), 0) FROM events").fetchone()[0])
            self.index = index
        except sqlite3.Error:
            pass  # the index needed writing (a rebuild): no search until the file system is writable
        self.read_only = True
        log.warning("%s: opened read-only (the file system is read-only); writes are refused", self)
        return True

    def _check(self, db: sqlite3.Connection) -> None:
        if self.verify:
            verdict = quick_check(db)
            if verdict != "ok":
                raise fault(StoreCorrupt, f"quick_check: {verdict}")

    def on_stop(self) -> None:
        self._close()

    def on_failure(self, *exc_info: object) -> None:
        self._close()

    def _close(self) -> None:
        inbox: StoreInbox = self.actor_inbox  # type: ignore[assignment]
        with inbox.db_lock:
            inbox.publish(None)  # first: the loop must not use the connection as it closes
            self._close_db()

    def _close_db(self) -> None:
        # First, and whatever else fails: requests nobody will take go back to be resubmitted.
        inbox: StoreInbox = self.actor_inbox  # type: ignore[assignment]
        for _, fut in inbox.close():
            settle_threadsafe(fut, error=StoreClosed())
        if self.index is not None:
            figures = self.index_options.figures
            figures.release(self.user_id)
            figures.waiting(self.user_id, 0)
        db, self.db = self.db, None
        unpublished = True
        if db is not None and self.read_only:
            db.close()  # nothing it could have written
        elif db is not None:
            clean = False
            try:
                if self.acks:
                    db.execute("BEGIN IMMEDIATE")
                    self._apply_acks(db)
                    db.execute("COMMIT")
                unpublished = bool(db.execute("SELECT EXISTS (SELECT 1 FROM outbox)").fetchone()[0])
                clean = True
            except sqlite3.Error as exc:
                found = self._failed(exc, quarantine=False)
                if not isinstance(found, StorageFault):  # a storage fault is counted and logged as such
                    log.warning("%s: could not check the outbox on close: %r", self, found)
            db.close()
            if self.files is not None:
                if clean:
                    self.files.remember(self.user_id, self.path)
                else:
                    self.files.forget(self.user_id)
        if self.faults is not None:
            # Closed (the last connection checkpoints the whole WAL into the file) or given up.
            self.faults.guard.owe(self.actor_urn, 0)
        try:
            self.marker.close(empty=not unpublished)
        except OSError:
            log.exception("%s: could not release the outbox marker", self)
        if self._exit_callback is not None:
            try:
                self._exit_callback(self.user_id, self.actor_ref)
            except Exception:
                log.exception("%s: exit callback failed", self)

    # -- messages ------------------------------------------------------------------------------

    def on_receive(self, message: Any) -> Any:
        inbox: StoreInbox = self.actor_inbox  # type: ignore[assignment]
        if isinstance(message, AppendMany):
            inbox.took_asked_append()
            self._schedule(batch=False)
        elif message is _DRAIN:
            self._schedule(batch=True)
        with inbox.db_lock:
            # The page the loop may take stays through writes that leave the events as they are
            # (each append's ack and index tail would otherwise make the next read a miss).
            pages = inbox.pages
            watched = pages.watch() if _appends_at_most(message, inbox) else None
            try:
                return self._receive(message)
            finally:
                # After whatever wrote: appends, deletions, the outbox's acknowledged rows, index merges.
                self._note_checkpoint_growth(message)
                inbox.publish(self.db, self.descriptors_from)
                pages.keep_through(watched, _newest_limit)
                self._checkpoint_later()

    def _schedule(self, batch: bool) -> None:
        """`_schedule_as` for this store's thread, only when the policy changes (one syscall a switch)."""
        if batch != self._batch:
            _schedule_as(batch)
            self._batch = batch

    def append_now(self, request: AppendRequest) -> list[tuple[StoredEvent, bool]] | None:
        """One event without a key, committed on the calling thread (the event loop's, holding
        `db_lock`, the store idle): what its thread would do, minus the two thread wake-ups
        (to the store and back), which are most of a lone request's latency. None when it is
        not done (nothing written): the store's thread does it, and answers whatever went
        wrong. It never waits: not for another worker's write lock (busy_timeout 0 meanwhile),
        nor for a checkpoint: only a store that runs its own checkpoints on its thread
        (`_checkpoint_later`) is written here, SQLite would run one inside the commit."""
        db = self.db
        if (
            db is None or db is not self._checkpoints_of or self.read_only or self.quarantined
            or len(request.events) != 1 or request.events[0].key is not None or db.in_transaction
        ):
            return None
        inbox: StoreInbox = self.actor_inbox  # type: ignore[assignment]
        pages = inbox.pages
        watched = pages.watch()
        fresh: list[StoredEvent] = []
        try:
            db.execute("PRAGMA busy_timeout=0")
            try:
                result = self._commit([request], fresh)[0]
            finally:
                db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        except Exception:
            if fresh:
                raise  # committed: never written twice
            result = None
        if not fresh or isinstance(result, Exception):
            pages.keep_through(None, _newest_limit)
            return None  # not written: the store's thread tries, and answers what it finds
        self.last_used = time.monotonic()
        try:
            self._published(fresh)
        finally:
            self._note_checkpoint_growth(request)
            pages.keep_through(watched, _newest_limit)
            self._checkpoint_later()  # asks the store's thread for it, as after any write
        return result  # type: ignore[return-value]

    def _receive(self, message: Any) -> Any:
        if message is _OPEN:
            self._open_or_refuse()
            return None
        if message is _DRAIN:
            self.last_used = time.monotonic()
            self._serve_submitted()
            return None
        if isinstance(message, Ack) or message == _FLUSH_ACKS:  # tells: a storage fault must not crash the store
            if self.db is None:
                return None  # quarantined: the rows are in its quarantined file
            try:
                return self._serve_asked(message)
            except Exception as exc:
                found = self._failed(exc)
                if not isinstance(found, StorageFault):
                    raise
                self._arm_flush()  # a full, read-only or busy disk: the rows wait, the store lives on
                return None
        if isinstance(message, (AppendMany, OutboxBatch)) or isinstance(message, Request) or message == HEAD:
            if self.db is None:
                # It could not open (why), or was quarantined meanwhile (the next generation decides).
                raise self.refusal or StoreClosed()
            try:
                return self._serve_asked(message)
            except Exception as exc:
                raise self._failed(exc) from exc
        if message == _RENDER_BACKFILL:
            if self.db is not None and not self.read_only:
                try:
                    more = backfill_step(self.db)
                except Exception as exc:  # noqa: BLE001 - a storage fault: reads render the rows themselves
                    self._failed(exc)
                    return None
                if more:
                    self._tell_self(_RENDER_BACKFILL)
            return None
        if message == _IDLE_CHECK:
            # Pages the loop took from the cache are uses too.
            idle = time.monotonic() - max(self.last_used, self.actor_inbox.last_read)  # type: ignore[attr-defined]
            if idle >= self.idle_seconds and not (self.index is not None and self.index.backfilling):
                log.debug("%s: idle for %.0fs, stopping", self, idle)
                self.stop()
            else:
                self.schedule(max(1.0, self.idle_seconds - idle), _IDLE_CHECK)
            return None
        if message == _CHECKPOINT:
            self._checkpoint()
            return None
        if message == _BACKFILL or message == _MERGE or message == _INDEX_TAIL or message == _INDEX_TAIL_DUE:
            if message == _INDEX_TAIL:
                self._tail_told = False
            if self.db is None or self.read_only:
                return None  # quarantined, or nothing can be written: the next generation goes on
            try:
                if message == _BACKFILL:
                    self._backfill()
                elif message == _INDEX_TAIL or message == _INDEX_TAIL_DUE:
                    self._index_tail()
                else:
                    self._merge()
            except Exception as exc:  # noqa: BLE001 - a storage fault: the index catches up when the store reopens
                if not isinstance(self._failed(exc), StorageFault):
                    raise
            return None
        return super().on_receive(message)

    def _checkpoint_later(self) -> None:
        """After a message that wrote: ask for a checkpoint, behind the messages already waiting,
        once the WAL holds SQLite's automatic checkpoint's frames.

        SQLite checkpoints inside the COMMIT that takes the WAL past `wal_autocheckpoint`
        (1,000 pages): the copy into the database and its two fsyncs (synchronous=NORMAL) then
        delay that commit's answer, 10-20 ms for a page of 100 mail events, while mail sync
        waits for it. Run as a message of its own, the same checkpoint (PASSIVE, on this
        connection) comes after the answer, while the writer prepares its next page. Only with
        the WAL index header in view (`PageCache.wal_frames`); without it SQLite checkpoints as
        before.
        """
        db = self.db
        if db is None or self.read_only:
            return
        inbox: StoreInbox = self.actor_inbox  # type: ignore[assignment]
        if db is not self._checkpoints_of:
            if inbox.pages.wal_frames() is None:
                return  # not mapped: SQLite's own automatic checkpoints stay on
            try:
                self._checkpoint_frames = db.execute("PRAGMA wal_autocheckpoint").fetchone()[0]
                db.execute("PRAGMA wal_autocheckpoint=0")
            except sqlite3.Error:
                return
            self._checkpoints_of = db
            self._checkpoint_changes = -1
        try:
            changes = db.total_changes
        except sqlite3.Error:
            return  # closed under us (a stop): nothing to checkpoint
        if self._checkpoint_armed or changes == self._checkpoint_changes:
            return
        self._checkpoint_changes = changes
        frames = inbox.pages.wal_frames()
        if frames is not None and frames >= self._checkpoint_frames > 0:
            self._checkpoint_armed = True
            self._tell_self(_CHECKPOINT)

    def _checkpoint(self) -> None:
        """The checkpoint `_checkpoint_later` asked for: what SQLite's automatic one does, whose
        failures SQLite does not report either (the next commit's look asks again).

        An append waiting for the store's thread goes first, and the checkpoint is asked again
        after it, until the WAL holds CHECKPOINT_DEFER times the frames: the checkpoint's copy
        and fsyncs (10-60 ms for a page of mail) would delay that append's answer, and mail
        sync waits for it at every page."""
        self._checkpoint_armed = False
        db = self.db
        if db is None or self.read_only or db is not self._checkpoints_of:
            return
        inbox: StoreInbox = self.actor_inbox  # type: ignore[assignment]
        if inbox.appends_wait():
            frames = inbox.pages.wal_frames()
            if frames is not None and frames < CHECKPOINT_DEFER * self._checkpoint_frames:
                self._checkpoint_changes = -1  # asked again after the next message
                return
        try:
            db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except sqlite3.Error as exc:
            # Asked again after the next write, not at once: a full disk fails every attempt.
            log.debug("%s: checkpoint failed: %r", self, exc)
            return
        self._changes_noted = -1  # the file grew by what it copied: the disk guard looks again now

    def _tell_self(self, message: object) -> None:
        # To the back of the inbox: the requests that arrived meanwhile are served first.
        self.actor_ref.tell(message)

    def _backfill(self) -> None:
        index = self.index
        assert index is not None
        figures = self.index_options.figures
        if not index.backfilling:  # done by another worker with the store open (brain.workers)
            self._render_when_indexed()
            return
        if not figures.acquire(self.user_id):
            self.schedule(BACKFILL_RETRY_SECONDS, _BACKFILL)
            return
        if index.backfill_step():
            self._tell_self(_BACKFILL)
        else:
            figures.release(self.user_id, done=True)
            log.info("%s: search index backfilled", self)
            self._render_when_indexed()

    def _render_when_indexed(self) -> None:
        if self._render_after_index:
            self._render_after_index = False
            self._tell_self(_RENDER_BACKFILL)

    def _index_tail(self) -> None:
        """Index the live tail (a step), giving way to a waiting append (`SearchIndex.catch_up`)
        while the tail is within the events the index keeps the data of (WRITTEN_ROWS): a
        writer that never pauses would otherwise leave it ever longer."""
        index = self.index
        assert index is not None
        self._tail_armed = False
        inbox: StoreInbox = self.actor_inbox  # type: ignore[assignment]
        yield_to = inbox.appends_wait if self._last_id - index.tail < WRITTEN_ROWS else None
        if index.catch_up(yield_to=yield_to):
            self._index_tail_next()

    def _index_tail_next(self) -> None:
        """Index the tail once the requests already waiting are served (unless that is asked
        already: a catch-up that gave way to an append asks again behind it, and the append
        asks too)."""
        self._tail_armed = True
        if not self._tail_told:
            self._tail_told = True
            self._tell_self(_INDEX_TAIL)

    def _caught_up(self) -> bool:
        """Index the whole live tail before reading the index; False if it cannot be (opened
        read-only: the tail's events are missing from what it finds)."""
        index = self.index
        assert index is not None
        if self.read_only:
            return not index.behind
        index.catch_up(seconds=None)
        self._size_looked = 0.0  # what it indexed is looked at after this request (_note_checkpoint_growth)
        return True

    def _merge(self) -> None:
        index = self.index
        assert index is not None
        quiet = time.monotonic() - self.last_write
        if quiet < MERGE_IDLE_SECONDS:
            self.schedule(MERGE_IDLE_SECONDS - quiet, _MERGE)
        elif index.merge_step():
            self._tell_self(_MERGE)
        else:
            self._merge_armed = False


    def _serve_asked(self, message: Any) -> Any:
        """Asks from threads (mail sync, the bus) and the store's own timers."""
        if isinstance(message, AppendMany):
            self.last_used = time.monotonic()
            return self._append(message.requests)
        if isinstance(message, Request):
            self.last_used = time.monotonic()
            fresh: list[StoredEvent] = []
            try:
                return self._answer(message, fresh)
            finally:
                self._published(fresh)
        if message == HEAD:
            self.last_used = time.monotonic()
            return self._last_seq()
        if isinstance(message, Ack):
            self.acks.extend(message.ids)
            self._flush_acks()
            return None
        if message == _FLUSH_ACKS:
            self._flush_armed = False
            self._flush_acks()
            return None
        # Acks handed over before this drain must not be read (and re-sent) as pending.
        self._flush_acks()
        return self._outbox_batch(message.after, message.limit)

    def _failed(self, exc: BaseException, *, quarantine: bool = True) -> BaseException:
        """What to answer for a failure: storage faults typed and counted; a damaged store quarantined."""
        found = classify(exc, self.path.parent)
        if found is None:
            return exc
        if self.faults is not None:
            self.faults.record(found, "events.db", subject=f"user {self.user_id}")
        if isinstance(found, StoreCorrupt) and quarantine and not self.quarantined:
            self._quarantine(found)
        return found

    def _quarantine(self, found: StoreCorrupt) -> None:
        """Close the damaged database, move it aside (brain.api.quarantine) and stop."""
        self.quarantined = True
        db, self.db = self.db, None
        if db is not None:
            try:
                db.close()
            except sqlite3.Error:
                pass  # closing a damaged database: its files go aside all the same
        if self.files is not None:
            self.files.forget(self.user_id)
        try:
            move_aside(self.path, self.user_id, found.kind, found.detail)
        except OSError as exc:
            log.error("%s: could not move the damaged store aside: %r; it stays where it is", self, exc)
        if self.faults is not None:
            self.faults.record(fault(StoreQuarantined, found.detail), "events.db", subject=f"user {self.user_id}")
        if self._on_quarantine is not None:
            self._on_quarantine(self.user_id)
        self.stop()

    def _serve_submitted(self) -> None:
        """Answer every request the loop submitted: consecutive appends share one commit."""
        inbox: StoreInbox = self.actor_inbox  # type: ignore[assignment]
        submitted = inbox.take()
        fresh: list[StoredEvent] = []
        done = 0
        try:
            while done < len(submitted):
                end = done + 1
                first = submitted[done][0]
                if isinstance(first, AppendRequest):
                    while end < len(submitted) and isinstance(submitted[end][0], AppendRequest):
                        end += 1
                batch = submitted[done:end]
                try:
                    if self.db is None:  # refused, or quarantined by an earlier batch
                        results: list[Any] = [self.refusal or StoreClosed()] * len(batch)
                    elif isinstance(first, AppendRequest):
                        results = self._commit([request for request, _ in batch], fresh)
                    else:
                        results = [self._answer(first, fresh)]
                except Exception as exc:  # noqa: BLE001 - as an ask: the callers get it, the store lives on
                    results = [exc] * len(batch)
                for (_, fut), result in zip(batch, results):
                    if isinstance(result, Exception):
                        settle_threadsafe(fut, error=self._failed(result))
                    else:
                        settle_threadsafe(fut, result)
                done = end
        except BaseException:
            # Something that stops every actor: nobody is left to answer the rest but us.
            for _, fut in submitted[done:]:
                settle_threadsafe(fut, error=StoreClosed())
            raise
        finally:
            # After the answers: publishing is not on the requests' path.
            self._published(fresh)

    def _append(self, requests: Sequence[AppendRequest]) -> list[list[tuple[StoredEvent, bool]] | Exception]:
        """Commit every request (each all or nothing) in one transaction, then notify the bus."""
        fresh: list[StoredEvent] = []
        try:
            return self._commit(requests, fresh)
        finally:
            self._published(fresh)

    def _published(self, fresh: list[StoredEvent]) -> None:
        if fresh:
            self.actor_inbox.pages.appended(fresh)  # type: ignore[attr-defined]
            self.outbox.notify(self.user_id, fresh)
            self._arm_flush()
            self.last_write = time.monotonic()
            self._unlooked += sum(len(ev.data) for ev in fresh)
            self._last_id = fresh[-1].id
            index = self.index
            if index is not None and index.enabled:
                if fresh[-1].id - index.tail >= TAIL_ROWS - 1:  # TAIL_ROWS of sequence numbers at least
                    self._index_tail_next()
                elif not self._tail_armed:
                    self._tail_armed = True
                    self.schedule(self.index_options.tail_seconds, _INDEX_TAIL_DUE)
                if not self._merge_armed:
                    self._merge_armed = True
                    self.schedule(MERGE_IDLE_SECONDS, _MERGE)

    def _note_checkpoint_growth(self, message: Any) -> None:
        """If the database changed, look at its size (`_look_at_size`): after requests, at most
        every SIZE_LOOK_SECONDS or SIZE_LOOK_BYTES of events; after the store's own work (the
        index's tail, merges and backfill, the ack flush: `_OWN_WORK`) always. That work
        can grow the file by as much as the events it indexes, and the disk guard admits the
        next write by what the last look found."""
        db = self.db
        if db is None or db.total_changes == self._changes_noted:
            return
        if (
            not (isinstance(message, str) and message in _OWN_WORK)
            and self._unlooked < SIZE_LOOK_BYTES
            and time.monotonic() - self._size_looked < SIZE_LOOK_SECONDS
        ):
            return
        self._look_at_size()

    def _look_at_size(self) -> None:
        """Read the pages in use (the quota's figure) and tell the disk guard what this store's
        next checkpoint will add to its file: the pages its WAL holds beyond the file's end
        (admitted writes, not yet on statvfs's books). A commit may have run that checkpoint:
        then it is 0 again."""
        db = self.db
        assert db is not None
        self._changes_noted = db.total_changes
        self._size_looked = time.monotonic()
        self._unlooked = 0
        try:
            if not self._page_size:
                self._page_size = db.execute("PRAGMA page_size").fetchone()[0]
            pages, free = db.execute(_SIZE).fetchone()
            self._used = (pages - free) * self._page_size
            if self.faults is None:
                return
            st = os.stat(self.path)
            # What the file holds on disk, not its length: with the store memory-mapped
            # (api.store_mmap_mib), SQLite extends the file to its new length before a
            # checkpoint copies the pages in, and that length is a hole until they are written.
            on_disk = min(st.st_size, st.st_blocks * 512)
        except (sqlite3.Error, OSError):
            self._changes_noted = -1  # the next message looks again
            return
        self.faults.guard.owe(self.actor_urn, max(0, pages * self._page_size - on_disk))

    def _answer(self, message: Request, fresh: list[StoredEvent]) -> Any:
        """Answer one request other than an append (tombstones of deletions go to `fresh`)."""
        if not isinstance(message, _LEAVES_EVENTS):
            # It may change the events otherwise than by appending: the kept page is not carried past it.
            self.actor_inbox.pages.drop()  # type: ignore[attr-defined]
        if isinstance(message, ReadPage):
            assert self.db is not None
            q = message.query
            where, args = _query_filters(q)
            pages: PageCache = self.actor_inbox.pages  # type: ignore[attr-defined]
            return pages.read(self.db, q, where, args, q.limit, self.rendered_sql)
        if isinstance(message, Query):
            return self._query(message)
        if isinstance(message, SearchRequest):
            if self.index is None:  # opened read-only, with an index that needed writing
                raise fault(ReadOnlyStorage, "the search index waits for the file system to be writable")
            try:
                complete = self._caught_up()
                page = self.index.search(message, self._last_seq())
                return page if complete else page._replace(partial=True)
            except IndexUnavailable:
                raise ServiceUnavailable("search is off on this server (search.index = false)", retry_after=3600) from None
        if isinstance(message, GetEvent):
            row = self.db.execute(f"SELECT {_EVENT_COLUMNS} FROM events WHERE id = ?", (message.id,)).fetchone()  # type: ignore[union-attr]
            return None if row is None else StoredEvent._make(row)
        if isinstance(message, Changes):
            return self._changes(message)
        if isinstance(message, DeleteEvents):
            return self._delete(message, fresh)
        if isinstance(message, MatchField):
            return self._match_field(message)
        return self._stats()

    def _commit(
        self, requests: Sequence[AppendRequest], fresh: list[StoredEvent]
    ) -> list[list[tuple[StoredEvent, bool]] | Exception]:
        """Commit every request (each all or nothing); the new events are added to `fresh`."""
        db = self.db
        assert db is not None
        self._check_writable()
        try:
            self._check_space()
        except InsufficientStorage as exc:
            return [exc] * len(requests)
        if len(requests) == 1 and len(requests[0].events) == 1 and requests[0].events[0].key is None:
            # The common case, one event: the INSERT alone (its trigger adds the outbox row; the
            # index takes it with the tail, brain.api.search), committed by itself.
            # Acknowledged outbox rows waiting to be deleted do not join this transaction: they
            # wait for a grouped append or for the flush ACK_FLUSH_SECONDS after this one
            # (docs/performance.md).
            ev = requests[0].events[0]
            created_at = ev.created_at or now_timestamp()
            try:
                cur = db.execute(_INSERT_EVENT, (ev.type, ev.data, created_at, None))
            except Exception as exc:  # noqa: BLE001 - the caller gets it
                return [exc]
            event_id: int = cur.lastrowid  # type: ignore[assignment]
            stored = StoredEvent(event_id, ev.type, ev.data, created_at)
            fresh.append(stored)
            if self.index is not None:
                self.index.written([(stored, ev)])
            return [[(stored, False)]]
        now = now_timestamp()
        results: list[list[tuple[StoredEvent, bool]] | Exception] = []
        new_events: list[StoredEvent] = []
        single = len(requests) == 1
        db.execute("BEGIN IMMEDIATE")
        try:
            self._apply_acks(db)
            for request in requests:
                if single:
                    out, new = self._insert(db, request, now)
                    results.append(out)
                    new_events.extend(new)
                    continue
                db.execute("SAVEPOINT request")
                try:
                    out, new = self._insert(db, request, now)
                except Exception as exc:  # noqa: BLE001 - this request fails, the others commit
                    db.execute("ROLLBACK TO request")
                    db.execute("RELEASE request")
                    results.append(exc)
                    continue
                db.execute("RELEASE request")
                results.append(out)
                new_events.extend(new)
            db.execute("COMMIT")
        except BaseException as exc:
            if db.in_transaction:
                db.execute("ROLLBACK")
            if single and isinstance(exc, Exception):
                return [exc]
            raise
        fresh.extend(new_events)
        if self.index is not None:
            self.index.written(_written(requests, results))
        return results

    def _check_writable(self) -> None:
        """Refuse a write to a store opened read-only (`_open_read_only`) while its file system is."""
        if self.read_only:
            if read_only_file_system(self.path.parent):
                raise fault(ReadOnlyStorage, f"{self.path.parent} is on a read-only file system")
            self.stop()  # writable again: the next generation opens read-write
            raise StoreClosed()

    def _check_space(self) -> None:
        """InsufficientStorage once the store uses api.max_user_bytes (pages in use, index included).

        Judged by the last look at the store's size plus the events committed since; refused
        only after a fresh look (deletions may have made room since)."""
        if not self.max_bytes or self._used + self._unlooked < self.max_bytes:
            return
        self._look_at_size()
        if self._used >= self.max_bytes:
            raise InsufficientStorage(
                f"the store holds {self._used} bytes, the quota is {self.max_bytes} (api.max_user_bytes): "
                "delete events to make room",
                retry_after=FULL_RETRY_SECONDS,
            )

    def _insert(
        self, db: sqlite3.Connection, request: AppendRequest, now: str
    ) -> tuple[list[tuple[StoredEvent, bool]], list[StoredEvent]]:
        out: list[tuple[StoredEvent, bool]] = []
        fresh: list[StoredEvent] = []
        for ev in request.events:
            if ev.key is not None:
                row = db.execute("SELECT id, type, data, created_at, key FROM events WHERE key = ?", (ev.key,)).fetchone()
                if row is not None:
                    existing = StoredEvent._make(row)
                    if request.match and not _same_event(existing, ev):
                        raise IdempotencyMismatch("Idempotency-Key was already used for a different event")
                    out.append((existing, True))
                    continue
            created_at = ev.created_at or now
            cur = db.execute(_INSERT_EVENT, (ev.type, ev.data, created_at, ev.key))
            event_id = cur.lastrowid  # its outbox row: the events_outbox trigger
            assert event_id is not None
            stored = StoredEvent(event_id, ev.type, ev.data, created_at, ev.key)
            out.append((stored, False))
            fresh.append(stored)
        if request.match and fresh and len(fresh) != len(out):
            raise IdempotencyMismatch("Idempotency-Key was already used for a different batch")
        return out, fresh

    def _query(self, q: Query) -> list[StoredEvent]:
        db = self.db
        assert db is not None
        where, args = _query_filters(q)
        sql = f"SELECT {_EVENT_COLUMNS} FROM events"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created_at DESC, id DESC LIMIT ?"
        args.append(q.limit)
        return [StoredEvent._make(row) for row in db.execute(sql, args)]

    def _match_field(self, m: MatchField) -> list[StoredEvent]:
        assert self.db is not None
        where, args = _filters(m.types, None, None)
        # The type filter uses its index; the JSON is read only for events of those types.
        where.append("json_extract(data, ?) = ?")
        rows = self.db.execute(
            f"SELECT {_EVENT_COLUMNS} FROM events WHERE {' AND '.join(where)} ORDER BY {SEQUENCE} LIMIT ?",
            [*args, f"$.{m.field}", m.value, m.limit],
        )
        return [StoredEvent._make(row) for row in rows]

    def _outbox_batch(self, after: int, limit: int) -> list[StoredEvent]:
        """One batch of a drain (from `after` 0: a new drain, which needs the drain lock)."""
        assert self.db is not None
        if after == 0 and not self.marker.try_drain():
            raise OutboxBusy(self.user_id)
        rows = self.db.execute(
            "SELECT e.id, e.type, e.data, e.created_at, e.key FROM outbox o JOIN events e ON e.id = o.event_id"
            " WHERE o.event_id > ?1"
            f" UNION ALL SELECT t.seq, '{TOMBSTONE_TYPE}', t.data, t.deleted_at, NULL FROM outbox o"
            " JOIN tombstones t ON t.seq = o.event_id WHERE o.event_id > ?1 ORDER BY 1 LIMIT ?2",
            (after, limit),
        )
        batch = [StoredEvent._make(row) for row in rows]
        if len(batch) < limit:
            self.marker.drained()
        return batch

    def _last_seq(self) -> int:
        """The highest number of the commit sequence in use (0: none yet)."""
        assert self.db is not None
        return int(self.db.execute(f"SELECT {NEXT_SEQ} - 1").fetchone()[0])

    def _changes(self, c: Changes) -> list[StoredEvent]:
        assert self.db is not None
        events_sql = f"SELECT {_EVENT_COLUMNS} FROM events WHERE {SEQUENCE} > ?"
        args: list[Any] = [c.after]
        if c.types is not None:
            clause, type_args = c.types.sql()
            events_sql += f" AND {clause}"
            args.extend(type_args)
        if c.types is None or c.types.matches(TOMBSTONE_TYPE):
            # Both sides come in sequence order: SQLite merges them, and stops at the limit.
            sql = (f"{events_sql} UNION ALL SELECT seq, '{TOMBSTONE_TYPE}', data, deleted_at, NULL FROM tombstones"
                   " WHERE seq > ? ORDER BY 1 LIMIT ?")
            args.append(c.after)
        else:
            sql = f"{events_sql} ORDER BY {SEQUENCE} LIMIT ?"
        args.append(c.limit)
        return [StoredEvent._make(row) for row in self.db.execute(sql, args)]

    def _delete(self, message: DeleteEvents, fresh: list[StoredEvent]) -> Deleted:
        """Delete events with their index rows and outbox rows; a tombstone for each (one transaction)."""
        db, index = self.db, self.index
        assert db is not None and index is not None
        self._check_writable()
        up_to = message.up_to if message.up_to is not None else self._last_seq()
        if message.ids is not None:
            marks = ",".join("?" * len(message.ids))
            sql, args = f"SELECT {_EVENT_COLUMNS} FROM events WHERE id IN ({marks})", list(message.ids)
        else:
            where, args = _filters(message.types, message.since, message.until)
            where.append("id <= ?")
            args.append(up_to)
            sql = f"SELECT {_EVENT_COLUMNS} FROM events WHERE {' AND '.join(where)} ORDER BY id LIMIT ?"
            args.append(message.limit)
        deleted_at = now_timestamp()
        tombstones: list[StoredEvent] = []
        db.execute("BEGIN IMMEDIATE")
        try:
            for row in db.execute(sql, args).fetchall():
                event = StoredEvent._make(row)
                # The tombstone first: while the event is there, its number counts as in use
                # (the newest event's number must not pass to its own tombstone).
                data = tombstone_data(event)
                cur = db.execute(
                    f"INSERT INTO tombstones (seq, event_id, data, deleted_at) VALUES ({NEXT_SEQ}, ?, ?, ?)",
                    (event.id, data, deleted_at),
                )
                tombstones.append(StoredEvent(cur.lastrowid, TOMBSTONE_TYPE, data, deleted_at))  # type: ignore[arg-type]
                index.remove(event.id, event.type, event.data)
                db.execute("DELETE FROM events WHERE id = ?", (event.id,))
                # Not published yet: it never will be (its data is gone); the tombstone is.
                db.execute("DELETE FROM outbox WHERE event_id = ?", (event.id,))
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            index.rolled_back()
            raise
        fresh.extend(tombstones)
        return Deleted([json.loads(t.data)["id"] for t in tombstones], up_to)

    def _stats(self) -> dict[str, Any]:
        db, index = self.db, self.index
        assert db is not None and index is not None
        by_type = dict(db.execute("SELECT type, count(*) FROM events GROUP BY type").fetchall())
        page_size = db.execute("PRAGMA page_size").fetchone()[0]
        pages = db.execute("PRAGMA page_count").fetchone()[0]
        free = db.execute("PRAGMA freelist_count").fetchone()[0]
        self._caught_up()  # the index's figures count the tail's events too
        return {
            "events": sum(by_type.values()),
            "by_type": by_type,
            "sequence": self._last_seq(),
            "tombstones": db.execute("SELECT count(*) FROM tombstones").fetchone()[0],
            "bytes": (pages - free) * page_size,
            "file_bytes": pages * page_size,
            "index": index.stats(),
        }

    def _apply_acks(self, db: sqlite3.Connection) -> None:
        """Delete the outbox rows of acknowledged events (inside the caller's transaction)."""
        acks = self.acks
        if acks:
            # One statement for them all: executemany steps once per id, and Python's sqlite3
            # gives up the GIL several times per step (docs/performance.md).
            ids = ",".join([str(acks.popleft()) for _ in range(len(acks))])
            db.execute(_DELETE_ACKED, (f"[{ids}]",))

    def _arm_flush(self) -> None:
        if not self._flush_armed:
            self._flush_armed = True
            self.schedule(ACK_FLUSH_SECONDS, _FLUSH_ACKS)

    def _flush_acks(self) -> None:
        """Apply waiting acks in a transaction of their own; keep checking while rows are pending."""
        db = self.db
        assert db is not None
        if self.acks:
            self._apply_acks(db)  # one statement, a transaction by itself
        # Rows still waiting (publishes in flight, or NATS down): acks may yet come.
        if db.execute("SELECT EXISTS (SELECT 1 FROM outbox)").fetchone()[0]:
            self._arm_flush()


def _query_filters(q: Query) -> tuple[list[str], list[Any]]:
    """The WHERE clauses (joined by AND) and their arguments of a Query: types, time range, cursor."""
    where, args = _filters(q.types, q.since, q.until)
    if q.before is not None:
        where.append("(created_at < ? OR (created_at = ? AND id < ?))")
        args.extend((q.before[0], q.before[0], q.before[1]))
    return where, args


def _filters(types: TypeFilter | None, since: str | None, until: str | None) -> tuple[list[str], list[Any]]:
    """SQL conditions (and their arguments) on events' type and created_at."""
    where: list[str] = []
    args: list[Any] = []
    if types is not None:
        clause, type_args = types.sql()
        where.append(clause)
        args.extend(type_args)
    if since is not None:
        where.append("created_at >= ?")
        args.append(since)
    if until is not None:
        where.append("created_at < ?")
        args.append(until)
    return where, args


def migrate(db: sqlite3.Connection) -> None:
    """Bring a store to SCHEMA_VERSION (a new file, or one an older brain wrote), in one transaction."""
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version >= SCHEMA_VERSION:
        return
    try:
        db.executescript(f"BEGIN IMMEDIATE;\n{SCHEMA}\nPRAGMA user_version={SCHEMA_VERSION};\nCOMMIT;")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    if version:
        log.info("store %s: schema %d -> %d", db.execute("PRAGMA database_list").fetchone()[2], version, SCHEMA_VERSION)


def _use_wal(db: sqlite3.Connection) -> None:
    """Put a database in WAL mode (persistent). Switching needs a moment alone with the file and
    SQLite does not wait for it (busy_timeout or not): a worker opening a new user's database
    while another does tries again."""
    for _ in range(200):
        try:
            db.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc):
                raise
            time.sleep(0.01)
    db.execute("PRAGMA journal_mode=WAL")  # still locked: let its error say so


def _written(
    requests: Sequence[AppendRequest], results: Sequence[list[tuple[StoredEvent, bool]] | Exception]
) -> Iterator[tuple[StoredEvent, NewEvent]]:
    """(stored, as written) of every event a commit added (not those its key found stored)."""
    for request, out in zip(requests, results):
        if not isinstance(out, Exception):
            for ev, (stored, existing) in zip(request.events, out):
                if not existing:
                    yield stored, ev


def _same_event(stored: StoredEvent, ev: NewEvent) -> bool:
    if stored.type != ev.type:
        return False
    if ev.created_at is not None and ev.created_at != stored.created_at:
        return False
    return stored.data == ev.data or json.loads(stored.data) == ev.value


def check_outbox(path: Path, marker: Path) -> tuple[str, bool]:
    """`brain check`'s verdict on a store's outbox (read-only): (verdict, whether it is a problem)."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        pending = db.execute("SELECT count(*) FROM outbox").fetchone()[0]
        # An outbox row names an event or, since schema 3, a deletion's tombstone.
        tombstones = db.execute("SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE name = 'tombstones')").fetchone()[0]
        orphans = db.execute(
            "SELECT count(*) FROM outbox o WHERE NOT EXISTS (SELECT 1 FROM events e WHERE e.id = o.event_id)"
            + (" AND NOT EXISTS (SELECT 1 FROM tombstones t WHERE t.seq = o.event_id)" if tombstones else "")
        ).fetchone()[0]
    except sqlite3.Error as exc:
        return f"unreadable: {exc}", True
    finally:
        db.close()
    if orphans:
        return f"{orphans} rows name no event", True
    if pending and not marker.exists():
        # The bus finds unpublished rows through the marker (or when the store next opens).
        return f"{pending} unpublished, no marker", True
    return ("ok" if not pending else f"ok ({pending} unpublished)"), False

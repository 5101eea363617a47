"""UserStore: the actor that owns one user's SQLite database, `data/users/{user_id}/events.db`.

It is a virtual actor (see `brain.api.stores.StoreManager`): started on first use, it keeps its
connection open while it lives and stops itself after `api.store_idle_seconds` without use.
Only its own thread touches the connection.

Every event is committed together with a row in the `outbox` table; after the commit the new
events are handed to the EventBus (`Outbox.notify`, non-blocking), which publishes them to
JetStream and then hands back the acknowledged ids through the store's `acks` deque. The store
deletes those rows inside its next append transaction, or at the latest ACK_FLUSH_SECONDS
after an append (no message, no extra commit per acknowledgement on the hot path). Rows still
present after a crash are found again through the outbox marker (`data/outbox/{user_id}`),
which exists from a store's start until it stops with an empty outbox.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import pykka

from brain.actors.base import BrainActor, Link
from brain.api.events import NewEvent, StoredEvent, now_timestamp
from brain.errors import Unprocessable
from brain.ids import is_valid_user_id

log = logging.getLogger("brain.api.store")

SCHEMA_VERSION = 1
SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    type TEXT NOT NULL,
    data TEXT NOT NULL,
    created_at TIMESTAMP NOT NULL,
    key TEXT UNIQUE
);
CREATE INDEX IF NOT EXISTS events_created_at ON events (created_at);
CREATE INDEX IF NOT EXISTS events_type_created_at ON events (type, created_at);
CREATE TABLE IF NOT EXISTS outbox (event_id INTEGER PRIMARY KEY);
"""


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


class Outbox(Protocol):
    """Where a store hands committed events for publishing (the EventBus's doorbell)."""

    def notify(self, user_id: str, events: list[StoredEvent]) -> None:
        """Queue committed events for publishing; must never block or raise."""


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

    type: str | None
    since: str | None
    until: str | None
    before: tuple[str, int] | None
    limit: int


class OutboxBatch(NamedTuple):
    """Up to `limit` unpublished events with ids above `after`, oldest first."""

    after: int
    limit: int


class Ack(NamedTuple):
    """These events are in JetStream: drop their outbox rows now (the slow path)."""

    ids: Sequence[int]


class OutboxCount(NamedTuple):
    """How many events still wait to be published."""


_IDLE_CHECK = "idle-check"
_FLUSH_ACKS = "flush-acks"
# Acknowledged outbox rows are deleted at most this long after the append that made them.
ACK_FLUSH_SECONDS = 1.0


class IdempotencyMismatch(Unprocessable):
    """An idempotency key was reused for a different request."""

    code = "IDEMPOTENCY_KEY_REUSED"


class UserStore(BrainActor):
    """Owns one user's events.db: appends (grouped), queries, and the outbox rows."""

    def __init__(
        self,
        *,
        link: Link | None = None,
        user_id: str,
        data_path: Path,
        outbox: Outbox,
        idle_seconds: float,
        acks: deque[int] | None = None,
        on_exit: Callable[[str, pykka.ActorRef[Any]], None] | None = None,
    ) -> None:
        super().__init__(link=link)
        self.user_id = user_id
        self.path = store_path(data_path, user_id)
        self.marker = marker_path(data_path, user_id)
        self.outbox = outbox
        self.idle_seconds = idle_seconds
        self._on_exit = on_exit
        # Filled by the EventBus's thread (deque.append is thread-safe), drained here.
        self.acks: deque[int] = deque() if acks is None else acks
        self._flush_armed = False
        self.db: sqlite3.Connection | None = None
        self.last_used = time.monotonic()

    def __str__(self) -> str:
        return f"UserStore {self.user_id}"

    # -- lifecycle -------------------------------------------------------------------------

    def on_start(self) -> None:
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            if not self.path.exists():
                # Created 0600 before SQLite opens it; the -wal/-shm files inherit the mode.
                os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600))
            self.marker.parent.mkdir(parents=True, exist_ok=True)
            self.marker.touch()
            self.db = db = sqlite3.connect(self.path, isolation_level=None, cached_statements=64)
            db.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode: a commit survives a crash of brain (kill -9); only an OS
            # crash or power loss can take the last commits back.
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA busy_timeout=5000")
            if db.execute("PRAGMA user_version").fetchone()[0] < SCHEMA_VERSION:
                db.executescript(SCHEMA)
                db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except BaseException:
            self._close()
            raise
        self.schedule(self.idle_seconds, _IDLE_CHECK)

    def on_stop(self) -> None:
        self._close()

    def on_failure(self, *exc_info: object) -> None:
        self._close()

    def _close(self) -> None:
        db, self.db = self.db, None
        if db is not None:
            try:
                if self.acks:
                    db.execute("BEGIN")
                    self._apply_acks(db)
                    db.execute("COMMIT")
                pending = db.execute("SELECT EXISTS (SELECT 1 FROM outbox)").fetchone()[0]
                if not pending:
                    self.marker.unlink(missing_ok=True)
            except sqlite3.Error:
                log.exception("%s: could not check the outbox on close", self)
            db.close()
        if self._on_exit is not None:
            try:
                self._on_exit(self.user_id, self.actor_ref)
            except Exception:
                log.exception("%s: exit callback failed", self)

    # -- messages ------------------------------------------------------------------------------

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, AppendMany):
            self.last_used = time.monotonic()
            return self._append(message.requests)
        if isinstance(message, Query):
            self.last_used = time.monotonic()
            return self._query(message)
        if isinstance(message, Ack):
            self.acks.extend(message.ids)
            self._flush_acks()
            return None
        if message == _FLUSH_ACKS:
            self._flush_armed = False
            self._flush_acks()
            return None
        if isinstance(message, OutboxBatch):
            # Acks handed over before this drain must not be read (and re-sent) as pending.
            self._flush_acks()
            return self._outbox_batch(message.after, message.limit)
        if isinstance(message, OutboxCount):
            assert self.db is not None
            return self.db.execute("SELECT count(*) FROM outbox").fetchone()[0]
        if message == _IDLE_CHECK:
            idle = time.monotonic() - self.last_used
            if idle >= self.idle_seconds:
                log.debug("%s: idle for %.0fs, stopping", self, idle)
                self.stop()
            else:
                self.schedule(self.idle_seconds - idle, _IDLE_CHECK)
            return None
        return super().on_receive(message)

    def _append(self, requests: Sequence[AppendRequest]) -> list[list[tuple[StoredEvent, bool]] | Exception]:
        """Commit every request (each all or nothing) in one transaction, then notify the bus."""
        db = self.db
        assert db is not None
        now = now_timestamp()
        results: list[list[tuple[StoredEvent, bool]] | Exception] = []
        fresh: list[StoredEvent] = []
        single = len(requests) == 1
        db.execute("BEGIN IMMEDIATE")
        try:
            self._apply_acks(db)
            for request in requests:
                if single:
                    out, new = self._insert(db, request, now)
                    results.append(out)
                    fresh.extend(new)
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
                fresh.extend(new)
            db.execute("COMMIT")
        except BaseException as exc:
            if db.in_transaction:
                db.execute("ROLLBACK")
            if single and isinstance(exc, Exception):
                return [exc]
            raise
        if fresh:
            self.outbox.notify(self.user_id, fresh)
            self._arm_flush()
        return results

    @staticmethod
    def _insert(
        db: sqlite3.Connection, request: AppendRequest, now: str
    ) -> tuple[list[tuple[StoredEvent, bool]], list[StoredEvent]]:
        out: list[tuple[StoredEvent, bool]] = []
        fresh: list[StoredEvent] = []
        for ev in request.events:
            if ev.key is not None:
                row = db.execute("SELECT id, type, data, created_at FROM events WHERE key = ?", (ev.key,)).fetchone()
                if row is not None:
                    existing = StoredEvent._make(row)
                    if request.match and not _same_event(existing, ev):
                        raise IdempotencyMismatch("Idempotency-Key was already used for a different event")
                    out.append((existing, True))
                    continue
            created_at = ev.created_at or now
            cur = db.execute(
                "INSERT INTO events (type, data, created_at, key) VALUES (?, ?, ?, ?)",
                (ev.type, ev.data, created_at, ev.key),
            )
            event_id = cur.lastrowid
            assert event_id is not None
            db.execute("INSERT INTO outbox (event_id) VALUES (?)", (event_id,))
            stored = StoredEvent(event_id, ev.type, ev.data, created_at)
            out.append((stored, False))
            fresh.append(stored)
        if request.match and fresh and len(fresh) != len(out):
            raise IdempotencyMismatch("Idempotency-Key was already used for a different batch")
        return out, fresh

    def _query(self, q: Query) -> list[StoredEvent]:
        db = self.db
        assert db is not None
        where: list[str] = []
        args: list[Any] = []
        if q.type is not None:
            where.append("type = ?")
            args.append(q.type)
        if q.since is not None:
            where.append("created_at >= ?")
            args.append(q.since)
        if q.until is not None:
            where.append("created_at < ?")
            args.append(q.until)
        if q.before is not None:
            where.append("(created_at < ? OR (created_at = ? AND id < ?))")
            args.extend((q.before[0], q.before[0], q.before[1]))
        sql = "SELECT id, type, data, created_at FROM events"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created_at DESC, id DESC LIMIT ?"
        args.append(q.limit)
        return [StoredEvent._make(row) for row in db.execute(sql, args)]

    def _outbox_batch(self, after: int, limit: int) -> list[StoredEvent]:
        assert self.db is not None
        rows = self.db.execute(
            "SELECT e.id, e.type, e.data, e.created_at FROM outbox o JOIN events e ON e.id = o.event_id"
            " WHERE o.event_id > ? ORDER BY o.event_id LIMIT ?",
            (after, limit),
        )
        return [StoredEvent._make(row) for row in rows]

    def _apply_acks(self, db: sqlite3.Connection) -> None:
        """Delete the outbox rows of acknowledged events (inside the caller's transaction)."""
        acks = self.acks
        if acks:
            ids = [(acks.popleft(),) for _ in range(len(acks))]
            db.executemany("DELETE FROM outbox WHERE event_id = ?", ids)

    def _arm_flush(self) -> None:
        if not self._flush_armed:
            self._flush_armed = True
            self.schedule(ACK_FLUSH_SECONDS, _FLUSH_ACKS)

    def _flush_acks(self) -> None:
        """Apply waiting acks in a transaction of their own; keep checking while rows are pending."""
        db = self.db
        assert db is not None
        if self.acks:
            db.execute("BEGIN")
            try:
                self._apply_acks(db)
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
        # Rows still waiting (publishes in flight, or NATS down): acks may yet come.
        if db.execute("SELECT EXISTS (SELECT 1 FROM outbox)").fetchone()[0]:
            self._arm_flush()


def _same_event(stored: StoredEvent, ev: NewEvent) -> bool:
    if stored.type != ev.type:
        return False
    if ev.created_at is not None and ev.created_at != stored.created_at:
        return False
    return stored.data == ev.data or json.loads(stored.data) == ev.value

"""webhooks.db: the endpoints users register, the durable delivery queue, the attempts, the cursors.

One SQLite file (`data/webhooks.db`, WAL) owned by the DeliveryQueue actor: only its thread
opens it. Times are epoch seconds.

- `endpoints`: a user's target URL, the event types it wants, its sealed secret, the commit
  sequence it was created at (`after_seq`: it gets only later events), and its health:
  `failures` in a row, `retry_at` (no attempt before), `failing_since` (the first failure
  since the last success), `state` (`active`, `disabled`).
- `deliveries`: one row per (endpoint, event), unique, with the body to send (the event as it
  was committed); `pending` until `delivered` or `failed` (its endpoint was disabled).
- `attempts`: each try of a delivery: when, the HTTP status or the error, how long it took.
- `cursors`: per user, the commit sequence up to which events have been turned into
  deliveries. A delivery row and its cursor move in one transaction, so after a crash the
  queue resumes from the commit log exactly where it stopped.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

SCHEMA_VERSION = 1
SCHEMA = """
CREATE TABLE IF NOT EXISTS endpoints (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    url TEXT NOT NULL,
    types TEXT NOT NULL,            -- JSON list; [] = every type
    secret BLOB NOT NULL,           -- sealed with the server secret, bound to the id
    after_seq INTEGER NOT NULL,
    created_at REAL NOT NULL,
    state TEXT NOT NULL DEFAULT 'active',
    failures INTEGER NOT NULL DEFAULT 0,
    retry_at REAL,
    failing_since REAL,
    disabled_at REAL,
    disabled_reason TEXT
);
CREATE INDEX IF NOT EXISTS endpoints_user ON endpoints (user_id);
CREATE TABLE IF NOT EXISTS deliveries (
    id INTEGER PRIMARY KEY,
    msg_id TEXT NOT NULL UNIQUE,
    endpoint_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    event_seq INTEGER NOT NULL,
    event_type TEXT NOT NULL,
    body BLOB NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    finished_at REAL,
    last_status INTEGER,
    last_error TEXT,
    UNIQUE (endpoint_id, event_seq)
);
CREATE INDEX IF NOT EXISTS deliveries_pending ON deliveries (endpoint_id, id) WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS deliveries_listed ON deliveries (endpoint_id, id);
CREATE INDEX IF NOT EXISTS deliveries_finished ON deliveries (finished_at) WHERE finished_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS attempts (
    id INTEGER PRIMARY KEY,
    delivery_id INTEGER NOT NULL,
    at REAL NOT NULL,
    status INTEGER,
    error TEXT,
    duration_ms REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS attempts_delivery ON attempts (delivery_id);
CREATE TABLE IF NOT EXISTS cursors (user_id TEXT PRIMARY KEY, seq INTEGER NOT NULL);
"""

ACTIVE = "active"
DISABLED = "disabled"
PENDING = "pending"
DELIVERED = "delivered"
FAILED = "failed"
# Attempts listed with each delivery by GET /webhooks/{id}/deliveries.
MAX_ATTEMPTS_LISTED = 10


class Endpoint(NamedTuple):
    """One row of `endpoints`."""

    id: str
    user_id: str
    url: str
    types: str
    secret: bytes
    after_seq: int
    created_at: float
    state: str
    failures: int
    retry_at: float | None
    failing_since: float | None
    disabled_at: float | None
    disabled_reason: str | None


class Due(NamedTuple):
    """A delivery to attempt now, with what sending it needs."""

    id: int
    msg_id: str
    endpoint_id: str
    body: bytes
    url: str
    secret: bytes  # sealed


_ENDPOINT_COLUMNS = ", ".join(Endpoint._fields)
_INSERT_ENDPOINT = f"INTO endpoints ({_ENDPOINT_COLUMNS}) VALUES ({','.join('?' * len(Endpoint._fields))})"


class WebhookDb:
    """The queries of webhooks.db (the DeliveryQueue's thread only)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            # Created 0600 before SQLite opens it (it holds sealed secrets and event bodies).
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
        self.db = db = sqlite3.connect(path, isolation_level=None, check_same_thread=True)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")  # a commit survives a crash of brain (kill -9)
            db.execute("PRAGMA busy_timeout=5000")
            if db.execute("PRAGMA user_version").fetchone()[0] < SCHEMA_VERSION:
                db.executescript(SCHEMA)
                db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except BaseException:
            db.close()  # a damaged file or a full disk: the caller tries again later, with no descriptor left open
            raise

    def close(self) -> None:
        """Close the connection."""
        self.db.close()

    def transaction(self) -> _Transaction:
        """`with db.transaction():` BEGIN IMMEDIATE ... COMMIT (ROLLBACK on error)."""
        return _Transaction(self.db)

    # -- endpoints ---------------------------------------------------------------------------

    def add_endpoint(self, endpoint: Endpoint) -> None:
        """Insert a new endpoint, and the user's cursor at its `after_seq` unless there is one."""
        with self.transaction():
            self.db.execute(f"INSERT {_INSERT_ENDPOINT}", endpoint)
            self.db.execute("INSERT OR IGNORE INTO cursors (user_id, seq) VALUES (?, ?)",
                            (endpoint.user_id, endpoint.after_seq))

    def endpoints_of(self, user_id: str) -> list[Endpoint]:
        """A user's endpoints, oldest first."""
        rows = self.db.execute(f"SELECT {_ENDPOINT_COLUMNS} FROM endpoints WHERE user_id = ? ORDER BY created_at, id",
                               (user_id,))
        return [Endpoint._make(row) for row in rows]

    def endpoint(self, user_id: str, endpoint_id: str) -> Endpoint | None:
        """One of the user's endpoints (None: no such endpoint of theirs)."""
        row = self.db.execute(f"SELECT {_ENDPOINT_COLUMNS} FROM endpoints WHERE id = ? AND user_id = ?",
                              (endpoint_id, user_id)).fetchone()
        return None if row is None else Endpoint._make(row)

    def delete_endpoint(self, user_id: str, endpoint_id: str) -> bool:
        """Delete an endpoint with its deliveries; the user's cursor goes with their last endpoint."""
        with self.transaction():
            gone = self.db.execute("DELETE FROM endpoints WHERE id = ? AND user_id = ?", (endpoint_id, user_id)).rowcount
            if gone:
                self._delete_deliveries("endpoint_id = ?", (endpoint_id,))
                self.db.execute("DELETE FROM cursors WHERE user_id = ? AND NOT EXISTS "
                                "(SELECT 1 FROM endpoints WHERE user_id = ?)", (user_id, user_id))
        return bool(gone)

    def purge_user(self, user_id: str) -> int:
        """Forget everything of a user; how many endpoints they had."""
        with self.transaction():
            gone = self.db.execute("DELETE FROM endpoints WHERE user_id = ?", (user_id,)).rowcount
            self._delete_deliveries("user_id = ?", (user_id,))
            self.db.execute("DELETE FROM cursors WHERE user_id = ?", (user_id,))
        return gone

    def all_endpoints(self) -> list[Endpoint]:
        """Every endpoint (a cluster node's directory puts them in the shared bucket)."""
        return [Endpoint._make(row) for row in self.db.execute(f"SELECT {_ENDPOINT_COLUMNS} FROM endpoints")]

    def resume_points(self) -> dict[str, int]:
        """Per user with a cursor: the commit after which nothing is owed to any of their endpoints
        — the cursor, or just before the oldest delivery still pending, whichever is lower."""
        points = {user_id: int(seq) for user_id, seq in self.db.execute("SELECT user_id, seq FROM cursors")}
        # The pending rows alone (the partial index), not every delivery kept.
        for user_id, oldest in self.db.execute(
                "SELECT user_id, min(event_seq) FROM deliveries WHERE status = 'pending' GROUP BY user_id"):
            if user_id in points:
                points[user_id] = min(points[user_id], int(oldest) - 1)
        return points

    def adopt_endpoints(self, endpoints: Sequence[Endpoint], resume: dict[str, int]) -> int:
        """Add endpoints another node held (those not here yet), and move each user's cursor back to
        its resume point if it is further on; how many endpoints were added."""
        with self.transaction():
            added = 0
            for endpoint in endpoints:
                added += self.db.execute(f"INSERT OR IGNORE {_INSERT_ENDPOINT}", endpoint).rowcount
            for user_id, seq in resume.items():
                self.db.execute("INSERT INTO cursors (user_id, seq) VALUES (?, ?) "
                                "ON CONFLICT (user_id) DO UPDATE SET seq = min(seq, excluded.seq)", (user_id, seq))
        return added

    def users_with_active_endpoints(self) -> set[str]:
        """Who has an endpoint that still takes deliveries."""
        return {row[0] for row in self.db.execute("SELECT DISTINCT user_id FROM endpoints WHERE state = ?", (ACTIVE,))}

    # -- the queue ----------------------------------------------------------------------------

    def cursor(self, user_id: str) -> int | None:
        """Up to which commit the user's events are queued (None: the user has no endpoint)."""
        row = self.db.execute("SELECT seq FROM cursors WHERE user_id = ?", (user_id,)).fetchone()
        return None if row is None else int(row[0])

    def enqueue(self, user_id: str, rows: Iterable[tuple[str, str, int, str, bytes]], seq: int, now: float) -> int:
        """Queue deliveries (msg_id, endpoint_id, event_seq, event_type, body) and move the cursor
        to `seq`, in one transaction; how many were new."""
        with self.transaction():
            added = 0
            for msg_id, endpoint_id, event_seq, event_type, body in rows:
                added += self.db.execute(
                    "INSERT OR IGNORE INTO deliveries (msg_id, endpoint_id, user_id, event_seq, event_type, body, created_at)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (msg_id, endpoint_id, user_id, event_seq, event_type, body, now),
                ).rowcount
            self.db.execute("UPDATE cursors SET seq = max(seq, ?) WHERE user_id = ?", (seq, user_id))
        return added

    def due(self, now: float, limit: int, skip: Sequence[int], room: dict[str, int], per_endpoint: int) -> list[Due]:
        """At most `limit` pending deliveries of endpoints that may be tried now, oldest first per endpoint.

        Each endpoint gets at most `room[endpoint]` (absent: `per_endpoint`), a failing one at
        most one at a time; `skip`: deliveries in flight already.
        """
        skipped = set(skip)
        out: list[Due] = []
        endpoints = self.db.execute(
            "SELECT id, url, secret, failures FROM endpoints e WHERE state = ? AND (retry_at IS NULL OR retry_at <= ?)"
            " AND EXISTS (SELECT 1 FROM deliveries d WHERE d.endpoint_id = e.id AND d.status = ?)",
            (ACTIVE, now, PENDING),
        ).fetchall()
        for endpoint_id, url, secret, failures in endpoints:
            free = room.get(endpoint_id, per_endpoint)
            if failures:
                free = min(free, 1 - (per_endpoint - room.get(endpoint_id, per_endpoint)))
            if free <= 0:
                continue
            rows = self.db.execute(
                "SELECT id, msg_id, body FROM deliveries WHERE endpoint_id = ? AND status = ? ORDER BY id LIMIT ?",
                (endpoint_id, PENDING, free + len(skipped)),
            )
            for delivery_id, msg_id, body in rows:
                if free <= 0 or len(out) >= limit:
                    break
                if delivery_id in skipped:
                    continue
                out.append(Due(delivery_id, msg_id, endpoint_id, body, url, secret))
                free -= 1
            if len(out) >= limit:
                break
        return out

    def next_retry(self, now: float) -> float | None:
        """The earliest time a waiting endpoint with pending deliveries may be tried again."""
        row = self.db.execute(
            "SELECT min(retry_at) FROM endpoints e WHERE state = ? AND retry_at > ?"
            " AND EXISTS (SELECT 1 FROM deliveries d WHERE d.endpoint_id = e.id AND d.status = ?)",
            (ACTIVE, now, PENDING),
        ).fetchone()
        return None if row[0] is None else float(row[0])

    def record(self, delivery_id: int, at: float, status: int | None, error: str | None, duration_ms: float,
               delivered: bool) -> None:
        """One attempt of a delivery, and (when it succeeded) that it is done."""
        with self.transaction():
            self.db.execute("INSERT INTO attempts (delivery_id, at, status, error, duration_ms) VALUES (?, ?, ?, ?, ?)",
                            (delivery_id, at, status, error, duration_ms))
            self.db.execute(
                "UPDATE deliveries SET attempts = attempts + 1, last_status = ?, last_error = ?,"
                " status = CASE WHEN ? THEN ? ELSE status END, finished_at = CASE WHEN ? THEN ? ELSE finished_at END"
                " WHERE id = ?",
                (status, error, delivered, DELIVERED, delivered, at, delivery_id),
            )

    def endpoint_succeeded(self, endpoint_id: str) -> None:
        """The endpoint answered: no more waiting."""
        self.db.execute("UPDATE endpoints SET failures = 0, retry_at = NULL, failing_since = NULL WHERE id = ?",
                        (endpoint_id,))

    def endpoint_failed(self, endpoint_id: str, now: float, retry_at_for: Any) -> Endpoint | None:
        """Count a failure: the endpoint waits until `retry_at_for(failures)`; the row after it."""
        with self.transaction():
            self.db.execute(
                "UPDATE endpoints SET failures = failures + 1, failing_since = coalesce(failing_since, ?) WHERE id = ?",
                (now, endpoint_id),
            )
            row = self.db.execute(f"SELECT {_ENDPOINT_COLUMNS} FROM endpoints WHERE id = ?", (endpoint_id,)).fetchone()
            if row is None:
                return None
            endpoint = Endpoint._make(row)
            self.db.execute("UPDATE endpoints SET retry_at = ? WHERE id = ?", (retry_at_for(endpoint.failures), endpoint_id))
        return endpoint

    def disable(self, endpoint_id: str, now: float, reason: str) -> int:
        """Stop an endpoint: its pending deliveries fail; how many did."""
        with self.transaction():
            self.db.execute("UPDATE endpoints SET state = ?, disabled_at = ?, disabled_reason = ?, retry_at = NULL"
                            " WHERE id = ?", (DISABLED, now, reason, endpoint_id))
            return self.db.execute("UPDATE deliveries SET status = ?, finished_at = ? WHERE endpoint_id = ? AND status = ?",
                                   (FAILED, now, endpoint_id, PENDING)).rowcount

    def deliveries(self, endpoint_id: str, limit: int, status: str | None) -> list[dict[str, Any]]:
        """The newest deliveries of an endpoint, each with its attempts (newest first)."""
        sql = ("SELECT id, msg_id, event_seq, event_type, status, attempts, created_at, finished_at, last_status, last_error"
               " FROM deliveries WHERE endpoint_id = ?")
        args: list[Any] = [endpoint_id]
        if status is not None:
            sql += " AND status = ?"
            args.append(status)
        sql += " ORDER BY id DESC LIMIT ?"
        args.append(limit)
        keys = ("id", "msg_id", "event_seq", "event_type", "status", "attempts", "created_at", "finished_at",
                "last_status", "last_error")
        found = [dict(zip(keys, row)) for row in self.db.execute(sql, args)]
        for delivery in found:
            delivery["attempt_log"] = [
                {"at": at, "status": st, "error": err, "duration_ms": round(ms, 2)}
                for at, st, err, ms in self.db.execute(
                    "SELECT at, status, error, duration_ms FROM attempts WHERE delivery_id = ? ORDER BY id DESC LIMIT ?",
                    (delivery["id"], MAX_ATTEMPTS_LISTED),
                )
            ]
        return found

    def prune(self, before: float) -> int:
        """Forget deliveries finished before `before`; how many."""
        with self.transaction():
            return self._delete_deliveries("finished_at < ?", (before,))

    def _delete_deliveries(self, where: str, args: tuple[Any, ...]) -> int:
        self.db.execute(f"DELETE FROM attempts WHERE delivery_id IN (SELECT id FROM deliveries WHERE {where})", args)
        return self.db.execute(f"DELETE FROM deliveries WHERE {where}", args).rowcount



class _Transaction:
    __slots__ = ("db",)

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *_: object) -> None:
        self.db.execute("COMMIT" if exc_type is None else "ROLLBACK")

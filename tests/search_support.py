"""Helpers shared by the search tests and bench/search.py (no tests here).

`index_counts` reads what a store file says of its index. `write_v2_store` writes a user's events.db as brain wrote it before the search index and the
commit sequence existed (schema version 2, the version on main before issue 16), so tests and
benchmarks can open "an existing store" and watch it being upgraded and backfilled.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

# Schema version 2, verbatim and frozen (brain.api.user_store.SCHEMA has moved on from it):
# events, their outbox and the trigger that fills it.
V2_SCHEMA = """
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
CREATE TRIGGER IF NOT EXISTS events_outbox AFTER INSERT ON events
BEGIN
    INSERT INTO outbox (event_id) VALUES (new.id);
END;
"""


class IndexCounts(NamedTuple):
    """A store file's events and index rows, as the file says (brain.api.search)."""

    events: int
    indexed_events: int  # events before the live tail (search_tail.next): each must have its rows
    tail: int  # the first id of the live tail
    rows: int  # FTS5's rows
    times: int  # search_times rows
    check: str  # FTS5's integrity check: "ok" or its error


def index_counts(db_path: Path) -> IndexCounts:
    """Read a store file's IndexCounts (the server may be running: WAL readers do not disturb it)."""
    db = sqlite3.connect(db_path, timeout=10)
    try:
        (tail,) = db.execute("SELECT next FROM search_tail").fetchone()
        try:
            db.execute("INSERT INTO search (search, rank) VALUES ('integrity-check', 0)")
            check = "ok"
        except sqlite3.DatabaseError as exc:
            check = str(exc)
        return IndexCounts(
            db.execute("SELECT count(*) FROM events").fetchone()[0],
            db.execute("SELECT count(*) FROM events WHERE id < ?", (tail,)).fetchone()[0],
            tail,
            db.execute("SELECT count(*) FROM search_docsize").fetchone()[0],
            db.execute("SELECT count(*) FROM search_times").fetchone()[0],
            check,
        )
    finally:
        db.close()


def write_v2_store(data_dir: Path, user_id: str, rows: Iterable[tuple[str, str, str]], *, published: bool = True) -> Path:
    """data/users/{user_id}/events.db at schema version 2 holding (type, data JSON, created_at) rows.

    `published`: their outbox rows are gone, as once JetStream has acknowledged them.
    """
    path = data_dir / "users" / user_id / "events.db"
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.executescript(V2_SCHEMA)
        db.execute("PRAGMA user_version=2")
        db.execute("BEGIN")
        db.executemany("INSERT INTO events (type, data, created_at) VALUES (?, ?, ?)", rows)
        if published:
            db.execute("DELETE FROM outbox")
        db.execute("COMMIT")
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        db.close()
    return path

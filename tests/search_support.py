"""Helpers shared by the search tests and bench/search.py (no tests here).

`write_v2_store` writes a user's events.db as brain wrote it before the search index and the
commit sequence existed (schema version 2, the version on main before issue 16), so tests and
benchmarks can open "an existing store" and watch it being upgraded and backfilled.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterable
from pathlib import Path

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

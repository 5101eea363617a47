"""Event pages as ready bytes: each event's JSON is stored beside it, and SQLite joins a page.

A page of 100 events is ~15 KB of JSON. Built in Python (rows into tuples, tuples into text,
text into bytes) it costs the event loop's thread most of a request under the one GIL. So every
event's public JSON (`StoredEvent.json`: `{"id","type","data","created_at"}`, data as stored)
is written at commit into the `rendered` column, by the INSERT itself, and a page is one
aggregate query that concatenates those texts inside SQLite: one row back, one `bytes`, no
Python per event. The store runs it on its own thread, where SQLite works without the GIL.

Stores written before the column existed get it on open (`ensure_rendered`); their rows are
rendered in batches while the store serves (`backfill_step`), and until then a read renders
the missing ones itself (`coalesce`), so an old store is never read wrongly, only more slowly.

A store keeps the last page it read (`PageCache`) with the database's version at that moment:
SQLite's `data_version` (commits by any other connection, another worker's included) and the
connection's own `total_changes`. Asked for the same page while neither moved, it has the bytes
already, and the event loop takes them itself without waking the store's thread (the hop and
the GIL handed back and forth cost more than the read; docs/performance.md).
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Hashable, Sequence
from typing import Any, NamedTuple

# The SQL of an event's public JSON from its columns: byte for byte what StoredEvent.json() makes
# (type matched TYPE_RE on the way in, so it holds no quote or backslash; created_at is ours).
_RENDER = """'{{"id":'||{id}||',"type":"'||{type}||'","data":'||{data}||',"created_at":"'||{created_at}||'"}}'"""
RENDERED = f"coalesce(rendered, {_RENDER.format(id='id', type='type', data='data', created_at='created_at')})"
# Rows to render per backfill step: short enough that requests waiting behind it hardly notice.
BACKFILL_BATCH = 2000
# The largest page a store keeps: a page of 100 typical events (~15 KB) fits, and with
# api.max_open_stores stores open the cached pages stay a few MB.
CACHED_PAGE_MAX = 64 * 1024


def render_sql(id_sql: str, type_sql: str, data_sql: str, created_at_sql: str) -> str:
    """The SQL expression of an event's public JSON from four SQL expressions (an INSERT's values)."""
    return _RENDER.format(id=id_sql, type=type_sql, data=data_sql, created_at=created_at_sql)


def ensure_rendered(db: sqlite3.Connection) -> bool:
    """Give a store the `rendered` column if it lacks it; True while rows wait to be rendered."""
    columns = {row[1] for row in db.execute("PRAGMA table_info(events)")}
    if "rendered" not in columns:
        db.execute("ALTER TABLE events ADD COLUMN rendered TEXT")
    # Only the rows still to render are in this index: finding them never scans the table, and
    # once the backfill is done it stays empty (every new row is rendered as it is inserted).
    db.execute("CREATE INDEX IF NOT EXISTS events_unrendered ON events (id) WHERE rendered IS NULL")
    return bool(db.execute("SELECT EXISTS (SELECT 1 FROM events WHERE rendered IS NULL)").fetchone()[0])


def backfill_step(db: sqlite3.Connection, batch: int = BACKFILL_BATCH) -> bool:
    """Render up to `batch` rows written before the column existed (one transaction); True if more wait."""
    db.execute(
        f"UPDATE events SET rendered = {RENDERED} WHERE id IN "
        "(SELECT id FROM events WHERE rendered IS NULL LIMIT ?)",
        (batch,),
    )
    return bool(db.execute("SELECT EXISTS (SELECT 1 FROM events WHERE rendered IS NULL)").fetchone()[0])


class Page(NamedTuple):
    """A page of events as bytes: `events` is the inside of the JSON array (`{..},{..}`)."""

    events: bytes
    count: int
    last: tuple[str, int] | None  # (created_at, id) of its last event: where the next page starts
    more: bool  # whether an older event matches (a next page exists)
    digest: str  # of `events` and `more`: with the user and the signing key, the whole body's identity


def read_page(
    db: sqlite3.Connection, where: Sequence[str], args: Sequence[Any], limit: int, rendered: str = RENDERED
) -> Page:
    """Newest first (created_at, id), at most `limit` events matching every clause of `where`."""
    condition = f" WHERE {' AND '.join(where)}" if where else ""
    # The subquery with ORDER BY and LIMIT runs as a co-routine feeding the aggregate in its order
    # (SQLite never flattens a LIMIT subquery into an aggregate), so the page keeps its order.
    # min(created_at) is the last event's time; its id is the last of the ids, in that order.
    row = db.execute(
        f"SELECT CAST(group_concat(r, ',') AS BLOB), count(*), min(created_at), group_concat(id) FROM "
        f"(SELECT {rendered} AS r, created_at, id FROM events{condition}"
        " ORDER BY created_at DESC, id DESC LIMIT ?)",
        (*args, limit),
    ).fetchone()
    body, count, last_at, ids = row
    if not count:
        return Page(b"", 0, None, False, _digest(b"", False))
    last = (last_at, int(ids[ids.rfind(",") + 1:]))
    more = False
    if count == limit:
        older = [*where, "(created_at < ? OR (created_at = ? AND id < ?))"]
        more = bool(db.execute(
            f"SELECT EXISTS (SELECT 1 FROM events WHERE {' AND '.join(older)})", (*args, last[0], last[0], last[1])
        ).fetchone()[0])
    body = valid_utf8(body)
    return Page(body, count, last, more, _digest(body, more))


def db_version(db: sqlite3.Connection) -> tuple[int, int]:
    """What moves whenever the database may have changed: commits of other connections
    (`PRAGMA data_version`) and this connection's own changes (`total_changes`)."""
    return db.execute("PRAGMA data_version").fetchone()[0], db.total_changes


class PageCache:
    """A store's last page and the database version it was read at (not thread-safe: the store's
    database lock guards it)."""

    __slots__ = ("key", "version", "page")

    def __init__(self) -> None:
        self.key: Hashable = None
        self.version: tuple[int, int] | None = None
        self.page: Page | None = None

    def get(self, db: sqlite3.Connection, key: Hashable) -> Page | None:
        """The page kept for `key` (what selects it), if the database has not changed since it was read."""
        if key != self.key:
            return None
        if db_version(db) != self.version:
            self.key = self.page = None
            return None
        return self.page

    def read(self, db: sqlite3.Connection, key: Hashable, where: Sequence[str], args: Sequence[Any], limit: int,
             rendered: str = RENDERED) -> Page:
        """The page `key` selects: the one kept if the database is unchanged, else read (and kept)."""
        # Taken before the read: a commit racing the read leaves the entry stale (read again
        # next time), never a newer version on older bytes.
        version = db_version(db)
        if key == self.key and version == self.version and self.page is not None:
            return self.page
        page = read_page(db, where, args, limit, rendered)
        if len(page.events) <= CACHED_PAGE_MAX:
            self.key, self.version, self.page = key, version, page
        else:
            self.key = self.page = None
        return page


def valid_utf8(text: bytes) -> bytes:
    """`text`, with any byte that is not UTF-8 replaced by U+FFFD (only a damaged store has one)."""
    if text.isascii():
        return text
    try:
        text.decode()
    except UnicodeDecodeError:
        return text.decode(errors="replace").encode()
    return text


def _digest(events: bytes, more: bool) -> str:
    # hashlib lets go of the GIL over a page's bytes: this costs the store's thread, not the loop.
    return hashlib.blake2b(events, digest_size=12, person=b"more" if more else b"last").hexdigest()

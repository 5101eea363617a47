"""Event pages as ready bytes: each event's JSON is stored beside it, and SQLite joins a page.

A page of 100 events is ~15 KB of JSON. Built in Python (rows into tuples, tuples into text,
text into bytes) it costs the event loop's thread most of a request under the one GIL. So every
event's public JSON (`StoredEvent.json`: `{"id","type","data","created_at"}`, data as stored)
is written at commit into the `rendered` column, by the INSERT itself, and a page is one
aggregate query that concatenates those texts inside SQLite: one row back, one `bytes`, no
Python per event. The store runs it on its own thread, where SQLite works without the GIL.
An event with long data (over RENDER_INLINE_MAX characters: a mail with its body) is stored
without the copy, and the same query renders it as it reads (`coalesce`): the copy would double
what it writes and keeps, and make its reads slower, not faster.

Stores written before the column existed get it on open (`ensure_rendered`); their rows are
rendered in batches while the store serves (`backfill_step`), and until then a read renders
the missing ones itself (`coalesce`), so an old store is never read wrongly, only more slowly.

A store keeps the last page it read (`PageCache`) with the database's version at that moment.
Asked for the same page while the version has not moved, it has the bytes already, and the event
loop takes them itself without waking the store's thread (the hop and the GIL handed back and
forth cost more than the read; docs/performance.md). The version is the header of the WAL index
(`WalIndexHeader`): every commit rewrites it, whoever made it (this store, or another worker's
connection to the same file), and reading it is a copy of 48 bytes, where `PRAGMA data_version`
is a statement that takes the database's locks and lets go of the GIL. Without a WAL index (a
store read through `immutable=1`), the version is `data_version` and the connection's
`total_changes`.
"""

from __future__ import annotations

import binascii
import ctypes
import hashlib
import mmap
import os
import sqlite3
import sys
from collections.abc import Callable, Hashable, Iterator, Sequence
from typing import Any, NamedTuple

from brain.api.events import StoredEvent

# The SQL of an event's public JSON from its columns: byte for byte what StoredEvent.json() makes
# (type matched TYPE_RE on the way in, so it holds no quote or backslash; created_at is ours).
_RENDER = """'{{"id":'||{id}||',"type":"'||{type}||'","data":'||{data}||',"created_at":"'||{created_at}||'"}}'"""
RENDERED = f"coalesce(rendered, {_RENDER.format(id='id', type='type', data='data', created_at='created_at')})"
# An event whose data is longer than this (characters) keeps no JSON of its own: `rendered` stays
# NULL and a read renders it (RENDERED). The copy makes a page of short events faster to read
# (100 events of 300 bytes: 118 us joined from copies, 192 us rendered), less so as they grow,
# and none past ~10 KB (20 KB: 4.7 vs 4.5 ms): a row with its copy spills into overflow pages,
# which a read walks through to reach `rendered`, the last column. Yet it always doubles what is
# written and kept: a mail event of ~20 KB would store its body twice. `python -m bench.rendered`.
RENDER_INLINE_MAX = 8192
# The rows a backfill gives their JSON: written before the column, and short enough to keep it.
_TO_RENDER = f"rendered IS NULL AND length(data) <= {RENDER_INLINE_MAX}"
# Rows to render per backfill step: short enough that requests waiting behind it hardly notice.
BACKFILL_BATCH = 2000
# The largest page a store keeps: a page of 100 typical events (~15 KB) fits, and with
# api.max_open_stores stores open the cached pages stay a few MB.
CACHED_PAGE_MAX = 64 * 1024
# The first copy of the WAL index header (struct WalIndexHdr: change counter, frames, salts,
# checksums) at the start of the -shm file. A commit writes the second copy, then this one.
WAL_HEADER_BYTES = 48
# Where mxFrame (the frames in the WAL) sits in that header, in the machine's byte order.
_MX_FRAME = slice(16, 20)


def render_sql(id_sql: str, type_sql: str, data_sql: str, created_at_sql: str) -> str:
    """The SQL expression of an event's public JSON from four SQL expressions (an INSERT's values)."""
    return _RENDER.format(id=id_sql, type=type_sql, data=data_sql, created_at=created_at_sql)


def stored_render_sql(id_sql: str, type_sql: str, data_sql: str, created_at_sql: str) -> str:
    """The SQL of what an INSERT stores in `rendered`: the event's JSON, or NULL when its data is
    longer than RENDER_INLINE_MAX (a read renders it, as for a row older than the column)."""
    json_sql = render_sql(id_sql, type_sql, data_sql, created_at_sql)
    return f"CASE WHEN length({data_sql}) > {RENDER_INLINE_MAX} THEN NULL ELSE {json_sql} END"


def ensure_rendered(db: sqlite3.Connection) -> bool:
    """Give a store the `rendered` column if it lacks it; True while rows wait to be rendered."""
    columns = {row[1] for row in db.execute("PRAGMA table_info(events)")}
    if "rendered" not in columns:
        db.execute("ALTER TABLE events ADD COLUMN rendered TEXT")
    # Only the rows still to render are in this index: finding them never scans the table, and
    # once the backfill is done it stays empty (every new row is rendered as it is inserted, or
    # is too long to be). The index of every row without its JSON (before RENDER_INLINE_MAX)
    # would take in each long event for good: gone. A brain from before makes it again, and
    # gives the long rows their JSON: its reads were always right, and so are this one's. The
    # first open after this change builds the new index: one read of the whole table.
    db.execute("DROP INDEX IF EXISTS events_unrendered")
    db.execute(f"CREATE INDEX IF NOT EXISTS events_to_render ON events (id) WHERE {_TO_RENDER}")
    return bool(db.execute(f"SELECT EXISTS (SELECT 1 FROM events WHERE {_TO_RENDER})").fetchone()[0])


def backfill_step(db: sqlite3.Connection, batch: int = BACKFILL_BATCH) -> bool:
    """Render up to `batch` rows written before the column existed (one transaction); True if more wait."""
    db.execute(
        f"UPDATE events SET rendered = {RENDERED} WHERE id IN (SELECT id FROM events WHERE {_TO_RENDER} LIMIT ?)",
        (batch,),
    )
    return bool(db.execute(f"SELECT EXISTS (SELECT 1 FROM events WHERE {_TO_RENDER})").fetchone()[0])


class Page(NamedTuple):
    """A page of events as bytes: `events` is the inside of the JSON array (`{..},{..}`)."""

    events: bytes
    count: int
    last: tuple[str, int] | None  # (created_at, id) of its last event: where the next page starts
    more: bool  # whether an older event matches (a next page exists)
    digest: str  # of its events and `more`: with the user and the signing key, the whole body's identity
    # Its events' ids, times and byte sizes, comma-separated, newest first (what `on_top` needs).
    ids: str = ""
    times: str = ""
    sizes: str = ""


def read_page(
    db: sqlite3.Connection, where: Sequence[str], args: Sequence[Any], limit: int, rendered: str = RENDERED
) -> Page:
    """Newest first (created_at, id), at most `limit` events matching every clause of `where`."""
    condition = f" WHERE {' AND '.join(where)}" if where else ""
    # One statement, reading one event more than the page: that it exists says a next page does.
    # (A second statement is a second time the store's thread lets go of the GIL and must wait
    # for the event loop to take it back: under load each such hand-off costs more than the SQL.)
    # The subquery with ORDER BY and LIMIT runs as a co-routine feeding the aggregates in its
    # order (SQLite never flattens a LIMIT subquery into an aggregate), so the lists keep it: the
    # extra event is the last of each, and its byte length says where it begins in the text.
    row = db.execute(
        "SELECT CAST(group_concat(r, ',') AS BLOB), count(*), group_concat(id), group_concat(created_at), "
        f"group_concat(length(CAST(r AS BLOB))) FROM (SELECT {rendered} AS r, created_at, id FROM events{condition}"
        " ORDER BY created_at DESC, id DESC LIMIT ?)",
        (*args, limit + 1),
    ).fetchone()
    body, count, ids, times, sizes = row
    if not count:
        return Page(b"", 0, None, False, _digest(b"", "", False))
    more = count > limit
    if more:
        body = body[:len(body) - int(sizes[sizes.rfind(",") + 1:]) - 1]
        ids, times, sizes, count = ids[:ids.rfind(",")], times[:times.rfind(",")], sizes[:sizes.rfind(",")], limit
    last = (times[times.rfind(",") + 1:], int(ids[ids.rfind(",") + 1:]))
    checked = valid_utf8(body)
    if checked is not body:
        sizes = ""  # replaced bytes: the sizes no longer say where each event ends (`on_top` gives up)
    return Page(checked, count, last, more, _digest(checked, ids, more), ids, times, sizes)


def on_top(page: Page, events: Sequence[StoredEvent], limit: int) -> Page | None:
    """The newest `limit` events once `events` are committed, from `page`, the newest `limit`
    before them (no filter); None if one of them is not newer than all of it."""
    if page.count and not page.sizes:
        return None
    added = sorted(((e.id, e.created_at, e.json().encode()) for e in events), key=lambda e: (e[1], e[0]), reverse=True)
    if page.count:
        first_id, _, _ = page.ids.partition(",")
        first_at, _, _ = page.times.partition(",")
        if (added[-1][1], added[-1][0]) <= (first_at, int(first_id)):
            return None  # back-dated: it belongs further down (or on another page)
    added = added[:limit]
    kept = min(page.count, limit - len(added))
    ids = [str(e[0]) for e in added]
    times = [e[1] for e in added]
    sizes = [str(len(e[2])) for e in added]
    parts = [e[2] for e in added]
    if kept:
        old_sizes = page.sizes.split(",")[:kept]
        parts.append(page.events[:sum(map(int, old_sizes)) + kept - 1])
        ids += page.ids.split(",")[:kept]
        times += page.times.split(",")[:kept]
        sizes += old_sizes
    body = b",".join(parts)
    more = page.more or len(events) + page.count > limit
    id_text = ",".join(ids)
    return Page(body, len(ids), (times[-1], int(ids[-1])), more, _digest(body, id_text, more), id_text,
                ",".join(times), ",".join(sizes))


def db_version(db: sqlite3.Connection) -> tuple[int, int]:
    """What moves whenever the database may have changed, through SQL: commits of other
    connections (`PRAGMA data_version`) and this connection's own changes (`total_changes`)."""
    return db.execute("PRAGMA data_version").fetchone()[0], db.total_changes


class WalIndexHeader:
    """A read-only map of the WAL index header of a connection's database (Linux).

    It maps the descriptor of the `-shm` file that SQLite itself holds open, found among the
    numbers just past the one free before the connection opened, and never opens or closes
    one of its own: closing any descriptor of a file
    drops every POSIX lock the process holds on it (fcntl(2)), SQLite's read and DMS locks on
    the WAL index included, and then another process may reset the index under live readers.
    The map outlives SQLite's descriptor; `close` unmaps it, and must come before the
    connection closes (once no connection holds the file, SQLite may truncate it).
    """

    __slots__ = ("_address", "_header")

    def __init__(self, address: int) -> None:
        self._address = address
        self._header = (ctypes.c_char * WAL_HEADER_BYTES).from_address(address)

    @classmethod
    def of(cls, db: sqlite3.Connection, near: int | None) -> WalIndexHeader | None:
        """The header of `db`'s database, if it is in WAL mode and SQLite holds its index open
        on a descriptor from `near` (`next_descriptor()` just before `db` was opened) on."""
        if _mmap is None or near is None:
            return None
        try:
            name = db.execute("PRAGMA database_list").fetchone()[2]
            if not name or db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                return None
            index = os.stat(f"{name}-shm")
            # A few descriptors first: listing /proc/self/fd costs milliseconds once a process
            # holds thousands (three per open store). Linux hands out the lowest free number, so
            # the connection's files sit just past `near`, unless other threads opened files
            # meanwhile (then further up) or closed some (then below it): only then is the whole
            # list looked through (rare, and on the store's thread).
            near_ones = range(max(0, near - _NEAR_DESCRIPTORS), near + _NEAR_DESCRIPTORS)
            for fds in (near_ones, _other_descriptors(near_ones)):
                for fd in fds:
                    try:
                        found = os.fstat(fd)
                    except OSError:
                        continue  # not open (or closed meanwhile by another thread)
                    if found.st_ino == index.st_ino and found.st_dev == index.st_dev and found.st_size >= WAL_HEADER_BYTES:
                        address = _mmap(None, mmap.PAGESIZE, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
                        return None if address in (None, _MAP_FAILED) else cls(address)
        except (sqlite3.Error, OSError, ValueError):
            pass
        return None

    def read(self) -> bytes:
        """The header as it is now (what every commit rewrites)."""
        return self._header.raw

    def close(self) -> None:
        """Unmap it (nothing may read it after)."""
        if self._address and _munmap is not None:
            _munmap(self._address, mmap.PAGESIZE)
        self._address = 0


def _libc_mmap() -> tuple[Any, Any]:
    # ctypes, not the mmap module: mmap.mmap duplicates the descriptor it maps, and closes the
    # duplicate when it is freed (see WalIndexHeader).
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        map_, unmap = libc.mmap, libc.munmap
    except (OSError, AttributeError):
        return None, None
    map_.restype = ctypes.c_void_p
    map_.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long)
    unmap.restype = ctypes.c_int
    unmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
    return map_, unmap


_mmap, _munmap = _libc_mmap() if os.path.isdir("/proc/self/fd") else (None, None)
_MAP_FAILED = ctypes.c_void_p(-1).value
# How many descriptors each side of `near` WalIndexHeader.of looks at before it lists them all.
_NEAR_DESCRIPTORS = 32


def _other_descriptors(seen: range) -> Iterator[int]:
    """The process's open descriptors outside `seen`, listed when first asked for."""
    for entry in os.listdir("/proc/self/fd"):
        fd = int(entry)
        if fd not in seen:
            yield fd


def next_descriptor() -> int:
    """The number the process's next open file gets (the lowest free one, on Linux)."""
    fd = os.open(os.devnull, os.O_RDONLY)
    os.close(fd)  # /dev/null: nobody holds a lock on it
    return fd


class PageCache:
    """A store's last page and the database version it was read at (not thread-safe: the store's
    database lock guards it). One per connection: two connections' versions are not comparable."""

    __slots__ = ("_db", "_header", "_version", "_appended", "key", "version", "page")

    def __init__(self, db: sqlite3.Connection | None = None, near: int | None = None) -> None:
        self._db = db
        self._appended: list[StoredEvent] | None = None  # while watching a write
        self._header = WalIndexHeader.of(db, near) if db is not None else None
        self._version: Callable[[], object] | None = (
            self._header.read if self._header is not None else None if db is None else lambda: db_version(db)
        )
        self.key: Hashable = None
        self.version: object = None
        self.page: Page | None = None

    def wal_frames(self) -> int | None:
        """The frames in the database's WAL now (the index header's mxFrame), None when the header
        is not mapped. A WAL is reset, and its count starts again, by the first write after a
        checkpoint copied every frame back."""
        if self._header is None:
            return None
        return int.from_bytes(self._header.read()[_MX_FRAME], sys.byteorder)

    def get(self, key: Hashable) -> Page | None:
        """The page kept for `key` (what selects it), if the database has not changed since it was read."""
        if key != self.key or self._version is None:
            return None
        return self._kept(key, self._version())

    def read(self, db: sqlite3.Connection, key: Hashable, where: Sequence[str], args: Sequence[Any], limit: int,
             rendered: str = RENDERED) -> Page:
        """The page `key` selects: the one kept if the database is unchanged, else read (and kept)."""
        # Taken before the read: a commit racing the read leaves the entry stale (read again
        # next time), never a newer version on older bytes.
        version = self._version() if self._version is not None else None
        page = self._kept(key, version)
        if page is not None:
            return page
        page = read_page(db, where, args, limit, rendered)
        if version is not None and len(page.events) <= CACHED_PAGE_MAX:
            self.key, self.version, self.page = key, version, page
        else:
            self.key = self.page = None
        return page

    def watch(self) -> tuple[object, int] | None:
        """Before a write of the store's own that changes the events only by appending (or not
        at all: the outbox's, the search index's): what `keep_through` needs to keep the page
        past it. None: nothing to keep."""
        self._appended = None
        if self.page is None or self._header is None or self._db is None or self._header.read() != self.version:
            return None
        try:
            # data_version first: a commit of another connection's after it shows in the header.
            others = self._db.execute("PRAGMA data_version").fetchone()[0]
        except sqlite3.Error:
            return None  # the write meets it too, and deals with it
        if self._header.read() != self.version:
            return None
        self._appended = []
        return self.version, others

    def appended(self, events: Sequence[StoredEvent]) -> None:
        """Events the watched write committed."""
        if self._appended is not None:
            self._appended.extend(events)

    def drop(self) -> None:
        """Forget the page (a write that changes the events otherwise than by appending)."""
        self.key = self.page = self._appended = None

    def keep_through(self, watched: tuple[object, int] | None, newest: Callable[[Hashable], int | None]) -> None:
        """After that write: the page holds at the new version, with the appended events on top
        if `newest(key)` gives its limit (the newest events, unfiltered), unless another
        connection committed meanwhile; otherwise it is forgotten, or read again."""
        appended, self._appended = self._appended, None
        if watched is None or appended is None or self._header is None or self._db is None:
            return
        if self.page is None or self.version != watched[0]:
            return
        # The header first: a commit of another connection's after it shows in data_version.
        now = self._header.read()
        if now == self.version:
            return
        try:
            if self._db.execute("PRAGMA data_version").fetchone()[0] != watched[1]:
                return  # read again
        except sqlite3.Error:
            return
        page: Page | None = self.page
        if appended:
            limit = newest(self.key)
            page = None if limit is None else on_top(self.page, appended, limit)
            if page is None or len(page.events) > CACHED_PAGE_MAX:
                self.drop()
                return
        self.version, self.page = now, page

    def close(self) -> None:
        """Forget the page and let go of the header (before its connection closes)."""
        self.key = self.page = self._version = self._db = None
        if self._header is not None:
            self._header.close()
            self._header = None

    def _kept(self, key: Hashable, version: object) -> Page | None:
        return self.page if key == self.key and version == self.version else None


def valid_utf8(text: bytes) -> bytes:
    """`text`, with any byte that is not UTF-8 replaced by U+FFFD (only a damaged store has one)."""
    if text.isascii():
        return text
    try:
        text.decode()
    except UnicodeDecodeError:
        return text.decode(errors="replace").encode()
    return text


def _digest(events: bytes, ids: str, more: bool) -> str:
    # Which events the page holds (an event's JSON never changes once written) and a CRC of its
    # bytes, for whatever else could differ: no hash over the ~15 KB, and none that lets go of
    # the GIL (hashlib does over 2 KiB; the store's thread then waits to take it back).
    return hashlib.blake2b(
        f"{ids}/{binascii.crc32(events)}".encode(), digest_size=12, person=b"more" if more else b"last"
    ).hexdigest()

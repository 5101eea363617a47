"""The full-text index of one user's store: kept a moment behind the writes (the live tail),
backfilled for stores that predate it, and searched.

`search` is a contentless FTS5 table (brain.api.documents says what each column holds: one per
field of data) in the user's events.db, rowid = event id, tokenizer unicode61 with diacritics
folded. Contentless, because the text is in `events.data` already: the index alone is kept, and
an event's row is removed by recomputing its columns from the stored data (`remove`). A
prefix index of three letters (brain.api.documents.FTS_SCHEMA: `abc*` reads one doclist instead
of merging every matching word's); no trigram index, and no prefix index of two or four letters:
each multiplies the work of every write and of the backfill (figures in docs/performance.md).
Prefix queries need two letters.

Consistency: a write does not touch the index. The events from `search_tail.next` on are the
live tail, not indexed yet; `catch_up` indexes them in a transaction of its own and moves
`next` past them in the same commit, so what the file says is indexed always is — a crash
leaves a longer tail, never an event missing from the index without the file saying so, nor
a row without its event (`remove`, inside a deletion's transaction, removes the rows of indexed
events only). The store catches up a moment after a write (`search.index_delay_seconds`, or at
once when the tail reaches TAIL_ROWS), and always before it searches or counts the index, so a search sees
every event committed before it. Why not in the write's own transaction: an FTS5 commit
writes a new segment however small (a fixed cost per transaction), and a row of this table
costs a little per column whether the column is empty or not; paid once per POST it was most
of a write's time, paid once per tail it is a small part (docs/performance.md has figures).
Events older than the index — a store created before it, or while `search.index` was off —
are indexed by `backfill_step`, a bounded transaction at a time, between the store's
requests; `search_state` records which ids are still to do (`backfill_next`..`backfill_end`;
those above it are the tail's).

Ranking: BM25 over the field columns (weights in brain.api.documents: what names a thing,
then a mail's people, then the rest; meta, which holds type, has: and tagged ids, scores
nothing) times a recency factor, `1 + recency_weight x 0.5 ^ (age_days / half_life)`. A query
is ranked over a window of at most `search.rank_window` matches, the newest by id; when that
is used up, paging goes on with the next older window. Each window's ranked order is kept in memory for
`search.cursor_seconds` (the cursor names it), so paging through it never skips or repeats an
event while writes go on: the order was fixed at the first page, and events written since
(ids above the window) are not part of it. A cursor that outlives its snapshot (the store
closed, the time ran out) ranks the window again and resumes after the last (score, id) seen.

Merging: FTS5's automatic merges are off (they made an occasional write wait for a large
merge); the store calls `merge_step` when it has been idle for a moment instead.
"""

from __future__ import annotations

import json
import logging
from array import array
import secrets
import sqlite3
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from brain.api.documents import COLUMNS, FTS_SCHEMA, VERSION, FieldSlots, document, document_of
from brain.api.documents import SCHEMA as DOCUMENT_SCHEMA
from brain.api.events import NewEvent, StoredEvent
from brain.api.highlights import Highlighter
from brain.api.query import ParsedQuery
from brain.api.settings import SearchSettings

log = logging.getLogger("brain.api.search")

_AUTOMERGE_OFF = "INSERT INTO search (search, rank) VALUES ('automerge', 0)"
SCHEMA = DOCUMENT_SCHEMA + f"""
{_AUTOMERGE_OFF};
-- Each indexed event's created_at, for the recency factor and since/until: a row of events
-- keeps it after `data`, which for a mail lies in overflow pages that would all be read.
CREATE TABLE IF NOT EXISTS search_times (id INTEGER PRIMARY KEY, created_at TIMESTAMP NOT NULL);
-- Which events are not in the index yet: ids from backfill_next to backfill_end (none when
-- next > end); unindexed_from is set while search.index is off (ids from there were not
-- indexed: turned on again, the index is built anew). version: brain.api.documents.VERSION.
CREATE TABLE IF NOT EXISTS search_state (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    version INTEGER NOT NULL,
    backfill_next INTEGER NOT NULL,
    backfill_end INTEGER NOT NULL,
    unindexed_from INTEGER
);
""" + (_TAIL_SCHEMA := """
-- Events from `next` on are the live tail: written, not indexed yet (see `catch_up`).
CREATE TABLE IF NOT EXISTS search_tail (id INTEGER PRIMARY KEY CHECK (id = 1), next INTEGER NOT NULL);
""")
_STATE = "SELECT version, backfill_next, backfill_end, unindexed_from FROM search_state"
_MARKS = ", ".join("?" * len(COLUMNS))
_INSERT = f"INSERT INTO search (rowid, {', '.join(COLUMNS)}) VALUES (?, {_MARKS})"
_INSERT_TIME = "INSERT INTO search_times (id, created_at) VALUES (?, ?)"
_DELETE = f"INSERT INTO search (search, rowid, {', '.join(COLUMNS)}) VALUES ('delete', ?, {_MARKS})"
_JOIN = " JOIN search_times e ON e.id = s.rowid"
# An event's data as bytes: a damaged row (not UTF-8: a disk error, a foreign writer) would make
# sqlite3 raise as it decodes the text; _text decodes it with U+FFFD instead, as pages do.
_DATA = "CAST(data AS BLOB)"
# A backfill transaction stops after this long, so the requests waiting behind it wait little.
BACKFILL_STEP_SECONDS = 0.02
BACKFILL_ROWS = 256
# The tail is indexed `search.index_delay_seconds` after the write that began it, or at once
# when it is this long (and at most this many events per transaction).
TAIL_ROWS = 256
# Events of the tail whose data a store keeps as their writer gave it (`SearchIndex.written`),
# and the JSON bytes those of all the process's stores may come to (many users' mail syncing at
# once must not hold many pages of bodies each): a page or two of mail per store between catch-ups.
WRITTEN_ROWS = 2 * TAIL_ROWS
WRITTEN_BYTES = 64 << 20
# The batch of a catch-up that gives way to a waiting write (`catch_up`'s `yield_to`): a mail
# event takes ~0.25 ms to index, so a write waits ~8 ms at most, not the whole transaction.
YIELD_ROWS = 32
_TAIL_IDS = "SELECT id FROM events WHERE id >= ? ORDER BY id LIMIT ?"  # rowids only: no overflow pages read
_ROW = f"SELECT type, {_DATA}, created_at FROM events WHERE id = ?"
# Pages of merge work per idle step (FTS5's 'merge' command).
MERGE_PAGES = 64
# Ranked windows kept per store for the next pages (a few KiB each).
MAX_SNAPSHOTS = 8


class SearchPosition(NamedTuple):
    """Where a search's next page starts (inside a signed cursor).

    The window is the matches with ids in [low, high] (low = 0: not computed yet), ranked as of
    the Julian day `now`; `offset` counts the ranked places already served, the last of which
    had `last_score` and `last_id`.
    """

    snapshot: str
    high: int
    low: int
    now: float
    offset: int
    last_score: float
    last_id: int


class SearchRequest(NamedTuple):
    """A parsed query for a store to run."""

    query: ParsedQuery
    digest: str
    since: str | None
    until: str | None
    limit: int
    position: SearchPosition | None


class SearchHit(NamedTuple):
    """One result: the event, its score, and marked snippets by field."""

    event: StoredEvent
    score: float
    highlights: dict[str, str]


class SearchPage(NamedTuple):
    """One page of results, where the next starts (None: no more), and whether the index was
    still backfilling (older events may be missing)."""

    hits: list[SearchHit]
    next: SearchPosition | None
    partial: bool = False


class IndexUnavailable(Exception):
    """search.index is off: there is nothing to search."""


@dataclass
class _Snapshot:
    digest: str
    high: int
    low: int
    now: float
    scores: array[float]  # best first
    ids: array[int]  # in the same order
    expires: float


@dataclass
class IndexFigures:
    """Backfill progress across the process's stores (for /health and /metrics), and the gate
    that keeps at most `concurrency` stores backfilling at once."""

    concurrency: int
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _pending: dict[str, int] = field(default_factory=dict)  # user -> events still to index
    _running: set[str] = field(default_factory=set)
    indexed: int = 0  # events indexed by backfills in this process
    seconds: float = 0.0  # time spent in backfill transactions
    finished: int = 0  # stores whose backfill completed here

    def waiting(self, user_id: str, pending: int) -> None:
        """A store has `pending` events to backfill (0: none)."""
        with self._lock:
            if pending > 0:
                self._pending[user_id] = pending
            else:
                self._pending.pop(user_id, None)

    def acquire(self, user_id: str) -> bool:
        """Take one of the backfill slots for a store (True if it has one)."""
        with self._lock:
            if user_id in self._running:
                return True
            if len(self._running) >= self.concurrency:
                return False
            self._running.add(user_id)
            return True

    def release(self, user_id: str, *, done: bool = False) -> None:
        """Give a store's slot back (`done`: its backfill completed)."""
        with self._lock:
            self._running.discard(user_id)
            if done:
                self._pending.pop(user_id, None)
                self.finished += 1

    def progressed(self, user_id: str, rows: int, seconds: float) -> None:
        """A step indexed `rows` events in `seconds`."""
        with self._lock:
            self.indexed += rows
            self.seconds += seconds
            if user_id in self._pending:
                self._pending[user_id] = max(0, self._pending[user_id] - rows)

    def stats(self) -> dict[str, Any]:
        """JSON-able figures."""
        with self._lock:
            return {
                "backfilling_stores": len(self._pending),
                "backfill_running": len(self._running),
                "backfill_pending_events": sum(self._pending.values()),
                "backfilled_events": self.indexed,
                "backfilled_stores": self.finished,
                "backfill_rate": round(self.indexed / self.seconds, 1) if self.seconds else None,
            }


class IndexOptions(NamedTuple):
    """How the stores of a process keep and search their indexes ([search] settings)."""

    enabled: bool
    figures: IndexFigures
    recency_weight: float
    half_life_days: float
    rank_window: int
    cursor_seconds: float
    tail_seconds: float

    @classmethod
    def from_settings(cls, search: SearchSettings, figures: IndexFigures | None = None) -> IndexOptions:
        """The options [search] gives (with the process's figures, or figures of their own)."""
        return cls(
            enabled=search.index, figures=figures or IndexFigures(search.backfill_concurrency),
            recency_weight=search.recency_weight, half_life_days=search.recency_half_life_days,
            rank_window=search.rank_window, cursor_seconds=search.cursor_seconds,
            tail_seconds=search.index_delay_seconds,
        )


class SearchIndex:
    """The index of one store; used only on the store's thread, inside its transactions."""

    def __init__(self, db: sqlite3.Connection, *, user_id: str, options: IndexOptions) -> None:
        self.db = db
        self.user_id = user_id
        self.enabled = options.enabled
        self.figures = options.figures
        self.recency_weight = options.recency_weight
        self.half_life = options.half_life_days
        self.rank_window = options.rank_window
        self.cursor_seconds = options.cursor_seconds
        self.next = 1
        self.end = 0
        self.tail = 1  # the first event of the live tail (search_tail.next)
        self.unindexed_from: int | None = None
        self.slots = FieldSlots(db)
        self._snapshots: OrderedDict[str, _Snapshot] = OrderedDict()
        self._written = _Kept()

    # -- state -------------------------------------------------------------------------------

    def open(self, max_id: int) -> None:
        """Read (or start) the index's state; an outdated or interrupted index is reset."""
        db = self.db
        row = db.execute(_STATE).fetchone()
        if row is None:
            # A store from before the index: every event it has is to be indexed.
            db.execute("INSERT INTO search_state VALUES (1, ?, 1, ?, NULL)", (VERSION, max_id))
            row = (VERSION, 1, max_id, None)
        version, self.next, self.end, self.unindexed_from = row
        self._open_tail(max_id)
        if not self.enabled:
            if self.unindexed_from is None:
                self.unindexed_from = max_id + 1
                db.execute("UPDATE search_state SET unindexed_from = ?", (self.unindexed_from,))
            return
        if version != VERSION or self.unindexed_from is not None:
            self._reset()
        self.figures.waiting(self.user_id, self.pending())

    def _reset(self) -> None:
        """Drop an index of another version (or one not kept while search.index was off) and
        start building it anew in the background — unless another worker did just that."""
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            version, _, _, unindexed_from = db.execute(_STATE).fetchone()
            if version != VERSION or unindexed_from is not None:
                why = "built by another version" if version != VERSION else "not kept while search.index was off"
                log.info("%s: the search index was %s; rebuilding it in the background", self.user_id, why)
                max_id = db.execute("SELECT ifnull(max(id), 0) FROM events").fetchone()[0]
                # Dropped, not emptied: the table's own definition may be another version's.
                db.execute("DROP TABLE IF EXISTS search")
                db.execute(FTS_SCHEMA)
                db.execute(_AUTOMERGE_OFF)
                db.execute("DELETE FROM search_times")
                db.execute("DELETE FROM search_fields")
                db.execute(
                    "UPDATE search_state SET version = ?, backfill_next = 1, backfill_end = ?, unindexed_from = NULL",
                    (VERSION, max_id),
                )
                db.execute("UPDATE search_tail SET next = ?", (max_id + 1,))
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        self.slots.reload()
        _, self.next, self.end, self.unindexed_from = db.execute(_STATE).fetchone()
        self._read_tail()
        self._forget_written()

    def _open_tail(self, max_id: int) -> None:
        try:
            row = self.db.execute("SELECT next FROM search_tail").fetchone()
        except sqlite3.OperationalError:  # a store from before the tail: no table yet
            row = None
        if row is None:
            # Until now every event was indexed as it was written, or is the backfill's.
            self.db.executescript(
                f"BEGIN IMMEDIATE;{_TAIL_SCHEMA}INSERT OR IGNORE INTO search_tail VALUES (1, {int(max_id) + 1});COMMIT;"
            )
            row = self.db.execute("SELECT next FROM search_tail").fetchone()
        self.tail = row[0]

    @property
    def behind(self) -> bool:
        """Whether the live tail holds events (as far as this process knows: another worker may
        have indexed them since, or written more)."""
        return self.enabled and self.db.execute("SELECT EXISTS (SELECT 1 FROM events WHERE id >= ?)", (self.tail,)).fetchone()[0] == 1

    @property
    def backfilling(self) -> bool:
        """Whether events written before the index are still to be indexed."""
        return self.enabled and self.next <= self.end

    def pending(self) -> int:
        """How many events the backfill has still to index."""
        if self.next > self.end:
            return 0
        return int(self.db.execute("SELECT count(*) FROM events WHERE id BETWEEN ? AND ?", (self.next, self.end)).fetchone()[0])

    def indexed(self, event_id: int) -> bool:
        """Whether an event is in the index (so removing it must remove its row)."""
        if self.next <= event_id <= self.end:
            self._read_backfill()  # another worker may have indexed it since (inside the caller's transaction)
        if self.next <= event_id <= self.end:
            return False
        if event_id >= self.tail:
            self._read_tail()  # indexed by another worker since?
            if event_id >= self.tail:
                return False
        return self.unindexed_from is None or event_id < self.unindexed_from

    # -- writes -------------------------------------------------------------------------------

    def written(self, events: Iterable[tuple[StoredEvent, NewEvent]]) -> None:
        """Keep the data of events just committed as their writer gave it, for `catch_up` to
        index without reading and parsing the stored text again (a mail event's 20 KB of JSON:
        most of the catch-up's Python time). Only a `plain` value (it reads as the stored text
        parses) is kept, within WRITTEN_ROWS (the store's) and WRITTEN_BYTES (the process's);
        the writer must not change it
        after the append. Anything not kept is read from the table as before."""
        if not self.enabled:
            return
        kept = self._written
        for stored, ev in events:
            if ev.plain and not kept.add(stored.id, (stored.type, ev.value, stored.created_at), len(stored.data)):
                return  # full: the rest is read from the table

    def _forget_written(self, below: int | None = None) -> None:
        """Drop kept data: all of it, or that of events below an id (indexed, or gone)."""
        self._written.drop(below)

    def catch_up(
        self, seconds: float | None = BACKFILL_STEP_SECONDS, *, yield_to: Callable[[], bool] | None = None
    ) -> bool:
        """Index the live tail in one transaction (stopping after `seconds`, None: all of it);
        True while events remain in it.

        With `yield_to` (the store's background catch-up: whether a write waits for the
        store's thread), it goes in batches of YIELD_ROWS and stops before any batch once
        `yield_to()` is true, the first included, so that write waits for one batch at most
        rather than for the whole transaction (docs/performance.md)."""
        if not self.behind:
            return False  # no write transaction: a search or /me/stats usually finds nothing to do
        if yield_to is not None and yield_to():
            return True
        db = self.db
        rows = TAIL_ROWS if yield_to is None else YIELD_ROWS
        started = time.perf_counter()
        db.execute("BEGIN IMMEDIATE")
        try:
            self._read_tail()  # another worker with the store open may have caught up, or written more
            while True:
                ids = [row[0] for row in db.execute(_TAIL_IDS, (self.tail, rows))]
                if ids:
                    self._index_tail(ids)
                    self.tail = ids[-1] + 1
                more = len(ids) == rows
                if not more or (seconds is not None and time.perf_counter() - started >= seconds):
                    break
                if yield_to is not None and yield_to():
                    break
            db.execute("UPDATE search_tail SET next = ?", (self.tail,))
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            self._read_tail()
            self.slots.reload()
            self._forget_written()  # some were taken by the transaction rolled back: read them again
            raise
        self._forget_written(below=self.tail)
        return more

    def _index_tail(self, ids: list[int]) -> None:
        """Index events of the tail by id, from the data kept by `written` where there is any
        (inside the caller's transaction)."""
        kept = self._written
        rows = []
        times = []
        for event_id in ids:
            entry = kept.take(event_id)
            if entry is None:
                event_type, data, created_at = self.db.execute(_ROW, (event_id,)).fetchone()
                rows.append((event_id, *document(event_type, _text(data), self.slots)))
            else:
                event_type, value, created_at = entry
                rows.append((event_id, *document_of(event_type, value, self.slots)))
            times.append((event_id, created_at))
        self.db.executemany(_INSERT, rows)
        self.db.executemany(_INSERT_TIME, times)

    def _index(self, batch: list[tuple[int, str, bytes, str]]) -> None:
        """Index (id, type, data as read by _DATA, created_at) rows of events (inside the caller's transaction)."""
        self.db.executemany(_INSERT, [(i, *document(t, _text(d), self.slots)) for i, t, d, _ in batch])
        self.db.executemany(_INSERT_TIME, [(i, c) for i, _, _, c in batch])

    def _read_tail(self) -> None:
        self.tail = self.db.execute("SELECT next FROM search_tail").fetchone()[0]

    # -- writes inside the caller's transaction ---------------------------------------------

    def remove(self, event_id: int, event_type: str, data: str) -> None:
        """Remove an event's row, if it has one."""
        self._written.take(event_id)
        if self.indexed(event_id):
            self.db.execute(_DELETE, (event_id, *document(event_type, data, self.slots)))
            self.db.execute("DELETE FROM search_times WHERE id = ?", (event_id,))

    def rolled_back(self) -> None:
        """The caller's transaction (or savepoint) was rolled back: forget the slots given in it."""
        self.slots.reload()

    # -- background work (the store's thread, between requests) --------------------------------

    def backfill_step(self) -> bool:
        """Index the next events in one short transaction; True while more remain."""
        if not self.backfilling:
            return False
        db = self.db
        started = time.perf_counter()
        rows = 0
        db.execute("BEGIN IMMEDIATE")
        try:
            # Where the backfill is, from the file: another worker with the store open may have
            # gone on with it (brain.workers), and its rows must not be indexed twice.
            self._read_backfill()
            while self.backfilling:
                batch = db.execute(
                    f"SELECT id, type, {_DATA}, created_at FROM events WHERE id BETWEEN ? AND ? ORDER BY id LIMIT ?",
                    (self.next, self.end, BACKFILL_ROWS),
                ).fetchall()
                if batch:
                    self._index(batch)
                    rows += len(batch)
                    self.next = batch[-1][0] + 1
                if len(batch) < BACKFILL_ROWS:
                    self.next = self.end + 1
                if time.perf_counter() - started >= BACKFILL_STEP_SECONDS:
                    break
            db.execute("UPDATE search_state SET backfill_next = ?", (self.next,))
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            self.next = db.execute("SELECT backfill_next FROM search_state").fetchone()[0]
            self.slots.reload()
            raise
        self.figures.progressed(self.user_id, rows, time.perf_counter() - started)
        return self.backfilling

    def _read_backfill(self) -> None:
        self.next, self.end = self.db.execute("SELECT backfill_next, backfill_end FROM search_state").fetchone()

    def merge_step(self) -> bool:
        """Some of the index's pending merge work; True if there was any."""
        if not self.enabled:
            return False
        before = self.db.total_changes
        self.db.execute("INSERT INTO search (search, rank) VALUES ('merge', ?)", (MERGE_PAGES,))
        return self.db.total_changes - before >= 2

    # -- reads -----------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """The index's state for GET /me/stats."""
        if not self.enabled:
            return {"state": "disabled"}
        documents = self.db.execute("SELECT count(*) FROM search_docsize").fetchone()[0]
        pending = self.pending()
        return {"state": "backfilling" if pending else "ready", "documents": documents, "pending": pending}

    def search(self, request: SearchRequest, max_id: int) -> SearchPage:
        """One page of results (see the module docstring for the order and the windows)."""
        if not self.enabled:
            raise IndexUnavailable()
        self._expire()
        fts = request.query.fts(self.slots)
        position = request.position
        offset = 0
        if position is None:
            window = self._window(request, fts, high=max_id, now=_julian_now())
        else:
            kept = self._snapshots.get(position.snapshot)
            if kept is not None and kept.digest == request.digest and kept.high == position.high:
                window, offset = kept, position.offset
            elif position.low == 0:  # a cursor into the next older window, not ranked yet
                window = self._window(request, fts, high=position.high, now=position.now)
            else:  # the snapshot is gone: rank the window again, go on after the last one served
                window = self._rank(request, fts, position.low, position.high, position.now)
                offset = _resume_offset(window, position.last_score, position.last_id)
        hits: list[SearchHit] = []
        marker = Highlighter(request.query.highlights)
        partial = self.backfilling
        while True:
            while len(hits) < request.limit and offset < len(window.ids):
                end = offset + request.limit - len(hits)
                hits.extend(self._hits(window.scores[offset:end], window.ids[offset:end], marker))
                offset = min(end, len(window.ids))
            if offset < len(window.ids):
                last = offset - 1
                return SearchPage(hits, partial=partial, next=SearchPosition(
                    self._keep(window), window.high, window.low, window.now, offset,
                    window.scores[last] if last >= 0 else 0.0, window.ids[last] if last >= 0 else 0,
                ))
            # This window is used up: go on with the older matches, if there are any.
            if window.low <= 1 or not self._exists(request, fts, window.low - 1):
                return SearchPage(hits, partial=partial, next=None)
            if len(hits) >= request.limit:
                return SearchPage(hits, partial=partial, next=SearchPosition("", window.low - 1, 0, window.now, 0, 0.0, 0))
            window = self._window(request, fts, high=window.low - 1, now=window.now)
            offset = 0

    # -- internals ---------------------------------------------------------------------------------

    def _where(self, request: SearchRequest) -> tuple[str, list[Any]]:
        sql, args = "", []
        if request.since is not None:
            sql += " AND e.created_at >= ?"
            args.append(request.since)
        if request.until is not None:
            sql += " AND e.created_at < ?"
            args.append(request.until)
        return sql, args

    def _window(self, request: SearchRequest, fts: str, *, high: int, now: float) -> _Snapshot:
        """Rank the newest `rank_window` matches at or below `high`: one pass of the match (a
        prefix term's doclists are merged anew by every statement that matches it)."""
        where, args = self._where(request)
        rows = self.db.execute(
            f"SELECT rowid, score FROM (SELECT s.rowid, {self._score_sql()} AS score FROM search s{_JOIN}"
            f" WHERE search MATCH ? AND s.rowid <= ?{where} ORDER BY s.rowid DESC LIMIT ?)"
            " ORDER BY score DESC, rowid DESC",
            (self.recency_weight, now, self.half_life, fts, high, *args, self.rank_window),
        ).fetchall()
        # Fewer than rank_window: they are all the matches at or below `high`.
        low = min(event_id for event_id, _ in rows) if len(rows) == self.rank_window else 1
        return self._snapshot(request, rows, low, high, now)

    def _rank(self, request: SearchRequest, fts: str, low: int, high: int, now: float) -> _Snapshot:
        """Rank the matches with ids from `low` to `high` (a window ranked before)."""
        where, args = self._where(request)
        rows = self.db.execute(
            f"SELECT s.rowid, {self._score_sql()} AS score FROM search s{_JOIN}"
            f" WHERE search MATCH ? AND s.rowid BETWEEN ? AND ?{where} ORDER BY score DESC, s.rowid DESC",
            (self.recency_weight, now, self.half_life, fts, low, high, *args),
        ).fetchall()
        return self._snapshot(request, rows, low, high, now)

    def _score_sql(self) -> str:
        """The score of a match (parameters: recency weight, now as a Julian day, half-life)."""
        weights = ", ".join(repr(w) for w in self.slots.weights())
        return f"-bm25(search, {weights}) * (1.0 + ? * pow(0.5, max(0.0, ? - julianday(e.created_at)) / ?))"

    def _snapshot(self, request: SearchRequest, rows: list[tuple[int, float]], low: int, high: int, now: float) -> _Snapshot:
        return _Snapshot(
            request.digest, high, low, now, array("d", (score for _, score in rows)),
            array("q", (event_id for event_id, _ in rows)), time.monotonic() + self.cursor_seconds,
        )

    def _keep(self, window: _Snapshot) -> str:
        for token, kept in self._snapshots.items():
            if kept is window:
                return token
        token = secrets.token_urlsafe(9)
        self._snapshots[token] = window
        while len(self._snapshots) > MAX_SNAPSHOTS:
            self._snapshots.popitem(last=False)
        return token

    def _expire(self) -> None:
        now = time.monotonic()
        for token in [t for t, s in self._snapshots.items() if s.expires < now]:
            del self._snapshots[token]

    def _exists(self, request: SearchRequest, fts: str, high: int) -> bool:
        where, args = self._where(request)
        return self.db.execute(
            f"SELECT 1 FROM search s{_JOIN if where else ''} WHERE search MATCH ? AND s.rowid <= ?{where} LIMIT 1",
            (fts, high, *args),
        ).fetchone() is not None

    def _hits(self, scores: Sequence[float], ids: Sequence[int], marker: Highlighter) -> list[SearchHit]:
        """The events of ranked ids that still exist, with their highlights."""
        marks = ",".join("?" * len(ids))
        found = {
            row[0]: StoredEvent(row[0], row[1], _text(row[2]), row[3], row[4])
            for row in self.db.execute(f"SELECT id, type, {_DATA}, created_at, key FROM events WHERE id IN ({marks})", list(ids))
        }
        hits = []
        for score, event_id in zip(scores, ids):
            event = found.get(event_id)
            if event is not None:  # deleted since the ranking: skipped, never repeated
                hits.append(SearchHit(event, round(score, 6), marker.highlight(event.type, event.data)))
        return hits


class _Kept:
    """A store's kept tail data (`SearchIndex.written`) by event id: at most WRITTEN_ROWS
    entries, and bytes (the JSON text's length) counted against WRITTEN_BYTES for the process."""

    _lock = threading.Lock()
    used = 0  # bytes kept by every store of the process

    def __init__(self) -> None:
        self.entries: dict[int, tuple[Any, int]] = {}
        # What this store holds of the process's bytes: given back as entries go, and by the
        # finalizer if the store is dropped with some kept (closed before its catch-up).
        self.held = [0]
        weakref.finalize(self, _Kept._give_back, self.held)

    def __len__(self) -> int:
        return len(self.entries)

    def add(self, event_id: int, entry: Any, size: int) -> bool:
        """Keep an entry; False (and nothing kept) when the store's or the process's room is used up."""
        if len(self.entries) >= WRITTEN_ROWS:
            return False
        with _Kept._lock:
            if _Kept.used + size > WRITTEN_BYTES:
                return False
            _Kept.used += size
        self.held[0] += size
        old = self.entries.get(event_id)
        self.entries[event_id] = (entry, size)
        if old is not None:
            self._release(old[1])
        return True

    def take(self, event_id: int) -> Any:
        """The entry kept for an event (now dropped), or None."""
        found = self.entries.pop(event_id, None)
        if found is None:
            return None
        self._release(found[1])
        return found[0]

    def drop(self, below: int | None = None) -> None:
        """Drop every entry, or those of events below an id."""
        if not self.entries:
            return
        gone = list(self.entries) if below is None else [i for i in self.entries if i < below]
        for event_id in gone:
            self._release(self.entries.pop(event_id)[1])

    def _release(self, size: int) -> None:
        self.held[0] -= size
        with _Kept._lock:
            _Kept.used -= size

    @staticmethod
    def _give_back(held: list[int]) -> None:
        with _Kept._lock:
            _Kept.used -= held[0]
        held[0] = 0


def _text(data: bytes) -> str:
    return data.decode(errors="replace")


def _resume_offset(window: _Snapshot, last_score: float, last_id: int) -> int:
    """The place just after (last_score, last_id) in an order by score, then id, descending."""
    for i, (score, event_id) in enumerate(zip(window.scores, window.ids)):
        if (score, event_id) < (last_score, last_id):
            return i
    return len(window.ids)


def _julian_now() -> float:
    return time.time() / 86400.0 + 2440587.5


def tombstone_data(event: StoredEvent) -> str:
    """The data of an event.deleted tombstone: which event went."""
    return json.dumps({"id": event.id, "type": event.type, "created_at": event.created_at}, separators=(",", ":"))

"""The live tail is indexed from the data its writers gave (`SearchIndex.written`), not from the
stored text read and parsed again: the index rows must be the very ones the stored text gives,
since a deletion removes an event's row by recomputing it from that text (brain.api.search).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from brain.api import search
from brain.api.documents import HAS_ATTACHMENT, TAG, FieldSlots, document, document_of, leaves, type_token, words
from brain.api.events import new_event
from brain.api.events import StoredEvent
from brain.api.search import SCHEMA, IndexOptions, SearchIndex
from brain.api.settings import SearchSettings
from brain.api.state import store_manager
from brain.api.user_store import StoreInbox, migrate, store_path
from brain.runtime import Runtime
from tests.support import api_runtime, wait_until

_TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=12)
_KEY = st.sampled_from(["subject", "from", "to", "body_text", "body_text_clean", "snippet", "attachments",
                        "labels", "has_attachments", "title", "Reply_To", "x"]) | _TEXT
_PLAIN = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | _TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.lists(inner, max_size=4).map(tuple)
    | st.dictionaries(_KEY, inner, max_size=5),
    max_leaves=30,
)
_TYPES = st.sampled_from(["note", "mail.message.received", "mail.message.updated", "x.y"])


def _slots() -> FieldSlots:
    db = sqlite3.connect(":memory:", isolation_level=None)
    db.executescript(SCHEMA)
    return FieldSlots(db)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_TYPES, _PLAIN)
def test_a_plain_value_gives_the_row_its_stored_text_gives(event_type: str, value: Any) -> None:
    ev = new_event({"type": event_type, "data": value}, max_bytes=1 << 20)
    assert ev.plain
    given_slots, stored_slots = _slots(), _slots()
    assert document_of(event_type, ev.value, given_slots) == document(event_type, ev.data, stored_slots)
    assert given_slots.by_name == stored_slots.by_name  # the same columns given, in the same order


def _row_by_leaves(event_type: str, value: Any, slots: FieldSlots) -> list[str]:
    """An index row as `leaves` routes every string, one at a time (what `document_of` did
    before it gathered each field's strings itself)."""
    texts: dict[int, list[str]] = {}
    meta = [type_token(event_type)]
    if isinstance(value, dict) and (
        value.get("has_attachments") is True or (isinstance(value.get("attachments"), (list, tuple)) and bool(value["attachments"]))
    ):
        meta.append(HAS_ATTACHMENT)
    for leaf in leaves(event_type, value):
        if leaf.text_column:
            texts.setdefault(slots.slot(leaf.field), []).append(leaf.text)
        elif leaf.field is not None:
            meta.extend([leaf.field + TAG + w for w in words(leaf.text)])
    row = [" ".join(meta)] + [""] * (len(document_of("x", None, slots)) - 1)
    for slot, strings in texts.items():
        row[1 + slot] = "\n".join(strings)
    return row


# Words to fold: accents, combining marks alone or in a row, ligatures, case that folds to
# more letters, words longer than MAX_WORD, separators of every kind.
_FOLDED = st.lists(st.sampled_from(["e\u0301", "\u0301", "\u0327\u0301", "ﬁ", "ß", "İ", "Σ", "Å", "a", "Z", "9", "_", "-", " ",
                                   "\n", "·", "x" * 70, "é" * 40, "ǂ", "@", "."]), max_size=8).map("".join)
_MAIL_KEY = st.sampled_from(["subject", "from", "to", "body_text", "body_text_clean", "snippet", "attachments", "filename",
                             "id", "labels", "references", "message_id", "has_attachments", "Reply_To", "_", "ß"]) | _TEXT
_MAIL_VALUE = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | _TEXT | _FOLDED,
    lambda inner: st.lists(inner, max_size=4) | st.lists(inner, max_size=4).map(tuple)
    | st.dictionaries(_MAIL_KEY, inner, max_size=6),
    max_leaves=40,
)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_TYPES, _MAIL_VALUE)
def test_a_row_is_every_string_routed_as_leaves_routes_it(event_type: str, value: Any) -> None:
    # The rows of events indexed before must come out the same, or deleting them would remove
    # other words than were indexed (a contentless index).
    ours, theirs = _slots(), _slots()
    assert document_of(event_type, value, ours) == _row_by_leaves(event_type, value, theirs)
    assert ours.by_name == theirs.by_name


@pytest.mark.parametrize("value", [1.5, {"a": [0.1]}, {1: "one"}, {"t": float("nan")}, [{"a": 1}] * 600])
def test_values_that_may_not_read_as_their_text_are_not_plain(value: Any) -> None:
    try:
        ev = new_event({"type": "note", "data": value}, max_bytes=1 << 20)
    except Exception:  # noqa: BLE001 - NaN is refused: nothing to index either way
        return
    assert not ev.plain


@pytest.fixture(scope="module")
def rt(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    with api_runtime(tmp_path_factory.mktemp("written") / "data", search={"index_delay_seconds": 0.05}) as runtime:
        yield runtime


def _mail(i: int) -> dict[str, Any]:
    return {
        "account": "acc", "message_id": f"m{i}", "subject": f"Quarterly report {i}",
        "from": {"name": "Anna Ünal", "address": "anna@example.com"},
        "to": ({"name": "Bob", "address": "bob@example.com"},),  # a tuple, as a writer may give it
        "labels": ["INBOX", "Work"], "body_text": f"Figures for week {i}: the lease ends in März. " * 20,
        "body_text_clean": "Figures", "snippet": "Figures for", "has_attachments": True,
        "attachments": [{"id": f"a{i}", "filename": "invoice final.pdf", "mime_type": "application/pdf"}],
    }


def _instances(db: sqlite3.Connection, table: str) -> list[tuple[Any, ...]]:
    db.execute(f"CREATE VIRTUAL TABLE IF NOT EXISTS temp.v_{table} USING fts5vocab(main, {table}, 'instance')")
    return db.execute(f"SELECT term, doc, col, offset FROM temp.v_{table} ORDER BY 1, 2, 3, 4").fetchall()


def test_the_tail_is_indexed_from_the_written_values_and_the_rows_match_the_stored_text(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    stores = store_manager(rt)
    user = "writtenvalues"
    reread: list[int] = []
    real = search.document

    def counted(event_type: str, data_text: str, slots: FieldSlots) -> list[str]:
        reread.append(len(data_text))
        return real(event_type, data_text, slots)

    monkeypatch.setattr(search, "document", counted)
    stores.append_from_thread(user, [{"type": "mail.message.received", "data": _mail(i), "key": f"k{i}"} for i in range(30)])
    stores.append_from_thread(user, [{"type": "note", "data": {"title": "float", "weight": 1.5}}])  # not plain: read again
    stores.append_from_thread(user, [{"type": "note", "data": {"title": "plain lone note"}}])  # the one-event path
    again = stores.append_from_thread(user, [{"type": "mail.message.received", "data": _mail(0), "key": "k0"}])
    assert again[0]["id"] == 1  # found by its key: nothing new to index
    path = store_path(rt.settings.data_path, user)

    def tail() -> int:
        with sqlite3.connect(path) as db:
            return int(db.execute("SELECT next FROM search_tail").fetchone()[0])

    wait_until(lambda: tail() == 33, timeout=10)
    assert len(reread) == 1  # the float's event alone was read and parsed again

    # What the index holds is what indexing every stored text gives (with the store's slots).
    stores.close_store(user)
    db = sqlite3.connect(path, isolation_level=None)
    try:
        slots = FieldSlots(db)
        columns = ", ".join(search.COLUMNS)
        db.execute(f"CREATE VIRTUAL TABLE temp.again USING fts5({columns}, content='', prefix='3', "
                   "tokenize='unicode61 remove_diacritics 2')")
        for event_id, event_type, data in db.execute("SELECT id, type, data FROM events ORDER BY id").fetchall():
            row = document(event_type, data, slots)
            db.execute(f"INSERT INTO temp.again (rowid, {columns}) VALUES (?, {', '.join('?' * len(row))})", (event_id, *row))
        held = _instances(db, "search")
        assert len({doc for _, doc, _, _ in held}) == 32
        db.execute("CREATE VIRTUAL TABLE temp.v_again USING fts5vocab(temp, again, 'instance')")
        assert held == db.execute("SELECT term, doc, col, offset FROM temp.v_again ORDER BY 1, 2, 3, 4").fetchall()
    finally:
        db.close()


def test_kept_values_are_bounded_and_dropped_once_indexed_or_deleted() -> None:
    used = search._Kept.used
    db = sqlite3.connect(":memory:", isolation_level=None)
    migrate(db)
    index = SearchIndex(db, user_id="u", options=IndexOptions.from_settings(SearchSettings()))
    index.open(0)
    written = []
    for i in range(search.WRITTEN_ROWS + 10):
        ev = new_event({"type": "note", "data": {"text": f"word{i}"}}, max_bytes=1 << 20)
        event_id = db.execute("INSERT INTO events (type, data, created_at) VALUES (?, ?, '2026-01-01T00:00:00.000000Z')",
                              (ev.type, ev.data)).lastrowid
        written.append((StoredEvent(event_id, ev.type, ev.data, "2026-01-01T00:00:00.000000Z"), ev))
    index.written(written)
    assert len(index._written) == search.WRITTEN_ROWS  # the rest is read from the table
    assert index._written.held[0] == sum(len(stored.data) for stored, _ in written[: search.WRITTEN_ROWS])
    db.execute("BEGIN IMMEDIATE")
    index.remove(5, "note", written[4][0].data)  # in the tail: not indexed, nothing to remove but the kept data
    db.execute("DELETE FROM events WHERE id = 5")
    db.execute("COMMIT")
    assert 5 not in index._written.entries
    while index.catch_up():
        pass
    assert len(index._written) == 0 and index._written.held[0] == 0
    found = db.execute("SELECT rowid FROM search WHERE search MATCH 'word4 OR word519 OR word3'").fetchall()
    assert sorted(r[0] for r in found) == [4, 520]
    assert search._Kept.used == used  # every byte given back to the process's budget


def test_the_process_budget_bounds_every_store_and_a_dropped_store_gives_its_share_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import gc

    used = search._Kept.used
    monkeypatch.setattr(search, "WRITTEN_BYTES", used + 1000)
    first, second = search._Kept(), search._Kept()
    assert first.add(1, "a", 600) and not second.add(1, "b", 600)  # the process's room is used up
    assert second.add(2, "c", 400) and search._Kept.used == used + 1000
    del first
    gc.collect()
    assert search._Kept.used == used + 400  # a store closed before its catch-up gives its share back
    assert second.take(2) == "c" and search._Kept.used == used


def test_an_append_waits_for_one_small_batch_of_the_tail_being_indexed_not_for_the_whole_tail(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Mail sync appends a page and waits for the answer; the store indexes the tail between its
    # pages. The next page must wait for a small batch of that catch-up at most (YIELD_ROWS),
    # not for a whole transaction of TAIL_ROWS events (~64 ms of CPU for mail).
    stores = store_manager(rt)
    user = "yieldtotheappend"
    done: list[Any] = []
    started, asked = threading.Event(), threading.Event()
    real_index, real_put = SearchIndex._index_tail, StoreInbox.put

    def index_tail(self: SearchIndex, ids: list[int]) -> None:
        if self.user_id == user:
            done.append(len(ids))
            if not started.is_set():
                started.set()
                assert asked.wait(10)  # the page below is in the store's inbox: it waits now
                time.sleep(0.05)
        real_index(self, ids)

    def put(self: StoreInbox, item: Any, *args: Any) -> None:
        real_put(self, item, *args)
        if type(getattr(item, "message", None)).__name__ == "AppendMany" and started.is_set():
            asked.set()

    monkeypatch.setattr(SearchIndex, "_index_tail", index_tail)
    monkeypatch.setattr(StoreInbox, "put", put)
    # 400 events: a tail past TAIL_ROWS (indexed at once) and within what the index keeps.
    stores.append_from_thread(user, [{"type": "mail.message.received", "data": _mail(i)} for i in range(400)])
    assert started.wait(10)
    stores.append_from_thread(user, [{"type": "mail.message.received", "data": _mail(400)}])
    indexed_before = sum(done)
    assert indexed_before < search.TAIL_ROWS, done  # a batch of YIELD_ROWS; was all of TAIL_ROWS
    path = store_path(rt.settings.data_path, user)

    def indexed() -> int:
        with sqlite3.connect(path) as db:
            return int(db.execute("SELECT count(*) FROM search_times").fetchone()[0])

    wait_until(lambda: indexed() == 401, timeout=10, what="the whole tail indexed after the append")

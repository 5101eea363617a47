"""A store checkpoints its WAL after answering the write that filled it, not inside that write.

SQLite's automatic checkpoint runs inside the COMMIT that takes the WAL past 1,000 pages: the
copy into the database and its fsyncs then delay the answer (mail sync waits for every page).
The store turns it off and runs the same PASSIVE checkpoint as a message of its own, right
behind the answer (brain.api.user_store, `_checkpoint_later`).
"""

from __future__ import annotations

import ctypes
import sqlite3
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from brain.api.state import store_manager
from brain.api.user_store import StoreInbox, UserStore
from brain.runtime import Runtime
from tests.support import api_runtime, wait_until

# A page of events well past 1,000 WAL pages of 4 KiB (~6 MB: data this long keeps no rendered
# copy, brain.api.pages.RENDER_INLINE_MAX).
PAGE = [{"type": "mail.message.received", "data": {"body_text": "x" * 60_000, "n": i}} for i in range(100)]


@pytest.fixture(scope="module")
def rt(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    # No search index: no catch-up writing to the WAL between the looks below.
    with api_runtime(tmp_path_factory.mktemp("checkpoint") / "data", search={"index": False}) as runtime:
        yield runtime


def _wal(ref: Any) -> tuple[int, int]:
    """(frames in the WAL, frames already copied into the database): mxFrame of the WAL index
    header and nBackfill of the checkpoint record after its two copies, read from the map the
    store's page cache holds (opening the -shm file here would drop SQLite's locks on it)."""
    header = ref.actor_inbox.pages._header
    assert header is not None, "the WAL index header is not mapped"
    raw = ctypes.string_at(header._address, 100)
    return int.from_bytes(raw[16:20], sys.byteorder), int.from_bytes(raw[96:100], sys.byteorder)


def _opened(rt: Runtime, user: str) -> Any:
    """The store manager, with the user's store open (its WAL index header mapped)."""
    stores = store_manager(rt)
    stores.append_from_thread(user, [{"type": "warm", "data": 0}])
    return stores


def test_the_answer_to_an_append_does_not_wait_for_the_checkpoint_it_makes_due(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    user = "checkpointafter"
    stores = _opened(rt, user)
    release = threading.Event()
    ran: list[tuple[int, int]] = []
    real = getattr(UserStore, "_checkpoint", None)  # (before this change: none, SQLite's own in the COMMIT)

    def held(self: UserStore) -> None:
        assert release.wait(10)
        assert real is not None
        real(self)
        ran.append(_wal(ref))

    monkeypatch.setattr(UserStore, "_checkpoint", held, raising=False)
    ref = stores._live_ref(user)
    assert ref is not None
    stores.append_from_thread(user, PAGE)
    frames, copied = _wal(ref)
    assert frames >= 1000 and copied < frames  # answered with the WAL full and not copied back
    release.set()
    stores.head_from_thread(user)  # behind the checkpoint the append asked for
    assert ran and ran[0][0] == ran[0][1] >= frames  # then every frame was copied back


def test_a_due_checkpoint_waits_behind_an_append_that_waits_for_the_store(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Mail sync's next page must not wait for the copy and fsyncs of the checkpoint its last
    # page made due: the page goes first, the checkpoint after it (up to CHECKPOINT_DEFER).
    user = "checkpointdefer"
    stores = _opened(rt, user)
    ref = stores._live_ref(user)
    assert ref is not None
    watching, asked = threading.Event(), threading.Event()
    at_first: list[tuple[int, int]] = []
    real, real_put = UserStore._checkpoint, StoreInbox.put

    def put(self: StoreInbox, item: Any, *args: Any) -> None:
        real_put(self, item, *args)
        if type(getattr(item, "message", None)).__name__ == "AppendMany" and watching.is_set():
            asked.set()

    def checkpoint(self: UserStore) -> None:
        if not at_first:
            assert asked.wait(10)  # the next page is in the inbox, behind this checkpoint
            real(self)
            at_first.append(_wal(ref))
        else:
            real(self)

    monkeypatch.setattr(StoreInbox, "put", put)
    monkeypatch.setattr(UserStore, "_checkpoint", checkpoint)
    stores.append_from_thread(user, PAGE)
    watching.set()
    stores.append_from_thread(user, PAGE[:10])
    frames, copied = at_first[0]
    assert frames >= 1000 and copied < frames  # not run while the page waited
    stores.head_from_thread(user)  # behind the checkpoint asked again after that page
    frames, copied = _wal(ref)
    assert copied == frames


def test_the_wal_stays_bounded_through_many_large_appends(rt: Runtime) -> None:
    stores = store_manager(rt)
    user = "checkpointbound"
    for _ in range(12):
        stores.append_from_thread(user, PAGE)
    stores.head_from_thread(user)
    ref = stores._live_ref(user)
    assert ref is not None
    frames, copied = _wal(ref)
    # The last checkpoint copied everything back, or a later write of the store's own (the
    # bus's acknowledgements) started the WAL over, which only a full checkpoint allows.
    assert copied == frames or frames < 1000
    wal = rt.settings.data_path / "users" / user / "events.db-wal"
    # Reset after each checkpoint: about one page's frames, never the 12 pages' (~100 MB).
    assert wal.stat().st_size < 3 * 10 * 1024 * 1024


def test_a_failing_checkpoint_is_tried_again_after_the_next_write_not_at_once(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As SQLite retries its automatic checkpoint at the next commit: a full disk fails every
    # attempt, and the store must not spin on it.
    user = "checkpointfails"
    stores = _opened(rt, user)
    ref = stores._live_ref(user)
    assert ref is not None
    tries: list[int] = []

    def failing(self: UserStore) -> None:
        tries.append(1)
        db = self.db

        class Failing:
            def execute(self, sql: str, *args: Any) -> Any:
                if "wal_checkpoint" in sql:
                    raise sqlite3.OperationalError("database or disk is full")
                return db.execute(sql, *args)

        failing_db = Failing()
        of = self._checkpoints_of
        self.db = self._checkpoints_of = failing_db  # type: ignore[assignment]
        try:
            real(self)
        finally:
            self.db, self._checkpoints_of = db, of

    real = UserStore._checkpoint
    monkeypatch.setattr(UserStore, "_checkpoint", failing)
    stores.append_from_thread(user, PAGE)
    wait_until(lambda: len(tries) >= 1, timeout=10, what="the first checkpoint")
    time.sleep(0.3)
    for _ in range(5):
        stores.head_from_thread(user)  # messages that write nothing
    assert len(tries) == 1
    stores.append_from_thread(user, PAGE[:1])
    wait_until(lambda: len(tries) == 2, timeout=10, what="the checkpoint after the next write")


def test_a_page_of_events_reaches_the_wal_at_its_commit_not_page_by_page_as_it_is_inserted(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    # SQLite writes a transaction's dirty pages to the WAL before its COMMIT once they pass
    # cache_spill (by default the 2 MB page cache): a page of mail events was written out page
    # by page while it was inserted, which cost the store's thread more CPU than one write at
    # the commit (brain.api.user_store.SPILL_BYTES).
    user = "checkpointspill"
    stores = _opened(rt, user)
    wal = rt.settings.data_path / "users" / user / "events.db-wal"
    sizes: list[int] = []
    real = UserStore._insert

    def watched(self: UserStore, *args: Any) -> Any:
        sizes.append(wal.stat().st_size)
        try:
            return real(self, *args)
        finally:
            sizes.append(wal.stat().st_size)

    monkeypatch.setattr(UserStore, "_insert", watched)
    stores.append_from_thread(user, PAGE)  # ~6 MB of pages
    assert len(sizes) == 2, sizes
    assert sizes[1] - sizes[0] < 64 * 1024  # nothing of it in the WAL before the COMMIT
    assert wal.stat().st_size - sizes[0] > 4 << 20  # all of it after

"""StoreManager: finds (or activates) a user's UserStore and talks to it, from the loop or threads.

User stores are virtual actors. The manager keeps a map user_id -> live ActorRef in LRU order
(a dict lookup under an uncontended lock: no supervisor round trip per request). A store is
started through the `data_sup/stores` supervisor on first use, stops itself when idle, and the
least recently used one is stopped when more than `api.max_open_stores` are open. A ref that
died meanwhile (idle stop, LRU eviction, a crash and restart of the subtree) shows up as
ActorDeadError; the manager forgets it, reactivates, and retries — the message was not
processed, so the retry cannot double-write.

Requests from the event loop go through the store's inbox object rather than pykka asks (see
brain.api.user_store): concurrent writes of one user queue up while its store is busy and are
committed together as one transaction (one savepoint each), so a busy user costs one thread
wake-up and one commit per batch, not per request.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pykka

from brain.actors.supervisor import ChildAlreadyStarted, ChildSpec, ChildStartError
from brain.api.events import CursorSigner, NewEvent, StoredEvent, commit_seq, new_event, parse_time
from brain.api.pages import Page
from brain.api.search import IndexFigures, IndexOptions
from brain.api.user_store import (
    HEAD,
    Ack,
    AppendMany,
    AppendRequest,
    Changes,
    Outbox,
    OutboxBatch,
    Query,
    ReadPage,
    Request,
    StoreClosed,
    StorePathError,
    UserStore,
    store_path,
    submit,
)
from brain.api.quarantine import FileMemory, pending, quarantined_users
from brain.errors import (
    BadRequest,
    NoFileDescriptors,
    ServiceUnavailable,
    StorageFault,
    StoreCorrupt,
    StoreQuarantined,
    Unauthorized,
)
from brain.event_types import TypeFilter
from brain.ids import is_valid_user_id
from brain.process import Process
from brain.storage import classify, storage_faults

log = logging.getLogger("brain.api.store_manager")

_ATTEMPTS = 3
# A store that is stopping (idle, evicted) stays the supervisor's child until its on_stop has
# run, and activating it meanwhile hands back that same ref, which refuses: a request it refused
# waits for it to be gone, this long at most, instead of spending its attempts on it (they all
# went in a few milliseconds, and the request was a 503 'restarting').
_STOPPING_WAIT_SECONDS = 2.0
# Stores closed, one after the other, to free descriptors for one that could not open.
_MAKE_ROOM_ATTEMPTS = 3
# Threads that wait for the stores supervisor to open a store; it opens one at a time, so a few
# keep it busy.
_ACTIVATION_THREADS = 4
AppendResult = list[tuple[StoredEvent, bool]]


class _Stopping:
    """The store that last refused one request (closed: stopping), until it is gone."""

    __slots__ = ("urn", "deadline", "waits")

    def __init__(self) -> None:
        self.urn, self.deadline, self.waits = "", 0.0, 0

    def refused(self, ref: pykka.ActorRef[Any], now: float) -> None:
        if ref.actor_urn != self.urn:
            self.urn, self.deadline = ref.actor_urn, now + _STOPPING_WAIT_SECONDS

    def holds(self, ref: pykka.ActorRef[Any]) -> bool:
        return ref.actor_urn == self.urn

    def backoff(self, now: float) -> float | None:
        """How long to wait before looking again (5 ms doubling, at most 100 ms); None: waited long enough."""
        if now >= self.deadline:
            return None
        self.waits += 1
        return min(0.1, 0.005 * 2 ** (self.waits - 1))


# No store has refused yet (`_Stopping.holds` is False for every ref: no urn is empty).
_NOT_STOPPING = _Stopping()


class StoreManager:
    """The API to users' event stores (see the module docstring); `brain.api.state.store_manager`."""

    def __init__(self, rt: Process, outbox: Outbox) -> None:
        self._rt = rt
        self._outbox = outbox
        api = rt.settings.api
        self.max_open = api.max_open_stores
        self.idle_seconds = api.store_idle_seconds
        self.mmap_bytes = api.store_mmap_mib << 20
        self.max_event_bytes = api.max_event_bytes
        self.page_max = api.events_page_max
        self.data_path = rt.settings.data_path
        self.cursors = CursorSigner(rt.secret)
        self.max_user_bytes = api.max_user_bytes
        search = rt.settings.search
        self.index_figures = IndexFigures(search.backfill_concurrency)
        self.index_options = IndexOptions.from_settings(search, self.index_figures)
        self.closing = False
        self._lock = threading.Lock()
        self._live: OrderedDict[str, pykka.ActorRef[Any]] = OrderedDict()
        self._sup: pykka.ActorRef[Any] | None = None
        self._sup_proxy: Any = None
        # Per user: acknowledged event ids on their way to the store (see UserStore.acks).
        self._acks: dict[str, deque[int]] = {}
        self._activating: dict[str, asyncio.Future[pykka.ActorRef[Any]]] = {}  # event-loop side only
        # Requests waiting for a store's thread (event-loop side): while none does, a lone
        # append is committed on the loop itself (`StoreInbox.append_now`).
        self._waiting = 0
        # Its own threads: in the loop's default executor an activation queued behind whatever
        # else waits there (a mail provider that never answers) and a new user's first request
        # with it.
        self._activation_pool = ThreadPoolExecutor(_ACTIVATION_THREADS, thread_name_prefix="brain-store-open")
        self.activations = 0
        self.evictions = 0
        # Deleted accounts (close_user): their stores are never opened again by this process.
        self.deleted: set[str] = set()
        self.faults = storage_faults(rt)
        self.files = FileMemory()
        # Users whose store is in quarantine (brain.api.quarantine), as far as this process knows.
        self.quarantined: set[str] = set(quarantined_users(self.data_path))
        # Told of each store found damaged (the automatic repair, with api.auto_repair).
        self.on_quarantined: Callable[[str], None] | None = None
        self.repair_retry_after: float | None = None

    # -- public API: event loop ------------------------------------------------------------

    async def append(self, user_id: str, events: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Store events atomically (`key` = idempotency key); the stored events, after commit."""
        request = AppendRequest(self._validate(user_id, events))
        return [ev.as_dict() for ev, _ in await self.append_events(user_id, request)]

    async def append_events(self, user_id: str, request: AppendRequest) -> AppendResult:
        """Commit one validated request (grouped with others of this user); (event, replayed) pairs."""
        self._check_user(user_id)
        self._check_room(request)
        result: AppendResult = await self._submit(user_id, request)
        return result

    async def query(
        self,
        user_id: str,
        *,
        type: str | None = None,  # noqa: A002 - the API's own parameter name
        since: Any = None,
        until: Any = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> tuple[list[dict[str, Any]], str | None]:
        """Events newest first, filtered (`type` may be `a,b` or a prefix `mail.*`); and the
        cursor of the next page (None at the end)."""
        q = self._query_message(user_id, type, since, until, limit, cursor)
        rows = await self._submit(user_id, q)
        return [row.as_dict() for row in rows[:limit]], self._next_cursor(user_id, rows, limit)

    async def query_events(self, user_id: str, q: Query) -> tuple[list[StoredEvent], str | None]:
        """`query` for a prepared Query message (limit+1 rows asked); raw rows for the HTTP layer."""
        rows = await self._submit(user_id, q)
        limit = q.limit - 1
        return rows[:limit], self._next_cursor(user_id, rows, limit)

    async def query_page(self, user_id: str, q: Query) -> tuple[Page, str | None]:
        """A prepared Query's page as bytes (brain.api.pages), and the cursor of the next page."""
        message = ReadPage(Query(q.types, q.since, q.until, q.before, q.limit - 1))
        ref = self._live_ref(user_id)
        # An unchanged page the store keeps is taken here, without waking its thread.
        page = ref.actor_inbox.cached_page(message) if ref is not None else None  # type: ignore[attr-defined]
        if page is None:
            page = await self._submit(user_id, message)
        if not page.more or page.last is None:
            return page, None
        return page, self.cursors.make(user_id, *page.last)

    async def changes(self, user_id: str, after: int, types: TypeFilter | None, limit: int) -> list[StoredEvent]:
        """Events and tombstones committed after `after` (the commit sequence), oldest first, at most `limit`."""
        self._check_user(user_id)
        rows: list[StoredEvent] = await self._submit(user_id, Changes(after, types, limit))
        return rows

    async def request(self, user_id: str, message: Request) -> Any:
        """Any other request of the store (a read, a deletion, a search); its answer."""
        self._check_user(user_id)
        return await self._submit(user_id, message)

    # -- public API: threads (actors) ---------------------------------------------------------

    def changes_from_thread(self, user_id: str, after: int, limit: int, timeout: float = 30) -> list[dict[str, Any]]:
        """`changes` for callers on other threads (every type), each event with its `seq`."""
        self._not_on_loop()
        rows = self._ask_blocking(user_id, Changes(after, None, limit), timeout)
        return [{**row.as_dict(), "seq": commit_seq(row)} for row in rows]

    def head_from_thread(self, user_id: str, timeout: float = 30) -> int:
        """The commit sequence of the user's last event (0: none yet)."""
        self._not_on_loop()
        head: int = self._ask_blocking(user_id, HEAD, timeout)
        return head

    def append_from_thread(
        self,
        user_id: str,
        events: Sequence[Mapping[str, Any]],
        timeout: float = 30,
        *,
        max_event_bytes: int | None = None,
        with_data: bool = True,
    ) -> list[dict[str, Any]]:
        """`append` for callers on other threads (actors): blocks until committed.

        ``max_event_bytes`` replaces `api.max_event_bytes` for a writer with a limit of its own
        (mail sync, whose messages carry their text); without ``with_data`` the stored events
        come back without their data (a writer that only needs them committed skips parsing it).
        """
        self._not_on_loop()
        request = self.append_request(user_id, events, max_event_bytes)
        self._check_room(request)
        result = self._ask_blocking(user_id, AppendMany([request]), timeout)[0]
        if isinstance(result, Exception):
            raise result
        return stored_dicts(result, with_data)

    def append_request(
        self, user_id: str, events: Sequence[Mapping[str, Any]], max_event_bytes: int | None = None
    ) -> AppendRequest:
        """Events checked as `append_from_thread` checks them, ready for `append_events` (any thread)."""
        return AppendRequest(self._validate(user_id, events, max_event_bytes))

    def query_from_thread(
        self,
        user_id: str,
        *,
        type: str | None = None,  # noqa: A002
        since: Any = None,
        until: Any = None,
        limit: int = 100,
        cursor: str | None = None,
        timeout: float = 30,
    ) -> tuple[list[dict[str, Any]], str | None]:
        """`query` for callers on other threads."""
        self._not_on_loop()
        q = self._query_message(user_id, type, since, until, limit, cursor)
        rows = self._ask_blocking(user_id, q, timeout)
        return [row.as_dict() for row in rows[:limit]], self._next_cursor(user_id, rows, limit)

    # -- for the EventBus (its own thread) ------------------------------------------------------

    def outbox_batch_blocking(self, user_id: str, after: int, limit: int, timeout: float = 30) -> list[StoredEvent] | None:
        """Unpublished events of a user, oldest first; None if the user has no store (any more).

        A quarantined store has none either: what it had not published is salvaged by its repair,
        and the repaired store hands it to the bus when it opens.
        """
        if self.closing or not store_path(self.data_path, user_id).exists():
            return None
        return self._ask_blocking(user_id, OutboxBatch(after, limit), timeout)

    def ack(self, user_id: str, ids: Sequence[int]) -> bool:
        """Hand a live store the ids JetStream acknowledged; False if it is not open (never blocks)."""
        with self._lock:
            ref = self._live.get(user_id)
            queue = self._acks.get(user_id)
        if ref is None or queue is None or not ref.is_alive():
            return False
        # No message (and no thread wake-up): the store deletes them with its next append or
        # within ACK_FLUSH_SECONDS of it.
        queue.extend(ids)
        return True

    def ack_blocking(self, user_id: str, ids: Sequence[int], timeout: float = 30) -> None:
        """Ack, opening the store if needed (from a worker thread)."""
        if self.ack(user_id, ids) or self.closing or not store_path(self.data_path, user_id).exists():
            return
        ref = self._activate_blocking(user_id, timeout)
        try:
            ref.tell(Ack(ids))
        except pykka.ActorDeadError:
            pass  # the rows stay; the next drain republishes them (deduplicated by JetStream)

    # -- figures -------------------------------------------------------------------------

    def close_user(self, user_id: str, timeout: float = 30) -> None:
        """Stop a user's store for good (account deletion; from a worker thread, blocking)."""
        self._not_on_loop()
        self._check_user(user_id)
        with self._lock:
            self.deleted.add(user_id)
            self._live.pop(user_id, None)
            self._acks.pop(user_id, None)
        try:
            sup = self._stores_sup()
        except ServiceUnavailable:
            return  # no store supervisor (no server running): no store is open
        # Returns once the actor has stopped and closed the database (or it was not running).
        sup.terminate_child(user_id).get(timeout=timeout)

    def close_store(self, user_id: str, timeout: float = 30) -> None:
        """Close a user's store in this process, if open (the user moved to another cluster node; blocking)."""
        self._not_on_loop()
        with self._lock:
            ref = self._live.pop(user_id, None)
        if ref is None:
            return
        try:
            self._stores_sup().terminate_child(user_id).get(timeout=timeout)
        except (ServiceUnavailable, pykka.ActorDeadError, pykka.Timeout):
            pass  # no supervisor, or the store went meanwhile: closed either way

    def open_count(self) -> int:
        """How many stores are open right now."""
        return len(self._live)

    def stats(self) -> dict[str, Any]:
        """Figures for /health."""
        return {
            "open": len(self._live),
            "max_open": self.max_open,
            "activations": self.activations,
            "evictions": self.evictions,
            "quarantined": sorted(self.quarantined),
        }

    def search_stats(self) -> dict[str, Any]:
        """The search index's figures for /health: whether it is on, and the backfills' progress."""
        return {"index": self.index_options.enabled, **self.index_figures.stats()}

    def quarantine_problems(self) -> list[str]:
        """/health: each user whose store waits for repair (checked against the disk: repairs happen elsewhere)."""
        for user_id in list(self.quarantined):
            if pending(store_path(self.data_path, user_id)) is None:
                self.quarantined.discard(user_id)
        if not self.quarantined:
            return []
        users = sorted(self.quarantined)
        shown = ", ".join(users[:10]) + (f" and {len(users) - 10} more" if len(users) > 10 else "")
        return [f"stores: {len(users)} quarantined (damaged, waiting for repair: {shown}); run "
                f"`brain repair --user ID`, or set api.auto_repair = true"]

    def note_quarantined(self, user_id: str) -> None:
        """A store moved itself aside (called on its thread)."""
        self.quarantined.add(user_id)
        if self.on_quarantined is not None:
            self.on_quarantined(user_id)

    def note_repaired(self, user_id: str) -> None:
        """A quarantined store was rebuilt: open it again on the next request (checked first)."""
        self.quarantined.discard(user_id)
        self.files.forget(user_id)

    def _quarantined_answer(self, detail: str) -> StoreQuarantined:
        return StoreQuarantined(
            "the store was found damaged and is offline until it is rebuilt from the event stream",
            retry_after=self.repair_retry_after, detail=detail,
        )

    # -- internals: validation ------------------------------------------------------------------

    def _check_room(self, request: AppendRequest) -> None:
        """Refuse a write the disk has no room for (server.min_free_bytes) before it reaches SQLite."""
        try:
            self.faults.guard.check(sum(len(ev.data) + len(ev.type) + 64 for ev in request.events))
        except StorageFault as exc:
            raise self.faults.record(exc, "events.db") from None

    def _check_user(self, user_id: str) -> None:
        if not is_valid_user_id(user_id):
            raise BadRequest("user id: not a valid user id")

    def _validate(
        self, user_id: str, events: Sequence[Mapping[str, Any]], max_event_bytes: int | None = None
    ) -> list[NewEvent]:
        self._check_user(user_id)
        if isinstance(events, Mapping) or not isinstance(events, Sequence) or not events:
            raise BadRequest("events: a non-empty list of {type, data, created_at?, key?}")
        limit = self.max_event_bytes if max_event_bytes is None else max_event_bytes
        return [new_event(ev, max_bytes=limit, field=f"events[{i}]") for i, ev in enumerate(events)]

    def _query_message(
        self, user_id: str, etype: str | TypeFilter | None, since: Any, until: Any, limit: int, cursor: str | None
    ) -> Query:
        """A validated Query (asks one row more than `limit`, to know whether a next page exists)."""
        self._check_user(user_id)
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= self.page_max:
            raise BadRequest(f"limit: must be an integer from 1 to {self.page_max}")
        if isinstance(etype, str):
            etype = TypeFilter.parse([etype])
        return Query(
            types=etype,
            since=None if since is None else parse_time(since, "since"),
            until=None if until is None else parse_time(until, "until"),
            before=None if cursor is None else self.cursors.read(user_id, cursor),
            limit=limit + 1,
        )

    def make_query(
        self, user_id: str, etype: TypeFilter | None, since: Any, until: Any, limit: int, cursor: str | None
    ) -> Query:
        """A validated Query message for `query_events` (BadRequest naming the bad parameter)."""
        return self._query_message(user_id, etype, since, until, limit, cursor)

    def _next_cursor(self, user_id: str, rows: list[StoredEvent], limit: int) -> str | None:
        if len(rows) <= limit:
            return None
        last = rows[limit - 1]
        return self.cursors.make(user_id, last.created_at, last.id)

    def _not_on_loop(self) -> None:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return
        raise RuntimeError("blocking store call on an event loop; use the async API")

    # -- internals: the event-loop path ---------------------------------------------------------

    async def _submit(self, user_id: str, message: AppendRequest | Request) -> Any:
        """Hand a request to the user's store (see brain.api.user_store's StoreInbox) and await it."""
        loop = asyncio.get_running_loop()
        # Made when first needed: nearly every request is taken at the first attempt, and an
        # exception object costs a few microseconds of the loop's time.
        last: Exception | None = None
        attempts, stopping = 0, _NOT_STOPPING
        while attempts < _ATTEMPTS + _MAKE_ROOM_ATTEMPTS:
            ref = self._live_ref(user_id)
            if ref is None:
                ref = await self._activate(user_id)
            if stopping.holds(ref):  # the store that refused, still stopping: wait for it
                self._forget(user_id, ref)
                delay = stopping.backoff(loop.time())
                if delay is None:
                    break
                await asyncio.sleep(delay)
                continue
            attempts += 1
            if not self._waiting and type(message) is AppendRequest:
                # Nothing else is waiting for a store: the two thread hand-offs would be most
                # of this request's time, and there is no other work the loop would do meanwhile.
                done = ref.actor_inbox.append_now(message)  # type: ignore[attr-defined]
                if done is not None:
                    return done
            fut: asyncio.Future[Any] = loop.create_future()
            self._waiting += 1
            try:
                submit(ref, message, fut)
                return await fut
            except StoreClosed:
                # Not taken, so not written: safe to hand to the store's next generation.
                self._forget(user_id, ref)
                if stopping is _NOT_STOPPING:
                    stopping = _Stopping()
                stopping.refused(ref, loop.time())
            except NoFileDescriptors as exc:
                # It could not open for want of descriptors: close another store, try again.
                self._forget(user_id, ref)
                last = exc
                if not await loop.run_in_executor(self._activation_pool, self._close_one, user_id, 15.0):
                    raise
            except (StoreCorrupt, StoreQuarantined) as exc:
                self._forget(user_id, ref)
                if fut.done():  # this request met the damage
                    raise self._quarantined_answer(exc.detail) if isinstance(exc, StoreQuarantined) else exc from None
                # Refused by a store that found damage before this request came: quarantined now.
            finally:
                self._waiting -= 1
        raise last or ServiceUnavailable("the user's store is restarting; try again")

    def _live_ref(self, user_id: str) -> pykka.ActorRef[Any] | None:
        with self._lock:
            ref = self._live.get(user_id)
            if ref is not None:
                self._live.move_to_end(user_id)
        return ref

    async def _activate(self, user_id: str) -> pykka.ActorRef[Any]:
        pending = self._activating.get(user_id)
        if pending is not None:
            return await asyncio.shield(pending)
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[pykka.ActorRef[Any]] = loop.create_future()
        self._activating[user_id] = fut
        try:
            # Activation is rare (and costs ~ms: thread start, opening the database); a worker
            # thread waits for the supervisor so the loop never does.
            ref = await loop.run_in_executor(self._activation_pool, self._activate_blocking, user_id, 15.0)
            fut.set_result(ref)
            return ref
        except BaseException as exc:
            fut.set_exception(exc)
            fut.exception()  # retrieved: concurrent waiters re-raise it, nobody else must
            raise
        finally:
            del self._activating[user_id]

    # -- internals: the blocking path -------------------------------------------------------------

    def _ask_blocking(self, user_id: str, message: Any, timeout: float) -> Any:
        self._check_user(user_id)
        attempts, stopping = 0, _Stopping()
        while attempts < _ATTEMPTS + _MAKE_ROOM_ATTEMPTS:
            ref = self._live_ref(user_id) or self._activate_blocking(user_id, timeout)
            if stopping.holds(ref):  # the store that refused, still stopping: wait for it
                self._forget(user_id, ref)
                delay = stopping.backoff(time.monotonic())
                if delay is None:
                    break
                time.sleep(delay)
                continue
            attempts += 1
            try:
                return ref.ask(message, timeout=timeout)
            except (pykka.ActorDeadError, StoreClosed):
                self._forget(user_id, ref)
                stopping.refused(ref, time.monotonic())
            except NoFileDescriptors:
                self._forget(user_id, ref)
                if not self._close_one(user_id, timeout):
                    raise
            except StoreQuarantined as exc:
                raise self._quarantined_answer(exc.detail) from None
        raise ServiceUnavailable("the user's store is restarting; try again")

    def _activate_blocking(self, user_id: str, timeout: float) -> pykka.ActorRef[Any]:
        """Start the user's store under the supervisor (or find the running one); remember it."""
        if self.closing:
            raise ServiceUnavailable("the server is shutting down")
        if user_id in self.deleted:
            raise Unauthorized("the account was deleted", code="USER_DELETED")
        try:
            path = store_path(self.data_path, user_id)
        except StorePathError as exc:
            raise BadRequest(f"user id: {exc}") from None
        if user_id in self.quarantined:
            entry = pending(path)
            if entry is not None:
                raise self._quarantined_answer(str(entry.get("reason")))
            self.note_repaired(user_id)
        spec = ChildSpec(
            id=user_id,
            start=lambda link: UserStore.start(
                link=link,
                user_id=user_id,
                data_path=self.data_path,
                outbox=self._outbox,
                idle_seconds=self.idle_seconds,
                mmap_bytes=self.mmap_bytes,
                index=self.index_options,
                max_bytes=self.max_user_bytes,
                acks=self._ack_queue(user_id),
                on_exit=self._forget,
                faults=self.faults,
                files=self.files,
                verify=self.files.needs_check(user_id, path),
                on_quarantine=self.note_quarantined,
            ),
            restart="transient",
            start_timeout=timeout,
        )
        ref: pykka.ActorRef[Any] | None = None
        for _ in range(_ATTEMPTS):
            proxy = self._stores_sup()
            try:
                ref = proxy.start_child(spec).get(timeout=timeout)
                self.activations += 1
            except ChildAlreadyStarted as exc:
                # Started meanwhile by another thread (or restarted after a crash).
                ref = exc.ref or proxy.get_child(user_id).get(timeout=timeout)
            except ChildStartError as exc:
                found = classify(exc.cause, path.parent)
                if found is None:
                    log.error("could not open the store of %s: %r", user_id, exc.cause)
                    raise ServiceUnavailable("the user's store could not be opened") from None
                if isinstance(found, StoreQuarantined):
                    if user_id not in self.quarantined:
                        self.note_quarantined(user_id)
                    raise self._quarantined_answer(found.detail) from None
                raise found from None
            except pykka.ActorDeadError:
                self._sup = None  # the supervisor is being restarted: look it up again
                continue
            if ref is not None:
                self._remember(user_id, ref)
                return ref
        raise ServiceUnavailable("the user's store could not be opened; try again")

    def _close_one(self, wanted: str, timeout: float) -> bool:
        """Out of descriptors: close the least recently used other store and wait for it; False if none is open.

        A new store waits for an old one to close rather than fail; those still open keep working.
        """
        with self._lock:
            victim = next((u for u in self._live if u != wanted), None)
            if victim is None:
                return False
            del self._live[victim]
        self.evictions += 1
        # The fault itself is logged (once a minute) with what to do; this is the detail.
        log.debug("out of file descriptors opening the store of %s: closed the store of %s to make room", wanted, victim)
        try:
            self._stores_sup().terminate_child(victim).get(timeout=timeout)
        except (pykka.ActorDeadError, pykka.Timeout):
            pass
        return True

    def _ack_queue(self, user_id: str) -> deque[int]:
        with self._lock:
            queue = self._acks.get(user_id)
            if queue is None:
                queue = self._acks[user_id] = deque()
        return queue

    def _stores_sup(self) -> Any:
        sup = self._sup
        if sup is None or not sup.is_alive():
            sup = self._rt.lookup("data_sup/stores")
            if sup is None:
                raise ServiceUnavailable("the store supervisor is not running")
            self._sup, self._sup_proxy = sup, sup.proxy()
        return self._sup_proxy

    def _remember(self, user_id: str, ref: pykka.ActorRef[Any]) -> None:
        victims: list[str] = []
        with self._lock:
            self._live[user_id] = ref
            self._live.move_to_end(user_id)
            while len(self._live) > self.max_open:
                victim, _ = self._live.popitem(last=False)
                victims.append(victim)
        for victim in victims:
            self.evictions += 1
            # Queued behind anything already sent to the victim; its later requests reopen it.
            try:
                self._sup_proxy.terminate_child(victim)
            except pykka.ActorDeadError:
                pass

    def _forget(self, user_id: str, ref: pykka.ActorRef[Any]) -> None:
        """Drop a dead ref (called by the store itself as it exits, and on ActorDeadError)."""
        with self._lock:
            current = self._live.get(user_id)
            if current is not None and current.actor_urn == ref.actor_urn:
                del self._live[user_id]
                # The store applied what was queued as it closed; a later generation gets a new one.
                self._acks.pop(user_id, None)


def stored_dicts(result: AppendResult, with_data: bool) -> list[dict[str, Any]]:
    """`append_from_thread`'s answer: the stored events (without their data unless `with_data`)."""
    if not with_data:
        return [{"id": ev.id, "type": ev.type, "created_at": ev.created_at} for ev, _ in result]
    return [ev.as_dict() for ev, _ in result]

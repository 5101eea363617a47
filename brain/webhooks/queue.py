"""DeliveryQueue: the actor that owns webhooks.db and turns users' commits into deliveries.

Why the queue is built this way (the outbox pattern on the commit log, rather than a
JetStream consumer per endpoint): a user's events.db already is a durable, ordered log of
their commits, and its commit sequence says exactly how far a reader got. So the queue keeps,
per user, a cursor into that log, and moves it in the same webhooks.db transaction that
inserts the deliveries for the events it passed (one row per endpoint and event, unique). A
commit only *pokes* the queue (a word from the commit log's listener, coalesced per user); the
queue then reads the log from its cursor. Nothing is lost when brain dies at any point: events
committed but not yet queued are read again from the cursor on start, and deliveries in flight
stay `pending` and are sent again (receivers drop repeats by `webhook-id`). It costs no NATS
round trip and works while NATS is down, each delivery keeps its own state and attempt log for
GET /webhooks/{id}/deliveries, and the backoff is the endpoint's (a failing endpoint gets one
probe at a time, not one request per queued event), which a JetStream consumer per endpoint
would all have to rebuild; a thousand users' endpoints would also be a thousand consumers.

Backoff: after a failure the endpoint waits `retry_base_seconds * 2^(failures-1)` (jitter
±20 %, at most `retry_max_seconds`, longer if the receiver's Retry-After says so); a success
clears it. An endpoint failing for `disable_after_days` without a success is disabled: its
pending deliveries fail and the user gets a `webhook.disabled` event. Backoffs and pauses are
timed by the steady clock (brain.clock): a wall clock stepping back an hour does not hold an
endpoint's next attempt back by that hour.

Storage faults of webhooks.db (a full or read-only disk, a damaged file, no descriptors) never
crash the queue: a crash loop would exhaust the data tier's restart intensity and take the
users' stores down with it. They are typed and counted (`brain.storage`) as `webhooks.db`;
the routes answer them (507 / 503 with the reason); a delivery whose attempt cannot be recorded
stays pending and deliveries pause for FAULT_RETRY_SECONDS; a user's events that cannot be
queued are read again from the unmoved cursor then. A webhooks.db that cannot be opened, or is
found damaged, is closed and tried again every FAULT_RETRY_SECONDS (a damaged one must pass
`quick_check` first): /health names it until it opens, and then every user's cursor is read.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import logging
import random
import sqlite3
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, TypeVar

from brain.actors.base import BrainActor, Link
from brain.clock import steady_time
from brain.contracts import CommitLog, EventSink
from brain.errors import NotFound, ServiceUnavailable, StorageFault, StoreCorrupt, Unauthorized, Unprocessable
from brain.event_types import TypeFilter
from brain.storage import StorageFaults, classify, fault, quick_check
from brain.webhooks.db import ACTIVE, Endpoint, WebhookDb
from brain.webhooks.state import Poke, Webhooks

log = logging.getLogger("brain.webhooks")

DB_FILE = "webhooks.db"
# Commits read from the log at a time.
LOG_PAGE = 500
# Deliveries one endpoint may have in flight at once (one while it is failing).
PER_ENDPOINT = 4
PRUNE_SECONDS = 3600.0
_PRUNE = "prune"
DISABLED_EVENT = "webhook.disabled"
# While webhooks.db cannot be written or opened: how long deliveries pause, and how often the
# queue tries again (reading the cursors it could not move, opening the file it could not open).
FAULT_RETRY_SECONDS = 5.0
_RETRY = "retry-after-fault"

T = TypeVar("T")


class Result(NamedTuple):
    """How one attempt went (told by the sender)."""

    delivery_id: int
    endpoint_id: str
    at: float
    status: int | None
    error: str | None
    duration_ms: float
    retry_after: float | None


class Delivery(NamedTuple):
    """What the sender needs to make one attempt."""

    id: int
    msg_id: str
    endpoint_id: str
    url: str
    body: bytes
    key: bytes  # the endpoint's HMAC key


def message_id(endpoint_id: str, seq: int) -> str:
    """A delivery's `webhook-id`: the same for the same endpoint and event wherever and however
    often it is queued (a node that takes a user over queues again what the last one may have
    sent; receivers drop the repeats by this id)."""
    digest = hashlib.sha256(f"{endpoint_id}/{seq}".encode()).digest()[:18]
    return "msg_" + base64.urlsafe_b64encode(digest).decode()


def delivery_body(event: dict[str, Any]) -> bytes:
    """The JSON a receiver gets: Standard Webhooks' {type, timestamp, data}, data the event as the API shows it."""
    shown = {k: event[k] for k in ("id", "type", "data", "created_at")}
    return json.dumps({"type": event["type"], "timestamp": event["created_at"], "data": shown},
                      separators=(",", ":"), ensure_ascii=False).encode()


def iso(moment: float | None) -> str | None:
    """Epoch seconds as RFC 3339 UTC (None stays None)."""
    if moment is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(moment)) + f".{int(moment % 1 * 1000):03d}Z"


def public(endpoint: Endpoint) -> dict[str, Any]:
    """An endpoint as the API shows it (never its secret)."""
    return {
        "id": endpoint.id, "url": endpoint.url, "types": json.loads(endpoint.types), "state": endpoint.state,
        "created_at": iso(endpoint.created_at), "failing_since": iso(endpoint.failing_since),
        "disabled_at": iso(endpoint.disabled_at), "disabled_reason": endpoint.disabled_reason,
    }


def typed_faults(ask: Callable[..., T]) -> Callable[..., T]:
    """An ask of the routes or the sender: webhooks.db's storage faults raised typed and counted,
    a damaged file closed (the routes answer 507 / 503 with the reason, never a bare 500)."""

    @functools.wraps(ask)
    def typed(self: DeliveryQueue, *args: Any, **kwargs: Any) -> T:
        try:
            return ask(self, *args, **kwargs)
        except (sqlite3.Error, OSError) as exc:
            found = self._met(exc)
            if isinstance(found, StoreCorrupt):
                self._refuse(found)
            raise found from exc

    return typed


class DeliveryQueue(BrainActor):
    """Owns webhooks.db (see the module docstring)."""

    def __init__(self, *, link: Link | None = None, hub: Webhooks, commits: CommitLog, events: EventSink,
                 faults: StorageFaults) -> None:
        super().__init__(link=link)
        self.hub = hub
        self.settings = hub.settings
        self.commits = commits
        self.events = events
        self.faults = faults
        self.db: WebhookDb | None = None
        # Why webhooks.db is not open (None while it is): what the routes are answered.
        self.refusal: StorageFault | None = None
        # Open again only once quick_check passes (it was found damaged).
        self._verify = False
        # After a write fault: no deliveries before this (epoch seconds), users to read again.
        self._paused_until = 0.0
        self._unread: set[str] = set()
        self._retry_armed = False

    def __str__(self) -> str:
        return "DeliveryQueue"

    def on_start(self) -> None:
        self._open()
        if self.hub.delivers_here:  # one worker prunes, the one that delivers
            self.schedule(PRUNE_SECONDS, _PRUNE)

    def on_stop(self) -> None:
        self._close()

    def on_failure(self, *_exc: object) -> None:
        self._close()

    def _close(self) -> None:
        db, self.db = self.db, None
        if db is not None:
            db.close()

    def _open(self) -> None:
        """Open webhooks.db and read every user's commits from their cursor; on a storage fault,
        refuse with it and try again later."""
        try:
            db = WebhookDb(self.hub.data_path / DB_FILE)
            try:
                if self._verify and (verdict := quick_check(db.db)) != "ok":
                    raise fault(StoreCorrupt, f"quick_check: {verdict}")
                users = db.users_with_active_endpoints()
            except BaseException:
                db.close()
                raise
        except Exception as exc:  # noqa: BLE001 - a storage fault is answered; anything else is raised again
            self._refuse(self._met(exc))
            self.hub.attach_queue(self.actor_ref, set())
            return
        if self.refusal is not None:
            log.warning("webhooks: webhooks.db is open again; reading every user's commits from their cursor")
        self.db, self.refusal, self._verify = db, None, False
        self.hub.unavailable = None
        self.hub.attach_queue(self.actor_ref, users)
        if not self.hub.delivers_here:
            return  # it serves the routes; the delivering worker reads the commits
        # What committed while no queue ran (or before a crash) is read from each cursor.
        for user_id in users:
            self.hub.poke(user_id)
        self.hub.wake_sender()

    def _met(self, exc: BaseException) -> StorageFault:
        """webhooks.db's storage fault behind `exc`, counted; `exc` itself is raised if it is none."""
        found = classify(exc, self.hub.data_path)
        if found is None:
            raise exc
        return self.faults.record(found, DB_FILE)

    def _refuse(self, found: StorageFault) -> None:
        """webhooks.db is unusable (could not open, or damaged): close it, answer `found`, try again later."""
        self._close()
        self.refusal = found
        self.hub.unavailable = found.kind
        self._verify = self._verify or isinstance(found, StoreCorrupt)
        self._arm_retry()

    def _arm_retry(self) -> None:
        if not self._retry_armed:
            self._retry_armed = True
            self.schedule(FAULT_RETRY_SECONDS, _RETRY)

    def _write_fault(self, exc: BaseException, user_id: str | None = None) -> StorageFault:
        """A write of webhooks.db failed: pause deliveries (and re-read `user_id`'s commits) for a while."""
        found = self._met(exc)
        if isinstance(found, StoreCorrupt):
            self._refuse(found)
            return found
        self._paused_until = steady_time() + FAULT_RETRY_SECONDS
        if user_id is not None:
            self._unread.add(user_id)
        self._arm_retry()
        return found

    def on_receive(self, message: Any) -> Any:
        if message == _RETRY:
            self._retry_armed = False
            if self.db is None:
                self._open()
            else:
                unread, self._unread = self._unread, set()
                for user_id in unread:
                    self.hub.poke(user_id)
                self.hub.wake_sender()
            return None
        if isinstance(message, Poke):
            self.hub.taken(message.user_id)
            if self.db is not None:  # else every user is read when it opens
                try:
                    self._read_log(message.user_id)
                except Exception as exc:  # noqa: BLE001 - typed by _write_fault, or raised again
                    self._write_fault(exc, message.user_id)
            return None
        if isinstance(message, Result):
            if self.db is not None:  # else the delivery stays pending and is attempted again
                try:
                    self._record(message)
                except Exception as exc:  # noqa: BLE001 - typed by _write_fault, or raised again
                    self._write_fault(exc)
            return None
        if message == _PRUNE:
            self.schedule(PRUNE_SECONDS, _PRUNE)
            if self.db is not None:
                try:
                    self._db().prune(time.time() - self.settings.keep_days * 86400)
                except Exception as exc:  # noqa: BLE001 - typed by _write_fault, or raised again
                    self._write_fault(exc)
            return None
        return super().on_receive(message)

    def _db(self) -> WebhookDb:
        """The open webhooks.db; why it is not open, raised (a storage fault, or 503 while starting)."""
        db = self.db
        if db is None:
            raise self.refusal or ServiceUnavailable("webhooks are starting; try again")
        return db

    # -- from the commit log to deliveries --------------------------------------------------------

    def _read_log(self, user_id: str) -> None:
        db = self._db()
        cursor = db.cursor(user_id)
        endpoints = [(e, TypeFilter.parse(json.loads(e.types))) for e in db.endpoints_of(user_id) if e.state == ACTIVE]
        if cursor is None or not endpoints:
            return
        added = 0
        while True:
            try:
                events = self.commits.changes_from_thread(user_id, cursor, LOG_PAGE)
            except Unauthorized:
                return  # the account is being deleted: its purge removes the endpoints
            except Exception as exc:  # noqa: BLE001 - the store is restarting: read it again soon
                log.warning("webhooks: cannot read the commits of %s yet (%r); retrying", user_id, exc)
                self.schedule(5.0, Poke(user_id))
                return
            if not events:
                break
            rows = []
            for event in events:
                seq = event["seq"]
                body: bytes | None = None
                for endpoint, types in endpoints:
                    if seq > endpoint.after_seq and (types is None or types.matches(event["type"])):
                        body = body or delivery_body(event)
                        rows.append((message_id(endpoint.id, seq), endpoint.id, seq, event["type"], body))
            cursor = events[-1]["seq"]
            added += db.enqueue(user_id, rows, cursor, time.time())
            if len(events) < LOG_PAGE:
                break
        if added:
            self.hub.queued += added
            self.hub.wake_sender()

    # -- the sender's side ----------------------------------------------------------------------

    @typed_faults
    def due(self, limit: int, in_flight: Sequence[int], room: dict[str, int]) -> tuple[list[Delivery], float | None]:
        """Deliveries to attempt now (each endpoint's secret opened), and when to look again.

        None while webhooks.db cannot record how attempts went (a storage fault): they wait, pending.
        """
        now = steady_time()
        db = self.db
        if db is None or now < self._paused_until:
            return [], (self._paused_until if db is not None else None)
        found = []
        for due in db.due(now, limit, in_flight, room, PER_ENDPOINT):
            try:
                key = self.hub.box.open(due.secret, bound_to=due.endpoint_id)
            except ValueError:
                log.error("webhooks: the secret of endpoint %s does not open (another server secret?)", due.endpoint_id)
                continue
            found.append(Delivery(due.id, due.msg_id, due.endpoint_id, due.url, due.body, key))
        return found, db.next_retry(now)

    def _record(self, result: Result) -> None:
        db = self._db()
        delivered = result.status is not None and 200 <= result.status < 300
        db.record(result.delivery_id, result.at, result.status, result.error, result.duration_ms, delivered)
        if delivered:
            self.hub.delivered += 1
            db.endpoint_succeeded(result.endpoint_id)
            return
        self.hub.failed_attempts += 1
        now = steady_time()
        endpoint = db.endpoint_failed(result.endpoint_id, now, lambda failures: now + self._backoff(failures, result.retry_after))
        if endpoint is None or endpoint.state != ACTIVE or endpoint.failing_since is None:
            return
        if now - endpoint.failing_since >= self.settings.disable_after_days * 86400:
            self._disable(endpoint, now, result)

    def _backoff(self, failures: int, retry_after: float | None) -> float:
        s = self.settings
        wait = min(s.retry_max_seconds, s.retry_base_seconds * 2 ** min(failures - 1, 30)) * random.uniform(0.8, 1.2)
        if retry_after is not None:
            wait = max(wait, min(retry_after, s.retry_max_seconds))
        return wait

    def _disable(self, endpoint: Endpoint, now: float, result: Result) -> None:
        db = self._db()
        last = result.error or f"HTTP {result.status}"
        reason = f"failing since {iso(endpoint.failing_since)} (last: {last[:200]})"
        failed = db.disable(endpoint.id, now, reason)
        self.hub.disabled += 1
        self.hub.users = frozenset(db.users_with_active_endpoints())
        log.warning("webhooks: endpoint %s of %s disabled: %s", endpoint.id, endpoint.user_id, reason)
        data = {"webhook_id": endpoint.id, "url": endpoint.url, "failing_since": iso(endpoint.failing_since),
                "disabled_at": iso(now), "last_error": last[:500], "deliveries_failed": failed}
        try:
            self.events.append_from_thread(endpoint.user_id, [{"type": DISABLED_EVENT, "data": data}])
        except Exception:  # noqa: BLE001 - the endpoint is disabled either way; GET /webhooks shows it
            log.exception("webhooks: could not tell %s that endpoint %s was disabled", endpoint.user_id, endpoint.id)

    # -- the routes' side (asks from the event loop) -------------------------------------------------

    @typed_faults
    def create(self, user_id: str, url: str, types: list[str], sealed: Any, endpoint_id: str) -> dict[str, Any]:
        """A new endpoint of the user, which gets the events committed from now on."""
        db = self._db()
        if len(db.endpoints_of(user_id)) >= self.settings.max_per_user:
            raise Unprocessable(f"at most {self.settings.max_per_user} webhooks per user; delete one first",
                                code="TOO_MANY_WEBHOOKS")
        head = self.commits.head_from_thread(user_id)
        endpoint = Endpoint(endpoint_id, user_id, url, json.dumps(types), sealed, head, time.time(), ACTIVE,
                            0, None, None, None, None)
        db.add_endpoint(endpoint)
        self.hub.users = self.hub.users | {user_id}
        return public(endpoint)

    @typed_faults
    def reload_users(self) -> None:
        """Re-read who has active endpoints (another worker created or deleted one)."""
        self.hub.users = frozenset(self._db().users_with_active_endpoints())

    @typed_faults
    def endpoints_of(self, user_id: str) -> list[dict[str, Any]]:
        """The user's endpoints."""
        return [public(e) for e in self._db().endpoints_of(user_id)]

    @typed_faults
    def get(self, user_id: str, endpoint_id: str) -> dict[str, Any]:
        """One of the user's endpoints; 404 if it is not theirs."""
        return public(self._endpoint(user_id, endpoint_id))

    @typed_faults
    def delete(self, user_id: str, endpoint_id: str) -> None:
        """Delete one of the user's endpoints and its deliveries; 404 if it is not theirs."""
        db = self._db()
        if not db.delete_endpoint(user_id, endpoint_id):
            raise NotFound("no such webhook")
        self.hub.users = frozenset(db.users_with_active_endpoints())

    @typed_faults
    def deliveries(self, user_id: str, endpoint_id: str, limit: int, status: str | None) -> list[dict[str, Any]]:
        """The endpoint's newest deliveries with their attempts; 404 if it is not theirs."""
        self._endpoint(user_id, endpoint_id)
        out = []
        for row in self._db().deliveries(endpoint_id, limit, status):
            out.append({
                "id": row["msg_id"], "event_id": row["event_seq"], "event_type": row["event_type"],
                "status": row["status"], "attempts": row["attempts"], "created_at": iso(row["created_at"]),
                "finished_at": iso(row["finished_at"]), "last_status": row["last_status"], "last_error": row["last_error"],
                "attempt_log": [{**a, "at": iso(a["at"])} for a in row["attempt_log"]],
            })
        return out

    # -- a cluster node's directory (brain.webhooks.directory) ------------------------------------------

    @typed_faults
    def records(self) -> dict[str, dict[str, Any]]:
        """Every endpoint as the shared bucket holds it: its row (secret sealed, base64) and its
        user's resume point (brain.webhooks.db.WebhookDb.resume_points)."""
        db = self._db()
        resume = db.resume_points()
        out = {}
        for endpoint in db.all_endpoints():
            row = endpoint._asdict()
            row["secret"] = base64.b64encode(bytes(endpoint.secret)).decode()
            out[endpoint.id] = {"endpoint": row, "resume": resume.get(endpoint.user_id, endpoint.after_seq)}
        return out

    @typed_faults
    def adopt(self, records: list[dict[str, Any]]) -> int:
        """Take on endpoints of users placed on this node now, from their records; their commits
        are read again from the lowest resume point (what was sent before comes again, same ids)."""
        endpoints = []
        resume: dict[str, int] = {}
        for record in records:
            row = dict(record["endpoint"])
            row["secret"] = base64.b64decode(row["secret"])
            endpoint = Endpoint(**row)
            endpoints.append(endpoint)
            resume[endpoint.user_id] = min(resume.get(endpoint.user_id, record["resume"]), int(record["resume"]))
        db = self._db()
        added = db.adopt_endpoints(endpoints, resume)
        self.hub.users = frozenset(db.users_with_active_endpoints())
        for user_id in resume:
            self.hub.poke(user_id)
        return added

    @typed_faults
    def purge(self, user_id: str) -> int:
        """Forget a deleted user's endpoints and deliveries; how many endpoints they had."""
        gone = self._db().purge_user(user_id)
        self.hub.users = self.hub.users - {user_id}
        return gone

    def _endpoint(self, user_id: str, endpoint_id: str) -> Endpoint:
        found = self._db().endpoint(user_id, endpoint_id)
        if found is None:
            raise NotFound("no such webhook")
        return found


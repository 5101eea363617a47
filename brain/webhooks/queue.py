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
pending deliveries fail and the user gets a `webhook.disabled` event.
"""

from __future__ import annotations

import json
import logging
import random
import secrets
import time
from collections.abc import Sequence
from typing import Any, NamedTuple

from brain.actors.base import BrainActor, Link
from brain.contracts import CommitLog, EventSink
from brain.errors import NotFound, Unauthorized, Unprocessable
from brain.event_types import TypeFilter
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


class DeliveryQueue(BrainActor):
    """Owns webhooks.db (see the module docstring)."""

    def __init__(self, *, link: Link | None = None, hub: Webhooks, commits: CommitLog, events: EventSink) -> None:
        super().__init__(link=link)
        self.hub = hub
        self.settings = hub.settings
        self.commits = commits
        self.events = events
        self.db: WebhookDb | None = None

    def __str__(self) -> str:
        return "DeliveryQueue"

    def on_start(self) -> None:
        self.db = WebhookDb(self.hub.data_path / DB_FILE)
        users = self.db.users_with_active_endpoints()
        self.hub.attach_queue(self.actor_ref, users)
        # What committed while no queue ran (or before a crash) is read from each cursor.
        for user_id in users:
            self.hub.poke(user_id)
        self.schedule(PRUNE_SECONDS, _PRUNE)
        self.hub.wake_sender()

    def on_stop(self) -> None:
        self._close()

    def on_failure(self, *_exc: object) -> None:
        self._close()

    def _close(self) -> None:
        db, self.db = self.db, None
        if db is not None:
            db.close()

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, Poke):
            self.hub.taken(message.user_id)
            self._read_log(message.user_id)
            return None
        if isinstance(message, Result):
            self._record(message)
            return None
        if message == _PRUNE:
            self._db().prune(time.time() - self.settings.keep_days * 86400)
            self.schedule(PRUNE_SECONDS, _PRUNE)
            return None
        return super().on_receive(message)

    def _db(self) -> WebhookDb:
        assert self.db is not None
        return self.db

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
                        rows.append((f"msg_{secrets.token_urlsafe(18)}", endpoint.id, seq, event["type"], body))
            cursor = events[-1]["seq"]
            added += db.enqueue(user_id, rows, cursor, time.time())
            if len(events) < LOG_PAGE:
                break
        if added:
            self.hub.queued += added
            self.hub.wake_sender()

    # -- the sender's side ----------------------------------------------------------------------

    def due(self, limit: int, in_flight: Sequence[int], room: dict[str, int]) -> tuple[list[Delivery], float | None]:
        """Deliveries to attempt now (each endpoint's secret opened), and when to look again."""
        db = self._db()
        now = time.time()
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
        now = time.time()
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

    def endpoints_of(self, user_id: str) -> list[dict[str, Any]]:
        """The user's endpoints."""
        return [public(e) for e in self._db().endpoints_of(user_id)]

    def get(self, user_id: str, endpoint_id: str) -> dict[str, Any]:
        """One of the user's endpoints; 404 if it is not theirs."""
        return public(self._endpoint(user_id, endpoint_id))

    def delete(self, user_id: str, endpoint_id: str) -> None:
        """Delete one of the user's endpoints and its deliveries; 404 if it is not theirs."""
        db = self._db()
        if not db.delete_endpoint(user_id, endpoint_id):
            raise NotFound("no such webhook")
        self.hub.users = frozenset(db.users_with_active_endpoints())

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


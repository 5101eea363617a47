"""The sync engine of one account: one page per step, checkpointed, idempotent.

A run goes through phases stored on the account row (so a restart resumes exactly where the
last committed page left it):

- ``initial``: the provider's full sync, page by page. After an expired cursor this is a
  *resync*: every message it sees is stamped with the account's new epoch.
- ``reconcile`` (only after a resync): messages the resync did not see are gone; each gets a
  `mail.message.deleted` event.
- ``incremental``: changes since the cursor, page by page.

Per page, events go to the user's store first and the checkpoint (index rows + position) is
committed to mail.db second. A crash between the two replays the page: every event carries
an idempotency key derived from (account, message, revision), and the revision comes from
the index that was not yet updated, so the replay produces the same keys and the store keeps
one event per key.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Literal

from brain.mail.settings import MailSettings
from brain.mail.db import Account, IndexEntry, MailDb, States
from brain.mail.provider import (
    AuthFailed,
    CursorExpired,
    MailMessage,
    MailProvider,
    RateLimited,
    SyncContext,
    SyncPage,
    TokenSource,
    Transient,
)

__all__ = ["AccountSync", "EventSink", "Outcome", "QuotaPacer", "StoreUnavailable", "event_key"]

log = logging.getLogger("brain.mail")

#: Appends events to a user's store atomically (blocking); returns the stored events.
EventSink = Callable[[str, list[dict[str, Any]]], list[dict[str, Any]]]

RECEIVED = "mail.message.received"
UPDATED = "mail.message.updated"
DELETED = "mail.message.deleted"

_RECONCILE_CHUNK = 500


class StoreUnavailable(Transient):
    """The user's store did not take the events (retried like a provider hiccup)."""


@dataclass(frozen=True)
class Outcome:
    """What the actor should do after a step."""

    kind: Literal["more", "done", "retry", "stop"]
    delay: float = 0.0
    reason: str = ""


class QuotaPacer:
    """A token bucket of provider quota units per second (0: unlimited); ``spend`` waits."""

    def __init__(
        self,
        units_per_second: float,
        *,
        burst_seconds: float = 1.0,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate = float(units_per_second)
        self.capacity = self.rate * burst_seconds
        self._tokens = self.capacity
        self._sleep = sleep
        self._clock = clock
        self._last = clock()
        self._lock = threading.Lock()
        self.waited = 0.0

    def spend(self, units: float) -> None:
        """Take ``units`` from the bucket, first sleeping off any debt they would leave."""
        if self.rate <= 0:
            return
        with self._lock:
            now = self._clock()
            self._tokens = min(self.capacity, self._tokens + (now - self._last) * self.rate)
            self._last = now
            self._tokens -= units
            debt = -self._tokens
        if debt > 0:
            wait = debt / self.rate
            self.waited += wait
            self._sleep(wait)


def event_key(account_id: str, message_id: str, rev: int) -> str:
    """The idempotency key of the ``rev``-th event about one message of one account."""
    digest = hashlib.sha256(f"{account_id}\x00{message_id}".encode()).hexdigest()[:32]
    return f"mail:{digest}:{rev}"


def backoff_delay(failures: int, *, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Exponential backoff with jitter: half fixed, half random, never above ``cap``."""
    ceiling = min(cap, base * (2 ** min(failures, 30)))
    return ceiling / 2 + (rng or random).uniform(0, ceiling / 2)


class AccountSync:
    """Runs one account's sync one page at a time (called from the account's actor thread)."""

    def __init__(
        self,
        *,
        db: MailDb,
        account_id: str,
        provider: MailProvider,
        tokens: TokenSource,
        sink: EventSink,
        settings: MailSettings,
        budget: QuotaPacer | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.db = db
        self.account_id = account_id
        self.provider = provider
        self.sink = sink
        self.settings = settings
        self.budget = budget or QuotaPacer(0)
        self.rng = rng or random.Random()
        self.ctx = SyncContext(tokens=tokens, budget=self.budget, page_size=provider.page_size, account_id=account_id)

    # The actor's entry points --------------------------------------------------------------

    def begin_run(self) -> float | None:
        """Start a run: seconds to wait before its first step, or None when it must not run.

        An account still in backoff (a restart during a Retry-After wait) waits out the rest.
        """
        account = self.db.account(self.account_id)
        if account is None or account.state in States.STOPPED:
            return None
        wait = (account.retry_at or 0.0) - time.time()
        if account.state in (States.BACKOFF, States.ERROR) and wait > 0:
            return min(wait, self.settings.max_backoff_seconds)
        self.db.update_account(self.account_id, state=States.SYNCING)
        return 0.0

    def step(self) -> Outcome:
        """Sync one page (or one reconcile chunk); never raises."""
        self.db.keep_open(True)  # one connection per run, not per query
        try:
            outcome = self._step()
        except Exception:  # mail.db itself failed (disk full, locked): nothing to record it in
            log.exception("mail account %s: sync step failed outside the provider", self.account_id)
            outcome = Outcome("retry", delay=min(self.settings.max_backoff_seconds, 30.0), reason="mail.db error")
        if outcome.kind != "more":
            self.db.keep_open(False)  # idle accounts hold no file descriptors
        return outcome

    def _step(self) -> Outcome:
        account = self.db.account(self.account_id)
        if account is None or account.state in States.STOPPED:
            return Outcome("stop", reason="account is " + (account.state if account else "gone"))
        try:
            if account.phase == "reconcile":
                return self._reconcile(account)
            position = _loads(account.position)
            if account.phase == "initial":
                page = self.provider.initial_sync(self.ctx, position)
            else:
                cursor = position or _loads(account.cursor)
                if cursor is None:  # nothing to resume from: start over with a full sync
                    raise CursorExpired("no incremental cursor stored")
                page = self.provider.incremental_sync(self.ctx, cursor)
            return self._apply(account, page)
        except AuthFailed as exc:
            log.warning("mail account %s (%s) needs re-authorisation: %s", account.id, account.provider, exc)
            self.db.update_account(
                self.account_id, state=States.NEEDS_REAUTH, last_error=f"authorisation refused: {exc}",
                last_error_at=time.time(), retry_at=None,
            )
            return Outcome("stop", reason="needs_reauth")
        except CursorExpired as exc:
            log.info("mail account %s: cursor expired (%s); full resync", account.id, exc)
            self.db.update_account(
                self.account_id, phase="initial", position=None, resync=True, epoch=account.epoch + 1,
                progress_done=0, progress_total=None, state=States.SYNCING,
            )
            return Outcome("more", reason="resync")
        except RateLimited as exc:
            delay = exc.retry_after if exc.retry_after is not None else self._backoff(account)
            return self._fail(account, States.BACKOFF, f"rate limited: {exc}", delay)
        except Transient as exc:
            delay = max(exc.retry_after or 0.0, self._backoff(account))
            return self._fail(account, States.BACKOFF, f"temporary failure: {exc}", delay)
        except Exception as exc:  # a bug or an unmapped provider error: keep the actor alive
            log.exception("mail account %s: sync step failed", account.id)
            return self._fail(account, States.ERROR, f"{type(exc).__name__}: {exc}", self._backoff(account))

    # Pages -------------------------------------------------------------------------------

    def _apply(self, account: Account, page: SyncPage) -> Outcome:
        """Turn a page into events, store them, then checkpoint."""
        epoch = account.epoch
        latest: dict[str, MailMessage] = {}
        for message in page.messages:
            latest[message.id] = message  # a message twice in a page: its last state wins
        deleted = [mid for mid in dict.fromkeys(page.deleted)]
        index = self.db.index_entries(account.id, [*latest, *deleted])
        events: list[dict[str, Any]] = []
        entries: dict[str, IndexEntry] = {}
        received = removed = 0
        for message in latest.values():
            entry = index.get(message.id)
            state = message.state()
            if entry is None or entry.deleted:
                rev = (entry.rev if entry else 0) + 1
                events.append(self._event(account, RECEIVED, message.id, rev, message.as_event_data(), message.date))
                entries[message.id] = IndexEntry(message.id, rev, state, message.thread_id, False, epoch)
                received += 1
            elif entry.state != state:
                rev = entry.rev + 1
                before, after = set(entry.state.get("labels", [])), set(state["labels"])
                data = {
                    "message_id": message.id,
                    "thread_id": message.thread_id,
                    "labels": state["labels"],
                    "added_labels": sorted(after - before),
                    "removed_labels": sorted(before - after),
                }
                events.append(self._event(account, UPDATED, message.id, rev, data))
                entries[message.id] = IndexEntry(message.id, rev, state, message.thread_id, False, epoch)
            elif entry.epoch != epoch:
                entries[message.id] = replace(entry, epoch=epoch)
        for message_id in deleted:
            entry = entries.get(message_id) or index.get(message_id)
            if entry is None or entry.deleted:
                continue  # never stored (added and removed between two syncs): nothing to say
            rev = entry.rev + 1
            data = {"message_id": message_id, "thread_id": entry.thread_id}
            events.append(self._event(account, DELETED, message_id, rev, data))
            entries[message_id] = replace(entry, rev=rev, deleted=True, epoch=epoch)
            removed += 1
        self._store(account, events)

        fields: dict[str, Any] = {
            "position": _dumps(page.next),
            "messages_synced": account.messages_synced + received - removed,
            "failures": 0,
            "retry_at": None,
            "state": States.SYNCING,
        }
        outcome = Outcome("more")
        if account.phase == "initial":
            fields["progress_done"] = account.progress_done + len(latest)
            if page.estimated_total is not None:
                fields["progress_total"] = page.estimated_total
            if page.next is None:
                fields["cursor"] = _dumps(page.cursor)
                if account.resync:
                    fields["phase"] = "reconcile"
                else:
                    fields["phase"] = "incremental"
                    fields["initial_done"] = True
                    if fields.get("progress_total") is None and account.progress_total is None:
                        fields["progress_total"] = fields["progress_done"]
                # Go straight on to an incremental pass: it catches what changed meanwhile.
        elif page.next is None:
            if page.cursor is not None:
                fields["cursor"] = _dumps(page.cursor)
            fields["state"] = States.IDLE
            fields["last_sync_at"] = time.time()
            outcome = Outcome("done")
        self.db.commit_page(account.id, list(entries.values()), fields)
        return outcome

    def _reconcile(self, account: Account) -> Outcome:
        """Delete (as events) what a finished resync did not see, a chunk per step."""
        stale = self.db.unseen_since(account.id, account.epoch, _RECONCILE_CHUNK)
        if not stale:
            self.db.update_account(
                self.account_id, phase="incremental", resync=False, initial_done=True, state=States.SYNCING
            )
            return Outcome("more")
        events = []
        entries = []
        for entry in stale:
            rev = entry.rev + 1
            data = {"message_id": entry.message_id, "thread_id": entry.thread_id, "reconciled": True}
            events.append(self._event(account, DELETED, entry.message_id, rev, data))
            entries.append(replace(entry, rev=rev, deleted=True, epoch=account.epoch))
        self._store(account, events)
        self.db.commit_page(
            account.id, entries, {"messages_synced": max(0, account.messages_synced - len(stale))}
        )
        return Outcome("more")

    # Helpers -------------------------------------------------------------------------------

    def _event(
        self, account: Account, kind: str, message_id: str, rev: int, data: dict[str, Any], created_at: str | None = None
    ) -> dict[str, Any]:
        body = {"account": account.id, "provider": account.provider, "address": account.address, **data}
        event: dict[str, Any] = {"type": kind, "data": body, "key": event_key(account.id, message_id, rev)}
        if created_at is not None:
            event["created_at"] = created_at
        return event

    def _store(self, account: Account, events: list[dict[str, Any]]) -> None:
        if not events:
            return
        try:
            self.sink(account.user_id, events)
        except Exception as exc:
            raise StoreUnavailable(f"the user's store refused the events: {type(exc).__name__}: {exc}") from exc

    def _backoff(self, account: Account) -> float:
        return backoff_delay(
            account.failures, base=self.settings.retry_base_seconds, cap=self.settings.max_backoff_seconds, rng=self.rng
        )

    def _fail(self, account: Account, state: str, message: str, delay: float) -> Outcome:
        delay = min(max(0.0, delay), self.settings.max_backoff_seconds)
        log.warning("mail account %s: %s; retrying in %.2fs", account.id, message, delay)
        now = time.time()
        self.db.update_account(
            self.account_id, state=state, last_error=message[:1000], last_error_at=now,
            retry_at=now + delay, failures=account.failures + 1,
        )
        return Outcome("retry", delay=delay, reason=message)


def _loads(raw: str | None) -> dict[str, Any] | None:
    return json.loads(raw) if raw else None


def _dumps(value: dict[str, Any] | None) -> str | None:
    return json.dumps(value, separators=(",", ":")) if value is not None else None

"""The sync engine of one account: one page per step, checkpointed, idempotent.

A run goes through phases stored on the account row (so a restart resumes exactly where the
last committed page left it):

- ``initial``: the provider's full sync, page by page. After an expired cursor (or a change
  of what the account syncs) this is a *resync*: every message it sees is stamped with the
  account's new epoch.
- ``reconcile`` (only after a resync): messages the resync did not see are gone; each gets a
  `mail.message.deleted` event.
- ``backfill``: the provider's full listing once more, because the stored events hold less
  of each message than the account now keeps (messages synced before brain kept bodies, or
  the user turned bodies or HTML on): each message gets an `updated` event with its whole
  content. The incremental cursor is kept, so nothing that changes meanwhile is missed.
- ``incremental``: changes since the cursor, page by page.

Per page, events go to the user's store first and the checkpoint (index rows + position) is
committed to mail.db second. A crash between the two replays the page: every event carries
an idempotency key derived from (account, message, revision), and the revision comes from
the index that was not yet updated, so the replay produces the same keys and the store keeps
one event per key.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import random
import secrets
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any, Literal

from brain.mail.settings import MailSettings
from brain.mail.db import Account, IndexEntry, MailDb, States
from brain.mail.provider import (
    AuthFailed,
    CursorExpired,
    MailProvider,
    MessageRecord,
    PushChannel,
    RateLimited,
    SyncContext,
    SyncOptions,
    SyncPage,
    TokenSource,
    Transient,
    convert_inline,
)
from brain.mail.selection import content_key

__all__ = ["AccountSync", "EventSink", "Outcome", "QuotaPacer", "StoreUnavailable", "event_key", "message_state"]

log = logging.getLogger("brain.mail")

#: Appends events to a user's store atomically (blocking); returns the stored events.
EventSink = Callable[[str, list[dict[str, Any]]], list[dict[str, Any]]]

RECEIVED = "mail.message.received"
UPDATED = "mail.message.updated"
DELETED = "mail.message.deleted"

_RECONCILE_CHUNK = 500
_MIGRATE_CHUNK = 1000  # Graph's translateExchangeIds takes at most 1000 ids
#: Polling an idle account may use at most this share of the provider's per-account quota.
POLL_QUOTA_SHARE = 0.1


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
        #: Units spent so far (paced or not): what a run cost, for adaptive polling.
        self.spent = 0.0

    def spend(self, units: float) -> None:
        """Take ``units`` from the bucket, first sleeping off any debt they would leave."""
        self.spent += units
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
        address: str = "",
        options: SyncOptions | None = None,
        convert: Callable[..., list[Any]] = convert_inline,
    ) -> None:
        self.db = db
        self.account_id = account_id
        self.provider = provider
        self.sink = sink
        self.settings = settings
        self.budget = budget or QuotaPacer(0)
        self.rng = rng or random.Random()
        self.options = options or SyncOptions()
        self.content = content_key(self.options)
        self.ctx = SyncContext(
            tokens=tokens, budget=self.budget, page_size=provider.page_size, account_id=account_id,
            address=address, options=self.options, convert=convert,
        )
        #: Events the current run stored so far, and the quota units spent when it began.
        self.run_events = 0
        self._run_spent_from = 0.0
        # A full listing's next page, fetched while the current one is stored: (position, future).
        self._ahead: tuple[str | None, Future[SyncPage]] | None = None
        self._ahead_pool: ThreadPoolExecutor | None = None

    # The actor's entry points --------------------------------------------------------------

    def begin_run(self) -> float | None:
        """Start a run: seconds to wait before its first step, or None when it must not run.

        An account still in backoff (a restart during a Retry-After wait) waits out the rest.
        """
        account = self.db.account(self.account_id)
        if account is None or account.state in States.STOPPED:
            return None
        self.run_events = 0
        self._run_spent_from = self.budget.spent
        wait = (account.retry_at or 0.0) - time.time()
        if account.state in (States.BACKOFF, States.ERROR) and wait > 0:
            return min(wait, self.settings.max_backoff_seconds)
        self.db.update_account(self.account_id, state=States.SYNCING)
        return 0.0

    def next_poll(self, *, push: bool = False) -> float:
        """Seconds until the next poll, once a run has ended (stored for `/mail/status`).

        Right after a run that found something, `sync_interval_min_seconds`; each quiet run
        doubles it up to `sync_interval_seconds`; with push notifications on, at least
        `push_poll_seconds` (polling is only the safety net). Never shorter than polling at
        this run's cost within `POLL_QUOTA_SHARE` of the provider's quota would allow.
        """
        mail = self.settings
        longest = mail.sync_interval_seconds
        shortest = min(mail.sync_interval_min_seconds, longest)
        account = self.db.account(self.account_id)
        previous = account.poll_interval if account is not None and account.poll_interval else shortest
        interval = shortest if self.run_events else min(longest, max(shortest, previous * 2))
        if push:
            interval = max(interval, mail.push_poll_seconds)
        if self.budget.rate > 0:
            spent = self.budget.spent - self._run_spent_from
            interval = max(interval, spent / (self.budget.rate * POLL_QUOTA_SHARE))
        self.db.update_account(self.account_id, poll_interval=interval)
        return interval

    # Reading ahead -------------------------------------------------------------------------

    def _listing(self, position: dict[str, Any] | None) -> SyncPage:
        """The full listing's page at ``position``: the one read ahead if it is that one."""
        ahead, self._ahead = self._ahead, None
        if ahead is not None:
            key, future = ahead
            if key == _dumps(position):
                return future.result()  # what the provider returned, or raises what it raised
            future.exception()  # another position's (a page was not committed): wait, and drop it
        return self.provider.initial_sync(self.ctx, position)

    def _read_ahead(self, position: dict[str, Any]) -> None:
        """Fetch (and convert) the next page of a full listing while this one is stored.

        The provider is used by one thread at a time all the same: every other use of it
        waits for this one first (`settle`).
        """
        if self._ahead_pool is None:
            self._ahead_pool = ThreadPoolExecutor(1, thread_name_prefix=f"brain-mail-ahead-{self.account_id}")
        self._ahead = (_dumps(position), self._ahead_pool.submit(self.provider.initial_sync, self.ctx, position))

    def settle(self) -> None:
        """Wait for a page read ahead and drop it (before the provider is used otherwise)."""
        ahead, self._ahead = self._ahead, None
        if ahead is not None:
            ahead[1].exception()

    def close(self) -> None:
        """Release the provider (a page read ahead first): the account's actor is stopping."""
        self.settle()
        pool, self._ahead_pool = self._ahead_pool, None
        if pool is not None:
            pool.shutdown(wait=True)
        self.db.keep_open(False)  # a run cut short must not leave its connection open
        self.provider.close()

    def maintain_push(self, notify_url: str | None) -> tuple[bool, bool]:
        """Start, renew or end the account's push notifications: (whether push is on now,
        whether it just started).

        ``notify_url`` None (no `[mail] public_url`) ends a channel left from before. A channel
        is renewed once less than a third of its life is left; a provider that fails to open
        one leaves the account polling (and says why in the log). A channel that just started
        may have missed what changed while it was being set up (its notifications name the
        account only once it is stored): the caller syncs once more.
        """
        self.settle()
        account = self.db.account(self.account_id)
        if account is None:
            return False, False
        stored = json.loads(account.push) if account.push else None
        channel = PushChannel(stored["key"], stored["expires_at"], stored.get("state") or {}) if stored else None
        now = time.time()
        if notify_url is None:
            if channel is not None:
                self._close_push(channel)
                self.db.update_account(self.account_id, push=None, push_key=None)
            return False, False
        if channel is not None and stored is not None:
            life = channel.expires_at - stored.get("since", now)
            if channel.expires_at - now > life / 3:
                return True, False
        secret = stored["secret"] if stored else secrets.token_urlsafe(32)
        try:
            fresh = self.provider.open_push(self.ctx, notify_url=notify_url, secret=secret, channel=channel)
        except Exception as exc:  # push is an extra: the account goes on polling
            log.warning("mail account %s: push notifications could not be set up: %s", self.account_id, exc)
            alive = channel is not None and channel.expires_at > now
            if not alive and channel is not None:
                self.db.update_account(self.account_id, push=None, push_key=None)
            return alive, False
        if fresh is None:
            if channel is not None:
                self.db.update_account(self.account_id, push=None, push_key=None)
            return False, False
        record = {"key": fresh.key, "expires_at": fresh.expires_at, "state": fresh.state, "secret": secret, "since": now}
        self.db.update_account(self.account_id, push=json.dumps(record), push_key=fresh.key)
        return True, channel is None or channel.key != fresh.key

    def end_push(self) -> None:
        """Stop the provider's notifications for good (the account is disconnecting)."""
        self.settle()
        account = self.db.account(self.account_id)
        if account is not None and account.push:
            stored = json.loads(account.push)
            self._close_push(PushChannel(stored["key"], stored["expires_at"], stored.get("state") or {}))
            self.db.update_account(self.account_id, push=None, push_key=None)

    def _close_push(self, channel: PushChannel) -> None:
        try:
            self.provider.close_push(self.ctx, channel)
        except Exception as exc:  # it expires by itself; the account must not be stuck on it
            log.warning("mail account %s: push channel could not be closed: %s", self.account_id, exc)

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
            if (account.id_scheme or "") != self.provider.id_scheme:
                return self._migrate_ids(account)
            if account.phase == "reconcile":
                return self._reconcile(account)
            if account.phase == "incremental" and account.position is None and account.backfill_due(self.content):
                # Between two runs: the stored events hold less than the account now keeps.
                log.info("mail account %s: events hold %s, the account keeps %s; backfilling", account.id,
                         account.content, self.content)
                self.db.update_account(self.account_id, phase="backfill", backfill_done=0, backfill_total=None)
                account = self.db.account(self.account_id) or account
            position = _loads(account.position)
            if account.phase in ("initial", "backfill"):
                page = self._listing(position)
                if page.next is not None:
                    self._read_ahead(page.next)
            else:
                self.settle()
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
        latest: dict[str, MessageRecord] = {}
        for record in page.messages:
            latest[record.message_id] = record  # a message twice in a page: its last state wins
        deleted = [mid for mid in dict.fromkeys(page.deleted) if mid not in latest]
        index = self.db.index_entries(account.id, [*latest, *deleted])
        events: list[dict[str, Any]] = []
        entries: dict[str, IndexEntry] = {}
        received = removed = 0
        for record in latest.values():
            entry = index.get(record.message_id)
            state = message_state(record)
            stored = {**state, "content": self.content}
            if entry is None or entry.deleted:
                if not self._in_window(record):
                    continue  # older than the account's sync window, and never stored
                rev = (entry.rev if entry else 0) + 1
                events.append(self._event(account, RECEIVED, record.message_id, rev, record.as_event_data(), record.date))
                entries[record.message_id] = IndexEntry(record.message_id, rev, stored, record.thread_id, False, epoch)
                received += 1
            elif entry.state.get("content") != self.content:
                # Stored before the account kept this much of a message: the whole of it again.
                rev = entry.rev + 1
                data = {**record.as_event_data(), **_label_changes(entry.state, state), **_previous_id(entry)}
                events.append(self._event(account, UPDATED, record.message_id, rev, data))
                entries[record.message_id] = IndexEntry(record.message_id, rev, stored, record.thread_id, False, epoch)
            elif _comparable(entry.state) != state:
                rev = entry.rev + 1
                data = {"message_id": record.message_id, "thread_id": record.thread_id, **state,
                        **_label_changes(entry.state, state), **_previous_id(entry)}
                events.append(self._event(account, UPDATED, record.message_id, rev, data))
                entries[record.message_id] = IndexEntry(record.message_id, rev, stored, record.thread_id, False, epoch)
            elif entry.epoch != epoch:
                entries[record.message_id] = replace(entry, epoch=epoch)
        for message_id in deleted:
            entry = index.get(message_id)
            if entry is None or entry.deleted:
                continue  # never stored (added and removed between two syncs): nothing to say
            rev = entry.rev + 1
            data = {"message_id": message_id, "thread_id": entry.thread_id, **_previous_id(entry)}
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
                fields["content"] = self.content  # every message now in the store was seen whole
                if account.resync:
                    fields["phase"] = "reconcile"
                else:
                    fields["phase"] = "incremental"
                    fields["initial_done"] = True
                    if fields.get("progress_total") is None and account.progress_total is None:
                        fields["progress_total"] = fields["progress_done"]
                # Go straight on to an incremental pass: it catches what changed meanwhile.
        elif account.phase == "backfill":
            fields["backfill_done"] = account.backfill_done + len(latest)
            if page.estimated_total is not None:
                fields["backfill_total"] = page.estimated_total
            if page.next is None:
                # The listing's own cursor is dropped: the stored one still covers every change
                # since the last incremental run, this backfill's duration included.
                fields["phase"] = "incremental"
                fields["content"] = self.content
        elif page.next is None:
            if page.cursor is not None:
                fields["cursor"] = _dumps(page.cursor)
            fields["state"] = States.IDLE
            fields["last_sync_at"] = time.time()
            outcome = Outcome("done")
        self.db.commit_page(account.id, list(entries.values()), fields)
        self.run_events += len(events)
        return outcome

    def _migrate_ids(self, account: Account) -> Outcome:
        """The provider's ids changed (a new version): translate the index's ids, a chunk a step,
        so stored messages keep their revisions (no duplicates) and their next event says the
        old id. The cursor then usually expires too: the resync finds every message by its new id."""
        self.settle()
        ids = self.db.unmigrated_ids(account.id, _MIGRATE_CHUNK)
        if not ids:
            log.info("mail account %s: message ids now in the %r scheme", account.id, self.provider.id_scheme)
            self.db.update_account(self.account_id, id_scheme=self.provider.id_scheme)
            return Outcome("more")
        renames = self.provider.translate_ids(self.ctx, ids)
        self.db.migrate_messages(account.id, ids, {old: new for old, new in renames.items() if old in set(ids)})
        return Outcome("more")

    def _in_window(self, record: MessageRecord) -> bool:
        """Whether a message not stored yet is recent enough for the account's sync window."""
        since = self.options.since
        if since is None or record.date is None:
            return True
        try:
            moment = datetime.datetime.fromisoformat(record.date.replace("Z", "+00:00"))
        except ValueError:
            return True
        return moment.timestamp() >= since

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
            data = {"message_id": entry.message_id, "thread_id": entry.thread_id, "reconciled": True, **_previous_id(entry)}
            events.append(self._event(account, DELETED, entry.message_id, rev, data))
            entries.append(replace(entry, rev=rev, deleted=True, epoch=account.epoch))
        self._store(account, events)
        self.db.commit_page(
            account.id, entries, {"messages_synced": max(0, account.messages_synced - len(stale))}
        )
        self.run_events += len(events)
        return Outcome("more")

    # Helpers -------------------------------------------------------------------------------

    def _event(
        self, account: Account, kind: str, message_id: str, rev: int, data: dict[str, Any], created_at: str | None = None
    ) -> dict[str, Any]:
        body = fit_event_data(
            {"account": account.id, "provider": account.provider, "address": account.address, **data},
            self.settings.max_event_bytes,
        )
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


_STATE_KEYS = ("folders", "labels", "flags")
# Text fields cut, in this order, when an event would not fit: the least needed first.
_CUTTABLE = ("body_html", "body_text", "body_text_clean")
_CLIPPED = ("subject", "snippet")
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def fit_event_data(data: dict[str, Any], max_bytes: int) -> dict[str, Any]:
    """``data`` cut to at most ``max_bytes`` of JSON, for the store and JetStream to take it.

    The text caps keep ordinary mail well inside; this catches the rest (three capped fields
    of quotes and line breaks, a megabyte subject, hundreds of long display names): body
    fields are cut (``truncated``, ``original_sizes``), then the subject and snippet clipped,
    then the address lists and attachments emptied. The event is never refused.
    """
    # A character is at most 6 bytes of JSON (an escape): most events need no measuring.
    if _rough_chars(data) * 6 + 4096 < max_bytes:
        return data
    size = len(_ENCODER.encode(data).encode())
    if size <= max_bytes:
        return data
    data = dict(data)
    original = dict(data.get("original_sizes") or {})
    for name in _CUTTABLE:
        text = data.get(name)
        if not isinstance(text, str) or not text:
            continue
        over = size - max_bytes
        encoded = text.encode()
        keep = encoded[: max(0, len(encoded) - over - 64)].decode(errors="ignore")
        original.setdefault(name, len(encoded))
        data[name] = keep
        data["truncated"] = True
        data["original_sizes"] = original
        size = len(_ENCODER.encode(data).encode())
        if size <= max_bytes:
            return data
    for name in _CLIPPED:
        if isinstance(data.get(name), str):
            data[name] = data[name][:1000]
    for name in ("to", "cc", "bcc", "reply_to", "references", "attachments"):
        if name in data and len(_ENCODER.encode(data).encode()) > max_bytes:
            data[name] = []
    return data



def _rough_chars(value: Any) -> int:
    """Characters of every string in a JSON value, plus a few per item for the syntax."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, dict):
        return sum(len(k) + 4 + _rough_chars(v) for k, v in value.items())
    if isinstance(value, list):
        return sum(2 + _rough_chars(v) for v in value)
    return 24


def message_state(record: MessageRecord) -> dict[str, Any]:
    """The part of a message whose change is a `mail.message.updated` event."""
    return {
        "folders": sorted(set(record.folders)),
        "labels": sorted(set(record.labels)),
        "flags": record.flags.as_json(),
    }


def _comparable(state: dict[str, Any]) -> dict[str, Any]:
    return {key: state.get(key) for key in _STATE_KEYS}


def _previous_id(entry: IndexEntry) -> dict[str, str]:
    """``previous_message_id`` for the first event after the provider's ids changed."""
    was = entry.state.get("was")
    return {"previous_message_id": was} if isinstance(was, str) else {}


def _label_changes(before: dict[str, Any], after: dict[str, Any]) -> dict[str, list[str]]:
    old, new = set(before.get("labels") or ()), set(after["labels"])
    return {"added_labels": sorted(new - old), "removed_labels": sorted(old - new)}


def _loads(raw: str | None) -> dict[str, Any] | None:
    return json.loads(raw) if raw else None


def _dumps(value: dict[str, Any] | None) -> str | None:
    return json.dumps(value, separators=(",", ":")) if value is not None else None

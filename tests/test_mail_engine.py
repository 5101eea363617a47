"""The sync engine with the real Gmail provider (google-api-python-client, google-auth) against
the local fake Gmail, in-process.

These tests are about the engine — paging, checkpoints, idempotency, error mapping, backoff,
tokens — so the user's store is a small in-test stand-in that keeps one event per key, as
the real store does. End-to-end tests through the real server and store are in
tests/test_mail_server.py.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from brain.mail.settings import MailSettings
from brain.mail.db import MailDb, States
from brain.mail.engine import AccountSync, Outcome, QuotaPacer
from brain.mail.provider import Credentials, SyncOptions
from brain.mail.access_tokens import TokenProvider
from brain_gmail.provider import GmailProvider
from brain.testing.fakes import loopback_only
from brain.testing.fakes.gmail import FakeGmail

USER = "ada@example.com"
SECRET = b"s" * 40


@pytest.fixture(autouse=True)
def loopback() -> Iterator[None]:
    with loopback_only() as refused:
        yield
    assert refused == []


@pytest.fixture
def fake() -> Iterator[FakeGmail]:
    yield from FakeGmail.running()


def gmail_settings(fake: FakeGmail, **extra: Any) -> dict[str, Any]:
    """A `[plugins.gmail]` table pointing the provider at the fake (no quota pacing)."""
    return {
        "client_id": fake.client_id,
        "client_secret": fake.client_secret,
        "api_endpoint": fake.base_url,
        "token_uri": fake.token_uri,
        "batch_uri": fake.batch_uri,
        "revoke_uri": fake.revoke_uri,
        "quota_units_per_second": 0,
        **extra,
    }


class Store:
    """Stand-in for the user's store: atomic appends, one event per idempotency key."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.by_key: dict[str, dict[str, Any]] = {}
        self.appends = 0
        self.fail_next = 0

    def __call__(self, user_id: str, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if self.fail_next:
            self.fail_next -= 1
            raise TimeoutError("store busy")
        self.appends += 1
        out = []
        for event in events:
            if event["key"] not in self.by_key:
                stored = {**event, "id": len(self.events) + 1, "user": user_id}
                self.events.append(stored)
                self.by_key[event["key"]] = stored
            out.append(self.by_key[event["key"]])
        return out

    def types(self) -> Counter[str]:
        return Counter(e["type"] for e in self.events)

    def mailbox(self) -> dict[str, list[str]]:
        return replay_mailbox(self.events)


def message_view(folders: Iterable[str], labels: Iterable[str], flags: Mapping[str, bool]) -> list[str]:
    """One message's state as a sorted list: folders, labels, and ``+read``, ``+starred``, ``+important``."""
    return sorted({*folders, *labels, *(f"+{name}" for name, on in flags.items() if on)})


def replay_mailbox(events: list[dict[str, Any]]) -> dict[str, list[str]]:
    """Replay mail events in order: message id -> state, for the messages that still exist."""
    box: dict[str, list[str]] = {}
    for event in events:
        if not event["type"].startswith("mail.message."):
            continue
        data = event["data"]
        if event["type"] == "mail.message.deleted":
            box.pop(data["message_id"], None)
        else:
            box[data["message_id"]] = message_view(data["folders"], data["labels"], data["flags"])
    return box


def gmail_view(label_ids: Iterable[str], names: Mapping[str, str] | None = None) -> list[str]:
    """What replay_mailbox gives for a Gmail message with these labels."""
    ids = list(label_ids)
    flags = {"read": "UNREAD" not in ids, "starred": "STARRED" in ids, "important": "IMPORTANT" in ids}
    return message_view((), [(names or {}).get(i, i) for i in ids], flags)


class Harness:
    """One Gmail account in a fresh mail.db, synced by an AccountSync engine."""

    def __init__(self, tmp_path: Path, fake: FakeGmail, *, options: SyncOptions | None = None, **settings: Any) -> None:
        self.fake = fake
        self.options = options or SyncOptions()
        self.db = MailDb(tmp_path / "mail.db", SECRET)
        self.store = Store()
        self.mail_settings = MailSettings(retry_base_seconds=0.1, max_backoff_seconds=5.0)
        self.provider_settings = gmail_settings(fake, **settings)
        account, _ = self.db.upsert_account(user_id="user1", provider="gmail", address=USER)
        self.account_id = account.id
        self.refresh_token = fake.issue_refresh_token(USER)
        self.db.save_credentials(self.account_id, Credentials(refresh_token=self.refresh_token))
        self.engine = self.new_engine()

    def new_engine(self) -> AccountSync:
        provider = GmailProvider(self.provider_settings, page_size=self.provider_settings.get("page_size", 100))
        tokens = TokenProvider(
            provider,
            self.db.load_credentials(self.account_id),
            skew=self.mail_settings.refresh_skew_seconds,
            key=self.account_id,
            persist=lambda c: self.db.save_credentials(self.account_id, c),
            reload=lambda: self.db.load_credentials(self.account_id),
        )
        self.tokens = tokens
        return AccountSync(
            db=self.db,
            account_id=self.account_id,
            provider=provider,
            tokens=tokens,
            sink=self.store,
            settings=self.mail_settings,
            budget=QuotaPacer(provider.quota_units_per_second),
            address=USER,
            options=self.options,
        )

    def run(self, max_steps: int = 200) -> list[Outcome]:
        """Step until the run ends (done, retry or stop)."""
        outcomes = []
        for _ in range(max_steps):
            outcome = self.engine.step()
            outcomes.append(outcome)
            if outcome.kind != "more":
                return outcomes
        raise AssertionError(f"no end after {max_steps} steps: {outcomes[-3:]}")

    def run_until_done(self, max_runs: int = 20) -> list[Outcome]:
        """Run (retries included) until a run completes."""
        outcomes: list[Outcome] = []
        for _ in range(max_runs):
            outcomes += self.run()
            if outcomes[-1].kind in ("done", "stop"):
                return outcomes
        raise AssertionError(f"not done after {max_runs} runs: {outcomes[-3:]}")

    @property
    def account(self) -> Any:
        return self.db.account(self.account_id)

    def fake_mailbox(self) -> dict[str, list[str]]:
        return {m["id"]: gmail_view(m["labelIds"]) for m in self.fake.messages(USER)}


@pytest.fixture
def harness(tmp_path: Path, fake: FakeGmail) -> Iterator[Harness]:
    h = Harness(tmp_path, fake, page_size=100)
    yield h
    h.engine.provider.close()
    h.db.close()


def test_initial_sync_of_a_few_hundred_messages(harness: Harness, fake: FakeGmail) -> None:
    fake.populate(USER, 299)
    known = fake.add_message(
        USER, sender="Grace Hopper <grace@navy.example>", subject="Compilers", body="The first bug was a moth.",
        label_ids=["INBOX", "UNREAD", "IMPORTANT"], internet_message_id="<moth@navy.example>",
        date=datetime.datetime(2025, 3, 4, 9, 15, tzinfo=datetime.UTC),
    )
    outcomes = harness.run()

    # Three pages of 100, then an incremental pass to catch what changed meanwhile.
    assert [o.kind for o in outcomes] == ["more", "more", "more", "done"]
    assert harness.store.types() == {"mail.message.received": 300}
    assert harness.store.mailbox() == harness.fake_mailbox()
    gmail_calls = [r.path for r in fake.requests if r.path.startswith("/gmail/")]
    assert gmail_calls[0] == "/gmail/v1/users/me/profile"  # historyId recorded before listing
    assert sum(1 for r in fake.requests if r.via_batch) == 300
    assert {r.query["format"] for r in fake.requests if r.via_batch} == {"full"}

    event = next(e for e in harness.store.events if e["data"]["message_id"] == known)
    resource = next(m for m in fake.messages(USER) if m["id"] == known)
    data = event["data"]
    assert data["account"] == harness.account_id and data["provider"] == "gmail" and data["address"] == USER
    assert data["from"] == {"name": "Grace Hopper", "address": "grace@navy.example"}
    assert data["to"] == [{"name": "", "address": USER}]
    assert data["subject"] == "Compilers" and data["internet_message_id"] == "<moth@navy.example>"
    assert data["body_text"] == data["body_text_clean"] == data["snippet"] == "The first bug was a moth."
    assert data["direction"] == "received" and data["labels"] == ["INBOX", "UNREAD", "IMPORTANT"]
    assert data["flags"] == {"read": False, "starred": False, "important": True}
    assert data["thread_id"] == resource["threadId"] and data["size"] == resource["sizeEstimate"]
    assert data["date"] == event["created_at"] == "2025-03-04T09:15:00.000Z"
    assert len({e["key"] for e in harness.store.events}) == 300

    status = harness.account.status()
    assert status["state"] == "idle" and status["messages_synced"] == 300
    assert status["initial_sync"] == {"complete": True, "done": 300, "estimated_total": 300}
    assert json.loads(harness.account.cursor)["history_id"] == str(fake.history_id(USER))


def test_incremental_sync_picks_up_new_changed_and_deleted(harness: Harness, fake: FakeGmail) -> None:
    ids = fake.populate(USER, 30)
    harness.run()
    new_id = fake.add_message(USER, subject="fresh", label_ids=["INBOX", "UNREAD"])
    fake.modify_labels(USER, ids[0], add=["STARRED"], remove=["UNREAD"])
    fake.delete_message(USER, ids[1])
    fleeting = fake.add_message(USER, subject="here and gone")
    fake.delete_message(USER, fleeting)
    fake.clear_requests()

    assert [o.kind for o in harness.run()] == ["done"]

    assert harness.store.types() == {
        "mail.message.received": 31,
        "mail.message.updated": 1,
        "mail.message.deleted": 1,
    }
    assert harness.store.mailbox() == harness.fake_mailbox()
    updated = next(e for e in harness.store.events if e["type"] == "mail.message.updated")
    assert updated["data"]["message_id"] == ids[0]
    assert updated["data"]["added_labels"] == ["STARRED"]
    assert "UNREAD" not in updated["data"]["labels"]
    deleted = next(e for e in harness.store.events if e["type"] == "mail.message.deleted")
    assert deleted["data"]["message_id"] == ids[1]
    assert not any(e["data"]["message_id"] == fleeting for e in harness.store.events)
    assert any(e["data"]["message_id"] == new_id and e["data"]["subject"] == "fresh" for e in harness.store.events)
    assert [r.path for r in fake.requests if not r.via_batch][0] == "/gmail/v1/users/me/history"
    assert harness.account.messages_synced == 30

    # Nothing changed: a run costs one history call and stores nothing.
    before = len(harness.store.events)
    assert [o.kind for o in harness.run()] == ["done"]
    assert len(harness.store.events) == before


def test_expired_history_id_means_a_full_resync_that_reconciles(harness: Harness, fake: FakeGmail) -> None:
    ids = fake.populate(USER, 120)
    harness.run()
    fake.delete_message(USER, ids[5])
    fake.modify_labels(USER, ids[6], add=["STARRED", "IMPORTANT"], remove=["INBOX"])
    fresh = fake.add_message(USER, subject="arrived while history expired")
    fake.expire_history(USER)

    outcomes = harness.run()

    assert outcomes[0] == Outcome("more", reason="resync")
    assert outcomes[-1].kind == "done"
    assert harness.store.mailbox() == harness.fake_mailbox()  # no gaps, no leftovers
    counts = harness.store.types()
    assert counts == {"mail.message.received": 121, "mail.message.updated": 1, "mail.message.deleted": 1}
    reconciled = next(e for e in harness.store.events if e["type"] == "mail.message.deleted")
    assert reconciled["data"] == {**reconciled["data"], "message_id": ids[5], "reconciled": True}
    assert any(e["data"]["message_id"] == fresh for e in harness.store.events)
    account = harness.account
    assert account.phase == "incremental" and not account.resync and account.epoch == 1
    assert account.messages_synced == len(fake.message_ids(USER)) == 120


def test_429_backs_off_for_exactly_retry_after(harness: Harness, fake: FakeGmail) -> None:
    fake.populate(USER, 10)
    fake.fail_next(1, status=429, retry_after=2, path_prefix="/gmail/v1/users/me/messages")

    first = harness.run()
    assert first[-1].kind == "retry" and first[-1].delay == 2.0
    account = harness.account
    assert account.state == States.BACKOFF and "rate limited" in account.last_error
    assert account.retry_at is not None

    assert harness.run()[-1].kind == "done"
    assert harness.store.types() == {"mail.message.received": 10}
    assert harness.account.failures == 0


def test_throttled_batch_part_retries_the_page(harness: Harness, fake: FakeGmail) -> None:
    ids = fake.populate(USER, 10)
    fake.fail_next(1, status=429, retry_after=1, path_prefix=f"/gmail/v1/users/me/messages/{ids[3]}")
    outcome = harness.run()[-1]
    assert (outcome.kind, outcome.delay) == ("retry", 1.0)
    harness.run_until_done()
    assert harness.store.types() == {"mail.message.received": 10}
    assert len({e["key"] for e in harness.store.events}) == 10


def test_5xx_is_retried_with_growing_backoff(harness: Harness, fake: FakeGmail) -> None:
    fake.populate(USER, 5)
    fake.fail_next(3, status=503, path_prefix="/gmail/v1/users/me/profile")

    delays = [harness.run()[-1] for _ in range(3)]
    assert [o.kind for o in delays] == ["retry"] * 3
    # base 0.1 s doubling, half of it jitter: [0.05, 0.1], [0.1, 0.2], [0.2, 0.4]
    for n, outcome in enumerate(delays):
        assert 0.1 * 2**n / 2 <= outcome.delay <= 0.1 * 2**n
    assert harness.account.failures == 3 and "503" in harness.account.last_error
    assert harness.run()[-1].kind == "done"
    assert harness.account.failures == 0 and harness.account.state == States.IDLE
    assert harness.store.types() == {"mail.message.received": 5}


def test_unexpected_error_is_an_error_state_and_retried(harness: Harness, fake: FakeGmail) -> None:
    fake.populate(USER, 3)
    fake.fail_next(1, status=400, path_prefix="/gmail/v1/users/me/messages")
    outcome = harness.run()[-1]
    assert outcome.kind == "retry"
    assert harness.account.state == States.ERROR and "400" in harness.account.last_error
    assert harness.run()[-1].kind == "done"


def test_expired_access_token_is_refreshed_and_the_refresh_token_kept(harness: Harness, fake: FakeGmail) -> None:
    fake.populate(USER, 20)
    harness.run()
    first = harness.db.load_credentials(harness.account_id)
    assert first.access_token and first.refresh_token == harness.refresh_token
    fake.expire_access_tokens(USER)  # the server says expired though our clock says fine
    fake.add_message(USER)
    fake.clear_requests()

    assert harness.run()[-1].kind == "done"

    assert [(r.path, r.status) for r in fake.requests][:3] == [
        ("/gmail/v1/users/me/history", 401),
        ("/token", 200),
        ("/gmail/v1/users/me/history", 200),
    ]
    stored = harness.db.load_credentials(harness.account_id)
    assert stored.access_token != first.access_token
    assert stored.refresh_token == harness.refresh_token  # Google sent none: the old one stays
    assert harness.store.types()["mail.message.received"] == 21


def test_rotated_refresh_token_is_stored(harness: Harness, fake: FakeGmail) -> None:
    fake.rotate_refresh_tokens = True
    fake.add_message(USER)
    harness.run()
    stored = harness.db.load_credentials(harness.account_id)
    assert stored.refresh_token and stored.refresh_token != harness.refresh_token


def test_short_lived_tokens_are_refreshed_before_they_expire(harness: Harness, fake: FakeGmail) -> None:
    fake.access_token_lifetime = 2
    fake.add_message(USER)
    harness.run()
    time.sleep(1.2)  # past half the lifetime: the token provider refreshes ahead of use
    fake.clear_requests()
    harness.run()
    assert [r.path for r in fake.requests][:2] == ["/token", "/gmail/v1/users/me/history"]
    assert all(r.status != 401 for r in fake.requests)


def test_invalid_grant_means_needs_reauth_and_sync_stops(harness: Harness, fake: FakeGmail) -> None:
    fake.populate(USER, 5)
    harness.run()
    fake.revoke(USER)
    fake.clear_requests()

    outcome = harness.run()[-1]

    assert outcome == Outcome("stop", reason="needs_reauth")
    status = harness.account.status()
    assert status["state"] == "needs_reauth" and "invalid_grant" in status["last_error"]
    assert [(r.path, r.status) for r in fake.requests] == [("/gmail/v1/users/me/history", 401), ("/token", 400)]
    fake.clear_requests()
    assert harness.run()[-1].kind == "stop"  # nothing is tried again until a reconnect
    assert fake.requests == []


def test_crash_between_store_and_checkpoint_replays_without_duplicates(
    harness: Harness, fake: FakeGmail, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake.populate(USER, 250)
    real_commit = harness.db.commit_page
    calls = {"n": 0}

    def crash_on_second_page(*args: Any, **kwargs: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("disk went away after the events were stored")
        real_commit(*args, **kwargs)

    monkeypatch.setattr(harness.db, "commit_page", crash_on_second_page)
    harness.run_until_done()

    assert harness.store.types() == {"mail.message.received": 250}
    assert len(harness.store.events) == 250
    assert harness.store.appends == 4  # 3 pages, the second appended twice: the store kept one copy
    assert harness.account.messages_synced == 250


def test_store_that_fails_is_retried(harness: Harness, fake: FakeGmail) -> None:
    fake.populate(USER, 5)
    harness.store.fail_next = 1
    assert harness.run()[-1].kind == "retry"
    assert "store" in harness.account.last_error
    harness.run_until_done()
    assert harness.store.types() == {"mail.message.received": 5}


def test_quota_pacing_stays_under_the_per_user_limit(tmp_path: Path, fake: FakeGmail) -> None:
    fake.quota_per_second = 300  # the fake answers 429 above this many units in any second
    # A bucket of 140 units/s with one second of burst spends at most 280 in any second.
    h = Harness(tmp_path, fake, quota_units_per_second=140, batch_size=20, page_size=60)
    fake.populate(USER, 60)
    started = time.monotonic()
    outcomes = h.run()
    took = time.monotonic() - started
    assert outcomes[-1].kind == "done"
    assert all(r.status != 429 for r in fake.requests)
    # ~308 units: a bucket that paces them cannot finish before (spent - burst) / rate, ~1.2 s,
    # however the time is split between its waits and the sync's own work (a loaded machine
    # does the work slowly and waits less: 0.16 s waited at load 12). Unpaced, it takes ~0.3 s.
    budget = h.engine.budget
    assert budget.spent > 280 and took >= (budget.spent - 140) / 140 - 0.05, (budget.spent, budget.waited, took)
    assert h.store.types() == {"mail.message.received": 60}


def test_disconnected_account_stops(harness: Harness, fake: FakeGmail) -> None:
    harness.db.disconnect(harness.account_id)
    assert harness.run()[-1] == Outcome("stop", reason="account is disconnected")
    assert harness.db.load_credentials(harness.account_id) is None
    assert fake.requests == []


def test_a_pathological_message_is_stored_within_the_event_limit(tmp_path: Path, fake: FakeGmail) -> None:
    h = Harness(tmp_path, fake)
    h.engine.settings = dataclasses.replace(h.mail_settings, max_event_bytes=200_000)
    fake.add_message(
        USER, subject="S" * 150_000, to=", ".join(f"u{i}@example.com" for i in range(5000)),
        body='"quoted" \\ and\nbroken\n' * 20_000,
    )
    assert h.run()[-1].kind == "done"
    (event,) = h.store.events
    data = event["data"]
    assert len(json.dumps(data, ensure_ascii=False).encode()) <= 200_000
    assert data["truncated"] is True and data["original_sizes"]["body_text"] > 200_000
    assert len(data["to"]) == 500  # the model keeps at most 500 addresses a header


def test_polling_adapts_to_activity_within_the_quota(tmp_path: Path, fake: FakeGmail) -> None:
    h = Harness(tmp_path, fake)
    h.engine.settings = dataclasses.replace(
        h.mail_settings, sync_interval_min_seconds=30.0, sync_interval_seconds=300.0, push_poll_seconds=1800.0
    )
    fake.populate(USER, 3)
    intervals = []
    for change in (True, False, False, False, False, False, True, False):
        if change:
            fake.add_message(USER)
        h.engine.begin_run()
        h.run()
        intervals.append(h.engine.next_poll())
    assert intervals == [30.0, 60.0, 120.0, 240.0, 300.0, 300.0, 30.0, 60.0]
    assert h.account.status()["poll_interval_seconds"] == 60.0
    h.engine.begin_run()
    h.run()
    assert h.engine.next_poll(push=True) == 1800.0

    # A provider quota bounds it: at 2 units/s, polling may spend 0.2 units/s, so a run that cost
    # (history 2 + get 5 =) 7 units comes every 35 s at most.
    pacer = QuotaPacer(2.0, sleep=lambda _seconds: None)
    h.engine.budget = h.engine.ctx.budget = pacer
    fake.add_message(USER)
    h.engine.begin_run()
    h.run()
    assert pacer.spent == 7
    assert h.engine.next_poll() == pytest.approx(35.0)

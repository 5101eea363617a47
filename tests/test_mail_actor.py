"""The MailSync actor under the mail supervisor, in-process, with the real Gmail provider
against the fake Gmail: scheduling, backoff timing, one sync at a time, resuming.

The user's store is the stand-in from tests/test_mail_engine.py (these tests are about the
actor); the real store and JetStream are exercised in tests/test_mail_server.py.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pykka
import pytest

from brain.config import Settings, load_settings
from brain.mail.db import States
from brain.mail.provider import Credentials
from brain.mail.service import MailService, MailSupervisor, child_id
from brain.mail.sync import SyncNow
from brain.plugins.manager import load_plugins
from brain.testing.fakes.gmail import FakeGmail
from tests.support import wait_until
from tests.test_mail_engine import USER, Store, fake, gmail_settings, loopback  # noqa: F401 - fixtures

SECRET = b"a" * 40


def make_settings(tmp_path: Path, fake: FakeGmail, **mail: Any) -> Settings:
    return load_settings(
        environ={},
        overrides={
            "server": {"data_dir": str(tmp_path), "secret": SECRET.decode()},
            "mail": {"sync_interval_seconds": 0.3, "retry_base_seconds": 0.1, **mail},
            "plugins": {
                "enabled": ["gmail"],
                "gmail": gmail_settings(fake, page_size=50),
            },
        },
    )


class Mail:
    """A MailService and its supervisor, stopped at teardown."""

    def __init__(self, settings: Settings) -> None:
        self.store = Store()
        self.service = MailService(settings, SECRET, load_plugins(["gmail"]), self.store)
        self.sup: pykka.ActorRef[Any] | None = None

    def connect(self, fake: FakeGmail, address: str = USER, user_id: str = "user1") -> str:
        account, _ = self.service.db.upsert_account(user_id=user_id, provider="gmail", address=address)
        self.service.db.save_credentials(account.id, Credentials(refresh_token=fake.issue_refresh_token(address)))
        return account.id

    def start(self) -> pykka.ActorRef[Any]:
        self.sup = MailSupervisor.start(name="mail", max_restarts=50, max_seconds=10, service=self.service)
        return self.sup

    def children(self) -> list[str]:
        assert self.sup is not None
        return [c["id"] for c in self.sup.proxy().which_children().get(timeout=5) if c["alive"]]

    def state(self, account_id: str) -> str:
        account = self.service.db.account(account_id)
        assert account is not None
        return account.state

    def stop(self) -> None:
        if self.sup is not None and self.sup.is_alive():
            self.sup.stop(timeout=30)


@pytest.fixture
def mail(tmp_path: Path, fake: FakeGmail) -> Iterator[Mail]:
    m = Mail(make_settings(tmp_path, fake))
    yield m
    m.stop()


def test_syncs_at_once_then_on_its_interval(mail: Mail, fake: FakeGmail) -> None:
    fake.populate(USER, 120)
    account_id = mail.connect(fake)
    mail.start()

    wait_until(lambda: mail.state(account_id) == States.IDLE, timeout=20, what="initial sync")
    assert mail.store.types() == {"mail.message.received": 120}
    new_id = fake.add_message(USER, subject="later")
    wait_until(lambda: len(mail.store.events) == 121, timeout=10, what="the interval sync")
    assert mail.store.events[-1]["data"]["message_id"] == new_id
    history_calls = fake.request_count("/gmail/v1/users/me/history")
    wait_until(lambda: fake.request_count("/gmail/v1/users/me/history") >= history_calls + 2, timeout=10)
    assert len(mail.store.events) == 121  # quiet intervals store nothing


def test_retry_after_is_honoured_between_requests(mail: Mail, fake: FakeGmail) -> None:
    fake.populate(USER, 20)
    fake.fail_next(1, status=429, retry_after=1, path_prefix="/gmail/v1/users/me/messages")
    account_id = mail.connect(fake)
    mail.start()

    wait_until(lambda: mail.state(account_id) == States.IDLE, timeout=20, what="sync after the 429")
    listing = [r for r in fake.requests if r.path == "/gmail/v1/users/me/messages"]
    assert [r.status for r in listing[:2]] == [429, 200]
    assert listing[1].at - listing[0].at >= 1.0
    assert mail.store.types() == {"mail.message.received": 20}


def test_server_errors_are_retried_with_backoff(mail: Mail, fake: FakeGmail) -> None:
    fake.populate(USER, 10)
    fake.fail_next(3, status=503, path_prefix="/gmail/v1/users/me/profile")
    account_id = mail.connect(fake)
    mail.start()

    wait_until(lambda: mail.state(account_id) == States.IDLE, timeout=20, what="sync after three 503s")
    profile = [r for r in fake.requests if r.path == "/gmail/v1/users/me/profile"]
    assert [r.status for r in profile[:4]] == [503, 503, 503, 200]
    gaps = [b.at - a.at for a, b in zip(profile, profile[1:4])]
    assert gaps[0] >= 0.05 and gaps[2] >= 0.2  # 0.1 s doubling, half of it jitter
    assert mail.store.types() == {"mail.message.received": 10}
    status = mail.service.db.account(account_id).status()
    assert status["last_error"] and "503" in status["last_error"]


def test_sync_requests_during_a_run_queue_one_more_run(mail: Mail, fake: FakeGmail) -> None:
    fake.populate(USER, 5)
    account_id = mail.connect(fake)
    mail.start()
    wait_until(lambda: mail.state(account_id) == States.IDLE, timeout=20)
    ref = mail.service.db.account(account_id)
    (actor,) = [mail.sup.proxy().get_child(child_id(ref.user_id, ref.id)).get(timeout=5)]  # type: ignore[union-attr]
    fake.delay(0.4, n=1, path_prefix="/gmail/v1/users/me/history")
    before = fake.request_count("/gmail/v1/users/me/history")

    actor.tell(SyncNow("manual"))
    wait_until(lambda: fake.request_count("/gmail/v1/users/me/history") > before, timeout=5)
    for _ in range(10):
        actor.tell(SyncNow("manual"))  # arrive while the slow history call is in flight

    wait_until(lambda: fake.request_count("/gmail/v1/users/me/history") >= before + 2, timeout=5)
    # Ten requests during the run became exactly one more run, never a second one at once.
    calls = [r for r in fake.requests if r.path == "/gmail/v1/users/me/history"][before:]
    assert calls[1].at - calls[0].at >= 0.4


def test_invalid_grant_stops_the_actor_until_reconnect(mail: Mail, fake: FakeGmail) -> None:
    fake.populate(USER, 3)
    account_id = mail.connect(fake)
    mail.start()
    wait_until(lambda: mail.state(account_id) == States.IDLE, timeout=20)
    fake.revoke(USER)

    wait_until(lambda: mail.state(account_id) == States.NEEDS_REAUTH, timeout=10, what="needs_reauth")
    wait_until(lambda: mail.children() == [], timeout=10, what="the actor to stop")
    requests_then = len(fake.requests)
    time.sleep(0.8)  # a few intervals: nobody keeps hammering the provider
    assert len(fake.requests) == requests_then


def test_supervisor_resumes_only_accounts_that_should_sync(mail: Mail, fake: FakeGmail) -> None:
    syncing = mail.connect(fake, "a@example.com")
    reauth = mail.connect(fake, "b@example.com")
    gone = mail.connect(fake, "c@example.com")
    mail.service.db.update_account(reauth, state=States.NEEDS_REAUTH)
    mail.service.db.disconnect(gone)
    mail.start()

    account = mail.service.db.account(syncing)
    assert mail.children() == [child_id(account.user_id, account.id)]
    wait_until(lambda: mail.state(syncing) == States.IDLE, timeout=20)
    assert mail.state(reauth) == States.NEEDS_REAUTH and mail.state(gone) == States.DISCONNECTED


def test_stop_waits_for_the_page_in_flight(mail: Mail, fake: FakeGmail) -> None:
    fake.populate(USER, 50)
    fake.delay(0.5, n=1, path_prefix="/batch")
    account_id = mail.connect(fake)
    mail.start()
    wait_until(lambda: fake.request_count("/batch") >= 1, timeout=10)
    mail.stop()
    # The page in flight was committed as a whole: events and checkpoint agree.
    account = mail.service.db.account(account_id)
    assert account.progress_done == len(mail.store.events) == 50


def test_a_broken_account_neither_crash_loops_nor_stops_the_others(
    mail: Mail, fake: FakeGmail, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake.populate(USER, 5)
    healthy = mail.connect(fake)
    broken = mail.connect(fake, "b@example.com")
    real = mail.service.engine_for

    def engine_for(account_id: str) -> Any:
        if account_id == broken:
            raise RuntimeError("bug while building the engine")
        return real(account_id)

    monkeypatch.setattr(mail.service, "engine_for", engine_for)
    sup = mail.start()
    wait_until(lambda: mail.state(healthy) == States.IDLE, timeout=20)
    broken_account = mail.service.db.account(broken)
    broken_child = child_id(broken_account.user_id, broken_account.id)
    assert broken_child in mail.children()  # alive, waiting to try again later
    assert all(c["restarts"] == 0 for c in sup.proxy().which_children().get(timeout=5))


def test_a_restart_during_backoff_waits_out_the_rest(mail: Mail, fake: FakeGmail) -> None:
    fake.add_message(USER)
    account_id = mail.connect(fake)
    mail.service.db.update_account(account_id, state=States.BACKOFF, retry_at=time.time() + 1.0)
    started = time.monotonic()
    mail.start()
    wait_until(lambda: mail.state(account_id) == States.IDLE, timeout=20)
    first_call = min(r.at for r in fake.requests)
    assert first_call - started >= 0.9


def test_accounts_that_cannot_sync_are_left_alone(tmp_path: Path, fake: FakeGmail) -> None:
    first = Mail(make_settings(tmp_path, fake))
    sealed = first.connect(fake)
    unknown, _ = first.service.db.upsert_account(user_id="user1", provider="yahoo", address="y@example.com")
    first.service.db.save_credentials(unknown.id, Credentials(refresh_token="r"))
    first.service.db.close()

    # Another server secret: the sealed credentials cannot be opened any more.
    settings = make_settings(tmp_path, fake)
    other = Mail(settings)
    other.service = MailService(settings, b"b" * 40, load_plugins(["gmail"]), other.store)
    try:
        other.start()
        wait_until(lambda: other.state(sealed) == States.NEEDS_REAUTH, timeout=10)
        status = other.service.db.account(sealed).status()
        assert "credentials unusable" in status["last_error"]
        assert other.state(unknown.id) == States.SYNCING  # untouched; it resumes if yahoo comes back
        wait_until(lambda: other.children() == [], timeout=10)
        assert fake.requests == []
    finally:
        other.stop()

"""The token provider: refresh ahead of expiry, once under a lock for every holder, keep the
refresh token when the response has none, and never hand out a refused token again.

The provider here is a counting stand-in (these tests are about the token provider's own
rules); refreshes against real token endpoints are in test_mail_engine.py and the plugin tests.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from brain.mail.db import MailDb
from brain.mail.provider import Credentials, MailProvider, SyncPage
from brain.mail.access_tokens import TokenProvider, merge_credentials


class CountingProvider(MailProvider):
    name = "counting"

    def __init__(self, lifetime: float = 3600, rotate: bool = False) -> None:
        super().__init__({})
        self.lifetime = lifetime
        self.rotate = rotate
        self.calls = 0
        self.lock = threading.Lock()

    def refresh(self, credentials: Credentials) -> Credentials:
        with self.lock:
            self.calls += 1
            n = self.calls
        time.sleep(0.05)  # a slow token endpoint: other holders pile up on the lock meanwhile
        now = time.time()
        return Credentials(
            access_token=f"at-{n}",
            expires_at=now + self.lifetime,
            refresh_token=f"rt-{n}" if self.rotate else None,
            obtained_at=now,
        )

    def account_address(self, ctx: Any) -> str:
        return "x@example.com"

    def initial_sync(self, ctx: Any, checkpoint: Any) -> SyncPage:
        return SyncPage()

    def incremental_sync(self, ctx: Any, cursor: Any) -> SyncPage:
        return SyncPage()


def test_one_refresh_serves_every_holder(tmp_path: Path) -> None:
    db = MailDb(tmp_path / "mail.db", b"t" * 40)
    account, _ = db.upsert_account(user_id="u", provider="counting", address="x@example.com")
    db.save_credentials(account.id, Credentials(refresh_token="rt-0"))
    provider = CountingProvider()
    holders = [
        TokenProvider(
            provider, db.load_credentials(account.id), skew=60, key=account.id,
            persist=lambda c: db.save_credentials(account.id, c), reload=lambda: db.load_credentials(account.id),
        )
        for _ in range(6)
    ]
    tokens: list[str] = []
    threads = [threading.Thread(target=lambda h=h: tokens.append(h.access_token())) for h in holders]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)

    assert provider.calls == 1 and tokens == ["at-1"] * 6
    stored = db.load_credentials(account.id)
    assert stored.access_token == "at-1" and stored.refresh_token == "rt-0"  # none came back: kept


def test_rotated_refresh_token_replaces_the_old_one() -> None:
    tokens = TokenProvider(CountingProvider(rotate=True), Credentials(refresh_token="rt-0"), skew=60, key="k1")
    assert tokens.credentials().refresh_token == "rt-1"


def test_refresh_ahead_of_expiry_and_after_a_refusal() -> None:
    provider = CountingProvider(lifetime=3600)
    tokens = TokenProvider(provider, Credentials(refresh_token="r"), skew=300, key="k2")
    first = tokens.access_token()
    assert tokens.access_token() == first and provider.calls == 1  # still fresh: no refresh
    tokens.invalidate(first)  # the service said 401
    assert tokens.access_token() != first and provider.calls == 2
    tokens.invalidate("some older token")  # a stale refusal does not throw away a good token
    assert provider.calls == 2 and tokens.access_token() == "at-2"

    issued = time.time() - 3400  # an hour-long token with 200 s left, inside the 300 s skew
    soon = TokenProvider(provider, Credentials("at-x", issued + 3600, "r", obtained_at=issued), skew=300, key="k3")
    assert soon.access_token() == "at-3"  # refreshed before use, not after a 401


def test_short_lived_tokens_are_used_for_half_their_life() -> None:
    now = 1000.0
    creds = Credentials("a", expires_at=now + 60, refresh_token="r", obtained_at=now)
    assert not creds.expires_within(300, now=now + 20)
    assert creds.expires_within(300, now=now + 31)
    assert Credentials("a", expires_at=None).expires_within(0)


def test_merge_keeps_what_the_response_left_out() -> None:
    old = Credentials("a", 1.0, "rt-old", {"msal_cache": "c1", "home": "h"}, 0.5)
    new = Credentials("b", 2.0, None, {"msal_cache": "c2"}, 1.5)
    assert merge_credentials(old, new) == Credentials("b", 2.0, "rt-old", {"msal_cache": "c2", "home": "h"}, 1.5)

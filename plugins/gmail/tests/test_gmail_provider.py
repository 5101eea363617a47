"""The Gmail provider on its own: connect, refresh and error mapping, with the real
google-api-python-client and google-auth against the local fake Gmail."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from brain.errors import ConfigError
from brain.mail.provider import (
    Address,
    AuthFailed,
    ConnectRejected,
    Credentials,
    CursorExpired,
    MessageGone,
    ProviderError,
    RateLimited,
    SyncContext,
    Transient,
)
from brain.plugins.manager import load_plugins
from brain.testing import registered_providers, sync_context
from brain.testing.conformance import FakeMailbox, ProviderConformance
from brain.testing.fakes import pkce_pair
from brain.testing.fakes.gmail import FakeGmail
from brain_gmail import plugin
from brain_gmail.provider import GmailProvider
from brain.testing.fakes.mime import Part

pytestmark = pytest.mark.usefixtures("loopback_only")

USER = "ada@example.com"
REDIRECT = "http://127.0.0.1:8080/mail/oauth/callback"


@pytest.fixture
def fake() -> Iterator[FakeGmail]:
    yield from FakeGmail.running()


def provider(fake: FakeGmail, **extra: Any) -> GmailProvider:
    settings = {
        "client_id": fake.client_id,
        "client_secret": fake.client_secret,
        "api_endpoint": fake.base_url,
        "token_uri": fake.token_uri,
        "batch_uri": fake.batch_uri,
        "revoke_uri": fake.revoke_uri,
        "auth_uri": "https://accounts.example/auth",
        "quota_units_per_second": 0,
        **extra,
    }
    return GmailProvider(settings, page_size=extra.get("page_size", 100))


def context(p: GmailProvider, fake: FakeGmail) -> SyncContext:
    return sync_context(p, Credentials(refresh_token=fake.issue_refresh_token(USER)))


class TestGmailConformance(ProviderConformance):
    @pytest.fixture
    def mailbox(self, fake: FakeGmail) -> FakeMailbox:
        fake.add_mailbox(USER)
        return FakeMailbox(fake, USER, lambda page_size: provider(fake, page_size=page_size))


def test_plugin_registers_the_provider_and_checks_its_table() -> None:
    assert registered_providers(load_plugins(["gmail"]))["gmail"] is GmailProvider
    with pytest.raises(ConfigError, match="plugins.gmail.api_key"):
        plugin.brain_startup(settings=None, plugin_settings={"gmail": {"api_key": "x"}})
    with pytest.raises(ConfigError, match="message_format"):
        plugin.brain_startup(settings=None, plugin_settings={"gmail": {"message_format": "html"}})


def test_authorize_url_asks_for_offline_read_only_access_with_pkce(fake: FakeGmail) -> None:
    _, challenge = pkce_pair()
    url = provider(fake).authorize_url(state="s1", redirect_uri=REDIRECT, code_challenge=challenge)
    parts = urlsplit(url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    assert url.startswith("https://accounts.example/auth?")
    assert query == {
        "client_id": fake.client_id,
        "redirect_uri": REDIRECT,
        "response_type": "code",
        "scope": "https://www.googleapis.com/auth/gmail.readonly",
        "access_type": "offline",
        "prompt": "consent",
        "include_granted_scopes": "true",
        "state": "s1",
        "code_challenge": challenge,
        "code_challenge_method": "S256",
    }
    with pytest.raises(ConnectRejected, match="GOOGLE_CLIENT_ID"):
        GmailProvider({}).authorize_url(state="s", redirect_uri=REDIRECT, code_challenge=challenge)


def consent(url: str) -> dict[str, str]:
    """What the browser brings back from the fake consent screen: the redirect's query."""
    with requests.Session() as session:
        session.trust_env = False  # no proxy between the test and the fake
        r = session.get(url, allow_redirects=False, timeout=10)
    assert r.status_code == 302, r.text
    location = urlsplit(r.headers["Location"])
    assert f"{location.scheme}://{location.netloc}{location.path}" == REDIRECT
    return {k: v[0] for k, v in parse_qs(location.query).items()}


def test_code_exchange_needs_the_pkce_verifier_and_refreshes(fake: FakeGmail) -> None:
    fake.add_mailbox(USER)
    p = provider(fake, auth_uri=fake.auth_uri)
    verifier, challenge = pkce_pair()
    answer = consent(p.authorize_url(state="s1", redirect_uri=REDIRECT, code_challenge=challenge))
    assert answer["state"] == "s1"
    with pytest.raises(AuthFailed, match="invalid_grant"):
        p.exchange_code(code=answer["code"], redirect_uri=REDIRECT, code_verifier=pkce_pair()[0])

    answer = consent(p.authorize_url(state="s2", redirect_uri=REDIRECT, code_challenge=challenge))
    creds = p.exchange_code(code=answer["code"], redirect_uri=REDIRECT, code_verifier=verifier)
    assert creds.access_token and creds.refresh_token and creds.expires_at and creds.obtained_at
    with pytest.raises(AuthFailed, match="invalid_grant"):
        p.exchange_code(code=answer["code"], redirect_uri=REDIRECT, code_verifier=verifier)  # single use

    fresh = p.refresh(creds)
    assert fresh.access_token != creds.access_token
    assert fresh.refresh_token == creds.refresh_token
    fake.revoke(USER)
    with pytest.raises(AuthFailed, match="invalid_grant"):
        p.refresh(creds)
    with pytest.raises(AuthFailed):
        p.refresh(Credentials())


def test_token_endpoint_outage_is_transient(fake: FakeGmail) -> None:
    p = provider(fake)
    creds = Credentials(refresh_token=fake.issue_refresh_token(USER))
    fake.fail_next(10, status=503, path_prefix="/token")
    with pytest.raises(Transient):
        p.refresh(creds)
    fake.clear_faults()
    fake.stop()
    with pytest.raises(Transient, match="unreachable"):
        p.refresh(creds)


@pytest.mark.parametrize(
    ("status", "retry_after", "expected"),
    [(429, 7, RateLimited), (500, None, Transient), (503, 3, Transient), (400, None, ProviderError), (403, None, AuthFailed)],
)
def test_api_errors_map_to_typed_errors(
    fake: FakeGmail, status: int, retry_after: float | None, expected: type[Exception]
) -> None:
    p = provider(fake)
    ctx = context(p, fake)
    fake.fail_next(1, status=status, retry_after=retry_after, path_prefix="/gmail/v1/users/me/profile")
    with pytest.raises(expected) as info:
        p.account_address(ctx)
    assert type(info.value) is expected
    if retry_after is not None:
        assert info.value.retry_after == retry_after  # type: ignore[attr-defined]
    assert p.account_address(ctx) == USER


def test_truncated_response_and_dead_server_are_transient(fake: FakeGmail) -> None:
    p = provider(fake)
    ctx = context(p, fake)
    fake.add_message(USER)
    p.account_address(ctx)
    fake.truncate_next(1, path_prefix="/gmail/v1/users/me/messages")
    with pytest.raises(Transient):
        p.initial_sync(ctx, None)
    fake.stop()
    with pytest.raises(Transient):
        p.account_address(ctx)


def test_message_deleted_between_list_and_get_is_skipped_or_reported(fake: FakeGmail) -> None:
    ids = fake.populate(USER, 4)
    p = provider(fake)
    ctx = context(p, fake)
    page = p.initial_sync(ctx, None)
    assert {m.message_id for m in page.messages} == set(ids) and page.next is None
    cursor = page.cursor
    assert cursor == {"history_id": str(fake.history_id(USER))}

    fake.modify_labels(USER, ids[0], add=["STARRED"])
    fake.modify_labels(USER, ids[1], add=["STARRED"])
    fake.fail_next(1, status=404, path_prefix=f"/gmail/v1/users/me/messages/{ids[1]}")  # gone by the time we ask
    changes = p.incremental_sync(ctx, cursor)
    assert [m.message_id for m in changes.messages] == [ids[0]] and "STARRED" in changes.messages[0].labels
    assert changes.deleted == [ids[1]]
    assert changes.cursor == {"history_id": str(fake.history_id(USER))}


def test_history_paging_and_expiry(fake: FakeGmail) -> None:
    ids = fake.populate(USER, 3)
    p = provider(fake, page_size=2)
    ctx = context(p, fake)
    start = {"history_id": str(fake.history_id(USER))}
    for mid in ids:
        fake.modify_labels(USER, mid, add=["IMPORTANT"])
    first = p.incremental_sync(ctx, start)
    assert first.next is not None and first.next["history_id"] == start["history_id"] and len(first.messages) == 2
    second = p.incremental_sync(ctx, first.next)
    assert second.next is None and len(second.messages) == 1
    fake.expire_history(USER)
    with pytest.raises(CursorExpired):
        p.incremental_sync(ctx, start)


def test_message_fields_and_full_format(fake: FakeGmail) -> None:
    receipts = fake.add_label(USER, "Receipts")
    mid = fake.add_message(
        USER,
        sender="Grace Hopper <grace@navy.example>",
        to="Ada <ada@example.com>, Alan <alan@example.com>",
        subject="Compilers",
        body="The first bug was a moth.",
        internet_message_id="<moth@navy.example>",
        label_ids=["INBOX", "UNREAD", receipts],
        headers={"Cc": "kat@nasa.example"},
    )
    p = provider(fake)
    (message,) = p.initial_sync(context(p, fake), None).messages
    assert message.message_id == mid and message.thread_id == mid
    assert message.sender == Address("Grace Hopper", "grace@navy.example")
    assert message.to == (Address("Ada", "ada@example.com"), Address("Alan", "alan@example.com"))
    assert message.cc == (Address("", "kat@nasa.example"),)
    assert message.subject == "Compilers" and message.internet_message_id == "<moth@navy.example>"
    assert message.labels == ("INBOX", "UNREAD", "Receipts")
    assert message.date and message.date.endswith("Z") and message.size
    assert message.body_text == "The first bug was a moth."
    assert {r.query["format"] for r in fake.requests if r.via_batch} == {"full"}


def test_quota_units_are_spent_per_call(fake: FakeGmail) -> None:
    fake.populate(USER, 3)
    p = provider(fake)
    spent: list[float] = []

    class Budget:
        def spend(self, units: float) -> None:
            spent.append(units)

    ctx = context(p, fake)
    ctx.budget = Budget()
    p.initial_sync(ctx, None)
    assert spent == [1, 5, 15, 1]  # profile, list, a batch of three gets, labels.list
    assert sum(spent) == fake.quota_units(USER)


def test_attachments_are_fetched_by_part_id_and_the_grant_revoked(fake: FakeGmail) -> None:
    pdf = b"%PDF-1.4\n" + bytes(range(256)) * 8
    mid = fake.add_message(
        USER, body="See attached.", html='<p>See <img src="cid:c1"></p>',
        attachments=[Part("report.pdf", "application/pdf", pdf)], inline=[Part("c.png", "image/png", b"PNG!", "c1")],
    )
    for message_format in ("full", "raw"):
        p = provider(fake, message_format=message_format)
        ctx = context(p, fake)
        (message,) = p.initial_sync(ctx, None).messages
        by_name = {a.filename: a.id for a in message.attachments}
        got = p.fetch_attachment(ctx, mid, by_name["report.pdf"])
        assert (got.mime_type, got.filename, got.size, b"".join(got.chunks)) == ("application/pdf", "report.pdf", len(pdf), pdf)
        assert b"".join(p.fetch_attachment(ctx, mid, by_name["c.png"]).chunks) == b"PNG!"
        with pytest.raises(MessageGone):
            p.fetch_attachment(ctx, mid, "9.9")
        with pytest.raises(MessageGone):
            p.fetch_attachment(ctx, "0000000000000000", by_name["report.pdf"])
    assert [r.path for r in fake.requests if "/attachments/" in r.path]  # the full format's way to the content

    creds = Credentials(refresh_token=fake.issue_refresh_token(USER))
    outcome = provider(fake, revoke_uri=fake.revoke_uri).revoke(creds)
    assert outcome.revoked is True
    with pytest.raises(AuthFailed, match="invalid_grant"):
        provider(fake).refresh(creds)
    assert provider(fake, revoke_uri=fake.revoke_uri).revoke(creds).revoked is True  # already gone: still revoked
    fake.fail_next(1, status=503, path_prefix="/revoke")
    failed = provider(fake, revoke_uri=fake.revoke_uri).revoke(Credentials(refresh_token=fake.issue_refresh_token(USER)))
    assert failed.revoked is False and "myaccount.google.com/permissions" in failed.detail

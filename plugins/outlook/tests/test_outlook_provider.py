"""The Outlook provider on its own: MSAL connect and refresh with a cache kept in the
credentials, Graph delta paging and error mapping, against the fake Microsoft identity
platform + Graph over https (the fake's own CA, with REQUESTS_CA_BUNDLE possibly set)."""

from __future__ import annotations

import datetime
import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from brain.errors import ConfigError
from brain.mail.provider import (
    AuthFailed,
    ConnectRejected,
    ConvertOptions,
    Credentials,
    CursorExpired,
    MessageGone,
    ProviderError,
    RateLimited,
    SyncContext,
    SyncOptions,
    Transient,
)
from brain.plugins.manager import load_plugins
from brain.testing import registered_providers, sync_context
from brain.testing.conformance import FakeMailbox, ProviderConformance
from brain.testing.fakes import pkce_pair
from brain.testing.fakes.microsoft import FakeMicrosoft
from brain_outlook import plugin
from brain_outlook.provider import CURSOR_VERSION, OutlookProvider
from brain.testing.fakes.mime import Part

pytestmark = pytest.mark.usefixtures("loopback_only")

USER = "grace@contoso.example"
REDIRECT = "http://127.0.0.1:8080/mail/oauth/callback"


@pytest.fixture
def fake() -> Iterator[FakeMicrosoft]:
    yield from FakeMicrosoft.running()


def provider(fake: FakeMicrosoft, **extra: Any) -> OutlookProvider:
    settings = {
        "client_id": fake.client_id,
        "client_secret": fake.client_secret,
        "tenant": fake.tenant_id,
        "authority_host": fake.base_url,
        "graph_base_url": fake.graph_url,
        "ca_bundle": fake.ca_path,
        **extra,
    }
    return OutlookProvider(settings, page_size=extra.get("page_size", 100))


def context(p: OutlookProvider, fake: FakeMicrosoft) -> tuple[SyncContext, Any]:
    ctx = sync_context(p, p.refresh(Credentials(refresh_token=fake.issue_refresh_token(USER))), address=USER)
    return ctx, ctx.tokens


class TestOutlookConformance(ProviderConformance):
    @pytest.fixture
    def mailbox(self, fake: FakeMicrosoft) -> FakeMailbox:
        fake.add_user(USER)
        return FakeMailbox(fake, USER, lambda page_size: provider(fake, page_size=page_size))


def test_plugin_registers_the_provider_and_checks_its_table(tmp_path: Any) -> None:
    assert registered_providers(load_plugins(["outlook"]))["outlook"] is OutlookProvider
    with pytest.raises(ConfigError, match="plugins.outlook.secret"):
        plugin.brain_startup(settings=None, plugin_settings={"outlook": {"secret": "x"}})
    with pytest.raises(ConfigError, match="ca_bundle"):
        plugin.brain_startup(settings=None, plugin_settings={"outlook": {"ca_bundle": str(tmp_path / "none.pem")}})


def test_authorize_url_from_msal_with_pkce_and_consent(fake: FakeMicrosoft) -> None:
    _, challenge = pkce_pair()
    url = provider(fake).authorize_url(state="s1", redirect_uri=REDIRECT, code_challenge=challenge)
    parts = urlsplit(url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    assert f"{parts.scheme}://{parts.netloc}{parts.path}" == f"{fake.authority()}/oauth2/v2.0/authorize"
    assert query["client_id"] == fake.client_id and query["state"] == "s1" and query["redirect_uri"] == REDIRECT
    assert {"Mail.Read", "User.Read", "offline_access"} <= set(query["scope"].split())
    assert query["response_type"] == "code" and query["prompt"] == "consent"
    assert query["code_challenge"] == challenge and query["code_challenge_method"] == "S256"
    with pytest.raises(ConnectRejected, match="MICROSOFT_CLIENT_ID"):
        OutlookProvider({}).authorize_url(state="s", redirect_uri=REDIRECT, code_challenge=challenge)


def consent(fake: FakeMicrosoft, url: str) -> str:
    """The code the fake sign-in page sends back to the redirect URI."""
    r = fake.requests_session().get(url, allow_redirects=False)
    assert r.status_code == 302, r.text
    return parse_qs(urlsplit(r.headers["Location"]).query)["code"][0]


def test_code_exchange_needs_the_pkce_verifier_and_keeps_the_msal_cache(fake: FakeMicrosoft) -> None:
    fake.add_user(USER)
    p = provider(fake)
    verifier, challenge = pkce_pair()
    code = consent(fake, p.authorize_url(state="s1", redirect_uri=REDIRECT, code_challenge=challenge))
    with pytest.raises(AuthFailed, match="invalid_grant"):
        p.exchange_code(code=code, redirect_uri=REDIRECT, code_verifier=pkce_pair()[0])

    code = consent(fake, p.authorize_url(state="s2", redirect_uri=REDIRECT, code_challenge=challenge))
    creds = p.exchange_code(code=code, redirect_uri=REDIRECT, code_verifier=verifier)
    assert creds.access_token and creds.expires_at and creds.extra["home_account_id"]
    cache = json.loads(creds.extra["msal_cache"])
    assert cache["RefreshToken"] and cache["Account"]
    first_refresh = creds.refresh_token

    # A fresh provider (a restart) refreshes from the stored cache alone; Entra rotates the
    # refresh token and the new cache carries it.
    again = provider(fake).refresh(Credentials(extra=creds.extra))
    assert again.access_token != creds.access_token
    assert again.refresh_token and again.refresh_token != first_refresh
    assert again.extra["msal_cache"] != creds.extra["msal_cache"]

    with pytest.raises(AuthFailed, match="invalid_grant"):
        p.exchange_code(code="1.Anot-a-code", redirect_uri=REDIRECT, code_verifier=verifier)


def test_refresh_failures(fake: FakeMicrosoft) -> None:
    creds = provider(fake).refresh(Credentials(refresh_token=fake.issue_refresh_token(USER)))
    fake.fail_next(1, status=503, retry_after=1, path_prefix=f"/{fake.tenant_id}/oauth2/v2.0/token")
    with pytest.raises(Transient):
        provider(fake).refresh(creds)
    fake.revoke(USER)
    with pytest.raises(AuthFailed, match="invalid_grant"):
        provider(fake).refresh(creds)
    with pytest.raises(AuthFailed):
        provider(fake).refresh(Credentials())
    with pytest.raises(AuthFailed, match="invalid_client"):
        provider(fake, client_secret="wrong").refresh(Credentials(refresh_token=fake.issue_refresh_token(USER)))


def sync_all(p: OutlookProvider, ctx: SyncContext, cursor: dict[str, Any] | None = None) -> tuple[list[Any], dict[str, Any]]:
    """Every page of an initial sync (or of an incremental round from ``cursor``): (pages, cursor)."""
    page = p.initial_sync(ctx, None) if cursor is None else p.incremental_sync(ctx, cursor)
    pages = [page]
    while page.next is not None:
        page = p.initial_sync(ctx, page.next) if cursor is None else p.incremental_sync(ctx, page.next)
        pages.append(page)
    assert page.cursor is not None
    return pages, page.cursor


def test_delta_pages_folder_after_folder_removals_and_expiry(fake: FakeMicrosoft) -> None:
    ids = fake.populate(USER, 7)
    sent = fake.add_message(USER, folder="sentitems", sender=f"Grace <{USER}>", to=["Bob <bob@example.com>"])
    fake.add_message(USER, folder="junkemail", subject="spam")
    fake.add_message(USER, folder="deleteditems", subject="binned")
    p = provider(fake, page_size=3)
    ctx, _ = context(p, fake)
    first = p.initial_sync(ctx, None)
    assert len(first.messages) == 3 and first.estimated_total == 8 and first.next is not None
    assert "$skiptoken=" in first.next["link"]
    pages, cursor = sync_all(p, ctx)
    records = {m.message_id: m for page in pages for m in page.messages}
    assert set(records) == {*ids, sent}  # junk and deleted items stay out
    assert records[sent].folders == ("Sent Items",) and records[sent].direction == "sent"
    assert records[ids[0]].folders == ("Inbox",) and records[ids[0]].direction == "received"
    delta = [r for r in fake.requests if r.path.endswith("/messages/delta")]
    assert delta and all('IdType="ImmutableId"' in r.headers.get("Prefer", "") for r in delta)

    fake.update_message(USER, ids[0], is_read=True, flag="flagged", categories=["Blue"], importance="high")
    fake.update_message(USER, ids[2], folder="archive")  # a move between synced folders
    fake.update_message(USER, ids[3], folder="deleteditems")  # a move out of them
    fake.delete_message(USER, ids[1])
    pages, cursor = sync_all(p, ctx, cursor)
    changed = {m.message_id: m for page in pages for m in page.messages}
    deleted = [d for page in pages for d in page.deleted]
    assert changed[ids[0]].flags.as_json() == {"read": True, "starred": True, "important": True}
    assert changed[ids[0]].labels == ("Blue",)
    assert changed[ids[2]].folders == ("Archive",)
    assert sorted(deleted) == sorted([ids[1], ids[3]])

    with pytest.raises(CursorExpired):  # version 2: delta links without In-Reply-To and References
        p.incremental_sync(ctx, {**cursor, "v": 2})
    fake.expire_delta(USER)
    with pytest.raises(CursorExpired):
        sync_all(p, ctx, cursor)
    with pytest.raises(CursorExpired):  # a cursor of the provider that synced one folder
        p.incremental_sync(ctx, {"link": f"{fake.graph_url}/me/mailFolders/inbox/messages/delta?$deltatoken=x"})


def test_content_attachments_size_and_child_folders(fake: FakeMicrosoft) -> None:
    fake.add_folder(USER, "Projects")
    fake.add_folder(USER, "Alpha", parent="Projects")
    report = fake.add_message(
        USER, folder="Projects/Alpha", subject="Report", body_type="html",
        body="<html><body><p>The <b>report</b> is attached.</p><script>x()</script></body></html>",
        attachments=[Part("report.pdf", "application/pdf", b"%PDF-1.4 report")],
        inline=[Part("logo.png", "image/png", b"\x89PNG logo", "logo1")],
    )
    draft = fake.add_message(USER, folder="drafts", is_draft=True, body="half-written")
    reply = fake.add_message(USER, subject="Re: Report", in_reply_to="<ask@example.com>",
                             references=["<root@example.com>", "<ask@example.com>"])
    p = provider(fake)
    ctx, _ = context(p, fake)
    pages, _ = sync_all(p, ctx)
    records = {m.message_id: m for page in pages for m in page.messages}
    # In-Reply-To and References, from PR_IN_REPLY_TO_ID and PR_INTERNET_REFERENCES.
    assert records[reply].in_reply_to == "<ask@example.com>"
    assert records[reply].references == ("<root@example.com>", "<ask@example.com>")
    assert (records[draft].in_reply_to, records[draft].references) == (None, ())
    message = records[report]
    assert message.folders == ("Projects/Alpha",)
    assert message.body_text == "The report is attached." and message.body_html is None
    assert [(a.filename, a.mime_type, a.size, a.inline) for a in message.attachments] == [
        ("report.pdf", "application/pdf", 15, False), ("logo.png", "image/png", 9, True),
    ]
    assert message.has_attachments and message.size and message.size > 1500
    assert records[draft].direction == "draft" and records[draft].body_text == "half-written"
    listings = [r for r in fake.requests if r.path.endswith("/attachments")]
    assert [r.path for r in listings] == [f"/v1.0/me/messages/{report}/attachments"]  # only where there are some
    # The body comes as Graph's own text, not HTML for brain to convert (only when HTML is kept).
    delta = [r for r in fake.requests if r.path.endswith("/messages/delta")]
    assert delta and all('outlook.body-content-type="text"' in r.headers.get("Prefer", "") for r in delta)

    fake.clear_requests()
    html = provider(fake)
    html_ctx, _ = context(html, fake)
    html_ctx.options = SyncOptions(convert=ConvertOptions(keep_html=True))
    pages, _ = sync_all(html, html_ctx)
    kept = {m.message_id: m for page in pages for m in page.messages}[report]
    assert kept.body_text == "The report is attached." and "<b>report</b>" in (kept.body_html or "")
    delta = [r for r in fake.requests if r.path.endswith("/messages/delta")]
    assert delta and not any("outlook.body-content-type" in r.headers.get("Prefer", "") for r in delta)


def test_chosen_folders_window_and_no_bodies(fake: FakeMicrosoft) -> None:
    old = fake.add_message(USER, subject="old", received=datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC))
    new = fake.add_message(USER, subject="new")
    fake.add_message(USER, folder="archive")
    sent = fake.add_message(USER, folder="sentitems", body="secret")
    p = provider(fake)
    ctx, _ = context(p, fake)
    since = datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC).timestamp()
    ctx.options = SyncOptions(folders=("INBOX", "Sent Items"), since=since, bodies=False)
    pages, cursor = sync_all(p, ctx)
    records = {m.message_id: m for page in pages for m in page.messages}
    assert set(records) == {new, sent} and old not in records
    assert records[sent].body_text == "" and records[sent].snippet == "secret"  # Graph's preview
    assert [f["name"] for f in cursor["folders"]] == ["Inbox", "Sent Items"]


def test_graph_errors_and_token_refusal(fake: FakeMicrosoft) -> None:
    fake.populate(USER, 2)
    p = provider(fake)
    ctx, tokens = context(p, fake)
    fake.fail_next(1, status=429, retry_after=4, path_prefix="/v1.0/me")
    with pytest.raises(RateLimited) as throttled:
        p.account_address(ctx)
    assert throttled.value.retry_after == 4
    fake.fail_next(1, status=504, path_prefix="/v1.0/me")
    with pytest.raises(Transient):
        p.account_address(ctx)

    fake.expire_access_tokens(USER)  # Graph refuses the token: one refresh, then it works
    before = tokens.refreshes
    assert p.account_address(ctx) == USER
    assert tokens.refreshes == before + 1
    fake.fail_next(2, status=401, path_prefix="/v1.0/me")
    with pytest.raises(AuthFailed):
        p.account_address(ctx)


def test_links_outside_graph_are_refused(fake: FakeMicrosoft) -> None:
    p = provider(fake)
    ctx, _ = context(p, fake)
    inbox = fake.folder_id(USER, "inbox")
    cursor = {"v": CURSOR_VERSION, "folders": [{"id": inbox, "name": "Inbox"}], "links": {}, "i": 0,
              "link": "https://evil.example/v1.0/me/messages/delta"}
    with pytest.raises(ProviderError, match="outside Graph"):
        p.incremental_sync(ctx, cursor)
    assert not any("delta" in r.path for r in fake.requests)


def test_attachments_stream_and_revoking_says_what_the_user_must_do(fake: FakeMicrosoft) -> None:
    pdf = b"%PDF-1.4\n" + bytes(range(256)) * 1024
    mid = fake.add_message(USER, attachments=[Part("report.pdf", "application/pdf", pdf)])
    p = provider(fake)
    ctx, _ = context(p, fake)
    (message,) = sync_all(p, ctx)[0][0].messages
    (attachment,) = message.attachments
    got = p.fetch_attachment(ctx, mid, attachment.id)
    chunks = list(got.chunks)
    assert (got.mime_type, got.filename, got.size) == ("application/pdf", "report.pdf", len(pdf))
    assert len(chunks) > 1 and b"".join(chunks) == pdf  # streamed, not read whole
    with pytest.raises(MessageGone):
        p.fetch_attachment(ctx, mid, "AAMkADnope=")
    fake.delete_message(USER, mid)
    with pytest.raises(MessageGone):
        p.fetch_attachment(ctx, mid, attachment.id)
    outcome = p.revoke(ctx.tokens.credentials())
    assert outcome.revoked is False and "myapps.microsoft.com" in outcome.detail

"""The Outlook provider on its own: MSAL connect and refresh with a cache kept in the
credentials, Graph delta paging and error mapping, against the fake Microsoft identity
platform + Graph over https (the fake's own CA, with REQUESTS_CA_BUNDLE possibly set)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from brain.errors import ConfigError
from brain.mail.provider import (
    AuthFailed,
    ConnectRejected,
    Credentials,
    CursorExpired,
    ProviderError,
    RateLimited,
    SyncContext,
    Transient,
)
from brain.plugins.manager import load_plugins
from brain.testing import registered_providers, sync_context
from brain.testing.conformance import FakeMailbox, ProviderConformance
from brain.testing.fakes import pkce_pair
from brain.testing.fakes.microsoft import FakeMicrosoft
from brain_outlook import plugin
from brain_outlook.provider import OutlookProvider

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
    ctx = sync_context(p, p.refresh(Credentials(refresh_token=fake.issue_refresh_token(USER))))
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


def test_delta_pages_removals_and_expiry(fake: FakeMicrosoft) -> None:
    ids = fake.populate(USER, 7)
    p = provider(fake, page_size=3)
    ctx, _ = context(p, fake)
    first = p.initial_sync(ctx, None)
    assert len(first.messages) == 3 and first.estimated_total == 7 and first.next is not None
    assert "$skiptoken=" in first.next["link"] and first.next["total"] == 7
    pages = [first]
    while pages[-1].next is not None:
        pages.append(p.initial_sync(ctx, pages[-1].next))
    assert {m.id for page in pages for m in page.messages} == set(ids)
    delta = pages[-1].cursor
    assert delta is not None and "$deltatoken=" in delta["link"]
    delta_requests = [r for r in fake.requests if r.path.endswith("/messages/delta")]
    assert delta_requests  # Prefer: odata.maxpagesize is what made the pages 3 long

    fake.update_message(USER, ids[0], is_read=True, flag="flagged", categories=["Blue"], importance="high")
    fake.delete_message(USER, ids[1])
    changes = p.incremental_sync(ctx, delta)
    (changed,) = changes.messages
    assert changed.id == ids[0]
    assert set(changed.labels) == {"INBOX", "FLAGGED", "IMPORTANT", "category:Blue"}
    assert changes.deleted == [ids[1]] and changes.cursor is not None

    fake.expire_delta(USER)
    with pytest.raises(CursorExpired):
        p.incremental_sync(ctx, changes.cursor)


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
    with pytest.raises(ProviderError, match="outside Graph"):
        p.incremental_sync(ctx, {"link": "https://evil.example/v1.0/me/messages/delta"})
    assert not any(r.path.startswith("/v1.0/me/mailFolders") for r in fake.requests)


def test_message_fields(fake: FakeMicrosoft) -> None:
    fake.add_message(
        USER,
        subject="Compilers",
        sender="Ada Lovelace <ada@analytical.example>",
        to=["Grace <grace@contoso.example>"],
        cc=["Kat <kat@nasa.example>"],
        internet_message_id="<moth@contoso.example>",
    )
    p = provider(fake)
    ctx, _ = context(p, fake)
    (message,) = p.initial_sync(ctx, None).messages
    assert message.subject == "Compilers" and message.sender == "Ada Lovelace <ada@analytical.example>"
    assert message.to == ("Grace <grace@contoso.example>",) and message.cc == ("Kat <kat@nasa.example>",)
    assert message.internet_message_id == "<moth@contoso.example>" and message.thread_id
    assert message.date and message.date.endswith("Z")
    assert set(message.labels) == {"INBOX", "UNREAD"}

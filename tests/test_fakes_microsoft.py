"""The fake Microsoft identity platform and Graph speak what msal and Graph clients expect.

MSAL runs for real against ``brain.testing.fakes.microsoft.FakeMicrosoft`` over https with the
fake's CA; Graph is called with ``requests``. Outgoing connections are restricted to loopback.
"""

from __future__ import annotations

import datetime
import json
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import msal
import pytest
import requests

from brain.testing.fakes import control_call, loopback_only, pkce_pair
from brain.testing.fakes.microsoft import FakeMicrosoft

# acquire_token_by_authorization_code is deprecated in favour of the auth code flow, and the
# flow suggests form_post; both are exercised here on purpose.
pytestmark = [
    pytest.mark.filterwarnings("ignore:Change your acquire_token_by_authorization_code:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:response_mode='form_post' is recommended:UserWarning"),
]

USER = "ada@contoso.example"
SCOPES = ["Mail.Read"]
REDIRECT = "http://localhost:8400/callback"
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def loopback() -> Iterator[list[Any]]:
    """Fail any test whose clients try to leave the machine (login.microsoftonline.com...)."""
    with loopback_only() as refused:
        yield refused
    assert refused == []


@pytest.fixture
def fake() -> Iterator[FakeMicrosoft]:
    yield from FakeMicrosoft.running()


def make_app(
    fake: FakeMicrosoft, cache: msal.TokenCache | None = None, **kwargs: Any
) -> msal.ConfidentialClientApplication:
    return msal.ConfidentialClientApplication(
        fake.client_id,
        client_credential=fake.client_secret,
        authority=fake.authority(),
        http_client=fake.requests_session(),
        instance_discovery=False,  # or MSAL asks login.microsoftonline.com about the authority
        token_cache=cache,
        **kwargs,
    )


def sign_in(fake: FakeMicrosoft, app: msal.ConfidentialClientApplication) -> dict[str, Any]:
    verifier, challenge = pkce_pair()
    code = fake.issue_code(USER, redirect_uri=REDIRECT, code_challenge=challenge)
    result = app.acquire_token_by_authorization_code(
        code, scopes=SCOPES, redirect_uri=REDIRECT, data={"code_verifier": verifier}
    )
    assert "error" not in result, result
    return result


def token_posts(fake: FakeMicrosoft) -> int:
    return fake.request_count(f"/{fake.tenant_id}/oauth2/v2.0/token", method="POST")


IMMUTABLE = 'IdType="ImmutableId"'


def graph(
    fake: FakeMicrosoft, url: str, token: str, page_size: int | None = None, prefer: tuple[str, ...] = (IMMUTABLE,)
) -> requests.Response:
    preferences = [*prefer, *([f"odata.maxpagesize={page_size}"] if page_size is not None else [])]
    headers = {"Authorization": f"Bearer {token}"}
    if preferences:
        headers["Prefer"] = ", ".join(preferences)
    return fake.requests_session().get(url, headers=headers)


def delta_round(
    fake: FakeMicrosoft, url: str, token: str, page_size: int | None = None
) -> tuple[list[list[dict[str, Any]]], str]:
    """Follow nextLinks to the deltaLink; returns the pages' items and the deltaLink."""
    pages = []
    while True:
        response = graph(fake, url, token, page_size)
        assert response.status_code == 200, response.text
        body = response.json()
        pages.append(body["value"])
        if "@odata.nextLink" in body:
            assert "@odata.deltaLink" not in body
            url = body["@odata.nextLink"]
        else:
            return pages, body["@odata.deltaLink"]


def test_authorization_code_fills_msal_cache(fake: FakeMicrosoft) -> None:
    app = make_app(fake)
    result = sign_in(fake, app)

    assert result["token_type"] == "Bearer" and result["expires_in"] == 3600
    assert result["token_source"] == "identity_provider"
    claims = result["id_token_claims"]
    assert claims["preferred_username"] == USER and claims["tid"] == fake.tenant_id
    assert claims["aud"] == fake.client_id and claims["iss"] == f"{fake.base_url}/{fake.tenant_id}/v2.0"
    (account,) = app.get_accounts()
    assert account["username"] == USER
    assert account["home_account_id"] == f"{claims['oid']}.{fake.tenant_id}"

    me = graph(fake, fake.graph_url + "/me", result["access_token"]).json()
    assert me["userPrincipalName"] == USER and me["mail"] == USER and me["id"] == claims["oid"]

    cached = app.acquire_token_silent(SCOPES, account=account)
    assert cached["token_source"] == "cache" and cached["access_token"] == result["access_token"]
    assert [r.path for r in fake.requests] == [
        f"/{fake.tenant_id}/v2.0/.well-known/openid-configuration",
        f"/{fake.tenant_id}/oauth2/v2.0/token",
        "/v1.0/me",
    ]


def test_auth_code_flow_through_the_authorize_endpoint(fake: FakeMicrosoft) -> None:
    fake.add_user(USER)
    app = make_app(fake)
    flow = app.initiate_auth_code_flow(SCOPES, redirect_uri=REDIRECT, login_hint=USER)
    redirect = fake.requests_session().get(flow["auth_uri"], allow_redirects=False)
    assert redirect.status_code == 302
    location = urlsplit(redirect.headers["Location"])
    assert f"{location.scheme}://{location.netloc}{location.path}" == REDIRECT
    auth_response = {k: v[0] for k, v in parse_qs(location.query).items()}
    assert auth_response["state"] == flow["state"]

    result = app.acquire_token_by_auth_code_flow(flow, auth_response)  # checks state, PKCE and nonce
    assert "error" not in result, result
    assert result["id_token_claims"]["preferred_username"] == USER

    tampered = app.initiate_auth_code_flow(SCOPES, redirect_uri=REDIRECT, login_hint=USER)
    redirect = fake.requests_session().get(tampered["auth_uri"], allow_redirects=False)
    response = {k: v[0] for k, v in parse_qs(urlsplit(redirect.headers["Location"]).query).items()}
    tampered["code_verifier"] = "not-the-verifier-that-made-the-challenge-0123456789"
    refused = app.acquire_token_by_auth_code_flow(tampered, response)
    assert refused["error"] == "invalid_grant" and 501481 in refused["error_codes"]


def test_pkce_is_required(fake: FakeMicrosoft) -> None:
    fake.add_user(USER)
    app = make_app(fake)
    with pytest.warns(DeprecationWarning):
        plain_url = app.get_authorization_request_url(SCOPES, redirect_uri=REDIRECT, state="s1")  # no PKCE
    refused = fake.requests_session().get(plain_url, allow_redirects=False)
    assert refused.status_code == 400 and "Proof Key for Code Exchange" in refused.json()["error_description"]
    verifier, _ = pkce_pair()
    plain = fake.requests_session().get(
        f"{plain_url}&code_challenge={verifier}&code_challenge_method=plain", allow_redirects=False
    )
    assert plain.status_code == 400
    with pytest.raises(ValueError, match="PKCE"):
        fake.issue_code(USER, redirect_uri=REDIRECT)
    # A code bound to a challenge is not redeemed without its verifier.
    code = fake.issue_code(USER, redirect_uri=REDIRECT, code_challenge=pkce_pair()[1])
    result = app.acquire_token_by_authorization_code(code, SCOPES, redirect_uri=REDIRECT)
    assert result["error"] == "invalid_grant" and 501481 in result["error_codes"]


def test_silent_refresh_after_expiry_rotates_refresh_token(fake: FakeMicrosoft) -> None:
    fake.access_token_lifetime = 1
    cache = msal.SerializableTokenCache()
    app = make_app(fake, cache)
    first = sign_in(fake, app)
    first_refresh = first["refresh_token"]
    time.sleep(1.1)
    expired = graph(fake, fake.graph_url + "/me", first["access_token"])
    assert expired.status_code == 401
    assert expired.json()["error"]["code"] == "InvalidAuthenticationToken"
    assert "expired" in expired.json()["error"]["message"]

    fake.access_token_lifetime = 3600
    refreshed = app.acquire_token_silent(SCOPES, account=app.get_accounts()[0])
    assert refreshed["token_source"] == "identity_provider"
    assert graph(fake, fake.graph_url + "/me", refreshed["access_token"]).status_code == 200
    (stored_refresh,) = json.loads(cache.serialize())["RefreshToken"].values()
    assert stored_refresh["secret"] != first_refresh  # Entra-style rotation, kept by MSAL
    assert token_posts(fake) == 2


def test_msal_treats_tokens_with_under_five_minutes_left_as_expired(fake: FakeMicrosoft) -> None:
    fake.access_token_lifetime = 240
    app = make_app(fake)
    sign_in(fake, app)
    account = app.get_accounts()[0]
    for _ in range(2):
        assert app.acquire_token_silent(SCOPES, account=account)["token_source"] == "identity_provider"
    assert token_posts(fake) == 3


def test_serialized_cache_round_trips(fake: FakeMicrosoft) -> None:
    cache = msal.SerializableTokenCache()
    app = make_app(fake, cache)
    result = sign_in(fake, app)
    assert cache.has_state_changed
    blob = cache.serialize()
    assert set(json.loads(blob)) >= {"AccessToken", "RefreshToken", "IdToken", "Account"}

    restored = msal.SerializableTokenCache()
    restored.deserialize(blob)
    other_app = make_app(fake, restored)
    (account,) = other_app.get_accounts()
    assert account["username"] == USER
    again = other_app.acquire_token_silent(SCOPES, account=account)
    assert again["token_source"] == "cache" and again["access_token"] == result["access_token"]
    forced = other_app.acquire_token_silent(SCOPES, account=account, force_refresh=True)
    assert forced["token_source"] == "identity_provider"
    assert restored.has_state_changed


def test_revoked_user_gets_invalid_grant_and_msal_caches_the_failure(fake: FakeMicrosoft) -> None:
    fake.access_token_lifetime = 240  # below MSAL's 5-minute margin: silent calls must refresh
    app = make_app(fake)
    first = sign_in(fake, app)
    account = app.get_accounts()[0]
    fake.revoke(USER)

    failed = app.acquire_token_silent_with_error(SCOPES, account=account)
    assert failed["error"] == "invalid_grant"
    assert failed["error_codes"] == [70008] and "AADSTS70008" in failed["error_description"]
    assert app.acquire_token_silent(SCOPES, account=account) is None
    assert token_posts(fake) == 2  # the second failure came from MSAL's 60 s cache of 400s
    assert graph(fake, fake.graph_url + "/me", first["access_token"]).status_code == 401

    fresh_app = make_app(fake)  # re-authorisation works again after a revoke
    assert sign_in(fake, fresh_app)["id_token_claims"]["preferred_username"] == USER


def test_token_endpoint_failures_as_msal_reports_them(fake: FakeMicrosoft) -> None:
    app = make_app(fake)
    refresh_token = fake.issue_refresh_token(USER)
    token_path = f"/{fake.tenant_id}/oauth2/v2.0/token"

    fake.fail_next(1, status=503, retry_after=1, path_prefix=token_path)
    with pytest.raises(msal.exceptions.MsalServiceError):  # 5xx raises rather than returning an error
        app.acquire_token_by_refresh_token(refresh_token, scopes=SCOPES)
    with pytest.raises(msal.exceptions.MsalServiceError):  # replayed from MSAL's Retry-After cache
        app.acquire_token_by_refresh_token(refresh_token, scopes=SCOPES)
    assert token_posts(fake) == 1
    time.sleep(1.1)
    assert app.acquire_token_by_refresh_token(refresh_token, scopes=SCOPES)["token_source"] == "identity_provider"

    fake.fail_next(1, status=429, retry_after=1, path_prefix=token_path)
    throttled = app.acquire_token_by_refresh_token(fake.issue_refresh_token(USER), scopes=SCOPES)
    assert throttled["error"] == "temporarily_unavailable"

    wrong_secret = msal.ConfidentialClientApplication(
        fake.client_id,
        client_credential="wrong",
        authority=fake.authority(),
        http_client=fake.requests_session(),
        instance_discovery=False,
    )
    assert wrong_secret.acquire_token_by_refresh_token(refresh_token, scopes=SCOPES)["error"] == "invalid_client"
    unconsented = app.acquire_token_by_refresh_token(fake.issue_refresh_token(USER), scopes=["Mail.Send"])
    assert unconsented["error"] == "invalid_grant" and unconsented["error_codes"] == [65001]


def test_common_authority_and_unknown_tenant(fake: FakeMicrosoft) -> None:
    app = msal.ConfidentialClientApplication(
        fake.client_id,
        client_credential=fake.client_secret,
        authority=fake.authority("common"),
        http_client=fake.requests_session(),
        validate_authority=False,
    )
    verifier, challenge = pkce_pair()
    code = fake.issue_code(USER, redirect_uri=REDIRECT, code_challenge=challenge)
    result = app.acquire_token_by_authorization_code(
        code, SCOPES, redirect_uri=REDIRECT, data={"code_verifier": verifier}
    )
    assert result["id_token_claims"]["tid"] == fake.tenant_id
    # MSAL files the account under the authority's tenant segment, not the token's tid.
    assert app.get_accounts()[0]["realm"] == "common"
    assert fake.requests[0].path == "/common/v2.0/.well-known/openid-configuration"

    with pytest.raises(ValueError, match="Unable to get authority configuration"):
        make_app_for_tenant(fake, "no-such-tenant.example")


def make_app_for_tenant(fake: FakeMicrosoft, tenant: str) -> msal.ConfidentialClientApplication:
    return msal.ConfidentialClientApplication(
        fake.client_id,
        client_credential=fake.client_secret,
        authority=fake.authority(tenant),
        http_client=fake.requests_session(),
        instance_discovery=False,
    )


def test_delta_pages_with_maxpagesize_and_ends_with_delta_link(fake: FakeMicrosoft) -> None:
    inbox_ids = set(fake.populate(USER, 25))
    fake.add_message(USER, folder="archive", subject="archived")
    token = fake.issue_access_token(USER)

    first = graph(fake, fake.graph_url + "/me/mailFolders/inbox/messages/delta", token, page_size=10)
    assert first.headers["Preference-Applied"] == f"odata.maxpagesize=10, {IMMUTABLE}"
    assert "$skiptoken=" in first.json()["@odata.nextLink"]
    pages, delta_link = delta_round(fake, fake.graph_url + "/me/mailFolders/inbox/messages/delta", token, 10)

    assert [len(p) for p in pages] == [10, 10, 5]
    assert "$deltatoken=" in delta_link
    items = [item for page in pages for item in page]
    assert {item["id"] for item in items} == inbox_ids == fake.message_ids(USER, "inbox")
    item = items[0]
    assert item["@odata.type"] == "#microsoft.graph.message"
    assert item["parentFolderId"] == fake.folder_id(USER, "inbox")
    assert set(item) >= {
        "subject",
        "from",
        "toRecipients",
        "receivedDateTime",
        "isRead",
        "bodyPreview",
        "internetMessageId",
        "conversationId",
        "flag",
        "categories",
    }
    assert item["from"]["emailAddress"]["address"]
    assert item["receivedDateTime"].endswith("Z")

    no_pref = graph(fake, fake.graph_url + "/me/mailFolders/inbox/messages/delta", token, prefer=())
    assert "Preference-Applied" not in no_pref.headers
    assert len(no_pref.json()["value"]) == fake.default_page_size


def test_delta_link_returns_only_changes(fake: FakeMicrosoft) -> None:
    ids = fake.populate(USER, 6)
    token = fake.issue_access_token(USER)
    inbox_id = fake.folder_id(USER, "inbox")
    _, delta_link = delta_round(fake, f"{fake.graph_url}/me/mailFolders/{inbox_id}/messages/delta", token, 4)

    new_id = fake.add_message(USER, subject="brand new", sender="Grace <grace@example.com>")
    fake.update_message(USER, ids[0], is_read=True, categories=["Blue category"])
    fake.delete_message(USER, ids[1])
    fake.update_message(USER, ids[2], folder="archive")
    fake.add_message(USER, folder="sentitems", subject="elsewhere")

    pages, next_delta = delta_round(fake, delta_link, token, 2)
    changes = {item["id"]: item for page in pages for item in page}
    assert set(changes) == {new_id, ids[0], ids[1], ids[2]}
    assert changes[new_id]["subject"] == "brand new"
    assert changes[new_id]["from"]["emailAddress"] == {"name": "Grace", "address": "grace@example.com"}
    assert changes[ids[0]]["isRead"] is True and changes[ids[0]]["categories"] == ["Blue category"]
    assert changes[ids[1]] == {
        "@odata.type": "#microsoft.graph.message",
        "id": ids[1],
        "@removed": {"reason": "deleted"},
    }
    assert changes[ids[2]]["@removed"] == {"reason": "deleted"}  # moved out of the folder

    quiet, _ = delta_round(fake, next_delta, token)
    assert quiet == [[]]


def test_delta_select_projects_fields(fake: FakeMicrosoft) -> None:
    fake.populate(USER, 3)
    token = fake.issue_access_token(USER)
    url = fake.graph_url + "/me/mailFolders/inbox/messages/delta?$select=subject,isRead,receivedDateTime"
    pages, delta_link = delta_round(fake, url, token, 2)
    for item in (i for page in pages for i in page):
        assert set(item) == {"@odata.type", "@odata.etag", "id", "subject", "isRead", "receivedDateTime"}
    changed = fake.messages(USER)[0]["id"]
    fake.update_message(USER, changed, subject="edited")
    (page,), _ = delta_round(fake, delta_link, token)
    assert page == [
        {
            "@odata.type": "#microsoft.graph.message",
            "@odata.etag": page[0]["@odata.etag"],
            "id": changed,
            "subject": "edited",
            "isRead": page[0]["isRead"],
            "receivedDateTime": page[0]["receivedDateTime"],
        }
    ]

    bad = graph(fake, fake.graph_url + "/me/mailFolders/inbox/messages/delta?$select=nope", token)
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "RequestBroker--ParseUri"


def test_folders_single_message_and_received_filter(fake: FakeMicrosoft) -> None:
    old = fake.add_message(USER, subject="old", received=datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC))
    new = fake.add_message(USER, subject="new", received=datetime.datetime(2024, 6, 1, tzinfo=datetime.UTC))
    token = fake.issue_access_token(USER)

    folders = graph(fake, fake.graph_url + "/me/mailFolders", token).json()["value"]
    inbox = next(f for f in folders if f["displayName"] == "Inbox")
    assert inbox["id"] == fake.folder_id(USER, "inbox") and inbox["totalItemCount"] == 2
    assert graph(fake, f"{fake.graph_url}/me/mailFolders/{inbox['id']}", token).json()["unreadItemCount"] == 2
    single = graph(fake, f"{fake.graph_url}/me/messages/{old}?$select=subject", token).json()
    assert single["subject"] == "old" and single["id"] == old
    assert graph(fake, f"{fake.graph_url}/me/messages/AAMkADmissing=", token).status_code == 404

    url = fake.graph_url + "/me/mailFolders/inbox/messages/delta?$filter=receivedDateTime ge 2024-01-01T00:00:00Z"
    pages, delta_link = delta_round(fake, url, token)
    assert [item["id"] for page in pages for item in page] == [new]
    fake.update_message(USER, old, is_read=True)
    fake.update_message(USER, new, is_read=True)
    pages, _ = delta_round(fake, delta_link, token)  # the filter sticks to the delta link
    assert [item["id"] for page in pages for item in page] == [new]


def test_expired_delta_state_gives_410(fake: FakeMicrosoft) -> None:
    fake.populate(USER, 5)
    token = fake.issue_access_token(USER)
    first = graph(fake, fake.graph_url + "/me/mailFolders/inbox/messages/delta", token, page_size=2).json()
    _, delta_link = delta_round(fake, fake.graph_url + "/me/mailFolders/inbox/messages/delta", token, 10)
    fake.expire_delta(USER)

    for url in (delta_link, first["@odata.nextLink"]):
        gone = graph(fake, url, token)
        assert gone.status_code == 410
        assert gone.json()["error"]["code"] == "syncStateNotFound"
    pages, _ = delta_round(fake, fake.graph_url + "/me/mailFolders/inbox/messages/delta", token, 10)
    assert len(pages[0]) == 5  # a full resync works


def test_graph_throttling_and_auth_errors(fake: FakeMicrosoft) -> None:
    fake.populate(USER, 2)
    token = fake.issue_access_token(USER)
    url = fake.graph_url + "/me/mailFolders/inbox/messages/delta"
    fake.fail_next(1, status=429, retry_after=2, path_prefix="/v1.0/me/mailFolders")
    throttled = graph(fake, url, token)
    assert throttled.status_code == 429 and throttled.headers["Retry-After"] == "2"
    assert throttled.json()["error"]["code"] == "ApplicationThrottled"
    assert graph(fake, url, token).status_code == 200

    fake.fail_next(1, status=503, retry_after=1, path_prefix="/v1.0/")
    unavailable = graph(fake, url, token)
    assert unavailable.status_code == 503 and unavailable.headers["Retry-After"] == "1"
    assert unavailable.json()["error"]["code"] == "ServiceUnavailable"

    for bad_token in ("", "not-a-token"):
        denied = graph(fake, url, bad_token)
        assert denied.status_code == 401
        assert denied.json()["error"]["code"] == "InvalidAuthenticationToken"
        assert "innerError" in denied.json()["error"]
    fake.expire_access_tokens(USER)
    assert graph(fake, url, token).status_code == 401
    assert [r.status for r in fake.requests] == [429, 200, 503, 401, 401, 401]


def test_truncated_graph_response(fake: FakeMicrosoft) -> None:
    fake.populate(USER, 10)
    token = fake.issue_access_token(USER)
    fake.truncate_next(1, path_prefix="/v1.0/me/mailFolders")
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        graph(fake, fake.graph_url + "/me/mailFolders/inbox/messages/delta", token)
    assert graph(fake, fake.graph_url + "/me/mailFolders/inbox/messages/delta", token).status_code == 200


@pytest.mark.asyncio
async def test_aiohttp_client_with_the_fake_ca(fake: FakeMicrosoft) -> None:
    fake.populate(USER, 4)
    token = fake.issue_access_token(USER)
    context = ssl.create_default_context(cafile=fake.ca_path)
    async with aiohttp.ClientSession() as session:
        url: str | None = fake.graph_url + "/me/mailFolders('inbox')/messages/delta"
        seen = []
        while url:
            async with session.get(
                url, ssl=context,
                headers={"Authorization": f"Bearer {token}", "Prefer": f"odata.maxpagesize=3, {IMMUTABLE}"},
            ) as resp:
                assert resp.status == 200
                body = await resp.json(content_type=None)
            seen += [item["id"] for item in body["value"]]
            url = body.get("@odata.nextLink")
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            async with session.get(fake.graph_url + "/me"):
                pass  # the default trust store does not know the fake's CA
    assert set(seen) == fake.message_ids(USER, "inbox")


def test_runs_as_its_own_process() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "brain.testing.fakes.microsoft", "--port", "0", "--user", USER, "--populate", "3"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        base_url = proc.stdout.readline().strip()
        info = dict(line.strip().split(" ", 1) for line in (proc.stdout.readline() for _ in range(5)))
        assert base_url.startswith("https://127.0.0.1:")
        refresh_token = info["refresh_token"].split(" ", 1)[1]
        session = requests.Session()
        session.trust_env = False
        session.verify = info["ca_path"]
        app = msal.ConfidentialClientApplication(
            info["client_id"],
            client_credential=info["client_secret"],
            authority=f"{base_url}/{info['tenant_id']}",
            http_client=session,
            instance_discovery=False,
        )
        result = app.acquire_token_by_refresh_token(refresh_token, scopes=SCOPES)
        assert result["id_token_claims"]["preferred_username"] == USER

        context = ssl.create_default_context(cafile=info["ca_path"])
        control_call(base_url, "add_message", USER, subject="via control", ssl_context=context)
        delta = session.get(
            base_url + "/v1.0/me/mailFolders/inbox/messages/delta",
            headers={"Authorization": f"Bearer {result['access_token']}"},
        ).json()
        assert len(delta["value"]) == 4
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0

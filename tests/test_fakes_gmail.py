"""The fake Gmail speaks the wire protocol that google-api-python-client and google-auth expect.

Every test drives the real client libraries against ``brain.testing.fakes.gmail.FakeGmail`` with
outgoing connections restricted to loopback.
"""

from __future__ import annotations

import base64
import http.client
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import google.auth.exceptions
import google_auth_httplib2
import httplib2
import pytest
import requests
from google.auth.transport.requests import Request as GoogleAuthRequest
from google.oauth2.credentials import Credentials
from googleapiclient.discovery import build
from googleapiclient.errors import HttpError
from googleapiclient.http import BatchHttpRequest

from brain.testing.fakes import control_call, loopback_only, pkce_pair
from brain.testing.fakes.gmail import BATCH_LIMIT, GMAIL_READONLY, FakeGmail

USER = "ada@example.com"
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def loopback() -> Iterator[list[Any]]:
    """Fail any test whose clients try to leave the machine."""
    with loopback_only() as refused:
        yield refused
    assert refused == []


@pytest.fixture
def fake() -> Iterator[FakeGmail]:
    yield from FakeGmail.running()


def credentials(fake: FakeGmail, refresh_token: str | None = None) -> Credentials:
    return Credentials(
        token=None,
        refresh_token=refresh_token or fake.issue_refresh_token(USER),
        token_uri=fake.token_uri,
        client_id=fake.client_id,
        client_secret=fake.client_secret,
    )


def gmail_service(fake: FakeGmail, creds: Credentials | None = None) -> Any:
    return build(
        "gmail",
        "v1",
        credentials=creds or credentials(fake),
        static_discovery=True,
        cache_discovery=False,
        client_options={"api_endpoint": fake.base_url},
    )


def test_code_exchange_then_refresh_token_drives_the_api(fake: FakeGmail) -> None:
    fake.populate(USER, 3)
    verifier, challenge = pkce_pair()
    code = fake.issue_code(USER, redirect_uri="http://127.0.0.1/callback", code_challenge=challenge)
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "code_verifier": verifier,
        "redirect_uri": "http://127.0.0.1/callback",
        "client_id": fake.client_id,
        "client_secret": fake.client_secret,
    }
    session = requests.Session()
    session.trust_env = False
    tokens = session.post(fake.token_uri, data=form).json()
    assert tokens["token_type"] == "Bearer"
    assert tokens["expires_in"] == 3600
    assert tokens["scope"] == "https://www.googleapis.com/auth/gmail.readonly"
    reused = session.post(fake.token_uri, data=form)
    assert reused.status_code == 400
    assert reused.json()["error"] == "invalid_grant"

    creds = credentials(fake, tokens["refresh_token"])
    profile = gmail_service(fake, creds).users().getProfile(userId="me").execute()

    assert profile["emailAddress"] == USER
    assert profile["messagesTotal"] == 3
    assert int(profile["historyId"]) == fake.history_id(USER)
    assert creds.token and creds.token != tokens["access_token"]  # google-auth refreshed by itself
    assert [(r.method, r.path) for r in fake.requests] == [
        ("POST", "/token"),
        ("POST", "/token"),
        ("POST", "/token"),
        ("GET", "/gmail/v1/users/me/profile"),
    ]



def test_consent_screen_requires_pkce_and_gives_refresh_tokens_like_google(fake: FakeGmail) -> None:
    fake.add_mailbox(USER)
    session = requests.Session()
    session.trust_env = False
    redirect = "http://127.0.0.1/callback"
    base = {"client_id": fake.client_id, "redirect_uri": redirect, "response_type": "code", "scope": GMAIL_READONLY,
            "state": "s1", "access_type": "offline"}

    def consent(**query: str) -> requests.Response:
        return session.get(fake.auth_uri, params={**base, **query}, allow_redirects=False, timeout=10)

    def exchange(code: str, **form: str) -> requests.Response:
        return session.post(fake.token_uri, data={
            "grant_type": "authorization_code", "code": code, "redirect_uri": redirect,
            "client_id": fake.client_id, "client_secret": fake.client_secret, **form}, timeout=10)

    # PKCE is required, with S256.
    refused = consent()
    assert refused.status_code == 400 and "code_challenge" in refused.json()["error_description"]
    verifier, challenge = pkce_pair()
    assert consent(code_challenge=verifier, code_challenge_method="plain").status_code == 400
    with pytest.raises(ValueError, match="PKCE"):
        fake.issue_code(USER)

    def code_from(r: requests.Response) -> str:
        assert r.status_code == 302, r.text
        query = {k: v[0] for k, v in parse_qs(urlsplit(r.headers["Location"]).query).items()}
        assert query["state"] == "s1" and query["scope"] == GMAIL_READONLY
        return query["code"]

    # The exchange needs the verifier that made the challenge (and burns the code either way).
    code = code_from(consent(code_challenge=challenge, code_challenge_method="S256"))
    assert exchange(code).json() == {"error": "invalid_grant", "error_description": "Missing code verifier."}
    code = code_from(consent(code_challenge=challenge, code_challenge_method="S256"))
    wrong = exchange(code, code_verifier=pkce_pair()[0])
    assert wrong.status_code == 400 and wrong.json()["error"] == "invalid_grant"
    # A user's first consent with offline access brings a refresh token; later ones only with
    # prompt=consent (bob consents here for the first time: ada did above).
    fake.add_mailbox("bob@example.com")
    pkce = {"code_challenge": challenge, "code_challenge_method": "S256", "login_hint": "bob@example.com"}
    first = exchange(code_from(consent(**pkce)), code_verifier=verifier)
    assert first.status_code == 200 and "refresh_token" in first.json()
    again = exchange(code_from(consent(**pkce)), code_verifier=verifier)
    assert again.status_code == 200 and "refresh_token" not in again.json()
    prompted = consent(**pkce, prompt="consent")
    assert "refresh_token" in exchange(code_from(prompted), code_verifier=verifier).json()
    online = consent(**pkce, prompt="consent", access_type="online")
    assert "refresh_token" not in exchange(code_from(online), code_verifier=verifier).json()


def test_list_pages_through_all_messages_newest_first(fake: FakeGmail) -> None:
    fake.populate(USER, 250)
    fake.add_message(USER, subject="in the bin", label_ids=["TRASH"])
    service = gmail_service(fake)

    listed: list[dict[str, Any]] = []
    request = service.users().messages().list(userId="me", maxResults=100)
    pages = 0
    while request is not None:
        response = request.execute()
        pages += 1
        assert response["resultSizeEstimate"] == 250
        listed.extend(response["messages"])
        request = service.users().messages().list_next(request, response)

    assert pages == 3
    expected = [m["id"] for m in fake.messages(USER) if "TRASH" not in m["labelIds"]]
    assert [m["id"] for m in listed] == expected  # newest first, no spam/trash by default
    dates = [int(m["internalDate"]) for m in fake.messages(USER)]
    assert dates == sorted(dates, reverse=True)
    assert {m["threadId"] for m in listed} <= {m["threadId"] for m in fake.messages(USER)}
    page_tokens = [r.query.get("pageToken") for r in fake.requests if r.path.endswith("/messages")]
    assert page_tokens[0] is None and all(page_tokens[1:])

    with_trash = service.users().messages().list(userId="me", includeSpamTrash=True, maxResults=500).execute()
    assert len(with_trash["messages"]) == 251
    inbox_unread = service.users().messages().list(userId="me", labelIds=["INBOX", "UNREAD"], maxResults=500).execute()
    unread = [m["id"] for m in fake.messages(USER) if {"INBOX", "UNREAD"} <= set(m["labelIds"])]
    assert [m["id"] for m in inbox_unread["messages"]] == unread


def test_list_understands_simple_search_queries(fake: FakeGmail) -> None:
    wanted = fake.add_message(
        USER, sender="Grace <grace@navy.example>", subject="Compilers", label_ids=["INBOX", "UNREAD"]
    )
    fake.add_message(USER, sender="Grace <grace@navy.example>", subject="Read already", label_ids=["INBOX"])
    fake.add_message(USER, sender="Alan <alan@example.com>", subject="Compilers too", label_ids=["INBOX", "UNREAD"])
    spam = fake.add_message(USER, sender="Grace <grace@navy.example>", subject="spam", label_ids=["SPAM", "UNREAD"])
    messages = gmail_service(fake).users().messages()

    def ids(q: str) -> list[str]:
        return [m["id"] for m in messages.list(userId="me", q=q).execute().get("messages", [])]

    assert ids("from:grace is:unread") == [wanted]
    assert ids('subject:"compilers" from:navy.example') == [wanted]
    assert ids("in:spam") == [spam]
    assert ids("from:nobody") == []


def test_empty_list_has_no_messages_key(fake: FakeGmail) -> None:
    fake.add_mailbox(USER)
    assert gmail_service(fake).users().messages().list(userId="me").execute() == {"resultSizeEstimate": 0}


def test_get_message_formats(fake: FakeGmail) -> None:
    msg_id = fake.add_message(
        USER,
        sender="Grace <grace@example.com>",
        subject="Compilers",
        body="The first bug was a moth.",
        internet_message_id="<moth@example.com>",
        label_ids=["INBOX"],
    )
    messages = gmail_service(fake).users().messages()

    full = messages.get(userId="me", id=msg_id).execute()
    headers = {h["name"]: h["value"] for h in full["payload"]["headers"]}
    assert headers["From"] == "Grace <grace@example.com>"
    assert headers["Subject"] == "Compilers"
    assert headers["Message-ID"] == "<moth@example.com>"
    assert headers["To"] == USER and headers["Date"]
    assert full["labelIds"] == ["INBOX"]
    assert full["snippet"] == "The first bug was a moth."
    assert isinstance(full["sizeEstimate"], int) and full["internalDate"].isdigit()
    data = full["payload"]["body"]["data"]
    assert base64.urlsafe_b64decode(data + "=" * (-len(data) % 4)) == b"The first bug was a moth."

    metadata = messages.get(userId="me", id=msg_id, format="metadata", metadataHeaders=["Subject", "From"]).execute()
    assert [h["name"] for h in metadata["payload"]["headers"]] == ["From", "Subject"]
    assert "body" not in metadata["payload"]

    minimal = messages.get(userId="me", id=msg_id, format="minimal").execute()
    assert "payload" not in minimal and minimal["historyId"] == full["historyId"]

    raw = messages.get(userId="me", id=msg_id, format="raw").execute()
    rfc822 = base64.urlsafe_b64decode(raw["raw"])
    assert b"Subject: Compilers" in rfc822 and b"The first bug was a moth." in rfc822

    with pytest.raises(HttpError) as missing:
        messages.get(userId="me", id="0000000000000000").execute()
    assert missing.value.status_code == 404
    assert json.loads(missing.value.content)["error"]["status"] == "NOT_FOUND"


def test_batch_of_fifty_metadata_gets(fake: FakeGmail) -> None:
    ids = fake.populate(USER, 60)[:50]
    service = gmail_service(fake)
    results: dict[str, tuple[Any, Any]] = {}

    # service.new_batch_http_request() would post to the discovery document's rootUrl:
    # api_endpoint does not apply to batches, so give batch_uri explicitly.
    assert service.new_batch_http_request()._batch_uri == "https://gmail.googleapis.com/batch"
    batch = BatchHttpRequest(
        batch_uri=fake.batch_uri, callback=lambda rid, resp, exc: results.update({rid: (resp, exc)})
    )
    for msg_id in ids:
        batch.add(service.users().messages().get(userId="me", id=msg_id, format="metadata"), request_id=msg_id)
    batch.execute()

    assert set(results) == set(ids)
    assert all(exc is None for _, exc in results.values())
    assert all(resp["id"] == rid and resp["payload"]["headers"] for rid, (resp, _) in results.items())
    posts = [r for r in fake.requests if r.path == "/batch/gmail/v1"]
    parts = [r for r in fake.requests if r.via_batch]
    assert len(posts) == 1 and posts[0].status == 200
    assert len(parts) == 50 and {r.query["format"] for r in parts} == {"metadata"}


def test_batch_reports_errors_per_part(fake: FakeGmail) -> None:
    ids = fake.populate(USER, 5)
    service = gmail_service(fake)
    service.users().getProfile(userId="me").execute()
    fake.fail_next(1, status=429, retry_after=3, path_prefix=f"/gmail/v1/users/me/messages/{ids[1]}")
    results: dict[str, tuple[Any, Any]] = {}
    batch = BatchHttpRequest(
        batch_uri=fake.batch_uri, callback=lambda rid, resp, exc: results.update({rid: (resp, exc)})
    )
    for msg_id in [*ids[:3], "ffffffffffffffff"]:
        batch.add(service.users().messages().get(userId="me", id=msg_id), request_id=msg_id)
    batch.execute()

    assert results[ids[0]][1] is None and results[ids[2]][1] is None
    throttled = results[ids[1]][1]
    assert isinstance(throttled, HttpError) and throttled.status_code == 429
    assert throttled.resp["retry-after"] == "3"
    assert throttled.error_details[0]["reason"] == "rateLimitExceeded"
    assert results["ffffffffffffffff"][1].status_code == 404


def test_batch_parts_with_expired_token_are_refreshed_and_resent(fake: FakeGmail) -> None:
    ids = fake.populate(USER, 4)
    service = gmail_service(fake)
    service.users().getProfile(userId="me").execute()
    fake.expire_access_tokens(USER)
    results: dict[str, Any] = {}
    batch = BatchHttpRequest(
        batch_uri=fake.batch_uri, callback=lambda rid, resp, exc: results.update({rid: exc or resp})
    )
    for msg_id in ids:
        batch.add(service.users().messages().get(userId="me", id=msg_id, format="minimal"), request_id=msg_id)
    batch.execute()

    assert {rid: r["id"] for rid, r in results.items()} == {i: i for i in ids}
    assert [r.status for r in fake.requests if r.via_batch] == [401] * 4 + [200] * 4
    assert fake.request_count("/batch/gmail/v1") == 2
    assert sum(1 for r in fake.requests if r.path == "/token") == 2


def test_batch_over_gmail_limit_is_rejected(fake: FakeGmail) -> None:
    msg_id = fake.add_message(USER)
    service = gmail_service(fake)
    batch = BatchHttpRequest(batch_uri=fake.batch_uri)
    for n in range(BATCH_LIMIT + 1):
        batch.add(service.users().messages().get(userId="me", id=msg_id), request_id=str(n))
    with pytest.raises(HttpError) as rejected:
        batch.execute()
    assert rejected.value.status_code == 400
    assert not [r for r in fake.requests if r.via_batch]


def test_history_shows_adds_deletes_and_label_changes(fake: FakeGmail) -> None:
    ids = fake.populate(USER, 3)
    service = gmail_service(fake)
    start = service.users().getProfile(userId="me").execute()["historyId"]

    new_id = fake.add_message(USER, subject="fresh", label_ids=["INBOX", "UNREAD"])
    fake.delete_message(USER, ids[0])
    fake.modify_labels(USER, ids[1], add=["STARRED"], remove=["INBOX"])
    fake.modify_labels(USER, ids[1], add=["STARRED"])  # no change, no record

    history = service.users().history().list(userId="me", startHistoryId=start).execute()
    assert history["historyId"] == str(fake.history_id(USER))
    records = history["history"]
    assert [int(r["id"]) for r in records] == list(range(int(start) + 1, int(start) + 4))
    assert records[0]["messagesAdded"][0]["message"] == {
        "id": new_id,
        "threadId": new_id,
        "labelIds": ["INBOX", "UNREAD"],
    }
    assert records[1]["messagesDeleted"][0]["message"]["id"] == ids[0]
    assert records[2]["labelsAdded"] == [{"message": records[2]["labelsAdded"][0]["message"], "labelIds": ["STARRED"]}]
    assert records[2]["labelsRemoved"][0]["labelIds"] == ["INBOX"]
    assert [m["id"] for m in records[2]["messages"]] == [ids[1]]

    only_deleted = (
        service.users().history().list(userId="me", startHistoryId=start, historyTypes=["messageDeleted"]).execute()
    )
    assert [list(r) for r in only_deleted["history"]] == [["id", "messages", "messagesDeleted"]]

    pages, request = [], service.users().history().list(userId="me", startHistoryId=start, maxResults=1)
    while request is not None:
        response = request.execute()
        pages.append([r["id"] for r in response["history"]])
        request = service.users().history().list_next(request, response)
    assert pages == [[r["id"] for r in records[i : i + 1]] for i in range(3)]

    caught_up = service.users().history().list(userId="me", startHistoryId=history["historyId"]).execute()
    assert caught_up == {"historyId": history["historyId"]}  # no "history" key when nothing changed
    with pytest.raises(HttpError) as gone:
        service.users().messages().get(userId="me", id=ids[0]).execute()
    assert gone.value.status_code == 404


def test_expired_history_gives_404(fake: FakeGmail) -> None:
    fake.populate(USER, 2)
    service = gmail_service(fake)
    start = service.users().getProfile(userId="me").execute()["historyId"]
    fake.add_message(USER)
    fake.expire_history(USER)

    with pytest.raises(HttpError) as expired:
        service.users().history().list(userId="me", startHistoryId=start).execute()
    assert expired.value.status_code == 404
    assert expired.value.error_details[0]["reason"] == "notFound"
    current = service.users().getProfile(userId="me").execute()["historyId"]
    assert service.users().history().list(userId="me", startHistoryId=current).execute() == {"historyId": current}


def test_throttling_carries_retry_after(fake: FakeGmail) -> None:
    fake.populate(USER, 2)
    service = gmail_service(fake)
    fake.fail_next(1, status=429, retry_after=2, path_prefix="/gmail/v1/users/me/messages")

    with pytest.raises(HttpError) as throttled:
        service.users().messages().list(userId="me").execute()
    assert throttled.value.status_code == 429
    assert throttled.value.resp["retry-after"] == "2"
    assert json.loads(throttled.value.content)["error"]["status"] == "RESOURCE_EXHAUSTED"
    assert len(service.users().messages().list(userId="me").execute()["messages"]) == 2

    fake.fail_next(2, status=503)
    for _ in range(2):
        with pytest.raises(HttpError) as unavailable:
            service.users().getProfile(userId="me").execute()
        assert unavailable.value.status_code == 503
    assert [r.status for r in fake.requests if r.path.startswith("/gmail")][-4:] == [429, 200, 503, 503]


def test_honouring_retry_after_is_visible_in_request_timestamps(fake: FakeGmail) -> None:
    fake.add_message(USER)
    service = gmail_service(fake)
    service.users().getProfile(userId="me").execute()
    fake.fail_next(1, status=429, retry_after=1, path_prefix="/gmail/v1/users/me/messages")

    for _ in range(3):  # what a client that honours Retry-After does
        try:
            service.users().messages().list(userId="me").execute()
            break
        except HttpError as err:
            time.sleep(float(err.resp["retry-after"]))
    first, second = [r for r in fake.requests if r.path == "/gmail/v1/users/me/messages"]
    assert (first.status, second.status) == (429, 200)
    assert second.at - first.at >= 1.0


def test_quota_units_per_user_and_rate_limit(fake: FakeGmail) -> None:
    msg_id = fake.add_message(USER)
    service = gmail_service(fake)
    service.users().getProfile(userId="me").execute()
    service.users().messages().list(userId="me").execute()
    service.users().messages().get(userId="me", id=msg_id).execute()
    service.users().history().list(userId="me", startHistoryId=fake.history_id(USER)).execute()
    assert fake.quota_units(USER) == 1 + 5 + 5 + 2

    fake.quota_per_second = 12
    with pytest.raises(HttpError) as limited:
        service.users().messages().get(userId="me", id=msg_id).execute()
    assert limited.value.status_code == 429 and limited.value.resp["retry-after"] == "1"
    assert fake.quota_units(USER) == 13  # rejected calls cost nothing

    other = "grace@example.com"
    other_id = fake.add_message(other)
    other_service = gmail_service(fake, credentials(fake, fake.issue_refresh_token(other)))
    for _ in range(2):
        other_service.users().messages().get(userId="me", id=other_id).execute()
    with pytest.raises(HttpError) as other_limited:
        other_service.users().messages().get(userId="me", id=other_id).execute()
    assert other_limited.value.status_code == 429
    assert fake.quota_units(other, window=1.0) == 10


def test_expired_access_token_is_refreshed_transparently(fake: FakeGmail) -> None:
    fake.add_message(USER)
    creds = credentials(fake)
    service = gmail_service(fake, creds)
    service.users().getProfile(userId="me").execute()
    first_token = creds.token
    fake.expire_access_tokens(USER)  # server-side expiry that google-auth cannot foresee

    assert service.users().getProfile(userId="me").execute()["emailAddress"] == USER
    assert creds.token != first_token
    assert [(r.path, r.status) for r in fake.requests][-3:] == [
        ("/gmail/v1/users/me/profile", 401),
        ("/token", 200),
        ("/gmail/v1/users/me/profile", 200),
    ]


def test_short_lived_tokens_are_refreshed_before_every_call(fake: FakeGmail) -> None:
    # google-auth treats a token as expired once less than its refresh threshold (minutes)
    # remains, so a short expires_in means a refresh ahead of each request, not a 401.
    fake.access_token_lifetime = 30
    service = gmail_service(fake)
    for _ in range(3):
        service.users().getProfile(userId="me").execute()
    assert [r.path for r in fake.requests] == ["/token", "/gmail/v1/users/me/profile"] * 3


def test_revoked_grant_raises_refresh_error(fake: FakeGmail) -> None:
    creds = credentials(fake)
    creds.refresh(GoogleAuthRequest(session=_loopback_session()))
    fake.revoke(USER)

    with pytest.raises(google.auth.exceptions.RefreshError) as revoked:
        creds.refresh(GoogleAuthRequest(session=_loopback_session()))
    assert "invalid_grant" in str(revoked.value)
    assert revoked.value.args[1]["error"] == "invalid_grant"
    assert not revoked.value.retryable

    service = gmail_service(fake, creds)  # the old access token is dead too: 401, refresh, invalid_grant
    with pytest.raises(google.auth.exceptions.RefreshError):
        service.users().getProfile(userId="me").execute()


def test_revocation_endpoint_and_labels(fake: FakeGmail) -> None:
    fake.add_message(USER, label_ids=["INBOX", "Label_42"])
    creds = credentials(fake)
    service = gmail_service(fake, creds)
    labels = service.users().labels().list(userId="me").execute()["labels"]
    assert {"id": "Label_42", "name": "Label_42", "type": "user"} in labels
    assert {"id": "INBOX", "name": "INBOX", "type": "system"} in labels

    assert _loopback_session().post(fake.base_url + "/revoke", params={"token": creds.refresh_token}).ok
    with pytest.raises(google.auth.exceptions.RefreshError, match="invalid_grant"):
        creds.refresh(GoogleAuthRequest(session=_loopback_session()))


def test_token_endpoint_5xx_is_retried_by_google_auth(fake: FakeGmail) -> None:
    creds = credentials(fake)
    fake.fail_next(1, status=503, path_prefix="/token")
    creds.refresh(google_auth_httplib2.Request(httplib2.Http()))
    assert creds.valid
    assert [r.status for r in fake.requests if r.path == "/token"] == [503, 200]


def test_truncated_response_and_delay(fake: FakeGmail) -> None:
    fake.populate(USER, 20)
    service = gmail_service(fake)
    service.users().getProfile(userId="me").execute()

    fake.truncate_next(1, path_prefix="/gmail/v1/users/me/messages")
    with pytest.raises(http.client.IncompleteRead):  # googleapiclient's num_retries does not cover this
        service.users().messages().list(userId="me").execute(num_retries=3)
    assert len(service.users().messages().list(userId="me").execute()["messages"]) == 20

    fake.delay(0.3, n=1, path_prefix="/gmail/v1/users/me/profile")
    started = time.monotonic()
    service.users().getProfile(userId="me").execute()
    assert time.monotonic() - started >= 0.3


@pytest.mark.asyncio
async def test_aiohttp_client_in_the_same_process(fake: FakeGmail) -> None:
    fake.add_message(USER, subject="from asyncio")
    verifier, challenge = pkce_pair()
    code = fake.issue_code(USER, code_challenge=challenge)
    async with aiohttp.ClientSession() as session:
        async with session.post(
            fake.token_uri,
            data={
                "grant_type": "authorization_code",
                "code": code,
                "code_verifier": verifier,
                "client_id": fake.client_id,
                "client_secret": fake.client_secret,
            },
        ) as resp:
            tokens = await resp.json()
        headers = {"Authorization": f"Bearer {tokens['access_token']}"}
        async with session.get(fake.base_url + "/gmail/v1/users/me/messages", headers=headers) as resp:
            listed = await resp.json()
        async with session.get(fake.base_url + "/gmail/v1/users/me/profile") as resp:
            assert resp.status == 401
            assert (await resp.json())["error"]["status"] == "UNAUTHENTICATED"
            assert "invalid_token" in resp.headers["WWW-Authenticate"]
    assert [m["id"] for m in listed["messages"]] == [m["id"] for m in fake.messages(USER)]


def test_runs_as_its_own_process() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "brain.testing.fakes.gmail", "--port", "0", "--user", USER, "--populate", "7"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        base_url = proc.stdout.readline().strip()
        info = dict(line.split(" ", 1) for line in (proc.stdout.readline().strip() for _ in range(3)))
        assert base_url.startswith("http://127.0.0.1:")
        refresh_token = info["refresh_token"].split(" ", 1)[1]

        control_call(base_url, "add_message", USER, subject="via control")
        creds = Credentials(
            token=None,
            refresh_token=refresh_token,
            token_uri=base_url + "/token",
            client_id=info["client_id"],
            client_secret=info["client_secret"],
        )
        service = build(
            "gmail",
            "v1",
            credentials=creds,
            static_discovery=True,
            cache_discovery=False,
            client_options={"api_endpoint": base_url},
        )
        assert service.users().getProfile(userId="me").execute()["messagesTotal"] == 8
        assert control_call(base_url, "request_count", "/gmail/v1") == 1
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0


def _loopback_session() -> requests.Session:
    session = requests.Session()
    session.trust_env = False
    return session

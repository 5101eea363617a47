"""Mail sync end to end: the real `brain serve` process (auth, API, user stores, embedded NATS)
syncing from the local fake Gmail (google-api-python-client + google-auth inside brain) and the
fake Microsoft identity platform + Graph over https (msal + requests inside brain).

Each test signs up real users, connects accounts over HTTP and checks what lands in the user's
store (`GET /events`) and on JetStream.
"""

from __future__ import annotations

import asyncio
import datetime
import os
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import jsonschema
import nats
import pytest
import requests

from brain.testing.fakes.gmail import FakeGmail
from brain.testing.fakes.microsoft import WELL_KNOWN_FOLDERS, FakeMicrosoft
from brain.testing.fakes.tls import tls_files
from tests.support import REPO, BrainServer, wait_until
from tests.test_auth_helpers import new_user
from tests.test_mail_engine import gmail_settings, gmail_view, message_view, replay_mailbox
from tests.test_plugins import SAMPLE_DIST

GMAIL_USER = "ada@example.com"
MS_USER = "grace@contoso.example"


@pytest.fixture
def gmail() -> Iterator[FakeGmail]:
    yield from FakeGmail.running()


@pytest.fixture
def microsoft() -> Iterator[FakeMicrosoft]:
    yield from FakeMicrosoft.running()


def mail_config(
    gmail: FakeGmail | None = None, microsoft: FakeMicrosoft | None = None, *, page_size: int = 50
) -> dict[str, Any]:
    plugins: dict[str, Any] = {}
    if gmail is not None:
        plugins["gmail"] = gmail_settings(gmail, auth_uri=gmail.base_url + "/o/oauth2/auth", page_size=page_size)
    if microsoft is not None:
        plugins["outlook"] = {
            "client_id": microsoft.client_id,
            "client_secret": microsoft.client_secret,
            "tenant": microsoft.tenant_id,
            "authority_host": microsoft.base_url,
            "graph_base_url": microsoft.graph_url,
            "ca_bundle": microsoft.ca_path,
            "page_size": page_size,
        }
    return {"mail": {"sync_interval_seconds": 0.5, "retry_base_seconds": 0.2}, "plugins": plugins}


class Client:
    """One signed-up user talking to the API role."""

    def __init__(self, server: BrainServer) -> None:
        self.server = server
        body = new_user(server)
        self.user_id = body["user"]["id"]
        self.headers = {"Authorization": f"Bearer {body['jwt']}"}

    def post(self, path: str, body: Any) -> requests.Response:
        return requests.post(self.server.api_url + path, json=body, headers=self.headers, timeout=30)

    def get(self, path: str, **params: Any) -> requests.Response:
        # Just after a (re)start the API answers 503 until it has loaded the issuer's keys.
        deadline = time.monotonic() + 15
        while True:
            r = requests.get(self.server.api_url + path, params=params, headers=self.headers, timeout=30)
            if r.status_code != 503 or time.monotonic() > deadline:
                return r
            time.sleep(0.1)

    def connect(self, provider: str, refresh_token: str) -> dict[str, Any]:
        r = self.post("/mail/connect", {"provider": provider, "refresh_token": refresh_token})
        assert r.status_code in (200, 201), r.text
        return r.json()["account"]

    def accounts(self) -> dict[str, dict[str, Any]]:
        r = self.get("/mail/status")
        assert r.status_code == 200, r.text
        return {a["account"]: a for a in r.json()["accounts"]}

    def wait_state(self, account: str, state: str, timeout: float = 30) -> dict[str, Any]:
        def reached() -> dict[str, Any] | None:
            status = self.accounts()[account]
            return status if status["state"] == state else None

        return wait_until(reached, timeout=timeout, interval=0.1, what=f"account {account} to be {state}")

    def events(self, type: str | None = None) -> list[dict[str, Any]]:  # noqa: A002
        """Every stored event (of a type), oldest first, paging through `GET /events`."""
        out: list[dict[str, Any]] = []
        params: dict[str, Any] = {"limit": 1000}
        if type:
            params["type"] = type
        while True:
            r = self.get("/events", **params)
            assert r.status_code == 200, r.text
            body = r.json()
            out += body["events"]
            if not body.get("next_cursor"):
                return sorted(out, key=lambda e: e["id"])
            params["cursor"] = body["next_cursor"]

    def mailbox(self) -> dict[str, list[str]]:
        """The mailbox as the stored events tell it."""
        return replay_mailbox(self.events())

    def assert_events_follow_the_openapi_schemas(self) -> None:
        """Every stored mail event's data validates against its schema in /openapi.json."""
        schemas = requests.get(self.server.api_url + "/openapi.json", timeout=10).json()["components"]["schemas"]
        events = [e for e in self.events() if e["type"].startswith("mail.")]
        assert events
        for event in events:
            jsonschema.Draft202012Validator(schemas[event["type"]]).validate(event["data"])

    def jetstream_counts(self) -> Counter[str]:
        """Messages on JetStream per event type for this user."""
        nats_url = self.server.nats_url()

        async def counts() -> dict[str, int]:
            nc = await nats.connect(nats_url, allow_reconnect=False, connect_timeout=5)
            try:
                info = await nc.jetstream().stream_info("BRAIN_EVENTS", subjects_filter=f"brain.events.{self.user_id}.>")
                return dict(info.state.subjects or {})
            finally:
                await nc.close()

        prefix = f"brain.events.{self.user_id}."
        return Counter({subject.removeprefix(prefix): n for subject, n in asyncio.run(counts()).items()})


def gmail_mailbox(fake: FakeGmail, user: str = GMAIL_USER) -> dict[str, list[str]]:
    """The Gmail mailbox as replay_mailbox shows a synced one (spam and trash left out)."""
    return {m["id"]: gmail_view(m["labelIds"]) for m in fake.messages(user) if not {"SPAM", "TRASH"} & set(m["labelIds"])}


def outlook_mailbox(fake: FakeMicrosoft, user: str = MS_USER) -> dict[str, list[str]]:
    """The Outlook mailbox as replay_mailbox shows a synced one (Junk Email, Deleted Items left out)."""
    names = {fake.folder_id(user, wk): name for wk, name in WELL_KNOWN_FOLDERS.items()}
    left_out = {fake.folder_id(user, "junkemail"), fake.folder_id(user, "deleteditems")}
    return {
        m["id"]: message_view(
            [names[m["parentFolderId"]]], m["categories"],
            {"read": m["isRead"], "starred": m["flag"]["flagStatus"] == "flagged", "important": m["importance"] == "high"},
        )
        for m in fake.messages(user)
        if m["parentFolderId"] not in left_out
    }


def test_gmail_sync_lands_in_the_store_and_on_jetstream(tmp_path: Path, gmail: FakeGmail) -> None:
    ids = gmail.populate(GMAIL_USER, 260)
    with BrainServer(tmp_path / "brain", config=mail_config(gmail)) as server:
        alice = Client(server)
        account = alice.connect("gmail", gmail.issue_refresh_token(GMAIL_USER))
        assert account["state"] == "syncing" and account["address"] == GMAIL_USER

        status = alice.wait_state(account["account"], "idle")
        assert status["messages_synced"] == 260
        assert status["initial_sync"] == {"complete": True, "done": 260, "estimated_total": 260}
        assert status["last_sync_at"] and status["last_error"] is None
        received = alice.events("mail.message.received")
        assert len(received) == 260
        assert {e["data"]["message_id"] for e in received} == set(ids)
        assert alice.mailbox() == gmail_mailbox(gmail)
        wait_until(lambda: alice.jetstream_counts() == {"mail.message.received": 260}, timeout=20, what="JetStream")

        # Incremental: a new message, a label change, a deletion.
        new_id = gmail.add_message(GMAIL_USER, subject="fresh off the press")
        gmail.modify_labels(GMAIL_USER, ids[0], add=["STARRED"])
        gmail.delete_message(GMAIL_USER, ids[1])
        wait_until(lambda: alice.mailbox() == gmail_mailbox(gmail), timeout=15, what="incremental sync")
        counts = Counter(e["type"] for e in alice.events())
        assert counts == {"mail.message.received": 261, "mail.message.updated": 1, "mail.message.deleted": 1}
        assert any(e["data"]["message_id"] == new_id for e in alice.events("mail.message.received"))
        wait_until(lambda: alice.jetstream_counts() == counts, timeout=20, what="JetStream to catch up")
        alice.assert_events_follow_the_openapi_schemas()

        # Another user sees none of it.
        bob = Client(server)
        assert bob.accounts() == {} and bob.events() == []
        assert bob.post("/mail/disconnect", {"account": account["account"]}).status_code == 404


def test_gmail_expired_history_resyncs_to_match_the_mailbox(tmp_path: Path, gmail: FakeGmail) -> None:
    ids = gmail.populate(GMAIL_USER, 120)
    with BrainServer(tmp_path / "brain", config=mail_config(gmail)) as server:
        alice = Client(server)
        account = alice.connect("gmail", gmail.issue_refresh_token(GMAIL_USER))["account"]
        alice.wait_state(account, "idle")
        with gmail.lock:  # one atomic change set, then history expires before the next poll
            for mid in ids[:7]:
                gmail.delete_message(GMAIL_USER, mid)
            gmail.modify_labels(GMAIL_USER, ids[10], add=["IMPORTANT"], remove=["INBOX"])
            gmail.add_message(GMAIL_USER, subject="during the gap")
            gmail.expire_history(GMAIL_USER)

        wait_until(lambda: alice.mailbox() == gmail_mailbox(gmail), timeout=20, what="resync to match")
        assert "full resync" in server.log_text()
        events = alice.events()
        received = [e["data"]["message_id"] for e in events if e["type"] == "mail.message.received"]
        assert len(received) == len(set(received)) == 121  # no duplicates from the resync
        deleted = {e["data"]["message_id"] for e in events if e["type"] == "mail.message.deleted"}
        assert deleted == set(ids[:7])
        assert alice.accounts()[account]["messages_synced"] == 114


def browser(ca: str | None = None) -> requests.Session:
    """A browser: a cookie jar of its own, following redirects."""
    session = requests.Session()
    session.trust_env = False
    if ca is not None:
        session.verify = ca
    return session


def open_connect_link(chrome: requests.Session, url: str) -> str:
    """The browser opens brain's connect link; the provider's consent page it is sent on to."""
    r = chrome.get(url, allow_redirects=False, timeout=30)
    assert r.status_code == 302, r.text
    return r.headers["Location"]


def outcome(r: requests.Response, server: BrainServer) -> dict[str, str]:
    """Where an OAuth flow left the browser: brain's result page, and what its query says."""
    assert r.status_code == 200 and r.url.startswith(f"{server.api_url}/mail/oauth/result?"), (r.url, r.text)
    assert r.headers["Content-Type"].startswith("text/html")
    return {k: v[0] for k, v in parse_qs(urlsplit(r.url).query).items()}


def flow_cookies(chrome: requests.Session) -> list[str]:
    return [c.name for c in chrome.cookies if "brain-mail-flow-" in c.name]


def test_gmail_oauth_flow_through_the_connect_link_with_pkce(tmp_path: Path, gmail: FakeGmail) -> None:
    gmail.populate(GMAIL_USER, 5)
    with BrainServer(tmp_path / "brain", config=mail_config(gmail)) as server:
        alice, bob = Client(server), Client(server)
        r = alice.post("/mail/connect", {"provider": "gmail"})
        assert r.status_code == 200, r.text
        flow = r.json()
        callback = f"{server.api_url}/mail/oauth/callback"
        assert flow["authorize_url"] == f"{server.api_url}/mail/oauth/start?{urlencode({'flow': flow['state']})}"
        assert flow["redirect_uri"] == callback and flow["start_by"].endswith("Z")

        # Alice's browser opens the connect link: a cookie binds the flow to it, then Google.
        chrome = browser()
        r = chrome.get(flow["authorize_url"], allow_redirects=False, timeout=30)
        assert r.status_code == 302 and r.headers["Cache-Control"] == "no-store"
        cookie = r.headers["Set-Cookie"]
        assert cookie.startswith("brain-mail-flow-") and "Secure" not in cookie  # plain http here
        assert {"HttpOnly", "SameSite=Lax", "Path=/mail/oauth/callback", "Max-Age=600"} <= {
            part.strip() for part in cookie.split(";")
        }
        consent = urlsplit(r.headers["Location"])
        query = {k: v[0] for k, v in parse_qs(consent.query).items()}
        assert f"{consent.scheme}://{consent.netloc}{consent.path}" == gmail.base_url + "/o/oauth2/auth"
        assert query["state"] == flow["state"] and query["client_id"] == gmail.client_id
        assert query["redirect_uri"] == callback and "gmail.readonly" in query["scope"]
        assert query["access_type"] == "offline" and query["prompt"] == "consent"
        assert query["code_challenge_method"] == "S256" and len(query["code_challenge"]) == 43

        # Alice consents; Google sends the browser back to brain, which redeems the code (the
        # fake insists on the PKCE verifier) and sends the browser on to the result page.
        done = chrome.get(r.headers["Location"], timeout=30)
        result = outcome(done, server)
        assert result["status"] == "connected" and result["provider"] == "gmail" and result["reconnected"] == "false"
        assert "Mailbox connected" in done.text and flow_cookies(chrome) == []  # the cookie is cleared
        assert list(alice.accounts()) == [result["account"]] and bob.accounts() == {}
        alice.wait_state(result["account"], "idle")
        assert len(alice.events("mail.message.received")) == 5

        # Replaying the callback connects nothing more; the connect link works only once.
        callback_url = done.history[-1].url
        assert callback_url.startswith(callback + "?")
        assert outcome(chrome.get(callback_url, timeout=30), server)["code"] == "INVALID_STATE"
        assert outcome(browser().get(flow["authorize_url"], timeout=30), server)["code"] == "INVALID_STATE"
        # Forged, truncated or missing states and codes, and a declined consent.
        other = alice.post("/mail/connect", {"provider": "gmail"}).json()
        payload, mac = other["state"].split(".")
        for bad in (f"{payload}.{mac[::-1]}", payload, "x.y"):
            r = chrome.get(callback, params={"state": bad, "code": "c"}, timeout=30)
            assert outcome(r, server)["code"] == "INVALID_STATE", r.url
            r = chrome.get(f"{server.api_url}/mail/oauth/start", params={"flow": bad}, timeout=30)
            assert outcome(r, server)["code"] == "INVALID_STATE", r.url
        missing = outcome(chrome.get(callback, params={"state": other["state"]}, timeout=30), server)
        assert missing["status"] == "error" and "code" in missing["message"]
        denied = chrome.get(callback, params={"error": "access_denied", "state": other["state"]}, timeout=30)
        assert outcome(denied, server)["code"] == "OAUTH_DENIED"

        # A front end taking the redirect itself forwards code and state with its bearer token:
        # only the flow's own user may, and the answers are JSON.
        mine = alice.post("/mail/connect", {"provider": "gmail"}).json()
        back = chrome.get(open_connect_link(chrome, mine["authorize_url"]), allow_redirects=False, timeout=30)
        forwarded = {k: v[0] for k, v in parse_qs(urlsplit(back.headers["Location"]).query).items()}
        r = requests.get(callback, params=forwarded, headers=bob.headers, timeout=30)
        assert r.status_code == 403 and r.json()["code"] == "STATE_USER_MISMATCH"
        r = requests.get(callback, params=forwarded, headers=alice.headers, timeout=30)
        assert r.status_code == 200 and r.json()["account"]["account"] == result["account"]  # a reconnect
        # A refused code connects nothing.
        r = requests.get(callback, params={"state": other["state"], "code": "4/0Anot-a-code"}, headers=alice.headers,
                         timeout=30)
        assert r.status_code == 400 and r.json()["code"] == "PROVIDER_AUTH_FAILED"
        assert len(alice.accounts()) == 1


def test_the_oauth_flow_ends_on_the_apps_own_page_when_one_is_configured(tmp_path: Path, gmail: FakeGmail) -> None:
    """A browser app on another origin gets its user back, with the outcome, success or not."""
    gmail.populate(GMAIL_USER, 1)
    config = mail_config(gmail)
    config["mail"]["app_redirect_url"] = "https://app.example/settings/mail?tab=accounts"
    with BrainServer(tmp_path / "brain", config=config) as server:
        alice = Client(server)
        flow = alice.post("/mail/connect", {"provider": "gmail"}).json()
        chrome = browser()
        back = chrome.get(open_connect_link(chrome, flow["authorize_url"]), allow_redirects=False, timeout=30)
        assert back.status_code == 302 and back.headers["Location"].startswith(f"{server.api_url}/mail/oauth/callback?")
        done = chrome.get(back.headers["Location"], allow_redirects=False, timeout=30)
        assert done.status_code == 302, done.text
        app = urlsplit(done.headers["Location"])
        assert (app.scheme, app.netloc, app.path) == ("https", "app.example", "/settings/mail")
        query = parse_qs(app.query)
        assert query["tab"] == ["accounts"] and query["status"] == ["connected"] and query["provider"] == ["gmail"]
        assert list(alice.accounts()) == query["account"]
        # A refused flow ends on the app's page too, saying why.
        r = chrome.get(f"{server.api_url}/mail/oauth/callback", params={"state": "x.y", "code": "c"},
                       allow_redirects=False, timeout=30)
        refused = urlsplit(r.headers["Location"])
        assert r.status_code == 302 and refused.netloc == "app.example"
        assert parse_qs(refused.query)["status"] == ["error"] and parse_qs(refused.query)["code"] == ["INVALID_STATE"]


def test_an_authorize_link_finished_in_another_browser_connects_nothing(tmp_path: Path, gmail: FakeGmail) -> None:
    """Mallory starts a flow and has the victim consent: the victim's mailbox is not hers."""
    victim_mailbox, mallory_mailbox = "victim@example.com", "mallory@example.com"
    gmail.populate(victim_mailbox, 3)
    gmail.add_mailbox(mallory_mailbox)
    config = mail_config(gmail)
    # Short, so the last step's wait is short; long enough for the steps before it on a loaded
    # machine (at 3 s, a run at load 9 found the first link expired before it was opened).
    config["mail"]["oauth_start_ttl_seconds"] = 8
    with BrainServer(tmp_path / "brain", config=config) as server:
        mallory, victim = Client(server), Client(server)
        flow = mallory.post("/mail/connect", {"provider": "gmail"}).json()
        unopened = mallory.post("/mail/connect", {"provider": "gmail"}).json()
        mallorys_browser, victims_browser = browser(), browser()
        consent = open_connect_link(mallorys_browser, flow["authorize_url"])

        # Mallory sends Google's consent page to the victim, who is signed in there and consents.
        gmail.login_as = victim_mailbox
        refused = outcome(victims_browser.get(consent, timeout=30), server)
        assert refused["status"] == "error" and refused["code"] == "FLOW_NOT_BOUND"
        assert "not started in this browser" in refused["message"]
        # Nor does a browser holding a flow cookie of its own (the victim's own flow) finish hers.
        own = victim.post("/mail/connect", {"provider": "gmail"}).json()
        open_connect_link(victims_browser, own["authorize_url"])
        assert outcome(victims_browser.get(consent, timeout=30), server)["code"] == "FLOW_NOT_BOUND"
        # Nor the connect link itself, once opened by the browser that started the flow.
        assert outcome(victims_browser.get(flow["authorize_url"], timeout=30), server)["code"] == "FLOW_ALREADY_STARTED"
        assert mallory.accounts() == {} and victim.accounts() == {}

        # The refusals did not use the flow up: the browser it is bound to still finishes it.
        gmail.login_as = mallory_mailbox
        assert outcome(mallorys_browser.get(consent, timeout=30), server)["status"] == "connected"
        assert [a["address"] for a in mallory.accounts().values()] == [mallory_mailbox] and victim.accounts() == {}

        # A connect link nobody opened in time ([mail] oauth_start_ttl_seconds) binds nobody later.
        wait_until(lambda: datetime_of(unopened["start_by"]) < time.time(), timeout=20, what="the start deadline")
        late = outcome(victims_browser.get(unopened["authorize_url"], timeout=30), server)
        assert late["code"] == "INVALID_STATE" and "too old" in late["message"]


def datetime_of(iso: str) -> float:
    return datetime.datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def test_flow_cookie_is_host_prefixed_and_secure_over_https(
    tmp_path: Path, gmail: FakeGmail, monkeypatch: pytest.MonkeyPatch
) -> None:
    gmail.populate(GMAIL_USER, 2)
    files = tls_files()
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(files.ca_path))  # the Client's plain requests calls
    config = mail_config(gmail)
    config["server"] = {"tls_cert": str(files.cert_path), "tls_key": str(files.key_path)}
    with BrainServer(tmp_path / "brain", config=config, ca=files.ca_path) as server:
        alice = Client(server)
        flow = alice.post("/mail/connect", {"provider": "gmail"}).json()
        assert flow["authorize_url"].startswith(f"https://127.0.0.1:{server.api_port}/mail/oauth/start?")
        chrome = browser(str(files.ca_path))
        r = chrome.get(flow["authorize_url"], allow_redirects=False, timeout=30)
        assert r.status_code == 302, r.text
        name, _, attributes = r.headers["Set-Cookie"].partition(";")
        assert name.startswith("__Host-brain-mail-flow-")
        parts = {part.strip() for part in attributes.split(";")}
        assert {"Secure", "HttpOnly", "SameSite=Lax", "Path=/"} <= parts and not any(p.startswith("Domain") for p in parts)
        result = outcome(chrome.get(r.headers["Location"], timeout=30), server)
        assert result["status"] == "connected" and flow_cookies(chrome) == []
        assert list(alice.accounts()) == [result["account"]]


def test_connect_rejects_bad_input(tmp_path: Path, gmail: FakeGmail) -> None:
    with BrainServer(tmp_path / "brain", config=mail_config(gmail)) as server:
        alice = Client(server)
        cases = [
            ({}, "provider is required"),
            ({"provider": "yahoo"}, "unknown provider 'yahoo'"),
            ({"provider": 7}, "unknown provider 7"),
            ({"provider": "gmail", "refresh_token": ""}, "refresh_token"),
            ({"provider": "gmail", "refresh_token": ["x"]}, "refresh_token"),
            ([], "JSON object"),
        ]
        for body, needle in cases:
            r = alice.post("/mail/connect", body)
            assert r.status_code == 400, (body, r.text)
            assert needle in r.json()["message"], (body, r.json())
        r = alice.post("/mail/connect", {"provider": "gmail", "refresh_token": "1//0gnot-issued"})
        assert r.status_code == 400 and r.json()["code"] == "PROVIDER_AUTH_FAILED"
        assert alice.accounts() == {}
        for body, status in (({}, 400), ({"account": 5}, 400), ({"account": "nope"}, 404)):
            assert alice.post("/mail/disconnect", body).status_code == status
        for method, path in (("post", "/mail/connect"), ("get", "/mail/status"), ("post", "/mail/disconnect")):
            r = getattr(requests, method)(server.api_url + path, json={}, timeout=10)
            assert r.status_code == 401 and "invalid_token" in r.headers["WWW-Authenticate"]


def test_invalid_grant_needs_reauth_then_reconnect_resumes(tmp_path: Path, gmail: FakeGmail) -> None:
    gmail.populate(GMAIL_USER, 30)
    server = BrainServer(tmp_path / "brain", config=mail_config(gmail))
    with server:
        alice = Client(server)
        account = alice.connect("gmail", gmail.issue_refresh_token(GMAIL_USER))["account"]
        alice.wait_state(account, "idle")
        gmail.revoke(GMAIL_USER)
        status = alice.wait_state(account, "needs_reauth", timeout=15)
        assert "invalid_grant" in status["last_error"]
    gmail.clear_requests()
    with server:  # a restart does not resume an account that needs re-authorisation
        alice.wait_state(account, "needs_reauth")
        time.sleep(1)  # two sync intervals
        assert alice.accounts()[account]["state"] == "needs_reauth"
        assert gmail.request_count("/gmail") == 0 and gmail.request_count("/token") == 0
        gmail.add_message(GMAIL_USER, subject="while away")
        again = alice.connect("gmail", gmail.issue_refresh_token(GMAIL_USER))
        assert again["account"] == account  # the same account, its cursor and index kept
        wait_until(lambda: len(alice.events("mail.message.received")) == 31, timeout=15)
        assert alice.wait_state(account, "idle")["messages_synced"] == 31
        # It went on from its cursor (history), not through a second full listing.
        assert not [r for r in gmail.requests if r.path == "/gmail/v1/users/me/messages"]


def test_kill_mid_initial_sync_resumes_without_duplicates(tmp_path: Path, gmail: FakeGmail) -> None:
    ids = gmail.populate(GMAIL_USER, 300)
    gmail.delay(0.15, path_prefix="/batch")  # slow enough to be killed half way
    server = BrainServer(tmp_path / "brain", config=mail_config(gmail, page_size=25))
    with server:
        alice = Client(server)
        account = alice.connect("gmail", gmail.issue_refresh_token(GMAIL_USER))["account"]
        wait_until(
            lambda: alice.accounts()[account]["initial_sync"]["done"] >= 75, timeout=30, what="a quarter synced"
        )
        server.kill()  # kill -9: no shutdown, no flush
        listed_before = len([r for r in gmail.requests if r.path == "/gmail/v1/users/me/messages"])
        gmail.clear_faults()
        server.start()
        status = alice.wait_state(account, "idle", timeout=60)
        assert status["messages_synced"] == 300 and status["initial_sync"]["done"] >= 300

        received = [e["data"]["message_id"] for e in alice.events("mail.message.received")]
        assert len(received) == 300 and set(received) == set(ids)
        # It resumed from its checkpoint: the first listing after the restart had a page token.
        listings = [r for r in gmail.requests if r.path == "/gmail/v1/users/me/messages"]
        assert listings[listed_before].query.get("pageToken")
        assert len(listings) <= 300 // 25 + 2
        wait_until(lambda: alice.jetstream_counts() == {"mail.message.received": 300}, timeout=30, what="JetStream")


def test_disconnect_stops_sync_and_keeps_the_events(tmp_path: Path, gmail: FakeGmail) -> None:
    gmail.populate(GMAIL_USER, 10)
    with BrainServer(tmp_path / "brain", config=mail_config(gmail)) as server:
        alice = Client(server)
        account = alice.connect("gmail", gmail.issue_refresh_token(GMAIL_USER))["account"]
        alice.wait_state(account, "idle")

        r = alice.post("/mail/disconnect", {"account": account})
        assert r.status_code == 200, r.text
        assert r.json()["account"]["state"] == "disconnected" and r.json()["events_kept"] is True
        gmail.clear_requests()
        gmail.add_message(GMAIL_USER, subject="after disconnect")
        time.sleep(1.5)  # three sync intervals
        assert gmail.requests == []
        assert alice.accounts()[account]["state"] == "disconnected"
        assert len(alice.events("mail.message.received")) == 10
    # The credentials are gone from mail.db for good; a restart does not resume the account.
    with server:
        assert alice.accounts()[account]["state"] == "disconnected"
        time.sleep(1)
        assert gmail.requests == []


def test_outlook_sync_incremental_and_expired_delta(tmp_path: Path, microsoft: FakeMicrosoft) -> None:
    ids = microsoft.populate(MS_USER, 130)
    archived = microsoft.add_message(
        MS_USER, folder="archive", subject="Filed away", sender="Ada Lovelace <ada@analytical.example>",
        to=[f"Grace <{MS_USER}>"], body="<p>Filed <b>away</b></p>", body_type="html", is_read=True,
        categories=["Blue"], received=datetime.datetime(2025, 3, 4, 9, 15, tzinfo=datetime.UTC),
        internet_message_id="<filed@analytical.example>",
    )
    microsoft.add_message(MS_USER, folder="junkemail", subject="spam")
    with BrainServer(tmp_path / "brain", config=mail_config(microsoft=microsoft)) as server:
        alice = Client(server)
        account = alice.connect("outlook", microsoft.issue_refresh_token(MS_USER))
        assert account["address"] == MS_USER
        status = alice.wait_state(account["account"], "idle")
        assert status["messages_synced"] == 131
        assert status["initial_sync"] == {"complete": True, "done": 131, "estimated_total": 131}
        assert alice.mailbox() == outlook_mailbox(microsoft)
        filed = next(e for e in alice.events("mail.message.received") if e["data"]["message_id"] == archived)
        data = filed["data"]
        assert {k: v for k, v in data.items() if k not in ("account", "thread_id", "size")} == {
            "provider": "outlook", "address": MS_USER, "message_id": archived,
            "internet_message_id": "<filed@analytical.example>", "in_reply_to": None, "references": [],
            "from": {"name": "Ada Lovelace", "address": "ada@analytical.example"},
            "to": [{"name": "Grace", "address": MS_USER}], "cc": [], "bcc": [], "reply_to": [],
            "subject": "Filed away", "date": "2025-03-04T09:14:58.000Z", "direction": "received",
            "folders": ["Archive"], "labels": ["Blue"], "flags": {"read": True, "starred": False, "important": False},
            "snippet": "Filed away", "body_text": "Filed away", "body_text_clean": "Filed away",
            "attachments": [], "has_attachments": False, "truncated": False,
        }
        assert data["thread_id"] and data["size"] > 1500

        # Incremental through the deltaLinks: new, read + categorised, deleted, moved (an update).
        microsoft.add_message(MS_USER, subject="new in inbox")
        microsoft.update_message(MS_USER, ids[0], is_read=True, categories=["Blue"])
        microsoft.delete_message(MS_USER, ids[1])
        microsoft.update_message(MS_USER, ids[2], folder="archive")
        microsoft.update_message(MS_USER, ids[5], folder="deleteditems")
        wait_until(lambda: alice.mailbox() == outlook_mailbox(microsoft), timeout=15, what="delta changes")
        counts = Counter(e["type"] for e in alice.events())
        assert counts == {"mail.message.received": 132, "mail.message.updated": 2, "mail.message.deleted": 2}
        moved = next(e for e in alice.events("mail.message.updated") if e["data"]["message_id"] == ids[2])
        assert moved["data"]["folders"] == ["Archive"]

        # The sync state expires (410 syncStateNotFound): a full resync reconciles.
        with microsoft.lock:
            microsoft.delete_message(MS_USER, ids[3])
            microsoft.update_message(MS_USER, ids[4], flag="flagged")
            microsoft.expire_delta(MS_USER)
        wait_until(lambda: alice.mailbox() == outlook_mailbox(microsoft), timeout=20, what="resync")
        received = [e["data"]["message_id"] for e in alice.events("mail.message.received")]
        assert len(received) == len(set(received)) == 132
        alice.assert_events_follow_the_openapi_schemas()
        wait_until(lambda: alice.jetstream_counts() == Counter(e["type"] for e in alice.events()), timeout=20)


def test_outlook_oauth_redirect_flow_and_token_cache_across_restarts(tmp_path: Path, microsoft: FakeMicrosoft) -> None:
    microsoft.populate(MS_USER, 12)
    server = BrainServer(tmp_path / "brain", config=mail_config(microsoft=microsoft))
    with server:
        alice = Client(server)
        flow = alice.post("/mail/connect", {"provider": "outlook"}).json()
        # The browser: brain's connect link, Microsoft's sign-in (MSAL built it; PKCE and the
        # consent prompt added), brain's callback, the result page.
        edge = microsoft.requests_session()  # trusts the fake's CA
        sign_in = open_connect_link(edge, flow["authorize_url"])
        assert sign_in.startswith(f"{microsoft.authority()}/oauth2/v2.0/authorize?")
        query = {k: v[0] for k, v in parse_qs(urlsplit(sign_in).query).items()}
        assert query["prompt"] == "consent" and query["code_challenge_method"] == "S256"
        done = edge.get(sign_in, timeout=30)
        assert [urlsplit(h.url).path for h in done.history[1:]] == ["/mail/oauth/callback"]
        result = outcome(done, server)
        assert result["status"] == "connected", result
        account = result["account"]
        alice.wait_state(account, "idle")
        assert len(alice.events("mail.message.received")) == 12
    # MSAL's cache (with Entra's rotated refresh token) was persisted in mail.db: after a
    # restart with every access token expired, the sync refreshes from it and carries on.
    microsoft.expire_access_tokens(MS_USER)
    microsoft.add_message(MS_USER, subject="after the restart")
    microsoft.clear_requests()
    with server:
        wait_until(lambda: len(alice.events("mail.message.received")) == 13, timeout=20, what="sync after restart")
        statuses = [(r.path, r.status) for r in microsoft.requests]
        assert (f"/{microsoft.tenant_id}/oauth2/v2.0/token", 200) in statuses
        assert alice.accounts()[account]["state"] in ("idle", "syncing")


def test_outlook_throttling_and_server_errors_are_retried(tmp_path: Path, microsoft: FakeMicrosoft) -> None:
    microsoft.populate(MS_USER, 20)
    inbox_delta = f"/v1.0/me/mailFolders/{microsoft.folder_id(MS_USER, 'inbox')}/messages/delta"
    microsoft.fail_next(1, status=429, retry_after=1, path_prefix=inbox_delta)
    microsoft.fail_next(2, status=503, path_prefix=inbox_delta)
    with BrainServer(tmp_path / "brain", config=mail_config(microsoft=microsoft)) as server:
        alice = Client(server)
        account = alice.connect("outlook", microsoft.issue_refresh_token(MS_USER))["account"]
        status = alice.wait_state(account, "idle", timeout=30)
        assert status["messages_synced"] == 20 and "503" in (status["last_error"] or "")
        delta = [r for r in microsoft.requests if r.path == inbox_delta]
        assert [r.status for r in delta[:4]] == [429, 503, 503, 200]
        assert delta[1].at - delta[0].at >= 1.0  # Retry-After honoured
        assert len(alice.events("mail.message.received")) == 20


def test_clients_cannot_write_reserved_event_types_but_mail_sync_does(tmp_path: Path, gmail: FakeGmail) -> None:
    """mail.* (and a plugin's reserved namespace) is written by the server only: 403 for clients."""
    gmail.populate(GMAIL_USER, 3)
    env = {
        "BRAIN_PLUGINS__ENABLED": "gmail,reserving",  # tests/plugins/reserving_plugin.py reserves `ledger`
        "PYTHONPATH": os.pathsep.join([str(SAMPLE_DIST), str(REPO)]),
    }
    with BrainServer(tmp_path / "brain", config=mail_config(gmail), env=env) as server:
        alice = Client(server)
        refused = [
            ({"type": "mail.message.received", "data": {"subject": "planted"}}, "type: ", "mail.message.received"),
            ({"type": "mail", "data": 1}, "type: ", "mail"),
            ({"type": "MAIL.Message.Deleted", "data": 1}, "type: ", "MAIL.Message.Deleted"),
            ({"type": "ledger.entry.posted", "data": 1}, "type: ", "ledger.entry.posted"),
            ([{"type": "note.created", "data": 1}, {"type": "mail.message.deleted", "data": {}}], "[1].type: ",
             "mail.message.deleted"),
        ]
        for body, field, etype in refused:
            for headers in ({}, {"Idempotency-Key": f"k-{etype}"}):
                r = requests.post(
                    server.api_url + "/events", json=body, headers={**alice.headers, **headers}, timeout=30
                )
                assert r.status_code == 403, (body, r.text)
                answer = r.json()
                assert answer["code"] == "RESERVED_EVENT_TYPE" and answer["type"] == etype, answer
                assert answer["message"].startswith(f"{field}event type {etype!r} is reserved"), answer
        assert alice.events() == []  # nothing stored, the batch neither
        # Names that only look alike belong to the client.
        for etype in ("mailbox.note", "email.sent", "ledgers.x", "note.mail", "mail_merge"):
            r = alice.post("/events", {"type": etype, "data": 1})
            assert r.status_code == 201, (etype, r.text)

        # Mail sync, the server's own writer, still writes mail.*.
        account = alice.connect("gmail", gmail.issue_refresh_token(GMAIL_USER))["account"]
        alice.wait_state(account, "idle")
        assert len(alice.events("mail.message.received")) == 3

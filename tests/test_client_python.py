"""The Python client (clients/python, `brain_client`) driving a real brain process.

Every operation it wraps, against a live server with the mail providers pointed at the local
fakes: sign-up, sessions and JWT refresh, events (pagination across pages, idempotent retries),
mail (connect, status, change, sync, attachment, disconnect), typed errors with the server's
codes, a 429 waited out after its Retry-After, and the README's quickstart run as written.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from brain.testing.fakes.gmail import FakeGmail
from brain.testing.fakes.microsoft import FakeMicrosoft
from brain.testing.fakes.mime import Part
from brain_client import (
    AsyncClient,
    BadRequest,
    Client,
    Forbidden,
    NotFound,
    RateLimited,
    ServerError,
    Unauthorized,
    Unprocessable,
)
from tests.support import REPO, BrainServer, wait_until
from tests.test_auth_helpers import NO_LIMITS, PASSWORD, unique_email
from tests.test_mail_connect_limits import SilentServer, imap_connect, silent, start_brain  # noqa: F401 - fixture
from tests.test_mail_server import GMAIL_USER, mail_config
from tests.test_reliability_helpers import wait_api_ready

PDF = b"%PDF-1.4\n% a tiny test file\n%%EOF\n"


@pytest.fixture(scope="module")
def gmail() -> Iterator[FakeGmail]:
    fake = FakeGmail().start()
    try:
        yield fake
    finally:
        fake.stop()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, gmail: FakeGmail) -> Iterator[BrainServer]:
    microsoft = FakeMicrosoft().start()
    config = mail_config(gmail, microsoft)
    s = BrainServer(tmp_path_factory.mktemp("pyclient") / "brain", config={"auth": NO_LIMITS, **config})
    try:
        with s:
            wait_api_ready(s)
            yield s
    finally:
        microsoft.stop()


def client(server: BrainServer) -> Client:
    return Client(server.api_url, server.auth_url)


def test_sign_up_events_and_pagination(server: BrainServer) -> None:
    with client(server) as brain:
        signed = brain.sign_up("Ada", unique_email("py"), PASSWORD)
        assert brain.session_token == signed["token"] and brain.jwt == signed["jwt"]
        assert brain.me()["id"] == signed["user"]["id"]
        session = brain.get_session()
        assert session is not None and session["user"]["id"] == signed["user"]["id"]
        assert [k["kid"] for k in brain.jwks()["keys"]]
        assert brain.health()["status"] == "ok"
        assert brain.openapi()["openapi"].startswith("3.1")
        assert brain.asyncapi()["asyncapi"] == "3.0.0"

        first = brain.post_event("note.created", {"n": 0})
        batch = brain.post_events([{"type": "note.created", "data": {"n": i}} for i in range(1, 7)])
        assert [e["data"]["n"] for e in batch] == [1, 2, 3, 4, 5, 6] and first["data"] == {"n": 0}
        brain.post_event("other.thing", None)
        # Seven notes, three a page: three pages, newest first, each event once.
        page = brain.list_events(type="note.created", limit=3)
        assert len(page["events"]) == 3 and page["next_cursor"]
        seen = [e["data"]["n"] for e in brain.iter_events(type="note.created", page_size=3)]
        assert seen == [6, 5, 4, 3, 2, 1, 0]
        assert len(list(brain.iter_events())) == 8

        # The same key twice: one stored event, the second answer is the first one replayed.
        again = brain.post_event("note.created", {"n": 7}, idempotency_key="once")
        assert brain.post_event("note.created", {"n": 7}, idempotency_key="once")["id"] == again["id"]

        brain.sign_out()
        assert brain.session_token is None
        with pytest.raises(Unauthorized) as refused:
            brain.me()
        assert refused.value.status == 401 and refused.value.code == "INVALID_TOKEN"


def test_search_single_events_deletions_changes_and_stats(server: BrainServer) -> None:
    with client(server) as brain:
        brain.sign_up("Sam", unique_email("py"), PASSWORD)
        lease = brain.post_event("note.created", {"title": "The lease", "text": "Anna signs the lease on Monday"})
        brain.post_events([{"type": "note.created", "data": {"title": f"Note {i}", "text": "nothing here"}}
                           for i in range(4)])
        page = brain.search("lease")
        assert [r["event"]["id"] for r in page["results"]] == [lease["id"]] and page["next_cursor"] is None
        assert "<mark>lease</mark>" in page["results"][0]["highlights"]["title"]
        assert len(list(brain.iter_search("nothing", page_size=3))) == 4
        assert brain.get_event(lease["id"]) == lease
        stats = brain.me_stats()
        assert stats["events"] == 5 and stats["by_type"] == {"note.created": 5}
        written = list(brain.iter_changes(page_size=2))
        assert [e["id"] for e in written] == [lease["id"], *(e["id"] for e in brain.list_events()["events"][::-1][1:])]

        assert brain.delete_event(lease["id"]) == {"deleted": 1, "ids": [lease["id"]]}
        assert brain.search("lease")["results"] == []
        with pytest.raises(NotFound):
            brain.get_event(lease["id"])
        assert brain.delete_events(type="note.*") == 4
        # The deleted events are gone from the feed; their five tombstones follow, in commit order.
        changes = list(brain.iter_changes(page_size=4))
        assert [e["type"] for e in changes] == ["event.deleted"] * 5 and changes[0]["id"] > written[-1]["id"]
        assert changes[0]["data"]["id"] == lease["id"]
        rest = brain.event_changes(changes[1]["id"], type="event.deleted")
        assert rest["events"] == changes[2:] and rest["has_more"] is False


def test_errors_are_typed_and_carry_the_server_code(server: BrainServer) -> None:
    with client(server) as brain:
        brain.sign_up("Bea", unique_email("py"), PASSWORD)
        with pytest.raises(BadRequest) as bad:
            brain.post_event("not a type", {})
        assert bad.value.code == "VALIDATION_ERROR" and "type" in bad.value.message
        with pytest.raises(Forbidden) as reserved:
            brain.post_event("mail.message.received", {})
        assert reserved.value.code == "RESERVED_EVENT_TYPE"
        brain.post_event("note.created", {"a": 1}, idempotency_key="k1")
        with pytest.raises(Unprocessable) as reused:
            brain.post_event("note.created", {"a": 2}, idempotency_key="k1")
        assert reused.value.code == "IDEMPOTENCY_KEY_REUSED"
        with pytest.raises(NotFound):
            brain.mail_disconnect("no-such-account")
        with pytest.raises(Unprocessable) as taken:
            Client(server.api_url, server.auth_url).sign_up("Bea", brain.me()["email"], PASSWORD)
        assert taken.value.code == "USER_ALREADY_EXISTS_USE_ANOTHER_EMAIL"


def expired_jwt() -> str:
    """A token whose `exp` has passed (unsigned: only a client that refreshes first gets through)."""
    claims = base64.urlsafe_b64encode(json.dumps({"exp": int(time.time()) - 10}).encode()).rstrip(b"=").decode()
    return f"eyJhbGciOiJSUzI1NiJ9.{claims}.c2ln"


def test_the_jwt_is_refreshed_from_the_session_before_it_expires(server: BrainServer) -> None:
    with client(server) as first:
        signed = first.sign_up("Cy", unique_email("py"), PASSWORD)
    # Only a session token: the JWT is fetched on the first call.
    with Client(server.api_url, server.auth_url, session_token=signed["token"]) as brain:
        assert brain.me()["id"] == signed["user"]["id"] and brain.jwt
        brain.jwt = expired_jwt()
        assert brain.me()["id"] == signed["user"]["id"]
        assert brain.jwt != expired_jwt()
    # Without a session to refresh from, the expired token is sent and refused.
    with Client(server.api_url, server.auth_url, jwt=expired_jwt()) as stale, pytest.raises(Unauthorized):
        stale.me()


def test_mail_connect_status_change_sync_attachment_disconnect(server: BrainServer, gmail: FakeGmail) -> None:
    message = gmail.add_message(GMAIL_USER, subject="Report", attachments=[Part("r.pdf", "application/pdf", PDF)])
    with client(server) as brain:
        brain.sign_up("Di", unique_email("py"), PASSWORD)
        authorize = brain.mail_connect("gmail")
        assert authorize["authorize_url"].startswith(server.api_url + "/mail/oauth/start")
        account = brain.mail_connect("gmail", refresh_token=gmail.issue_refresh_token(GMAIL_USER))["account"]
        wait_until(lambda: any(e["data"]["message_id"] == message
                               for e in brain.iter_events(type="mail.message.received")), timeout=30,
                   what="the message synced")
        (status,) = brain.mail_status()
        assert status["account"] == account["account"] and status["provider"] == "gmail"
        changed = brain.mail_change_account(account["account"], keep_html=True)
        assert changed["sync"]["keep_html"] is True
        assert brain.mail_sync_now(account["account"])["account"] == account["account"]
        event = next(e for e in brain.iter_events(type="mail.message.received") if e["data"]["message_id"] == message)
        (attachment,) = event["data"]["attachments"]
        assert brain.mail_attachment(message, attachment["id"]) == PDF
        gone = brain.mail_disconnect(account["account"])
        assert gone["account"]["state"] == "disconnected" and gone["events_kept"] is True


def test_async_client(server: BrainServer) -> None:
    async def scenario() -> None:
        async with AsyncClient(server.api_url, server.auth_url) as brain:
            signed = await brain.sign_up("Eve", unique_email("py"), PASSWORD)
            assert (await brain.me())["id"] == signed["user"]["id"]
            await brain.post_events([{"type": "a.b", "data": i} for i in range(5)])
            seen = [e["data"] async for e in brain.iter_events(type="a.b", page_size=2)]
            assert seen == [4, 3, 2, 1, 0]
            await brain.post_events([{"type": "c.d", "data": {"text": f"apple {i}"}} for i in range(3)])
            hits = [r["event"]["data"]["text"] async for r in brain.iter_search("apple", page_size=2)]
            assert sorted(hits) == ["apple 0", "apple 1", "apple 2"]
            first = (await brain.event_changes(0, limit=1))["events"][0]
            assert await brain.get_event(first["id"]) == first
            assert (await brain.delete_event(first["id"]))["ids"] == [first["id"]]
            assert await brain.delete_events(type="a.b") == 4
            kinds = [e["type"] async for e in brain.iter_changes(page_size=3)]
            assert kinds == ["c.d"] * 3 + ["event.deleted"] * 5
            assert (await brain.me_stats())["events"] == 3
            with pytest.raises(BadRequest) as bad:
                await brain.list_events(limit=0)
            assert bad.value.code == "VALIDATION_ERROR"
            brain.jwt = expired_jwt()
            assert (await brain.me())["id"] == signed["user"]["id"]

    asyncio.run(scenario())


def post_later(brain: Client, events: list[dict[str, object]], every: float) -> threading.Thread:
    """Post events from another thread, one each `every` seconds, while the caller reads its stream."""
    def post() -> None:
        for event in events:
            time.sleep(every)
            brain.post_event(str(event["type"]), event["data"])

    thread = threading.Thread(target=post, daemon=True)
    thread.start()
    return thread


def test_the_stream_follows_live_events_and_resumes_after_the_last_one_seen(server: BrainServer) -> None:
    with client(server) as brain, client(server) as writer:
        signed = brain.sign_up("Gus", unique_email("py"), PASSWORD)
        writer.session_token = signed["token"]
        brain.post_events([{"type": "note.created", "data": n} for n in range(3)])
        stream = brain.stream_events(after=0)
        history = [next(stream) for _ in range(3)]
        assert [e["data"] for e in history] == [0, 1, 2] and stream.last_event_id == history[-1]["id"]
        # Then what commits while the stream is open, with the type filter's namespaces.
        posting = post_later(writer, [{"type": "note.created", "data": 3}, {"type": "note.edited", "data": 4}], 0.3)
        live = [next(stream) for _ in range(2)]
        posting.join()
        stream.close()
        assert [e["data"] for e in live] == [3, 4]

        # Closed, two more commit (one filtered out): the resumed stream starts right after the
        # last event seen, with no gap and nothing twice.
        brain.post_events([{"type": "other.thing", "data": 5}, {"type": "note.created", "data": 6}])
        resumed = brain.stream_events(type="note.*", after=stream.last_event_id)
        assert next(resumed)["data"] == 6
        resumed.close()

        ticket = brain.stream_ticket()
        assert ticket["stream"].startswith("/events/stream") and ticket["expires_in"] > 0
        with pytest.raises(BadRequest) as bad:
            next(iter(brain.stream_events(type="not a type", after=0)))
        assert bad.value.code == "VALIDATION_ERROR" and "type" in bad.value.message


def test_the_stream_resumes_across_jwt_expiries_without_gap_or_repeat(tmp_path: Path) -> None:
    """JWTs live 3 s here: the server ends each stream when its JWT does (token-expired); the
    client refreshes it from the session and resumes with Last-Event-ID."""
    config = {"auth": {**NO_LIMITS, "jwt_ttl_seconds": 3}}
    with BrainServer(tmp_path / "brain", config=config) as server:
        wait_api_ready(server)
        with client(server) as brain, client(server) as writer:
            signed = brain.sign_up("Hal", unique_email("py"), PASSWORD)
            writer.session_token = signed["token"]
            events = [{"type": "tick.tock", "data": n} for n in range(16)]
            stream = brain.stream_events(after=0)
            posting = post_later(writer, events, 0.5)
            seen = [next(stream)["data"] for _ in events]
            posting.join()
            assert seen == list(range(16))
            assert stream.reconnects >= 1, "the posts outlasted a JWT, so the stream was resumed"
            stream.close()


def test_the_async_stream(server: BrainServer) -> None:
    async def scenario() -> None:
        async with AsyncClient(server.api_url, server.auth_url) as brain:
            await brain.sign_up("Ivy", unique_email("py"), PASSWORD)
            await brain.post_events([{"type": "a.b", "data": i} for i in range(3)])
            stream = brain.stream_events(type=["a.b"], after=0)
            seen = [(await anext(stream))["data"] for _ in range(3)]
            first = stream.last_event_id
            await brain.post_event("a.b", 3)
            seen.append((await anext(stream))["data"])
            await stream.aclose()
            assert seen == [0, 1, 2, 3] and stream.last_event_id == first + 1

    asyncio.run(scenario())


def test_a_429_is_retried_after_its_retry_after(tmp_path: Path, silent: SilentServer) -> None:
    """Two IMAP connects hang at a server that never answers ([mail] connects_per_user = 2): a
    third is refused with 429 TOO_MANY_CONNECTS and Retry-After. The client waits, the hanging
    ones end meanwhile, and its retry goes through to the provider (gone by then: a 502)."""
    server = start_brain(tmp_path)
    pool = concurrent.futures.ThreadPoolExecutor(2)
    imap = {"host": "127.0.0.1", "port": silent.port, "tls": "plain", "username": "u", "password": "p"}
    try:
        with client(server) as brain:
            signed = brain.sign_up("Flo", unique_email("py"), PASSWORD)
            hanging = [pool.submit(imap_connect, server, signed["jwt"], silent.port) for _ in range(2)]
            wait_until(lambda: len(silent.accepted) >= 2, timeout=20, what="two connects to hang")
            with Client(server.api_url, server.auth_url, jwt=brain.jwt, max_retries=0) as impatient:
                with pytest.raises(RateLimited) as limited:
                    impatient.mail_connect("imap", **imap)
            assert limited.value.code == "TOO_MANY_CONNECTS" and limited.value.retry_after >= 1
            threading.Timer(1.0, silent.close).start()  # while the client waits
            with pytest.raises(ServerError) as answered:
                brain.mail_connect("imap", **imap)
            assert answered.value.status == 502 and answered.value.code == "PROVIDER_UNAVAILABLE"
            assert brain.retries == 1
            assert [f.result().status_code for f in hanging] == [502, 502]
    finally:
        silent.close()
        pool.shutdown(wait=True)
        server.close()


def readme_block(path: Path, language: str) -> str:
    """The first fenced block of this language in a README."""
    match = re.search(rf"```{language}\n(.*?)```", path.read_text(), re.DOTALL)
    assert match, f"{path} has no {language} block"
    return match.group(1)


def test_readme_quickstart_runs_as_written(server: BrainServer) -> None:
    code = readme_block(REPO / "clients" / "python" / "README.md", "python")
    assert len(code.strip().splitlines()) <= 10
    env = {**os.environ, "BRAIN_API_URL": server.api_url, "BRAIN_AUTH_URL": server.auth_url,
           "BRAIN_EMAIL": unique_email("readme")}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "hello" in done.stdout, done.stdout

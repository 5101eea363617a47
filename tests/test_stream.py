"""GET /events/stream over real HTTP with an SSE client (aiohttp, tests/sse.py) against `brain serve`.

Order, resume after a disconnect with no gap and no duplicate across the history/live seam while
other clients write, type filters, isolation between users, the token's expiry, a slow client
cut off with a last event, heartbeats, single-use tickets, and the stream's bounds.
"""

from __future__ import annotations

import asyncio
import random
import socket
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest
import requests

from tests.sse import SSEStream, open_stream
from tests.support import BrainServer
from tests.test_auth_helpers import NO_LIMITS, bearer, new_user

HEARTBEAT = 0.5
JWT_TTL = 4
MAX_PER_USER = 4


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrainServer]:
    s = BrainServer(
        tmp_path_factory.mktemp("stream") / "brain",
        config={
            "auth": NO_LIMITS,
            "api": {"stream_heartbeat_seconds": HEARTBEAT, "stream_max_per_user": MAX_PER_USER,
                    "stream_ticket_seconds": 2.0},
        },
    )
    with s:
        yield s


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


class User:
    """A signed-up user and their JWT."""

    def __init__(self, server: BrainServer) -> None:
        body = new_user(server)
        self.id: str = body["user"]["id"]
        self.jwt: str = body["jwt"]
        self.server = server

    @property
    def stream_url(self) -> str:
        return f"{self.server.api_url}/events/stream"

    async def post(self, http: aiohttp.ClientSession, events: Any) -> Any:
        async with http.post(f"{self.server.api_url}/events", json=events, headers=bearer(self.jwt)) as r:
            assert r.status == 201, await r.text()
            return await r.json()

    def all_ids(self, **params: Any) -> list[int]:
        """Every stored event id, oldest first (GET /events, all pages)."""
        ids, cursor = [], None
        while True:
            r = requests.get(f"{self.server.api_url}/events", headers=bearer(self.jwt), timeout=10,
                             params={"limit": 1000, **params, **({"cursor": cursor} if cursor else {})})
            assert r.status_code == 200, r.text
            ids += [e["id"] for e in r.json()["events"]]
            cursor = r.json()["next_cursor"]
            if cursor is None:
                return sorted(ids)


def note(i: int, kind: str = "note.created") -> dict[str, Any]:
    return {"type": kind, "data": {"i": i}}


async def test_live_events_arrive_in_commit_order_with_their_ids(server: BrainServer, http: aiohttp.ClientSession) -> None:
    alice = User(server)
    stream = await open_stream(http, alice.stream_url, token=alice.jwt)
    try:
        assert stream.retry_ms is None  # read lazily: the first message carries it
        # Concurrent writers: the stream still delivers in the order the store committed.
        await asyncio.gather(*(alice.post(http, note(i)) for i in range(40)))
        await alice.post(http, [note(100 + i) for i in range(10)])
        got = await stream.messages(50)
        ids = [int(m.id or 0) for m in got]
        assert ids == sorted(ids) and len(set(ids)) == 50
        assert ids == alice.all_ids()
        first = got[0].json()
        assert set(first) == {"id", "type", "data", "created_at"} and first["id"] == ids[0]
        assert all(m.event == "message" for m in got)
        assert stream.retry_ms == 1000
    finally:
        stream.close()


async def test_resume_after_disconnects_has_no_gap_and_no_duplicate_under_concurrent_writes(
    server: BrainServer, http: aiohttp.ClientSession
) -> None:
    alice = User(server)
    await alice.post(http, [note(i) for i in range(300)])  # history to replay on the first connect
    stop = asyncio.Event()
    posted = 0

    async def writer(seed: int) -> None:
        nonlocal posted
        rng = random.Random(seed)
        while not stop.is_set():
            n = rng.choice([1, 1, 1, 5, 20])
            await alice.post(http, note(posted) if n == 1 else [note(posted + k) for k in range(n)])
            posted += n
            await asyncio.sleep(rng.random() * 0.01)

    writers = [asyncio.create_task(writer(seed)) for seed in range(4)]
    received: list[int] = []
    last: str | None = "0"
    rng = random.Random(7)
    try:
        # Each round reads a random number of events, drops the connection abruptly and resumes
        # with the last id seen, while the writers keep committing: some rounds resume inside the
        # history, some right at the live tail.
        for round_ in range(12):
            stream = await open_stream(http, alice.stream_url, token=alice.jwt, last_event_id=last)
            try:
                for message in await stream.messages(rng.choice([1, 7, 40, 150, 400])):
                    received.append(int(message.id or 0))
                last = stream.last_id or last
            finally:
                stream.close()
            if round_ % 3 == 2:
                await asyncio.sleep(0.05)  # let commits pile up while nobody listens
    finally:
        stop.set()
        await asyncio.gather(*writers)
    everything = alice.all_ids()
    # The last round: catch up to the end of what was written.
    stream = await open_stream(http, alice.stream_url, token=alice.jwt, last_event_id=last)
    try:
        while not received or received[-1] < everything[-1]:
            message = await stream.next()
            assert message is not None
            received.append(int(message.id or 0))
    finally:
        stream.close()
    assert len(received) == len(set(received)), "a duplicate across a resume"
    assert received == everything, "a gap (or disorder) across a resume"


async def test_after_parameter_and_last_event_id_header(server: BrainServer, http: aiohttp.ClientSession) -> None:
    alice = User(server)
    await alice.post(http, [note(i) for i in range(5)])
    ids = alice.all_ids()
    stream = await open_stream(http, alice.stream_url, token=alice.jwt, params={"after": str(ids[1])})
    try:
        assert [int(m.id or 0) for m in await stream.messages(3)] == ids[2:]
    finally:
        stream.close()
    # The header wins over the query (EventSource resends its first URL with the header).
    stream = await open_stream(http, alice.stream_url, token=alice.jwt, params={"after": "0"}, last_event_id=str(ids[3]))
    try:
        assert [int(m.id or 0) for m in await stream.messages(1)] == ids[4:]
    finally:
        stream.close()
    # No resume point: only what commits from now on.
    stream = await open_stream(http, alice.stream_url, token=alice.jwt)
    try:
        fresh = await alice.post(http, note(99))
        message = await stream.next()
        assert message is not None and message.json()["id"] == fresh["id"]
    finally:
        stream.close()


async def test_type_filters_exact_and_prefix(server: BrainServer, http: aiohttp.ClientSession) -> None:
    alice = User(server)
    kinds = ["note.created", "note.deleted", "task.done", "notes.other", "note"]
    await alice.post(http, [note(i, kinds[i % len(kinds)]) for i in range(20)])
    cases = {
        "note.*": {"note.created", "note.deleted"},
        "task.done": {"task.done"},
        "task.done,note.deleted": {"task.done", "note.deleted"},
    }
    for types, expected in cases.items():
        stored = requests.get(f"{server.api_url}/events", params={"limit": 1000}, headers=bearer(alice.jwt), timeout=10)
        matching = sorted(e["id"] for e in stored.json()["events"] if e["type"] in expected)
        stream = await open_stream(http, alice.stream_url, token=alice.jwt, params={"after": "0", "type": types})
        try:
            history = await stream.messages(len(matching))
            assert [m.json()["id"] for m in history] == matching, types
            posted = await alice.post(http, [note(50, k) for k in kinds])
            live = await stream.messages(len(expected))
            assert [m.json()["id"] for m in live] == [e["id"] for e in posted["events"] if e["type"] in expected], types
            assert {m.json()["type"] for m in history + live} == expected, types
        finally:
            stream.close()
    # Repeated parameters mean the same as a comma-separated list.
    stream = await open_stream(http, alice.stream_url, token=alice.jwt,
                               params=[("after", "0"), ("type", "task.done"), ("type", "note.deleted")])
    try:
        assert {m.json()["type"] for m in await stream.messages(8)} == {"task.done", "note.deleted"}
    finally:
        stream.close()


async def test_deletions_arrive_as_tombstones_live_and_on_resume(server: BrainServer, http: aiohttp.ClientSession) -> None:
    alice = User(server)
    posted = (await alice.post(http, [note(i) for i in range(3)]))["events"]
    everything = await open_stream(http, alice.stream_url, token=alice.jwt, params={"after": "0"})
    notes_only = await open_stream(http, alice.stream_url, token=alice.jwt, params={"after": "0", "type": "note.*"})
    gone = posted[1]
    try:
        assert [m.json()["id"] for m in await everything.messages(3)] == [e["id"] for e in posted]
        assert len(await notes_only.messages(3)) == 3
        r = requests.delete(f"{server.api_url}/events/{gone['id']}", headers=bearer(alice.jwt), timeout=10)
        assert r.status_code == 200, r.text
        message = await everything.next()
        assert message is not None
        tombstone = message.json()
        assert tombstone["type"] == "event.deleted" and tombstone["data"] == {
            "id": gone["id"], "type": gone["type"], "created_at": gone["created_at"]}
        # Its own place in the commit sequence, after every event before it.
        assert int(message.id or 0) == tombstone["id"] > posted[-1]["id"]
        fresh = await alice.post(http, note(9))
        assert fresh["id"] > tombstone["id"]
        following = await everything.next()
        assert following is not None and following.json()["id"] == fresh["id"]
        # A filter that leaves event.deleted out skips the tombstone.
        following = await notes_only.next()
        assert following is not None and following.json()["id"] == fresh["id"]
    finally:
        everything.close()
        notes_only.close()
    # Replayed from the start: the deleted event is gone, its tombstone is in its place in the order,
    # as GET /events/changes lists them.
    expected = [posted[0]["id"], posted[2]["id"], tombstone["id"], fresh["id"]]
    for params in ({"after": "0"}, {"after": "0", "type": "note.created,event.deleted"}):
        replay = await open_stream(http, alice.stream_url, token=alice.jwt, params=params)
        try:
            assert [m.json()["id"] for m in await replay.messages(4)] == expected, params
        finally:
            replay.close()
    changes = requests.get(f"{server.api_url}/events/changes", params={"after": "0"}, headers=bearer(alice.jwt), timeout=10)
    assert [e["id"] for e in changes.json()["events"]] == expected
    changes = requests.get(f"{server.api_url}/events/changes", params={"after": "0", "type": "event.deleted"},
                           headers=bearer(alice.jwt), timeout=10)
    assert [e["id"] for e in changes.json()["events"]] == [tombstone["id"]]


async def test_single_event_routes_leave_the_stream_and_its_tickets_alone(
    server: BrainServer, http: aiohttp.ClientSession
) -> None:
    """GET and DELETE /events/{id} share the /events/ prefix with the stream's two fixed routes."""
    alice = User(server)
    event = await alice.post(http, note(1))
    r = requests.post(f"{server.api_url}/events/stream/ticket", headers=bearer(alice.jwt), timeout=10)
    assert r.status_code == 201 and r.json()["stream"] == "/events/stream", r.text
    by_ticket = await open_stream(http, alice.stream_url, params={"ticket": r.json()["ticket"], "after": "0"})
    by_token = await open_stream(http, alice.stream_url, token=alice.jwt, params={"after": "0"})
    try:
        for stream in (by_ticket, by_token):
            message = await stream.next()
            assert message is not None and message.json() == event
    finally:
        by_ticket.close()
        by_token.close()
    got = requests.get(f"{server.api_url}/events/{event['id']}", headers=bearer(alice.jwt), timeout=10)
    assert got.status_code == 200 and got.json() == event
    # The fixed names are not event ids: a method they do not take reaches no event.
    for method, path, status in (("DELETE", "/events/stream", 405), ("DELETE", "/events/changes", 405),
                                 ("GET", "/events/stream/ticket", 405), ("DELETE", "/events/stream/ticket", 405),
                                 ("GET", "/events/nope", 404), ("DELETE", "/events/nope", 404)):
        r = requests.request(method, f"{server.api_url}{path}", headers=bearer(alice.jwt), timeout=10)
        assert r.status_code == status, (method, path, r.status_code, r.text)
        if status == 405:
            assert "DELETE" not in r.headers["Allow"] and r.json()["code"], (path, r.headers, r.text)
    assert requests.get(f"{server.api_url}/events/{event['id']}", headers=bearer(alice.jwt), timeout=10).status_code == 200


@pytest.mark.parametrize(("params", "headers", "names"), [
    ({"after": "-1"}, {}, "after"),
    ({"after": "abc"}, {}, "after"),
    ({"after": "1", "type": "bad type"}, {}, "type"),
    ({"type": "x.*.*"}, {}, "type"),
    ({"type": "' OR 1=1 --"}, {}, "type"),
    ({}, {"Last-Event-ID": "1; DROP TABLE events"}, "Last-Event-ID"),
    ({}, {"Last-Event-ID": "99999999999999999999999"}, "Last-Event-ID"),
])
def test_bad_parameters_are_400_naming_them(server: BrainServer, params: dict[str, str], headers: dict[str, str],
                                            names: str) -> None:
    alice = User(server)
    r = requests.get(f"{server.api_url}/events/stream", params=params, headers={**bearer(alice.jwt), **headers}, timeout=10)
    assert r.status_code == 400, r.text
    assert r.json()["message"].startswith(names), r.text


async def test_a_user_never_receives_another_users_events(server: BrainServer, http: aiohttp.ClientSession) -> None:
    alice, bob = User(server), User(server)
    await alice.post(http, [note(i, "alice.own") for i in range(8)])
    await bob.post(http, [note(i, "secret.bob") for i in range(10)])
    bob_ids = [str(i) for i in bob.all_ids()]
    bob_ticket = requests.post(f"{server.api_url}/events/stream/ticket", headers=bearer(bob.jwt), timeout=10).json()["ticket"]
    streams: list[SSEStream] = []
    try:
        # Alice, with every trick: Bob's id in the query, Bob's event ids to resume from, Bob's types.
        for params, last in (({"after": "0", "user": bob.id}, None), ({"user_id": bob.id}, bob_ids[3]),
                             ({"sub": bob.id, "after": "0"}, None), ({"type": "secret.*", "after": "0"}, None)):
            streams.append(await open_stream(http, alice.stream_url, token=alice.jwt, params=params, last_event_id=last))
        # Bob's ticket together with Alice's token is refused, not taken as either.
        async with http.get(alice.stream_url, params={"ticket": bob_ticket}, headers=bearer(alice.jwt)) as r:
            assert r.status == 400, await r.text()
        # A ticket whose user was edited fails its MAC.
        body, mac = bob_ticket.split(".")
        async with http.get(alice.stream_url, params={"ticket": f"{body[:-4]}AAAA.{mac}"}) as r:
            assert r.status == 401
        await bob.post(http, [note(i, "secret.bob") for i in range(10)])
        mine = await alice.post(http, note(1, "alice.own"))
        await bob.post(http, note(11, "secret.bob"))
        alices = {e["id"]: e for e in requests.get(f"{server.api_url}/events", headers=bearer(alice.jwt),
                                                   timeout=10).json()["events"]}
        for stream in streams[:3]:
            while True:
                message = await stream.next()
                assert message is not None
                assert message.json() == alices[message.json()["id"]], "an event that is not Alice's"
                if message.json()["id"] == mine["id"]:
                    break
        # The filter on Bob's types finds nothing of his in Alice's stream.
        with pytest.raises(TimeoutError):
            await streams[3].next(timeout=1.5)
    finally:
        for stream in streams:
            stream.close()


async def test_the_stream_ends_with_token_expired_when_the_jwt_does(
    tmp_path_factory: pytest.TempPathFactory, http: aiohttp.ClientSession
) -> None:
    with BrainServer(tmp_path_factory.mktemp("expiry") / "brain",
                     config={"auth": {**NO_LIMITS, "jwt_ttl_seconds": JWT_TTL}}) as server:
        alice = User(server)
        stream = await open_stream(http, alice.stream_url, token=alice.jwt)
        try:
            event = await alice.post(http, note(1))
            first = await stream.next()
            assert first is not None and first.json()["id"] == event["id"]
            last = await stream.next(timeout=JWT_TTL + 10)
            assert last is not None and last.event == "token-expired", last
            assert last.json()["last_event_id"] == event["id"]
            assert await stream.next() is None  # and the connection ends
        finally:
            stream.close()


async def test_a_slow_client_is_cut_off_with_a_last_event_and_resumes_without_loss(
    tmp_path_factory: pytest.TempPathFactory, http: aiohttp.ClientSession
) -> None:
    buffer = 256 * 1024
    with BrainServer(tmp_path_factory.mktemp("slow") / "brain",
                     config={"auth": NO_LIMITS, "api": {"stream_buffer_bytes": buffer}}) as server:
        alice = User(server)
        # A client that stops reading: a raw socket with a small receive buffer.
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", server.api_port))
        sock.sendall(f"GET /events/stream HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {alice.jwt}\r\n\r\n".encode())
        assert b"200 OK" in sock.recv(200)
        try:
            big = "x" * 60_000
            for batch in range(12):  # about 11 MB, far beyond the socket buffers and the stream's
                await alice.post(http, [{"type": "bulk.item", "data": {"b": batch, "pad": big}} for _ in range(15)])
            health = await wait_for_health(http, server, lambda h: h["streams"]["cut_off"] >= 1)
            assert health["streams"]["open"] == 0
            # The client reads again: what was in flight, then the last event, then the end of
            # the (chunked) response.
            sock.settimeout(10)
            raw = bytearray()
            while not raw.endswith(b"\r\n0\r\n\r\n"):
                chunk = sock.recv(1 << 16)
                assert chunk, "the connection closed before the response ended"
                raw += chunk
            text = raw.decode(errors="replace")
            assert "event: too-slow" in text
            tail = text[text.rindex("event: too-slow"):]
            assert "last_event_id" in tail and "id: " not in tail  # nothing after it
            seen = [int(line[4:]) for line in text.splitlines() if line.startswith("id: ")]
        finally:
            sock.close()
        ids = alice.all_ids()
        assert seen == ids[: len(seen)] and len(seen) < len(ids)
        # Resuming from the last id it got delivers the rest: nothing was lost.
        stream = await open_stream(http, alice.stream_url, token=alice.jwt, last_event_id=str(seen[-1] if seen else 0))
        try:
            rest = [int(m.id or 0) for m in await stream.messages(len(ids) - len(seen), timeout=20)]
        finally:
            stream.close()
        assert seen + rest == ids


async def wait_for_health(http: aiohttp.ClientSession, server: BrainServer, ok: Any, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    token = server.config["metrics"]["token"]
    while True:
        async with http.get(f"{server.api_url}/health", params={"detail": "1"}, headers=bearer(token)) as r:
            body = await r.json()
        if ok(body) or time.monotonic() > deadline:
            assert ok(body), body
            return body
        await asyncio.sleep(0.1)


async def test_heartbeats_keep_an_idle_stream_talking(server: BrainServer, http: aiohttp.ClientSession) -> None:
    alice = User(server)
    stream = await open_stream(http, alice.stream_url, token=alice.jwt)
    try:
        with pytest.raises(TimeoutError):
            await stream.next(timeout=HEARTBEAT * 5)
        assert stream.comments.count("keep-alive") >= 2, stream.comments
    finally:
        stream.close()


async def test_a_ticket_opens_one_stream_once(server: BrainServer, http: aiohttp.ClientSession) -> None:
    alice = User(server)
    async with http.post(f"{server.api_url}/events/stream/ticket", headers=bearer(alice.jwt)) as r:
        assert r.status == 201
        body = await r.json()
    assert body["expires_in"] == 2 and body["stream"] == "/events/stream"
    stream = await open_stream(http, alice.stream_url, params={"ticket": body["ticket"], "after": "0"})
    try:
        event = await alice.post(http, note(1))
        message = await stream.next()
        assert message is not None and message.json()["id"] == event["id"]
    finally:
        stream.close()
    # Used once: refused the second time, even while it is still young.
    async with http.get(alice.stream_url, params={"ticket": body["ticket"]}) as r:
        assert r.status == 401 and (await r.json())["code"] == "INVALID_TOKEN"
    # Expired before it was used.
    async with http.post(f"{server.api_url}/events/stream/ticket", headers=bearer(alice.jwt)) as r:
        late = (await r.json())["ticket"]
    await asyncio.sleep(2.5)
    async with http.get(alice.stream_url, params={"ticket": late}) as r:
        assert r.status == 401 and "expired" in (await r.json())["message"]
    # A ticket is no credential elsewhere, and the ticket route itself wants a real one.
    async with http.post(f"{server.api_url}/events/stream/ticket", headers=bearer(alice.jwt)) as r:
        fresh = (await r.json())["ticket"]
    async with http.get(f"{server.api_url}/events", params={"ticket": fresh}) as r:
        assert r.status == 401
    async with http.post(f"{server.api_url}/events/stream/ticket", params={"ticket": fresh}) as r:
        assert r.status == 401
    async with http.get(alice.stream_url, params={"ticket": "garbage"}) as r:
        assert r.status == 401


async def test_streams_per_user_are_bounded(server: BrainServer, http: aiohttp.ClientSession) -> None:
    alice = User(server)
    streams = [await open_stream(http, alice.stream_url, token=alice.jwt) for _ in range(MAX_PER_USER)]
    try:
        async with http.get(alice.stream_url, headers=bearer(alice.jwt)) as r:
            assert r.status == 429 and (await r.json())["code"] == "TOO_MANY_STREAMS" and "Retry-After" in r.headers
    finally:
        for stream in streams:
            stream.close()

    # Closed streams are let go (the sweep notices the closed connections).
    deadline = time.monotonic() + 15
    while True:
        async with http.get(alice.stream_url, headers=bearer(alice.jwt)) as r:
            if r.status == 200:
                break
        assert time.monotonic() < deadline, "no stream slot came free after the others closed"
        await asyncio.sleep(0.2)


async def test_deleting_the_account_ends_its_streams(server: BrainServer, http: aiohttp.ClientSession) -> None:
    body = new_user(server)
    token = body["token"]
    bob_jwt = body["jwt"]
    stream = await open_stream(http, f"{server.api_url}/events/stream", token=bob_jwt)
    try:
        r = requests.post(f"{server.auth_url}/api/auth/delete-user", json={"password": "correct horse battery"},
                          headers=bearer(token), timeout=10)
        assert r.status_code == 200, r.text
        last = await stream.next(timeout=20)
        assert last is not None and last.event == "revoked"
    finally:
        stream.close()

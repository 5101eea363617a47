"""Every committed event reaches JetStream once: subjects, headers, outages and crashes.

These tests use the real nats-server from the venv (the one embedded mode runs) and read the
stream back with a nats-py JetStream consumer, as a downstream indexer would.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import nats
import nats.errors
import nats.js.errors
import pytest
import requests

from brain.api.publisher import Publisher
from brain.nats_embedded import find_nats_server, wait_for_port
from brain.sections import NatsSettings
from tests.support import BrainServer, free_port, wait_until
from tests.test_auth_helpers import NO_LIMITS, bearer, new_user


class NatsServer:
    """A nats-server with JetStream that the test starts and stops (own store, loopback port)."""

    def __init__(self, store: Path, *, args: tuple[str, ...] = ()) -> None:
        self.store = store
        self.port = free_port()
        self.args = args  # more command-line options, e.g. ("--user", u, "--pass", p)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> NatsServer:
        self.store.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [find_nats_server(), "--jetstream", "--store_dir", str(self.store), "--addr", "127.0.0.1",
             "--port", str(self.port), "--log", str(self.store / "nats.log"), *self.args],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        assert wait_for_port("127.0.0.1", self.port, timeout=10), "nats-server did not start"
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path / "nats").start()
    try:
        yield server
    finally:
        server.stop()


def stream_messages(url: str, subject: str, *, stream: str = "BRAIN_EVENTS") -> list[Any]:
    """Every message of the stream on subject (wildcards allowed), read by a fresh consumer; none
    while the stream does not exist yet (the event bus creates it as it connects, after the
    server's start: a test that waits for messages waits through that too)."""

    async def read() -> list[Any]:
        nc = await nats.connect(url, connect_timeout=5)
        try:
            js = nc.jetstream()
            try:
                sub = await js.pull_subscribe(subject, stream=stream)
            except nats.js.errors.NotFoundError:
                return []
            out: list[Any] = []
            while True:
                try:
                    batch = await sub.fetch(200, timeout=0.5)
                except (nats.errors.TimeoutError, asyncio.TimeoutError):
                    return out
                for msg in batch:
                    await msg.ack()
                out.extend(batch)
        finally:
            await nc.close()

    return asyncio.run(read())


def stream_config(url: str, stream: str) -> Any:
    async def info() -> Any:
        nc = await nats.connect(url, connect_timeout=5)
        try:
            return (await nc.jetstream().stream_info(stream)).config
        finally:
            await nc.close()

    return asyncio.run(info())


def health(server: BrainServer) -> dict[str, Any]:
    return server.health()


def post(server: BrainServer, jwt: str, body: Any) -> dict[str, Any]:
    r = requests.post(f"{server.api_url}/events", json=body, headers=bearer(jwt), timeout=10)
    assert r.status_code == 201, r.text
    return r.json()


def assert_exactly_once(messages: list[Any], user_id: str, ids: list[int]) -> None:
    counts = Counter(m.headers["Nats-Msg-Id"] for m in messages)
    expected = {f"{user_id}:{i}" for i in ids}
    assert set(counts) == expected, (set(counts) ^ expected)
    assert all(n == 1 for n in counts.values()), [k for k, n in counts.items() if n > 1]


def test_events_arrive_with_subject_headers_and_payload(make_server) -> None:  # type: ignore[no-untyped-def]
    server: BrainServer = make_server(
        config={"auth": NO_LIMITS, "nats": {"stream": "TEST_EVENTS", "subject_prefix": "acme.events",
                                            "duplicate_window_seconds": 30.0, "max_bytes": 50_000_000,
                                            "max_age_days": 2.0}},
    ).start()
    user = new_user(server)
    uid, jwt = user["user"]["id"], user["jwt"]
    single = post(server, jwt, {"type": "note.created", "data": {"text": "h\u00e9llo", "n": [1, 2]}})
    batch = post(server, jwt, [{"type": "task.done", "data": i} for i in range(3)])["events"]
    wait_until(lambda: health(server)["nats"]["published"] >= 4, timeout=10, what="publishing")

    url = server.nats_url()
    config = stream_config(url, "TEST_EVENTS")
    assert config.subjects == ["acme.events.>"]
    assert config.duplicate_window == 30.0 and config.max_bytes == 50_000_000 and config.max_age == 2 * 86400

    messages = stream_messages(url, f"acme.events.{uid}.>", stream="TEST_EVENTS")
    assert [m.subject for m in messages] == [f"acme.events.{uid}.note.created"] + [
        f"acme.events.{uid}.task.done"
    ] * 3
    first = messages[0]
    assert first.headers["Nats-Msg-Id"] == f"{uid}:{single['id']}"
    assert first.headers["Brain-User-Id"] == uid
    assert first.headers["Brain-Event-Id"] == str(single["id"])
    assert first.headers["Brain-Event-Type"] == "note.created"
    assert json.loads(first.data) == {**single, "user_id": uid}
    assert [json.loads(m.data)["id"] for m in messages[1:]] == [e["id"] for e in batch]
    # A second user's events go to their own subjects only.
    other = new_user(server)
    post(server, other["jwt"], {"type": "note.created", "data": 1})
    wait_until(lambda: health(server)["nats"]["published"] >= 5, timeout=10, what="publishing")
    assert len(stream_messages(url, f"acme.events.{uid}.>", stream="TEST_EVENTS")) == 4
    # The outbox is emptied once JetStream acknowledged.
    wait_until(lambda: outbox_rows(server, uid) == 0, timeout=10, what="outbox rows deleted")


def outbox_rows(server: BrainServer, user_id: str) -> int:
    import sqlite3

    with sqlite3.connect(f"file:{server.data_dir / 'users' / user_id / 'events.db'}?mode=ro", uri=True) as db:
        return db.execute("SELECT count(*) FROM outbox").fetchone()[0]


def test_nats_outage_loses_nothing_and_duplicates_nothing(make_server, nats_server: NatsServer) -> None:  # type: ignore[no-untyped-def]
    server: BrainServer = make_server(
        env={"NATS_URL": nats_server.url},
        config={"auth": NO_LIMITS, "nats": {"reconnect_wait_seconds": 0.2, "publish_timeout_seconds": 1.0}},
    ).start()
    assert health(server)["nats"]["embedded"] is False
    user = new_user(server)
    uid, jwt = user["user"]["id"], user["jwt"]
    ids = [post(server, jwt, {"type": "outage.before", "data": i})["id"] for i in range(10)]
    wait_until(lambda: health(server)["nats"]["published"] >= 10, timeout=10, what="publishing")

    nats_server.stop()
    wait_until(lambda: not health(server)["nats"]["connected"], timeout=10, what="the bus to notice")
    slowest = 0.0
    for i in range(40):
        started = time.monotonic()
        ids.append(post(server, jwt, {"type": "outage.during", "data": i})["id"])
        slowest = max(slowest, time.monotonic() - started)
    # Writes neither fail nor wait for NATS (generous bound: a shared 2-core machine).
    assert slowest < 1.0, slowest
    # Exactly the 40 unpublished rows stay: the 10 acknowledged ones go within ACK_DELAY +
    # ACK_FLUSH_SECONDS (with the next write, or the store's flush), and these 40 cannot.
    wait_until(lambda: outbox_rows(server, uid) == 40, timeout=10, what="acknowledged rows deleted")
    assert health(server)["nats"]["dirty_users"] == 1

    nats_server.start()
    wait_until(lambda: outbox_rows(server, uid) == 0, timeout=30, what="the outbox to drain")
    ids += [post(server, jwt, {"type": "outage.after", "data": i})["id"] for i in range(5)]
    wait_until(lambda: outbox_rows(server, uid) == 0, timeout=10, what="the outbox to drain")
    assert_exactly_once(stream_messages(nats_server.url, f"brain.events.{uid}.>"), uid, ids)


def test_kill9_restart_republishes_what_was_not_acknowledged(make_server, nats_server: NatsServer) -> None:  # type: ignore[no-untyped-def]
    server: BrainServer = make_server(
        env={"NATS_URL": nats_server.url},
        config={"auth": NO_LIMITS, "nats": {"reconnect_wait_seconds": 0.2, "publish_timeout_seconds": 1.0}},
    ).start()
    users = [new_user(server) for _ in range(3)]
    ids: dict[str, list[int]] = {u["user"]["id"]: [] for u in users}
    for u in users:
        ids[u["user"]["id"]] += [post(server, u["jwt"], {"type": "crash.before", "data": i})["id"] for i in range(5)]
    wait_until(lambda: health(server)["nats"]["published"] >= 15, timeout=10, what="publishing")
    nats_server.stop()
    for u in users:
        ids[u["user"]["id"]] += [post(server, u["jwt"], {"type": "crash.pending", "data": i})["id"] for i in range(7)]
    server.kill()  # kill -9: the outbox rows and markers are all that is left
    markers = sorted(p.name for p in (server.data_dir / "outbox").iterdir())
    assert markers == sorted(ids)

    nats_server.start()
    server.start()
    for uid in ids:
        wait_until(lambda uid=uid: outbox_rows(server, uid) == 0, timeout=30, what=f"the outbox of {uid}")
    for uid, event_ids in ids.items():
        assert_exactly_once(stream_messages(nats_server.url, f"brain.events.{uid}.>"), uid, event_ids)
    # A clean stop closes the stores with empty outboxes: no marker is left behind.
    assert server.stop() == 0
    assert list((server.data_dir / "outbox").iterdir()) == []


def test_a_connection_lost_while_connecting_is_one_line_and_the_connection_is_made(
    nats_server: NatsServer, caplog: pytest.LogCaptureFixture
) -> None:
    # brain's own connections (control, mail leases, cluster) take nats-py's callbacks from
    # brain.jetstream.connect: a first connection lost before NATS's INFO (a server starting
    # under load) is one line through `note`, retried — not nats-py's ERROR with a traceback.
    from brain import jetstream

    async def scenario() -> list[str]:
        accepted = 0

        async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal accepted
            accepted += 1
            if accepted == 1:  # the first one is dropped before a byte is sent
                writer.close()
                return
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", nats_server.port)

            async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
                try:
                    while data := await src.read(65536):
                        dst.write(data)
                        await dst.drain()
                except (ConnectionError, asyncio.CancelledError):
                    pass
                finally:
                    dst.close()

            try:
                await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
            except asyncio.CancelledError:
                pass  # the proxy closed at the end of the test

        proxy = await asyncio.start_server(relay, "127.0.0.1", 0)
        port = proxy.sockets[0].getsockname()[1]
        notes: list[str] = []
        try:
            nc = await jetstream.connect(
                {"servers": [f"nats://127.0.0.1:{port}"]}, stopping=lambda: False, note=notes.append,
                retry_seconds=0.1, name="test", allow_reconnect=True, max_reconnect_attempts=-1,
                reconnect_time_wait=0.1, connect_timeout=2,
            )
            assert nc.is_connected and accepted == 2
            await nc.close()
        finally:
            proxy.close()
        return notes

    with caplog.at_level("DEBUG"):
        notes = asyncio.run(asyncio.wait_for(scenario(), timeout=20))
    assert len(notes) == 1 and notes[0].startswith("connection to nats://127.0.0.1:"), notes
    from_nats = [r for r in caplog.records if r.name.startswith("nats")]
    assert not from_nats, [(r.name, r.getMessage()) for r in from_nats]


class LeaderlessStream:
    """A JetStream whose stream answers nothing for `seconds` (no leader: each request then ends
    at its 5 s timeout, as nats-py's does), and at once afterwards."""

    def __init__(self, seconds: float) -> None:
        self.until = time.monotonic() + seconds
        self.asked = 0

    async def stream_info(self, _name: str) -> object:
        self.asked += 1
        if time.monotonic() < self.until:
            await asyncio.sleep(5.0)
            raise nats.errors.TimeoutError
        return object()


def test_the_bus_is_back_within_a_second_of_its_streams_election(tmp_path: Path) -> None:
    """After a (re)connect the bus asks for its stream before it publishes. A request sent while
    the stream had no leader (a nats-server lost, the others electing) is never answered; waiting
    out its 5 s timeout kept a worker "disconnected" up to 5 s after the election (a 504 for each
    write it got meanwhile, in the NATS-kill test). A new request each second finds the leader."""

    async def run() -> tuple[float, int]:
        publisher = Publisher(connect={"servers": []}, settings=NatsSettings(publish_timeout_seconds=5.0),
                              stores=None, data_path=tmp_path, loop=asyncio.get_running_loop())  # type: ignore[arg-type]
        try:
            publisher.nc = SimpleNamespace(is_connected=True)
            publisher.js = js = LeaderlessStream(1.5)
            started = time.monotonic()
            assert await publisher._ensure_stream()
            return time.monotonic() - started, js.asked
        finally:
            publisher.executor.shutdown()

    took, asked = asyncio.run(run())
    assert took < 4.0 and asked >= 2, (took, asked)  # before: 5.2 s, 1 asked in time

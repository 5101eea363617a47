"""What one process of old kept to itself, held for the whole server when `--workers 2` serve one port.

One server with two workers (`shared`), used in file order:

- the API's request limits and write quota: a user gets the configured budget, not one per worker;
- the live stream: events posted through either worker reach streams held by either worker, in
  commit order, and a stream resumed (on whichever worker the new connection reaches) has no gap
  and no repeat;
- webhooks: each event delivered once, though both workers commit and both serve the routes;
- a replacement worker accepts no connection before it can check tokens (no 503 "signing keys
  are not loaded yet" while it starts).

Connections are spread by the kernel (SO_REUSEPORT) by their address and port: each test opens
many, and checks from the access log (`worker=K brain.access.api`) that both workers took part.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import signal
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest
import requests

from tests.sse import open_stream
from tests.support import METRICS_TOKEN, BrainServer, wait_until
from tests.test_auth_helpers import NO_LIMITS, bearer
from tests.test_stream import User
from tests.test_webhooks import LOCAL, Receiver

START_TIMEOUT = 120.0
USER_BURST = 60  # api.rate_limit_user_burst of the server (and a rate that adds next to nothing)
EVENTS_PER_MINUTE = 400  # api.max_events_per_minute: more than the other tests' users write
STREAMS = 12


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrainServer]:
    server = BrainServer(tmp_path_factory.mktemp("shared"), config={
        "server": {"workers": 2, "worker_max_restarts": 20},
        "auth": NO_LIMITS,
        "api": {"rate_limit_user_per_second": 0.01, "rate_limit_user_burst": USER_BURST, "stream_heartbeat_seconds": 30.0,
                "max_events_per_minute": EVENTS_PER_MINUTE},
        "metrics": {"enabled": True, "token": METRICS_TOKEN},
        "webhooks": LOCAL,
    })
    try:
        yield server.start(timeout=START_TIMEOUT)
    finally:
        server.close()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    # A connection per request: each lands on a worker of the kernel's choosing.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
        yield session


def log_size(server: BrainServer) -> int:
    return server.log_path.stat().st_size


def answered_by(server: BrainServer, since: int, method: str, path: str, status: int) -> Counter[str]:
    """How many requests each worker logged as answered (method, path prefix, status) after log offset `since`."""
    time.sleep(0.2)  # access lines are written in batches (brain.logs.ACCESS_FLUSH_SECONDS)
    text = server.log_path.read_bytes()[since:].decode(errors="replace")
    pattern = re.compile(rf"worker=(\d+) brain\.access\.api: {method} {re.escape(path)}\S* {status} ")
    return Counter(m.group(1) for m in pattern.finditer(text))


async def streams_ended(server: BrainServer, since: int) -> None:
    """Until streams closed since log offset `since` are logged by both workers (a stream's line is written as it ends).

    Waits on the event loop: the client's sockets close on its next turn.
    """
    deadline = time.monotonic() + 30
    while set(answered_by(server, since, "GET", "/events/stream", 200)) != {"1", "2"}:
        assert time.monotonic() < deadline, answered_by(server, since, "GET", "/events/stream", 200)
        await asyncio.sleep(0.2)


def notes(start: int, count: int) -> list[dict[str, Any]]:
    return [{"type": "note.created", "data": {"i": i}} for i in range(start, start + count)]


def test_a_users_request_limit_is_the_configured_one_across_workers(shared: BrainServer) -> None:
    user = User(shared)
    since = log_size(shared)
    codes = Counter(
        requests.get(f"{shared.api_url}/me", headers=bearer(user.jwt), timeout=10).status_code
        for _ in range(2 * USER_BURST)
    )
    assert set(codes) == {200, 429}, codes
    # One budget for both workers (a refill of 0.01/s may add one), not one per worker.
    assert USER_BURST <= codes[200] <= USER_BURST + 1, codes
    assert set(answered_by(shared, since, "GET", "/me", 429)) == {"1", "2"}


def test_a_users_write_quota_is_the_configured_one_across_workers(shared: BrainServer) -> None:
    user = User(shared)
    since = log_size(shared)
    accepted, refused = 0, 0
    for i in range(2 * EVENTS_PER_MINUTE // 20):  # batches of 20: twice the quota, within the request budget
        r = requests.post(f"{shared.api_url}/events", json=notes(20 * i, 20), headers=bearer(user.jwt), timeout=30)
        assert r.status_code in (201, 429), r.text
        if r.status_code == 201:
            accepted += 20
        else:
            assert r.json()["code"] == "EVENT_QUOTA_EXCEEDED", r.text
            refused += 1
    # One quota for both workers (its refill, 400 a minute, may add a batch), not one per worker.
    assert EVENTS_PER_MINUTE <= accepted <= EVENTS_PER_MINUTE * 1.1, (accepted, refused)
    assert set(answered_by(shared, since, "POST", "/events", 429)) == {"1", "2"}


async def test_events_posted_to_either_worker_reach_streams_on_both_in_commit_order(
    shared: BrainServer, http: aiohttp.ClientSession
) -> None:
    alice = User(shared)
    since = log_size(shared)
    streams = [await open_stream(http, f"{shared.api_url}/events/stream", token=alice.jwt) for _ in range(STREAMS)]
    try:
        # Which worker takes a connection is the kernel's choice: post rounds of ten until both
        # have answered some (all sixty on one worker happens once in 2**59).
        posted: list[int] = []
        for round_ in range(6):
            batches = (alice.post(http, notes(30 * round_ + 3 * i, 3)) for i in range(10))
            for answer in await asyncio.gather(*batches):
                posted += [e["id"] for e in answer["events"]]
            if set(answered_by(shared, since, "POST", "/events", 201)) == {"1", "2"}:
                break
        for stream in streams:
            got = [int(m.id or 0) for m in await stream.messages(len(posted), timeout=15)]
            assert got == sorted(posted) == alice.all_ids(), got
    finally:
        for stream in streams:
            stream.close()
    await streams_ended(shared, since)
    assert set(answered_by(shared, since, "POST", "/events", 201)) == {"1", "2"}


async def test_a_stream_resumed_on_either_worker_has_no_gap_and_no_repeat(
    shared: BrainServer, http: aiohttp.ClientSession
) -> None:
    alice = User(shared)
    await alice.post(http, notes(0, 50))
    since = log_size(shared)

    async def write() -> None:
        for i in range(15):
            await alice.post(http, notes(100 + 10 * i, 10))
            await asyncio.sleep(random.uniform(0, 0.05))

    writer = asyncio.create_task(write())
    got: list[int] = []
    rng = random.Random(19)
    while len(got) < 200:
        stream = await open_stream(http, f"{shared.api_url}/events/stream", token=alice.jwt,
                                   last_event_id=str(got[-1]) if got else "0")
        try:
            wanted = min(rng.randint(1, 25), 200 - len(got))
            got += [int(m.id or 0) for m in await stream.messages(wanted, timeout=10)]
        finally:
            stream.close()
    await writer
    assert got == alice.all_ids()
    await streams_ended(shared, since)


async def test_each_event_is_delivered_once_though_both_workers_commit(
    shared: BrainServer, http: aiohttp.ClientSession
) -> None:
    alice = User(shared)
    since = log_size(shared)
    with Receiver() as receiver:
        # Made through one worker, while the other commits too.
        async with http.post(f"{shared.api_url}/webhooks", json={"url": receiver.url}, headers=bearer(alice.jwt)) as r:
            assert r.status == 201, await r.text()
        posted: list[int] = []
        for answer in await asyncio.gather(*(alice.post(http, notes(2 * i, 2)) for i in range(20))):
            posted += [e["id"] for e in answer["events"]]
        wait_until(lambda: receiver.event_ids() == set(posted), timeout=30, what="every event delivered")
        time.sleep(2.0)  # long enough for a second sender's copies to arrive
        ids = [body["data"]["id"] for _, body in receiver.deliveries()]
    assert sorted(ids) == sorted(posted), Counter(ids).most_common(3)
    assert set(answered_by(shared, since, "POST", "/events", 201)) == {"1", "2"}


def test_a_replacement_worker_takes_connections_only_once_it_can_check_tokens(shared: BrainServer) -> None:
    user = User(shared)
    statuses: Counter[int | str] = Counter()
    stop = threading.Event()

    def hammer() -> None:
        while not stop.is_set():
            try:
                r = requests.get(f"{shared.api_url}/events", headers=bearer(user.jwt), timeout=30, params={"limit": 1})
            except requests.RequestException as exc:
                statuses[type(exc).__name__] += 1
            else:
                statuses[r.status_code] += 1

    # Past the user's small budget the answers are 429; the token is checked before the budget,
    # so a worker without the signing keys would still answer 503.
    threads = [threading.Thread(target=hammer) for _ in range(4)]
    since = log_size(shared)
    pid = shared.health()["workers"]["2"]["pid"]
    for t in threads:
        t.start()
    try:
        time.sleep(0.5)
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: "worker 2 serves again" in shared.log_path.read_bytes()[since:].decode(errors="replace"),
                   timeout=60, what="worker 2 serving again")
        time.sleep(2.0)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert 503 not in statuses, statuses
    assert statuses[200] > 0, statuses

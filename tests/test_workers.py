"""`brain serve --workers N`: a master and its workers behind each port (brain.workers, docs/workers.md).

Real servers, each shared by the tests that can share it (they run in file order):

- `pair`: two workers serving; every port answered by both, limits and lockouts held by the
  master for both, a deletion and an API key revocation effective in both before the answer,
  one user's database written by both, /health and /metrics for the whole server;
- `pair` also: one embedded nats-server (the master's), and every event on JetStream once, published
  by the worker that wrote it (no duplicates);
- `pair` also: search fields named through either worker, each given its own column of the index;
- on a server of its own: a quarantined store found by both workers as they start is repaired
  once, and neither keeps retrying it;
- `crash`: kill -9 of a worker under load (the other answers, the master forks a replacement
  within 2 s, every acknowledged event is there exactly once, in the store and on JetStream),
  each mail account's lease held by one worker, moving to another process when its owner dies;
  and, on a server of its own, the master giving up (exit 1) when workers die too often;
- `lifecycle`: scheduled key rotation done by the primary worker alone, and SIGTERM stopping
  every process within `shutdown_timeout`.

A new connection per request (plain `requests.get`) lands on any worker: the kernel spreads
connections over the workers' SO_REUSEPORT sockets by their address and port. Which worker
answered is read from the access log (`worker=K brain.access.<role>`).

The outbox drain lock is checked without a server: two processes with the same user's store open.
"""

from __future__ import annotations

import datetime
import itertools
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pykka
import pytest
import requests

from brain.api.events import new_event
from brain.api.quarantine import move_aside
from brain.api.user_store import AppendMany, AppendRequest, OutboxBatch, OutboxBusy, UserStore, marker_path, store_path
from brain.testing.fakes.gmail import FakeGmail
from tests.support import METRICS_TOKEN, REPO, BrainServer, wait_until
from tests.test_auth_helpers import NO_LIMITS, PASSWORD, bearer, unique_email
from tests.test_mail_engine import gmail_settings
from tests.test_reliability_helpers import (
    User, WriteLoad, all_events, check_events, integrity_problems, stream_ids, wait_outbox_empty,
)

# Worker 1 starts, then the others: on a loaded machine that takes a while.
START_TIMEOUT = 120.0
IP_LIMIT = 20  # auth.rate_limit_ip_per_minute of the pair
FAILURES = 4  # auth.rate_limit_account_failures of the pair
_ips = itertools.count(1)


def client_ip() -> dict[str, str]:
    """A fresh client address (the servers trust 127.0.0.1's X-Forwarded-For): each test its own limits."""
    n = next(_ips)
    return {"X-Forwarded-For": f"10.{os.getpid() % 250}.{n // 250}.{n % 250}"}


def worker_pids(server: BrainServer) -> set[int]:
    """The master's live worker processes (its children, the nats-server aside)."""
    return {pid for pid, nats_server in _children(server) if not nats_server}


def _children(server: BrainServer) -> list[tuple[int, bool]]:
    """The master's live children: (pid, whether it is a nats-server)."""
    assert server.proc is not None
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        if ppid == server.proc.pid and stat[stat.rindex(")") + 2] != "Z":
            found.append((int(entry.name), b"nats-server" in cmdline))
    return found


def answered_by(server: BrainServer, since: int, role: str, status: int | None = None) -> set[str]:
    """The workers that logged an access line of `role` (with this status) after log offset `since`."""
    text = server.log_path.read_bytes()[since:].decode(errors="replace")
    pattern = re.compile(rf"worker=(\d+) brain\.access\.{role}: \S+ \S+ (\d+) ")
    return {m.group(1) for m in pattern.finditer(text) if status is None or int(m.group(2)) == status}


def log_size(server: BrainServer) -> int:
    return server.log_path.stat().st_size


def sign_up(server: BrainServer) -> dict[str, Any]:
    """A new user: the sign-up body ({token, user, jwt, ...})."""
    r = requests.post(f"{server.auth_url}/api/auth/sign-up/email", headers=client_ip(), timeout=30,
                      json={"name": "W", "email": unique_email("workers"), "password": PASSWORD})
    assert r.status_code == 200, r.text
    return r.json()


@contextmanager
def serving(server: BrainServer) -> Iterator[BrainServer]:
    """The server started (its workers start one after the other: allow them time), stopped after."""
    try:
        yield server.start(timeout=START_TIMEOUT)
    finally:
        server.close()


def flush_access_log() -> None:
    time.sleep(0.2)  # access lines are written in batches (brain.logs.ACCESS_FLUSH_SECONDS)


# --- the pair: two workers ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrainServer]:
    server = BrainServer(tmp_path_factory.mktemp("pair"), config={
        "server": {"workers": 2, "trusted_proxies": ["127.0.0.1"]},
        "auth": {"rate_limit_ip_per_minute": IP_LIMIT, "rate_limit_account_failures": FAILURES},
        "metrics": {"enabled": True, "token": METRICS_TOKEN},
    })
    with serving(server):
        yield server


def test_both_workers_answer_on_one_port_for_each_role(pair: BrainServer) -> None:
    since = log_size(pair)
    assert len(worker_pids(pair)) == 2
    # One embedded nats-server for the whole server: the master's.
    assert sum(nats_server for _pid, nats_server in _children(pair)) == 1
    for _ in range(24):
        assert requests.get(f"{pair.api_url}/health", timeout=10).status_code == 200
        assert requests.get(f"{pair.auth_url}/api/auth/ok", timeout=10).status_code == 200
    flush_access_log()
    assert answered_by(pair, since, "api") == {"1", "2"}
    assert answered_by(pair, since, "auth") == {"1", "2"}


def test_an_ip_limit_holds_across_workers(pair: BrainServer) -> None:
    since = log_size(pair)
    ip = client_ip()
    codes = [
        requests.post(f"{pair.auth_url}/api/auth/sign-in/email", headers=ip, timeout=10,
                      json={"email": unique_email("nobody"), "password": "wrong-password"}).status_code
        for _ in range(2 * IP_LIMIT)
    ]
    flush_access_log()
    assert answered_by(pair, since, "auth", 429) == {"1", "2"}  # both refused: one shared window
    assert codes.count(401) == IP_LIMIT and codes.count(429) == IP_LIMIT, Counter(codes)


def test_a_lockout_holds_across_workers(pair: BrainServer) -> None:
    user = sign_up(pair)["user"]
    since = log_size(pair)
    codes = [
        requests.post(f"{pair.auth_url}/api/auth/sign-in/email", headers=client_ip(), timeout=10,
                      json={"email": user["email"], "password": "not-the-password"}).status_code
        for _ in range(FAILURES + 24)  # 24 refusals: all on one worker happens once in 2**23
    ]
    assert codes[:FAILURES] == [401] * FAILURES and set(codes[FAILURES:]) == {429}, codes
    flush_access_log()
    assert answered_by(pair, since, "auth", 429) == {"1", "2"}
    # Locked out wherever the right password arrives.
    for _ in range(6):
        r = requests.post(f"{pair.auth_url}/api/auth/sign-in/email", headers=client_ip(), timeout=10,
                          json={"email": user["email"], "password": PASSWORD})
        assert r.status_code == 429, r.text


def test_a_deletion_is_effective_in_every_worker_before_it_is_answered(pair: BrainServer) -> None:
    body = sign_up(pair)
    me = bearer(body["jwt"])
    since = log_size(pair)
    for _ in range(16):  # both workers have the token in their caches now
        assert requests.get(f"{pair.api_url}/me", headers=me, timeout=10).status_code == 200
    flush_access_log()
    assert answered_by(pair, since, "api", 200) == {"1", "2"}
    r = requests.post(f"{pair.auth_url}/api/auth/delete-user", json={"password": PASSWORD},
                      headers={**bearer(body["token"]), **client_ip()}, timeout=60)
    assert r.status_code == 200, r.text
    since = log_size(pair)
    codes = [requests.get(f"{pair.api_url}/me", headers=me, timeout=10).status_code for _ in range(16)]
    assert codes == [401] * 16
    flush_access_log()
    assert answered_by(pair, since, "api", 401) == {"1", "2"}


def test_a_revoked_api_key_is_refused_by_every_worker_before_it_is_answered(pair: BrainServer) -> None:
    body = sign_up(pair)
    r = requests.post(f"{pair.auth_url}/api/auth/api-key/create", json={"name": "k"},
                      headers={**bearer(body["token"]), **client_ip()}, timeout=15)
    assert r.status_code == 200, r.text
    key = {"x-api-key": r.json()["key"]}
    since = log_size(pair)
    for _ in range(16):
        assert requests.get(f"{pair.api_url}/me", headers=key, timeout=10).status_code == 200
    flush_access_log()
    assert answered_by(pair, since, "api", 200) == {"1", "2"}
    r = requests.post(f"{pair.auth_url}/api/auth/api-key/delete", json={"keyId": r.json()["id"]},
                      headers={**bearer(body["token"]), **client_ip()}, timeout=15)
    assert r.status_code == 200, r.text
    codes = [requests.get(f"{pair.api_url}/me", headers=key, timeout=10).status_code for _ in range(16)]
    assert codes == [401] * 16


def test_both_workers_write_one_users_database(pair: BrainServer) -> None:
    users = [sign_up(pair) for _ in range(4)]
    results: list[int] = []
    ids: list[int] = []
    lock = threading.Lock()
    since = log_size(pair)

    def write(user: dict[str, Any], n: int) -> None:
        for i in range(n):
            r = requests.post(f"{pair.api_url}/events", headers=bearer(user["jwt"]), timeout=30,
                              json={"type": "note.created", "data": {"i": i}})
            with lock:
                results.append(r.status_code)
                if r.status_code == 201:
                    ids.append(r.json()["id"])

    # Every user's very first writes come from both workers at once: both create the database.
    threads = [threading.Thread(target=write, args=(user, 15)) for user in users for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert Counter(results) == {201: 4 * 5 * 15}
    flush_access_log()
    assert answered_by(pair, since, "api", 201) == {"1", "2"}
    for user in users:
        r = requests.get(f"{pair.api_url}/events", params={"limit": 1000}, headers=bearer(user["jwt"]), timeout=30)
        got = [e["id"] for e in r.json()["events"]]
        assert len(got) == len(set(got)) == 5 * 15
    assert "database is locked" not in pair.log_text(), [l for l in pair.log_text().splitlines() if "locked" in l or "Error" in l][:20]


def test_health_and_metrics_answer_for_the_whole_server(pair: BrainServer) -> None:
    detail = pair.health()
    assert detail["status"] == "ok", detail["problems"]
    workers = detail["workers"]
    assert workers["workers"] == 2 and workers["serving"] == 2
    assert {workers["1"]["pid"], workers["2"]["pid"]} == worker_pids(pair)
    # Integers add up; each worker's own figures are beside them.
    assert detail["stores"]["max_open"] == workers["1"]["stores"]["max_open"] + workers["2"]["stores"]["max_open"]
    r = requests.get(f"{pair.api_url}/metrics", headers=bearer(METRICS_TOKEN), timeout=10)
    assert r.status_code == 200, r.text
    assert 'worker="1"' in r.text and 'worker="2"' in r.text
    assert "brain_workers 2.0" in r.text and "brain_workers_serving 2.0" in r.text
    assert len(re.findall(r"^# TYPE brain_http_requests_total counter$", r.text, re.M)) == 1


def test_jetstream_gets_every_event_once_from_the_worker_that_wrote_it(pair: BrainServer) -> None:
    # Both workers write the same users' databases: neither publishes what the other wrote
    # (JetStream would drop a second copy by its Nats-Msg-Id, and count it as a duplicate).
    users = [sign_up(pair) for _ in range(3)]

    def write(user: dict[str, Any]) -> None:
        for i in range(20):
            r = requests.post(f"{pair.api_url}/events", headers=bearer(user["jwt"]), timeout=30,
                              json={"type": "note.created", "data": {"i": i}})
            assert r.status_code == 201, r.text

    threads = [threading.Thread(target=write, args=(user,)) for user in users for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wait_outbox_empty(pair)
    on_stream = stream_ids(pair)
    for user in users:
        r = requests.get(f"{pair.api_url}/events", params={"limit": 1000}, headers=bearer(user["jwt"]), timeout=30)
        stored = {f"{user['user']['id']}:{e['id']}" for e in r.json()["events"]}
        assert len(stored) == 60 and all(on_stream[key] == 1 for key in stored), Counter(on_stream[k] for k in stored)
    nats_figures = pair.health()["nats"]
    assert nats_figures["duplicates"] == 0, nats_figures
    assert nats_figures["published"] == sum(on_stream.values()), (nats_figures, sum(on_stream.values()))


def test_fields_named_through_either_worker_are_indexed_and_found_through_both(pair: BrainServer) -> None:
    # Both workers have the user's store open (and its map of search fields) before any field
    # is named; then each names new ones: neither may give a column the other already gave.
    user = sign_up(pair)
    since = log_size(pair)
    for _ in range(8):
        r = requests.get(f"{pair.api_url}/events", headers=bearer(user["jwt"]), timeout=30)
        assert r.status_code == 200, r.text
    # Which worker takes a connection is the kernel's choice: name fields until both have named
    # some (at least twelve; all thirty-two through one worker happens once in 2**31).
    named = 0
    while named < 12 or (named < 32 and answered_by(pair, since, "api", 201) != {"1", "2"}):
        r = requests.post(f"{pair.api_url}/events", headers=bearer(user["jwt"]), timeout=30,
                          json={"type": "note.created", "data": {f"field{named}": f"wordnumber{named} in a sentence"}})
        assert r.status_code == 201, r.text
        named += 1
        if named >= 12:
            flush_access_log()
    assert answered_by(pair, since, "api", 201) == {"1", "2"}
    for i in range(named):
        r = requests.get(f"{pair.api_url}/search", params={"q": f"wordnumber{i}"}, headers=bearer(user["jwt"]),
                         timeout=30)
        assert r.status_code == 200, r.text
        assert [hit["event"]["data"] for hit in r.json()["results"]] == [{f"field{i}": f"wordnumber{i} in a sentence"}]


def test_a_quarantined_store_is_repaired_once_and_every_worker_lets_it_go(tmp_path: Path) -> None:
    # Every worker finds the quarantined store as it starts and asks for its repair: one rebuilds
    # it, and the other, finding it rebuilt, drops it rather than retry a repair that cannot be.
    server = BrainServer(tmp_path, config={
        "server": {"workers": 2}, "auth": NO_LIMITS, "metrics": {"enabled": True, "token": METRICS_TOKEN},
        "api": {"auto_repair": True, "store_idle_seconds": 0.5},
    })
    with serving(server):
        user = sign_up(server)
        for i in range(10):
            r = requests.post(f"{server.api_url}/events", headers=bearer(user["jwt"]), timeout=30,
                              json={"type": "note.created", "data": {"i": i}})
            assert r.status_code == 201, r.text
        wait_outbox_empty(server)
        wait_until(lambda: server.health()["stores"]["open"] == 0, timeout=30, what="the stores to close")
        server.stop()
        move_aside(store_path(server.data_dir, user["user"]["id"]), user["user"]["id"], "test", "moved aside by the test")
        server.start(timeout=START_TIMEOUT)

        def repairs() -> list[dict[str, Any]]:
            workers = server.health()["workers"]
            return [workers[index]["stores"]["auto_repair"] for index in ("1", "2")]

        wait_until(lambda: all(not figures["queued"] for figures in repairs()), timeout=60,
                   what=f"both workers to be done with the repair: {repairs()}")
        assert sum(figures["repaired"] for figures in repairs()) == 1, repairs()
        for _ in range(8):  # on both workers
            r = requests.get(f"{server.api_url}/events", headers=bearer(user["jwt"]), timeout=30)
            assert r.status_code == 200 and len(r.json()["events"]) == 10, r.text


# --- one drain per user's outbox, across processes ------------------------------------------------------


class _Quiet:
    def notify(self, user_id: str, events: list[Any]) -> None:
        pass


def _store(data: Path, user: str) -> pykka.ActorRef[Any]:
    return UserStore.start(user_id=user, data_path=data, outbox=_Quiet(), idle_seconds=60)


def hold_store(data: str, user: str, drain: str) -> None:
    """(In a child process) open the user's store, write 3 events, start a drain if asked, and wait."""
    ref = _store(Path(data), user)
    events = [new_event({"type": "note.created", "data": {"i": i}}, max_bytes=10_000) for i in range(3)]
    ref.ask(AppendMany([AppendRequest(events)]))
    if drain == "drain":
        assert len(ref.ask(OutboxBatch(0, 2))) == 2  # a full batch: the drain goes on
    print("holding", flush=True)
    sys.stdin.read()
    ref.stop()


def _holder(data: Path, user: str, drain: str) -> subprocess.Popen[str]:
    child = subprocess.Popen(
        [sys.executable, "-c", f"from tests.test_workers import hold_store; hold_store({str(data)!r}, {user!r}, {drain!r})"],
        cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    assert child.stdout is not None and child.stdout.readline().strip() == "holding"
    return child


def test_one_process_at_a_time_drains_a_users_outbox(tmp_path: Path) -> None:
    user = "drainuser1"
    child = _holder(tmp_path, user, "drain")
    ref = _store(tmp_path, user)
    try:
        with pytest.raises(OutboxBusy):
            ref.ask(OutboxBatch(0, 10))
        child.kill()  # the kernel drops its locks with it
        child.wait()
        assert len(ref.ask(OutboxBatch(0, 10))) == 3
    finally:
        ref.stop()
        child.kill()
        child.wait()


def _acknowledge_all(data: Path, user: str) -> None:
    """Empty a user's outbox, as acknowledgements from JetStream would."""
    db = sqlite3.connect(data / "users" / user / "events.db")
    try:
        db.execute("DELETE FROM outbox")
        db.commit()
    finally:
        db.close()


def test_the_outbox_marker_stays_while_another_process_has_the_store_open(tmp_path: Path) -> None:
    user = "drainuser2"
    marker = marker_path(tmp_path, user)
    child = _holder(tmp_path, user, "open")
    try:
        _acknowledge_all(tmp_path, user)
        ref = _store(tmp_path, user)
        ref.stop()  # empty outbox, but the other process has the store open: it may still have rows
        assert marker.exists()
        child.communicate("")  # the last one out, with an empty outbox, removes it
        assert not marker.exists()
    finally:
        child.kill()
        child.wait()


# --- the crash server: kill -9 of a worker -------------------------------------------------------------

LEASE_TTL = 5.0  # mail.lease_ttl_seconds of the crash server


@pytest.fixture(scope="module")
def gmail() -> Iterator[FakeGmail]:
    yield from FakeGmail.running()


@pytest.fixture(scope="module")
def crash(tmp_path_factory: pytest.TempPathFactory, gmail: FakeGmail) -> Iterator[BrainServer]:
    server = BrainServer(tmp_path_factory.mktemp("crash"), config={
        "server": {"workers": 2, "worker_max_restarts": 20},
        "auth": NO_LIMITS,
        "metrics": {"enabled": True, "token": METRICS_TOKEN},
        "mail": {"sync_interval_seconds": 0.5, "retry_base_seconds": 0.2, "lease_ttl_seconds": LEASE_TTL},
        "plugins": {"gmail": gmail_settings(gmail)},
    })
    with serving(server):
        yield server


def worker_pid(server: BrainServer, index: int) -> int:
    """The pid of worker `index`, as the server's /health says."""
    pid = server.health()["workers"][str(index)]["pid"]
    assert isinstance(pid, int)
    return pid


def kill_worker(server: BrainServer, index: int) -> tuple[int, float]:
    """kill -9 worker `index`; (its pid, when)."""
    pid = worker_pid(server, index)
    os.kill(pid, signal.SIGKILL)
    return pid, time.monotonic()


def serving_again(server: BrainServer, since: int, index: int, timeout: float = 30.0) -> None:
    wait_until(lambda: f"worker {index} serves again" in server.log_path.read_bytes()[since:].decode(errors="replace"),
               timeout=timeout, what=f"worker {index} serving again")


def test_a_killed_worker_is_replaced_at_once_and_no_acknowledged_event_is_lost(crash: BrainServer) -> None:
    users = [User.sign_up(crash) for _ in range(6)]
    load = WriteLoad(crash.api_url, users, threads=6).start()
    try:
        load.wait_acked(150)
        since = log_size(crash)
        victim, killed_at = kill_worker(crash, 2)
        # The master forks the replacement at once (it serves once its runtime is up).
        replaced = wait_until(lambda: (pids := worker_pids(crash)) and victim not in pids and len(pids) == 2,
                              timeout=10, interval=0.01, what="a replacement worker")
        assert replaced and time.monotonic() - killed_at <= 2.0, time.monotonic() - killed_at
        # Meanwhile worker 1 answers (whatever reached worker 2's socket waits for its replacement).
        load.wait_acked(100, timeout=30)
        serving_again(crash, since, 2)
        load.wait_acked(150, timeout=30)
    finally:
        load.stop()
    load.settle()
    assert load.errors == [], load.errors[:5]
    stored = {u.id: all_events(crash, u) for u in users}
    assert check_events(load, stored) == []
    # On JetStream: every stored event exactly once (the replacement drained what its predecessor
    # had not seen acknowledged; a second copy is dropped by its Nats-Msg-Id).
    wait_outbox_empty(crash)
    on_stream = stream_ids(crash)
    for user_id, events in stored.items():
        keys = {f"{user_id}:{e['id']}" for e in events}
        assert {k for k in on_stream if k.startswith(f"{user_id}:")} == keys
        assert all(on_stream[k] == 1 for k in keys)
    assert integrity_problems(crash.data_dir) == []


def _mail_client(server: BrainServer, gmail: FakeGmail, address: str) -> tuple[dict[str, str], str]:
    """A new user with one Gmail account connected: (their headers, the account id)."""
    user = sign_up(server)
    headers = bearer(user["jwt"])
    r = requests.post(f"{server.api_url}/mail/connect", headers=headers, timeout=30,
                      json={"provider": "gmail", "refresh_token": gmail.issue_refresh_token(address)})
    assert r.status_code == 201, r.text
    return headers, r.json()["account"]["account"]


def _accounts(server: BrainServer, headers: dict[str, str]) -> dict[str, dict[str, Any]]:
    r = requests.get(f"{server.api_url}/mail/status", headers=headers, timeout=30)
    assert r.status_code == 200, r.text
    return {a["account"]: a for a in r.json()["accounts"]}


def _received(server: BrainServer, headers: dict[str, str]) -> list[str]:
    """The message ids of the user's mail.message.received events ([] from a worker still starting)."""
    r = requests.get(f"{server.api_url}/events", params={"limit": 1000, "type": "mail.message.received"},
                     headers=headers, timeout=30)
    if r.status_code == 503:
        return []  # a replacement worker answers so until it has the issuer's keys
    assert r.status_code == 200, r.text
    return [e["data"]["message_id"] for e in r.json()["events"]]


def _owners(server: BrainServer) -> dict[str, list[str]]:
    """Which worker (by index) holds the lease of each account."""
    found: dict[str, list[str]] = {}
    workers = server.health()["workers"]
    for index in ("1", "2"):
        for account in workers[index]["mail"]["accounts"]:
            found.setdefault(account, []).append(index)
    return found


def _all_owned(server: BrainServer, accounts: set[str]) -> dict[str, list[str]] | None:
    owners = _owners(server)
    return owners if set(owners) == accounts else None


def test_each_mail_account_is_synced_by_one_worker_and_moves_when_it_dies(crash: BrainServer, gmail: FakeGmail) -> None:
    # The worker that accepts an account's connect takes its lease, and which worker accepts a
    # connection is the kernel's choice (SO_REUSEPORT): connect accounts until both workers own
    # some (six at least; a run of sixteen on one worker happens once in 2**15).
    clients: dict[str, tuple[str, dict[str, str]]] = {}
    owners: dict[str, list[str]] = {}
    while len(clients) < 6 or ({w for workers in owners.values() for w in workers} != {"1", "2"}
                               and len(clients) < 16):
        address = f"owner{len(clients)}@example.com"
        gmail.populate(address, 15, seed=len(clients))
        headers, account = _mail_client(crash, gmail, address)
        clients[account] = (address, headers)
        owners = wait_until(lambda: _all_owned(crash, set(clients)), timeout=15, what="every account owned")
    for account, (_address, headers) in clients.items():
        wait_until(lambda: _accounts(crash, headers)[account]["state"] == "idle", timeout=30, what=f"{account} idle")
    owners = wait_until(lambda: _all_owned(crash, set(clients)), timeout=15, what="every account owned")
    assert all(len(workers) == 1 for workers in owners.values()), owners  # one worker each
    assert {w for (w,) in owners.values()} == {"1", "2"}, owners  # spread over both
    for account, (_address, headers) in clients.items():
        got = _received(crash, headers)
        assert len(got) == len(set(got)) == 15, (account, len(got))

    moved = [account for account, (w,) in owners.items() if w == "2"]
    victim, killed_at = kill_worker(crash, 2)
    fresh = {account: gmail.add_message(clients[account][0], subject="after the crash") for account in moved}

    def resumed() -> bool:
        return all(fresh[a] in _received(crash, clients[a][1]) for a in moved)

    wait_until(resumed, timeout=LEASE_TTL + 5, interval=0.1, what="the dead owner's accounts synced elsewhere")
    assert time.monotonic() - killed_at <= LEASE_TTL + 5
    owners = wait_until(lambda: _all_owned(crash, set(clients)), timeout=15, what="every account owned again")
    assert all(len(workers) == 1 for workers in owners.values()), owners
    for account, (_address, headers) in clients.items():
        got = _received(crash, headers)
        assert len(got) == len(set(got)) == (16 if account in moved else 15), (account, len(got))
    assert str(victim) not in " ".join(crash.health()["workers"][w]["mail"]["owner"] for w in ("1", "2"))


def test_the_master_stops_everything_when_workers_die_too_often(tmp_path: Path) -> None:
    server = BrainServer(tmp_path, config={"server": {"workers": 2, "worker_max_restarts": 1,
                                                       "worker_restart_window_seconds": 60.0}})
    with serving(server):
        since = log_size(server)
        kill_worker(server, 2)
        serving_again(server, since, 2)
        workers = worker_pids(server)
        kill_worker(server, 2)
        assert server.proc is not None
        assert server.proc.wait(timeout=30) == 1
        assert "more than 1 restarts within 60.0s: stopping the server" in server.log_text()
        wait_until(lambda: not any(Path(f"/proc/{pid}").exists() for pid in workers), timeout=5,
                   what="every worker gone")


# --- lifecycle: once-per-server duties, and stopping -------------------------------------------------------


SHUTDOWN_TIMEOUT = 6.0


@pytest.fixture(scope="module")
def lifecycle(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrainServer]:
    server = BrainServer(tmp_path_factory.mktemp("lifecycle"), config={
        "server": {"workers": 2, "shutdown_timeout": SHUTDOWN_TIMEOUT},
        "auth": {**NO_LIMITS, "key_poll_seconds": 0.2, "key_rotation_days": 1.5 / 86400,
                 "key_publish_delay_seconds": 0.5},
        "metrics": {"enabled": True, "token": METRICS_TOKEN},
    })
    with serving(server):
        yield server


def test_scheduled_key_rotation_is_done_by_the_primary_worker_alone(lifecycle: BrainServer) -> None:
    def rotations() -> list[str]:
        return re.findall(r"worker=(\S+) \S+: scheduled key rotation", lifecycle.log_text())

    wait_until(lambda: len(rotations()) >= 3, timeout=30, what="three scheduled rotations")
    assert set(rotations()) == {"1"}
    # Every worker publishes the keys the primary made (the key poller of each).
    since = log_size(lifecycle)
    seen = set()
    for _ in range(16):
        r = requests.get(f"{lifecycle.auth_url}/api/auth/jwks", timeout=10)
        assert r.status_code == 200
        seen.add(len(r.json()["keys"]))
    flush_access_log()
    assert answered_by(lifecycle, since, "auth", 200) == {"1", "2"}
    assert min(seen) >= 3


def test_sigterm_stops_every_process_within_shutdown_timeout(lifecycle: BrainServer) -> None:
    assert lifecycle.proc is not None
    workers = worker_pids(lifecycle)
    nats_pid = int((lifecycle.data_dir / "nats" / "nats-server.pid").read_text().strip())
    assert len(workers) == 2 and Path(f"/proc/{nats_pid}").exists()
    since = log_size(lifecycle)
    lifecycle.proc.send_signal(signal.SIGTERM)
    assert lifecycle.proc.wait(timeout=SHUTDOWN_TIMEOUT + 30) == 0
    assert not any(Path(f"/proc/{pid}").exists() for pid in (*workers, nats_pid))
    # From the master's hearing of the signal to the last process gone (the log's clock: whole
    # seconds; on a loaded machine the signal may reach a starved process late).
    text = lifecycle.log_path.read_bytes()[since:].decode(errors="replace")
    heard = re.search(r"^(\S+) INFO +worker=master brain\.master: received SIGTERM", text, re.M)
    done = re.search(r"^(\S+) INFO +worker=master brain\.master: shutdown complete", text, re.M)
    assert heard and done, text[-3000:]
    took = (datetime.datetime.fromisoformat(done.group(1)) - datetime.datetime.fromisoformat(heard.group(1))).total_seconds()
    assert took <= SHUTDOWN_TIMEOUT + 1, took

"""The API role's request rate limits, over HTTP: per user and per client address, 429 with Retry-After."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from brain.api.limits import TokenBuckets
from brain.workers import shared_buckets
from brain.workers.shared_buckets import SharedTokenBuckets
from tests.support import BrainServer
from tests.test_auth_helpers import NO_LIMITS, bearer, new_user


def burst_until_refused(url: str, headers: dict[str, str], attempts: int = 50) -> tuple[int, requests.Response]:
    """Requests until one is refused: how many passed, and the refusal."""
    with requests.Session() as http:
        for passed in range(attempts):
            r = http.get(url, headers=headers, timeout=10)
            if r.status_code == 429:
                return passed, r
            assert r.status_code in (200, 401), r.text
    raise AssertionError(f"no 429 within {attempts} requests")


def test_a_user_over_their_limit_gets_429_and_others_do_not(make_server: Any) -> None:
    server: BrainServer = make_server(config={"auth": NO_LIMITS, "api": {
        "rate_limit_user_per_second": 0.5, "rate_limit_user_burst": 5, "rate_limit_ip_per_second": 0,
    }}).start()
    alice, bob = new_user(server), new_user(server)
    passed, refused = burst_until_refused(f"{server.api_url}/me", bearer(alice["jwt"]))
    assert passed == 5
    assert refused.json()["code"] == "RATE_LIMITED"
    assert 1 <= int(refused.headers["Retry-After"]) <= 2
    # Every route counts, writes too; Bob has a limit of his own.
    r = requests.post(f"{server.api_url}/events", json={"type": "a.b", "data": 1}, headers=bearer(alice["jwt"]), timeout=10)
    assert r.status_code == 429
    assert requests.get(f"{server.api_url}/me", headers=bearer(bob["jwt"]), timeout=10).status_code == 200
    # After Retry-After, Alice may go on.
    time.sleep(int(refused.headers["Retry-After"]) + 0.2)
    assert requests.get(f"{server.api_url}/me", headers=bearer(alice["jwt"]), timeout=10).status_code == 200
    assert server.health()["rate_limits"]["refused_user"] >= 2


def test_an_address_over_its_limit_gets_429_before_its_credentials_are_looked_at(make_server: Any) -> None:
    server: BrainServer = make_server(config={
        "auth": NO_LIMITS,
        "api": {"rate_limit_ip_per_second": 0.5, "rate_limit_ip_burst": 8, "rate_limit_user_per_second": 0},
        # Requests come from 127.0.0.1: as a proxy, it may name the clients it forwards.
        "server": {"trusted_proxies": ["127.0.0.1"]},
    }).start()
    # Bad tokens and public routes count against the address too.
    passed, refused = burst_until_refused(f"{server.api_url}/me", {"Authorization": "Bearer junk",
                                                                   "X-Forwarded-For": "203.0.113.7"})
    assert passed == 8 and refused.json()["code"] == "RATE_LIMITED" and "Retry-After" in refused.headers
    r = requests.get(f"{server.api_url}/health", headers={"X-Forwarded-For": "203.0.113.7"}, timeout=10)
    assert r.status_code == 429
    # Another client behind the same proxy is not held back.
    r = requests.get(f"{server.api_url}/health", headers={"X-Forwarded-For": "203.0.113.8"}, timeout=10)
    assert r.status_code == 200


def test_limits_at_zero_are_off(make_server: Any) -> None:
    server: BrainServer = make_server(config={"auth": NO_LIMITS, "api": {
        "rate_limit_user_per_second": 0, "rate_limit_ip_per_second": 0, "rate_limit_user_burst": 1,
        "rate_limit_ip_burst": 1,
    }}).start()
    user = new_user(server)
    with requests.Session() as http:
        assert all(http.get(f"{server.api_url}/me", headers=bearer(user["jwt"]), timeout=10).status_code == 200
                   for _ in range(30))


def test_token_buckets_refill_at_their_rate_and_stay_bounded() -> None:
    buckets = TokenBuckets(rate=2.0, burst=3, max_keys=100)
    assert [buckets.take("a", 0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert buckets.take("a", 0.0) == 0.5  # one token short, at 2 a second
    assert buckets.take("a", 0.5) == 0.0
    assert buckets.take("b", 0.5) == 0.0  # a key of its own
    for i in range(500):
        buckets.take(f"k{i}", 1000.0 + i)
    assert len(buckets) <= 100


def test_shared_buckets_give_no_time_back_when_another_worker_counted_a_moment_later(tmp_path: Path) -> None:
    # Two workers' views of one table; the second read the clock just before the first counted
    # (each reads it before taking the lock). At a high rate, a negative moment was a big debt.
    first = SharedTokenBuckets(tmp_path / "buckets", rate=1e9, burst=1000, max_keys=16)
    second = SharedTokenBuckets(tmp_path / "buckets", rate=1e9, burst=1000, max_keys=16)
    assert first.take("u", 10.0) == 0.0
    assert [second.take("u", 10.0 - 1e-6) for _ in range(999)] == [0.0] * 999
    assert second.take("u", 10.0 - 1e-6) > 0  # the burst is spent: no token came from a step back
    assert first.take("u", 10.0 + 1e-6) == 0.0  # a microsecond at 1e9/s refills it


@pytest.fixture(params=["mutex", "flock"])
def lock_kind(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Shared buckets locked by their robust mutex, or by flock where the C library has none."""
    if request.param == "flock":
        monkeypatch.setattr(shared_buckets, "_PTHREAD", None)
    return str(request.param)


def test_shared_buckets_go_on_when_a_worker_died_holding_their_lock(tmp_path: Path, lock_kind: str) -> None:
    # kill -9 can land between lock and unlock: the next worker must not wait forever.
    path = tmp_path / "buckets"
    SharedTokenBuckets(path, rate=1.0, burst=2, max_keys=16)
    code = (
        "import os; import brain.workers.shared_buckets as m; "
        + ("m._PTHREAD = None; " if lock_kind == "flock" else "")
        + f"b = m.SharedTokenBuckets({str(path)!r}, rate=1.0, burst=2, max_keys=16); b._lock(); os.kill(os.getpid(), 9)"
    )
    died = subprocess.run([sys.executable, "-c", code], timeout=30)
    assert died.returncode == -signal.SIGKILL
    buckets = SharedTokenBuckets(path, rate=1.0, burst=2, max_keys=16)
    result: list[float] = []
    thread = threading.Thread(target=lambda: result.extend(buckets.take("u", 0.0) for _ in range(3)), daemon=True)
    thread.start()
    thread.join(10)
    assert result == [0.0, 0.0, 1.0]
    assert buckets.available("u", 0.5) == 0.5


def test_shared_buckets_are_taken_by_one_at_a_time(tmp_path: Path, lock_kind: str) -> None:
    # Two views of one table, as two workers hold them: a take waits while the other holds the lock.
    buckets = SharedTokenBuckets(tmp_path / "buckets", rate=1.0, burst=2, max_keys=16)
    other = SharedTokenBuckets(tmp_path / "buckets", rate=1.0, burst=2, max_keys=16)
    done = threading.Event()
    buckets._lock()
    try:
        threading.Thread(target=lambda: (other.take("u", 0.0), done.set()), daemon=True).start()
        assert not done.wait(0.3)
    finally:
        buckets._unlock()
    assert done.wait(10)

"""The long part of the reliability suite (`make soak`, marked `soak`; `make test` leaves it out).

The same scenarios as the fast tests, for many more cycles, requests, examples and rounds:
kill -9 under load, randomized isolation tricks, OpenAPI fuzzing with random seeds, actor
crash storms, NATS killed again and again, provider fault storms, connection floods, and the
storage faults of tests/test_faults.py (full disk, damaged stores, read-only file system, few
descriptors, slow fsync) bigger and with fresh seeds.
`SOAK_SCALE=2 make soak` runs each twice as long (default 1: about five minutes here).
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
import requests

from brain.testing.fakes.gmail import FakeGmail
from brain.testing.fakes.microsoft import FakeMicrosoft
from tests.support import BrainServer
from tests.test_auth_helpers import NO_LIMITS
from tests.test_faults import corrupt_closed_store, corrupt_open_store, disk_full, few_descriptors, read_only_disk, slow_disk
from tests.test_fuzz_openapi import fuzz, mail_plugins
from tests.test_reliability_durability import kill9_cycles
from tests.test_reliability_helpers import User, soak_scale, wait_api_ready
from tests.test_reliability_mail import mail_storm
from tests.test_reliability_outages import nats_outages
from tests.test_reliability_supervisor import crash_storm
from tests.test_security_isolation import run_isolation

pytestmark = [pytest.mark.soak, pytest.mark.timeout(1200)]


def scaled(n: float) -> int:
    return max(1, int(n * soak_scale()))


def test_soak_kill9_cycles(tmp_path: Path) -> None:
    figures = kill9_cycles(tmp_path / "brain", cycles=scaled(30), users=30, threads=8, seed=int(time.time()))
    print("kill -9 soak:", figures)
    assert figures["kills"] == scaled(30)


def test_soak_isolation(tmp_path: Path) -> None:
    print("isolation soak:", run_isolation(tmp_path / "brain", users=20, requests_count=scaled(4000), seed=int(time.time())))


def test_soak_fuzzing(tmp_path: Path) -> None:
    with FakeGmail() as gmail, FakeMicrosoft() as microsoft:
        server = BrainServer(
            tmp_path / "brain",
            config={"auth": NO_LIMITS, "plugins": mail_plugins(gmail, microsoft), "mail": {"sync_interval_seconds": 5.0}},
        )
        server.start()
        try:
            wait_api_ready(server)
            problems = fuzz(server, examples=scaled(100), derandomize=False, token_cases=None)
            assert not problems, "\n".join(sorted(set(problems))[:30])
            assert "Traceback" not in server.log_text()
        finally:
            server.close()


def test_soak_crash_storm(tmp_path: Path) -> None:
    with FakeGmail() as gmail:
        figures = crash_storm(tmp_path / "brain", gmail, rounds=scaled(90), pace=0.4, seed=int(time.time()))
    print("crash storm soak:", figures)


def test_soak_nats_outages(tmp_path: Path) -> None:
    print("NATS soak:", nats_outages(tmp_path, outages=scaled(10), users=12, seed=int(time.time())))


def test_soak_mail_storm(tmp_path: Path) -> None:
    with FakeGmail() as gmail, FakeMicrosoft() as microsoft:
        figures = mail_storm(tmp_path / "brain", gmail, microsoft, rounds=scaled(150), seed=int(time.time()) % 1000)
    print("mail storm soak:", figures)


def test_soak_connection_flood(tmp_path: Path) -> None:
    """Thousands of idle and stalled connections: everyone else is still served, then they go."""
    server = BrainServer(tmp_path / "brain", config={"auth": NO_LIMITS, "server": {"idle_timeout_seconds": 3.0}})
    server.start()
    socks: list[socket.socket] = []
    try:
        user = User.sign_up(server)
        wait_api_ready(server)
        for i in range(scaled(3000)):
            s = socket.create_connection(("127.0.0.1", server.api_port), timeout=10)
            if i % 2:
                s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
            socks.append(s)
        for i in range(100):
            r = requests.post(f"{server.api_url}/events", json={"type": "flood", "data": i}, headers=user.headers, timeout=10)
            assert r.status_code == 201, r.text
        time.sleep(8)  # past the idle timeout: they are gone, new clients still welcome
        assert requests.get(f"{server.api_url}/health", timeout=10).json()["status"] == "ok"
        opened = len(list(Path(f"/proc/{server.proc.pid}/fd").iterdir()))  # type: ignore[union-attr]
        assert opened < 500, f"{opened} descriptors still open after the idle timeout"
    finally:
        for s in socks:
            s.close()
        server.close()


def test_soak_disk_full(tmp_path: Path) -> None:
    for round_ in range(scaled(2)):
        print("disk full soak:", disk_full(tmp_path / f"r{round_}", users=8, size_mb=48, event_bytes=8000, seed=int(time.time())))


def test_soak_damaged_stores(tmp_path: Path) -> None:
    seed = int(time.time())
    for round_ in range(scaled(3)):
        print("closed store soak:", corrupt_closed_store(tmp_path / f"c{round_}", users=4, events=120, seed=seed + round_))
        print("open store soak:", corrupt_open_store(tmp_path / f"o{round_}", users=4, seconds=8.0, seed=seed + round_,
                                                     keep_header=bool(round_ % 2)))


def test_soak_read_only_descriptors_and_slow_disk(tmp_path: Path) -> None:
    print("read-only soak:", read_only_disk(tmp_path / "ro", users=6, events=scaled(80)))
    print("descriptors soak:", few_descriptors(tmp_path / "fd", users=16, rounds=scaled(12)))
    print("slow disk soak:", slow_disk(tmp_path / "slow", seconds=scaled(8)))

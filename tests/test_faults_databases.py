"""Fault injection (issue 25) on the shared databases: webhooks.db, auth.db and mail.db.

The users' stores have tests/test_faults.py; these are the databases every user shares. Each
scenario damages or fills the real file system under the real `brain serve` and checks: a typed
answer naming the fault (507 `INSUFFICIENT_STORAGE` / 503 `STORE_UNAVAILABLE` with a `reason`,
never a bare 500 or a traceback), /health and the metrics naming the database, no crash loop of
the process's actors (a supervisor restart count of zero), nothing half-written, and recovery
once the fault clears.
"""

from __future__ import annotations

import os
import random
import shutil
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from brain.testing.fakes.gmail import FakeGmail
from tests.support import BrainServer, assert_declared, wait_until
from tests.test_auth_helpers import NO_LIMITS, PASSWORD, bearer, brain_cli, sign_in, sign_up, unique_email
from tests.test_faults import METRICS_TOKEN, metric
from tests.test_faults_helpers import corrupt_pages, ext4, need, page_size, tmpfs
from tests.test_mail_server import GMAIL_USER, mail_config
from tests.test_reliability_helpers import User, health, wait_api_ready
from tests.test_webhooks import LOCAL, Receiver

WEBHOOKS = {**LOCAL, "retry_base_seconds": 0.2, "retry_max_seconds": 0.5}


def fault_server(workdir: Path, data_dir: Path, **config: dict[str, Any]) -> BrainServer:
    """No auth rate limits, metrics behind a token, local webhooks allowed, `config` on top."""
    tables: dict[str, dict[str, Any]] = {"auth": dict(NO_LIMITS), "metrics": {"token": METRICS_TOKEN},
                                         "webhooks": dict(WEBHOOKS)}
    for section, table in config.items():
        tables.setdefault(section, {}).update(table)
    return BrainServer(workdir, data_dir=data_dir, config=tables)


def supervision(server: BrainServer) -> dict[str, int]:
    """Restarts and escalations of the process's supervisors since start (a crash loop shows here)."""
    doc = requests.get(f"{server.api_url}/health?detail=1", headers=bearer(METRICS_TOKEN), timeout=10).json()
    return doc["supervisor"]


def post_event(server: BrainServer, user: User, n: int) -> requests.Response:
    return requests.post(f"{server.api_url}/events", json={"type": "fault.note", "data": {"n": n}},
                         headers=user.headers, timeout=30)


def hook(server: BrainServer, user: User, url: str) -> requests.Response:
    return requests.post(f"{server.api_url}/webhooks", json={"url": url}, headers=user.headers, timeout=30)


def assert_fault(server: BrainServer, r: requests.Response, status: int, reason: str) -> None:
    """A typed storage fault: the status, its code, the reason, all as the OpenAPI document declares
    for the request's operation; never a bare 500."""
    code = "INSUFFICIENT_STORAGE" if status == 507 else "STORE_UNAVAILABLE"
    assert r.status_code == status, f"{r.status_code} {r.text[:300]}"
    body = r.json()
    assert body["code"] == code and body["reason"] == reason, body
    assert_declared(requests.get(f"{server.api_url}/openapi.json", timeout=30).json(), r)


def damage(path: Path, seed: int) -> list[int]:
    """All but two pages of a closed SQLite file (never its header page) overwritten with random bytes."""
    pages = path.stat().st_size // page_size(path)
    for suffix in ("-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    return corrupt_pages(path, random.Random(seed), pages=pages - 2)


def fill(mount: Path) -> Path:
    """Write a ballast file until the file system has no free byte left; its path."""
    ballast = mount / "ballast"
    fd = os.open(ballast, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for chunk in (1 << 20, 4096, 1):
            try:
                while True:
                    os.write(fd, b"\0" * chunk)
            except OSError:
                pass
    finally:
        os.close(fd)
    need(shutil.disk_usage(mount).free == 0, f"a full file system at {mount}")
    return ballast


# -- webhooks.db --------------------------------------------------------------------------------------


def test_a_damaged_webhooks_db_is_refused_typed_retried_and_stops_nothing_else(tmp_path: Path) -> None:
    """webhooks.db damaged while brain was stopped: the webhook routes answer 503 `corrupt`, /health
    names it, events keep being committed, no actor crash-loops; once the file is restored from a
    backup, every event committed meanwhile is delivered."""
    server = fault_server(tmp_path, tmp_path / "data")
    with Receiver() as receiver:
        server.start()
        try:
            wait_api_ready(server)
            alice, bob = User.sign_up(server), User.sign_up(server)
            endpoint = hook(server, alice, receiver.url)
            assert endpoint.status_code == 201, endpoint.text
            acked = [post_event(server, alice, n).json()["id"] for n in range(3)]
            wait_until(lambda: receiver.event_ids() >= set(acked), timeout=30, what="the first deliveries")
            backup = brain_cli(server, "backup", str(tmp_path / "backup"))
            assert backup.returncode == 0, backup.stderr
            server.stop()
            damage(server.data_dir / "webhooks.db", seed=1)

            server.start()
            wait_api_ready(server)
            for method, path in (("GET", "/webhooks"), ("POST", "/webhooks"), ("GET", f"/webhooks/{endpoint.json()['id']}")):
                r = requests.request(method, f"{server.api_url}{path}", json={"url": receiver.url} if method == "POST" else None,
                                     headers=alice.headers, timeout=30)
                assert_fault(server, r, 503, "corrupt")
            # Events are committed as before, for everyone.
            for n in range(3, 6):
                r = post_event(server, alice, n)
                assert r.status_code == 201, r.text
                acked.append(r.json()["id"])
            assert post_event(server, bob, 0).status_code == 201
            doc = health(server)
            assert doc["status"] == "degraded", doc
            assert any(p.startswith("webhooks:") and "corrupt" in p for p in doc["problems"]), doc["problems"]
            assert metric(server, "brain_storage_faults_total", kind="corrupt", database="webhooks.db") > 0
            time.sleep(6)  # past a retry: still refused, still no crash loop
            listed = requests.get(f"{server.api_url}/webhooks", headers=alice.headers, timeout=30)
            assert_fault(server, listed, 503, "corrupt")
            assert supervision(server) == {"restarts": 0, "escalations": 0}
            assert server.proc is not None and server.proc.poll() is None
            assert "Traceback" not in server.log_text(), server.log_text()[-3000:]
            server.stop()

            # What docs/guarantees.md tells the operator: put the backup's copy in its place.
            for suffix in ("", "-wal", "-shm"):
                Path(f"{server.data_dir / 'webhooks.db'}{suffix}").unlink(missing_ok=True)
            shutil.copy(tmp_path / "backup" / "webhooks.db", server.data_dir / "webhooks.db")
            server.start()
            wait_api_ready(server)
            wait_until(lambda: receiver.event_ids() >= set(acked), timeout=30,
                       what="the events committed while webhooks.db was damaged to be delivered")
            assert requests.get(f"{server.api_url}/webhooks", headers=alice.headers, timeout=30).status_code == 200
            assert not any(p.startswith("webhooks:") for p in health(server)["problems"])
        finally:
            server.close()


def test_webhooks_on_a_full_disk_pause_then_deliver_everything(tmp_path: Path) -> None:
    """The data directory's file system full to the last byte with deliveries pending: webhooks.db's
    writes fail (counted as its own), the routes answer 507, the queue pauses instead of crashing;
    once space is freed every event is delivered and recorded as delivered."""
    mount = tmp_path / "fs"
    answers = {"status": 503}
    with tmpfs(mount, "32m"), Receiver(answer=lambda _n: answers["status"]) as receiver:
        server = fault_server(tmp_path, mount / "data", server={"min_free_bytes": 0})
        server.start()
        try:
            wait_api_ready(server)
            alice = User.sign_up(server)
            endpoint = hook(server, alice, receiver.url)
            assert endpoint.status_code == 201, endpoint.text
            acked = [post_event(server, alice, n).json()["id"] for n in range(5)]
            # Pending and failing (503) before the disk fills: attempts go on meanwhile.
            wait_until(lambda: len(receiver.received) >= 5, timeout=30, what="the first attempts")
            ballast = fill(mount)
            answers["status"] = 200
            refused = hook(server, alice, receiver.url)
            assert_fault(server, refused, 507, "disk_full")
            wait_until(lambda: metric(server, "brain_storage_faults_total", kind="disk_full", database="webhooks.db") > 0,
                       timeout=30, what="webhooks.db to meet the full disk")
            time.sleep(2)
            assert supervision(server) == {"restarts": 0, "escalations": 0}
            ballast.unlink()
            wait_until(lambda: receiver.event_ids() >= set(acked), timeout=30, what="every event delivered")

            def recorded() -> bool:
                r = requests.get(f"{server.api_url}/webhooks/{endpoint.json()['id']}/deliveries",
                                 headers=alice.headers, timeout=30)
                return r.status_code == 200 and {d["event_id"] for d in r.json()["deliveries"]
                                                 if d["status"] == "delivered"} >= set(acked)

            wait_until(recorded, timeout=30, what="every delivery recorded as delivered")
            assert supervision(server) == {"restarts": 0, "escalations": 0}
            assert "Traceback" not in server.log_text(), server.log_text()[-3000:]
        finally:
            server.close()


# -- auth.db and mail.db ------------------------------------------------------------------------------


@pytest.fixture
def gmail() -> Iterator[FakeGmail]:
    yield from FakeGmail.running()


def mail_status(server: BrainServer, user: User) -> requests.Response:
    return requests.get(f"{server.api_url}/mail/status", headers=user.headers, timeout=30)


def connect_gmail(server: BrainServer, user: User, gmail: FakeGmail) -> requests.Response:
    return requests.post(f"{server.api_url}/mail/connect", headers=user.headers, timeout=60,
                         json={"provider": "gmail", "refresh_token": gmail.issue_refresh_token(GMAIL_USER)})


def test_auth_and_mail_on_a_full_disk_refuse_with_507_write_nothing_half_and_recover(tmp_path: Path,
                                                                                     gmail: FakeGmail) -> None:
    """The data directory's file system full to the last byte: a sign-up, a sign-in and a mail connect
    answer 507 `disk_full`, counted against auth.db and mail.db; the refused sign-up left no user
    and the refused connect no account; once space is freed the same requests succeed."""
    mount = tmp_path / "fs"
    with tmpfs(mount, "48m"):
        server = fault_server(tmp_path, mount / "data", server={"min_free_bytes": 0}, **mail_config(gmail))
        server.start()
        try:
            wait_api_ready(server)
            alice = User.sign_up(server)
            assert mail_status(server, alice).status_code == 200
            assert post_event(server, alice, 0).status_code == 201  # her store is open as the disk fills
            newcomer = unique_email("full-disk")
            ballast = fill(mount)

            assert_fault(server, sign_up(server, newcomer), 507, "disk_full")
            assert_fault(server, sign_in(server, alice.email), 507, "disk_full")
            assert_fault(server, connect_gmail(server, alice, gmail), 507, "disk_full")
            # Reads go on, and show that nothing was half-written.
            assert sign_in(server, newcomer).status_code == 401
            status = mail_status(server, alice)
            assert status.status_code == 200 and status.json()["accounts"] == [], status.text
            assert requests.get(f"{server.api_url}/events", headers=alice.headers, timeout=30).status_code == 200
            assert_fault(server, post_event(server, alice, 1), 507, "disk_full")
            for database in ("auth.db", "mail.db"):
                assert metric(server, "brain_storage_faults_total", kind="disk_full", database=database) > 0, database
            doc = health(server)
            assert doc["status"] == "degraded" and any(p.startswith("disk:") for p in doc["problems"]), doc
            assert supervision(server) == {"restarts": 0, "escalations": 0}

            ballast.unlink()
            assert sign_up(server, newcomer).status_code == 200
            assert sign_in(server, alice.email).status_code == 200
            assert connect_gmail(server, alice, gmail).status_code == 201
            assert len(mail_status(server, alice).json()["accounts"]) == 1
            wait_until(lambda: not any(p.startswith("disk:") for p in health(server)["problems"]), timeout=10,
                       what="/health to stop naming the disk")
            assert "Traceback" not in server.log_text(), server.log_text()[-3000:]
        finally:
            server.close()


def test_auth_mail_and_webhooks_on_a_read_only_disk_refuse_with_503_write_nothing_half_and_recover(
        tmp_path: Path, gmail: FakeGmail) -> None:
    """The kernel turns the data directory's file system read-only under a running server (an ext4
    error with errors=remount-ro): a sign-up, a sign-in, a mail connect and a new webhook answer 503
    `read_only`, counted against auth.db, mail.db and webhooks.db; what reads them goes on and shows
    nothing half-written; no crash loop; after fsck and a restart the same requests succeed."""
    with ext4(tmp_path / "fs") as fs, Receiver() as receiver:
        server = fault_server(tmp_path, fs.mountpoint / "data", **mail_config(gmail))
        server.start()
        try:
            wait_api_ready(server)
            alice = User.sign_up(server)
            assert hook(server, alice, receiver.url).status_code == 201
            assert mail_status(server, alice).status_code == 200
            newcomer = unique_email("read-only")
            os.sync()
            fs.fail()

            assert_fault(server, sign_up(server, newcomer), 503, "read_only")
            assert_fault(server, sign_in(server, alice.email), 503, "read_only")
            assert_fault(server, connect_gmail(server, alice, gmail), 503, "read_only")
            assert_fault(server, hook(server, alice, receiver.url), 503, "read_only")
            # Reads go on, and show that nothing was half-written.
            assert sign_in(server, newcomer).status_code == 401
            status = mail_status(server, alice)
            assert status.status_code == 200 and status.json()["accounts"] == [], status.text
            hooks = requests.get(f"{server.api_url}/webhooks", headers=alice.headers, timeout=30)
            assert hooks.status_code == 200 and len(hooks.json()["webhooks"]) == 1, hooks.text
            for database in ("auth.db", "mail.db", "webhooks.db"):
                assert metric(server, "brain_storage_faults_total", kind="read_only", database=database) > 0, database
            doc = health(server)
            assert doc["status"] == "degraded" and any("read-only" in p for p in doc["problems"]), doc
            time.sleep(2)  # no crash loop: still serving, nothing restarted
            assert supervision(server) == {"restarts": 0, "escalations": 0}
            assert "Traceback" not in server.log_text(), server.log_text()[-3000:]

            server.stop()
            fs.repair()
            server.start()
            wait_api_ready(server)
            assert sign_up(server, newcomer).status_code == 200
            assert sign_in(server, alice.email).status_code == 200
            assert connect_gmail(server, alice, gmail).status_code == 201
            assert hook(server, alice, receiver.url).status_code == 201
        finally:
            server.close()


def damage_tables(path: Path, tables: tuple[str, ...], seed: int) -> list[int]:
    """The pages of `tables` (and of their indexes) in a closed SQLite file overwritten with random bytes."""
    db = sqlite3.connect(path)
    try:
        marks = ",".join("?" * len(tables))
        pages = sorted({row[0] for row in db.execute(
            f"SELECT pageno FROM dbstat WHERE name IN (SELECT name FROM sqlite_master WHERE tbl_name IN ({marks}))",
            tables)})
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        db.close()
    for suffix in ("-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    rng = random.Random(seed)
    size = page_size(path)
    with path.open("r+b") as fh:
        for number in pages:
            fh.seek((number - 1) * size)
            fh.write(rng.randbytes(size))
    return pages


def restore(server: BrainServer, backup: Path, database: str) -> None:
    """What docs/guarantees.md tells the operator, brain stopped: the backup's copy put in the damaged one's place."""
    for suffix in ("", "-wal", "-shm"):
        Path(f"{server.data_dir / database}{suffix}").unlink(missing_ok=True)
    shutil.copy(backup / database, server.data_dir / database)


def test_damaged_auth_db_and_mail_db_answer_503_corrupt_and_a_restored_copy_serves_again(tmp_path: Path,
                                                                                         gmail: FakeGmail) -> None:
    """mail.db's accounts, then auth.db's users, damaged while brain was stopped: the routes that read
    them answer 503 `corrupt` (never a bare 500), /health names the database, events and the rest go
    on, no actor crash-loops; the backup's copy put in place serves again with what it held. An
    auth.db damaged beyond its users (its signing keys) stops `brain serve` with a message naming
    it and what to do."""
    server = fault_server(tmp_path, tmp_path / "data", **mail_config(gmail))
    backup = tmp_path / "backup"
    server.start()
    try:
        wait_api_ready(server)
        alice = User.sign_up(server)
        assert connect_gmail(server, alice, gmail).status_code == 201
        assert post_event(server, alice, 0).status_code == 201
        taken = brain_cli(server, "backup", str(backup))
        assert taken.returncode == 0, taken.stderr
        for database, tables in (("mail.db", ("accounts",)), ("auth.db", ("user",))):
            server.stop()
            assert damage_tables(server.data_dir / database, tables, seed=3)
            server.start()
            wait_api_ready(server)
            if database == "mail.db":
                assert_fault(server, mail_status(server, alice), 503, "corrupt")
            else:
                assert_fault(server, sign_in(server, alice.email), 503, "corrupt")
                assert_fault(server, sign_up(server, unique_email("damaged")), 503, "corrupt")
            # The users' stores are other files: events go on.
            assert post_event(server, alice, 1).status_code == 201
            doc = health(server)
            assert doc["status"] == "degraded", doc
            assert any(p.startswith(f"{database}: corrupt") for p in doc["problems"]), doc["problems"]
            assert metric(server, "brain_storage_faults_total", kind="corrupt", database=database) > 0
            time.sleep(2)
            assert supervision(server) == {"restarts": 0, "escalations": 0}
            assert "Traceback" not in server.log_text(since_start=True), server.log_text(since_start=True)[-3000:]
            server.stop()
            restore(server, backup, database)
            server.start()
            wait_api_ready(server)
        assert sign_in(server, alice.email).status_code == 200
        assert len(mail_status(server, alice).json()["accounts"]) == 1
        assert not any(p.startswith(("auth.db", "mail.db")) for p in health(server)["problems"])

        server.stop()
        damage(server.data_dir / "auth.db", seed=4)
        refused = subprocess.run(server.command(), capture_output=True, text=True, timeout=60, cwd=server.workdir,
                                 env={k: v for k, v in os.environ.items() if not k.startswith("BRAIN_")})
        assert refused.returncode != 0
        assert "storage fault: corrupt (auth.db:" in refused.stderr and "from a backup" in refused.stderr, refused.stderr
        assert "Traceback" not in refused.stderr, refused.stderr
    finally:
        server.close()

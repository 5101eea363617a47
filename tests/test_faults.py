"""Fault injection (issue 25): a full disk, a corrupted store, a read-only or slow disk, few descriptors,
a clock that steps back.

Each scenario runs the real `brain serve` on a real file system made to fail (see
tests/test_faults_helpers.py) and checks the same four things: the answers promised in
docs/guarantees.md (never a bare 500), what /health and the metrics say, that no acknowledged
event is lost, and that other users are unaffected. `make test` runs each once, small;
tests/soak/test_soak.py runs them bigger and repeatedly.
"""

from __future__ import annotations

import json
import os
import random
import resource
import shutil
import sqlite3
import subprocess
import time
import sys
from pathlib import Path
from typing import Any

import requests

from tests.support import BrainServer, free_port, wait_until
from tests.test_auth_helpers import NO_LIMITS, PASSWORD, bearer, sign_in, sign_up
from tests.test_faults_helpers import (
    FaultWriters,
    corrupt_pages,
    ext4,
    lost,
    page_size,
    slow_fsync_shim,
    stalls,
    stepped_clock,
    stored_events,
    tmpfs,
)
from tests.test_jetstream import stream_messages
from tests.test_webhooks import LOCAL, Receiver
from tests.test_reliability_helpers import User, health, integrity_problems, sign_up_many, stream_ids, wait_api_ready, wait_outbox_empty

METRICS_TOKEN = "fault-test-metrics-token"


def fault_server(workdir: Path, data_dir: Path, **config: dict[str, Any]) -> BrainServer:
    """A server for fault tests: no auth rate limits, metrics behind a token, `config` on top."""
    tables: dict[str, dict[str, Any]] = {"auth": dict(NO_LIMITS), "metrics": {"token": METRICS_TOKEN}}
    for section, table in config.items():
        tables.setdefault(section, {}).update(table)
    return BrainServer(workdir, data_dir=data_dir, config=tables)


def metric(server: BrainServer, name: str, **labels: str) -> float:
    """One sample of the server's /metrics (0 if absent)."""
    text = requests.get(f"{server.api_url}/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}, timeout=10).text
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith(f"{name}{{{want}}} " if want else f"{name} "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def disk_full(workdir: Path, *, users: int = 4, size_mb: int = 24, reserve_mb: int = 4, event_bytes: int = 20_000,
              seed: int = 0) -> dict[str, Any]:
    """A small tmpfs holding the whole data directory (auth.db, NATS, stores) fills up under writers.

    Writes are refused with 507 before the disk is full, reads and sign-ins go on, /health
    names the disk, and once space is freed writes resume by themselves; after a restart every
    acknowledged event is there, event by event, and on the stream.
    """
    rng = random.Random(seed)
    mount = workdir / "fs"
    with tmpfs(mount, f"{size_mb}m"):
        ballast = mount / "ballast"
        ballast.write_bytes(rng.randbytes(reserve_mb << 20))
        server = fault_server(workdir, mount / "data", server={"min_free_bytes": reserve_mb << 20})
        server.start()
        try:
            wait_api_ready(server)
            people = sign_up_many(server, users)
            writers = FaultWriters(server, people, size=event_bytes).start()
            try:
                wait_until(lambda: all(writers.statuses(u.id).get(507, 0) >= 3 for u in people), timeout=120,
                           what="every writer to meet a full disk")
            finally:
                writers.stop()
            statuses = writers.statuses()
            assert set(statuses) <= {201, 507}, statuses
            for _, body, headers in writers.of_status(507):
                assert body["code"] == "INSUFFICIENT_STORAGE" and body["reason"] == "disk_full", body
                assert int(headers["Retry-After"]) >= 1, headers
            # Reads go on, and show every acknowledged event.
            for user in people:
                assert not lost(writers.acked[user.id], stored_events(server, user))
            doc = health(server)
            assert doc["status"] == "degraded" and any(p.startswith("disk:") for p in doc["problems"]), doc
            assert metric(server, "brain_storage_faults_total", kind="disk_full", database="events.db") > 0
            # The guard refuses a write that would leave less than the reserve once the stores'
            # checkpoints have written what they owe: that room is at most the reserve plus one
            # refused write's.
            free, owed = metric(server, "brain_disk_free_bytes"), metric(server, "brain_disk_owed_bytes")
            assert free - owed < (reserve_mb + 1) << 20
            # auth.db keeps room: sign-in and sign-up work on the full disk.
            newcomer = User.sign_up(server)
            r = requests.get(f"{server.api_url}/events", headers=newcomer.headers, timeout=10)
            assert r.status_code == 200, r.text
            # Free space: writes resume by themselves.
            ballast.unlink()
            for user in people:
                r = writers.post(user)
                assert r is not None and r.status_code == 201, r and r.text
            wait_until(lambda: not any(p.startswith("disk:") for p in health(server)["problems"]), timeout=10,
                       what="/health to stop naming the disk")
            wait_outbox_empty(server)
            assert "Traceback" not in server.log_text(), server.log_text()[-3000:]
            server.stop()
            server.start()
            wait_api_ready(server)
            for user in people:
                assert not lost(writers.acked[user.id], stored_events(server, user))
            on_stream = stream_ids(server)
            missing = [f"{u.id}:{i}" for u in people for i in writers.acked[u.id].events if not on_stream[f"{u.id}:{i}"]]
            assert not missing, missing[:10]
            assert not integrity_problems(server.data_dir)
            return {"acked": writers.count(), "statuses": statuses, "free_at_full": int(free), "owed_at_full": int(owed)}
        finally:
            server.close()



def test_disk_full_refuses_writes_with_507_and_loses_nothing(tmp_path: Path) -> None:
    figures = disk_full(tmp_path)
    assert figures["acked"] > 0
    print("disk full:", figures)


def test_the_reserve_holds_the_checkpoint_a_long_reader_held_back(tmp_path: Path) -> None:
    """A reader (a backup, an export) holds a store's snapshot while its user writes until the disk
    guard refuses: none of those writes can be checkpointed meanwhile, so they all wait in the WAL,
    and the database file grows by them at the next checkpoint after the reader is done (the
    store's next commit, another connection's; here the reader's own). The guard counts that
    growth before it admits a write: once it has happened, server.min_free_bytes is still free.
    Before it was counted, the checkpoint ate the reserve (as 8 stores' autocheckpoints did in
    the disk-full soak, until a sign-up met a full disk)."""
    reserve = 4 << 20
    mount = tmp_path / "fs"
    with tmpfs(mount, "16m"):
        server = fault_server(tmp_path, mount / "data", server={"min_free_bytes": reserve})
        server.start()
        try:
            wait_api_ready(server)
            (user,) = sign_up_many(server, 1)
            writers = FaultWriters(server, [user], size=20_000)
            write_some(writers, user, 1)
            reader = sqlite3.connect(store_file(server, user), isolation_level=None, timeout=10)
            try:
                reader.execute("BEGIN")
                reader.execute("SELECT count(*) FROM events").fetchone()  # the snapshot, held
                for _ in range(2000):
                    r = writers.post(user)
                    assert r is not None and r.status_code in (201, 507), r and r.text
                    if r.status_code == 507:
                        break
                assert r.status_code == 507, "the disk never filled"
                reader.execute("COMMIT")
                busy, wal_frames, copied = reader.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                assert not busy and copied == wal_frames, (busy, wal_frames, copied)
            finally:
                reader.close()
            free = shutil.disk_usage(mount).free
            # The last write's own WAL frames may go beyond the guard's estimate; not a checkpoint's worth.
            assert free >= reserve - (512 << 10), f"{free} bytes free after the checkpoint, reserve {reserve}"
            newcomer = User.sign_up(server)
            assert requests.get(f"{server.api_url}/events", headers=newcomer.headers, timeout=10).status_code == 200
            assert not lost(writers.acked[user.id], stored_events(server, user))
            assert "Traceback" not in server.log_text(), server.log_text()[-3000:]
        finally:
            server.close()


def test_a_store_locked_beyond_its_busy_timeout_answers_503_busy_and_then_recovers(tmp_path: Path) -> None:
    """Another process holds a user's events.db write lock past the busy timeout (a long `brain`
    command, a backup tool): that user's write is 503 `busy` with Retry-After, /health names it,
    reads and other users go on, the metrics count it, and once the lock goes the write is taken."""
    server = fault_server(tmp_path, tmp_path / "data")
    server.start()
    try:
        wait_api_ready(server)
        victim, other = sign_up_many(server, 2)
        writers = FaultWriters(server, [victim, other], size=100)
        write_some(writers, victim, 3)
        blocker = sqlite3.connect(store_file(server, victim), isolation_level=None, timeout=1)
        try:
            blocker.execute("BEGIN IMMEDIATE")
            r = writers.post(victim)
            assert r is not None and r.status_code == 503, r and r.text
            assert r.json()["code"] == "STORE_UNAVAILABLE" and r.json()["reason"] == "busy", r.text
            assert int(r.headers["Retry-After"]) >= 1, r.headers
            doc = health(server)
            assert doc["status"] == "degraded" and any(p.startswith("events.db: busy") for p in doc["problems"]), doc
            assert answer_of(server, victim).status_code == 200  # WAL: reads are not blocked by a writer
            assert writers.post(other).status_code == 201  # type: ignore[union-attr]
        finally:
            blocker.close()
        assert metric(server, "brain_storage_faults_total", kind="busy", database="events.db") >= 1
        assert writers.post(victim).status_code == 201  # type: ignore[union-attr]
        assert not lost(writers.acked[victim.id], stored_events(server, victim))
        assert "Traceback" not in server.log_text(), server.log_text()[-3000:]
    finally:
        server.close()


# -- damaged stores ------------------------------------------------------------------------------


def brain_cli(server: BrainServer, *args: str) -> subprocess.CompletedProcess[str]:
    """Run a `brain` command on the server's data directory and config (the server may be running)."""
    return subprocess.run(
        [sys.executable, "-m", "brain", *args, "--config", str(server.workdir / "brain.toml"),
         "--data-dir", str(server.data_dir)],
        capture_output=True, text=True, timeout=120, cwd=server.workdir,
    )


def write_some(writers: FaultWriters, user: User, n: int, *, keyed: int = 0) -> list[tuple[str, int]]:
    """n acknowledged writes for user (the first `keyed` with an Idempotency-Key); (key, id) of the keyed ones."""
    keys = []
    for i in range(n):
        if i < keyed:
            key = f"key-{user.id}-{i}-{random.random()}"
            r = requests.post(f"{writers.server.api_url}/events", json={"type": "fault.keyed", "data": {"i": i}},
                              headers={**user.headers, "Idempotency-Key": key}, timeout=30)
            writers.note(user, r)
            assert r.status_code == 201, r.text
            keys.append((key, r.json()["id"]))
        else:
            r = writers.post(user, n=i)
            assert r is not None and r.status_code == 201, r and r.text
    return keys


def store_file(server: BrainServer, user: User) -> Path:
    return server.data_dir / "users" / user.id / "events.db"


def wait_closed(server: BrainServer) -> None:
    """Until every store has closed (idle), so its file is what a closed store leaves."""
    wait_until(lambda: health(server)["stores"]["open"] == 0, timeout=30, what="the stores to close")


def answer_of(server: BrainServer, user: User) -> requests.Response:
    return requests.get(f"{server.api_url}/events", headers=user.headers, timeout=30)


def corrupt_closed_store(workdir: Path, *, users: int = 3, events: int = 40, seed: int = 0) -> dict[str, Any]:
    """A closed store with pages overwritten: 503 with a reason for that user only, /health and
    `brain check` say so, `brain repair` rebuilds it equal to what was acknowledged (keys too)."""
    rng = random.Random(seed)
    server = fault_server(workdir, workdir / "data", api={"store_idle_seconds": 0.5})
    server.start()
    try:
        wait_api_ready(server)
        people = sign_up_many(server, users)
        victim, others = people[0], people[1:]
        writers = FaultWriters(server, people, size=3000)
        keys = {u.id: write_some(writers, u, events, keyed=5) for u in people}
        wait_outbox_empty(server)
        wait_closed(server)
        pages = corrupt_pages(store_file(server, victim), rng)
        first = answer_of(server, victim)
        assert first.status_code == 503 and first.json()["code"] == "STORE_UNAVAILABLE", (pages, first.text)
        assert first.json()["reason"] in ("corrupt", "quarantined"), first.text  # found now, or just before
        for method in ("get", "post"):
            r = requests.request(method, f"{server.api_url}/events", json={"type": "x", "data": 1},
                                 headers=victim.headers, timeout=30)
            assert r.status_code == 503 and r.json()["reason"] == "quarantined", r.text
        for user in others:  # everyone else is untouched
            assert not lost(writers.acked[user.id], stored_events(server, user))
            assert writers.post(user).status_code == 201  # type: ignore[union-attr]
        doc = health(server)
        assert doc["status"] == "degraded" and any("quarantined" in p and victim.id in p for p in doc["problems"]), doc
        assert metric(server, "brain_stores_quarantined") == 1
        assert metric(server, "brain_storage_faults_total", kind="corrupt", database="events.db") >= 1
        quarantined = list((store_file(server, victim).parent / "quarantine").iterdir())
        assert len(quarantined) == 1 and (quarantined[0] / "events.db").exists(), quarantined
        assert "brain repair --user" in server.log_text()
        checked = brain_cli(server, "check")
        assert checked.returncode == 1 and f"users/{victim.id}/events.db" in checked.stdout, checked
        assert "quarantined" in checked.stdout, checked.stdout
        repaired = brain_cli(server, "repair", "--user", victim.id, "--json")
        assert repaired.returncode == 0, repaired.stderr
        report = json.loads(repaired.stdout)
        assert report["missing_count"] == 0 and report["events"] == events, report
        assert not lost(writers.acked[victim.id], stored_events(server, victim))
        for key, event_id in keys[victim.id]:  # idempotency keys came back from the stream
            r = requests.post(f"{server.api_url}/events", json={"type": "fault.keyed", "data": {"i": 0}},
                              headers={**victim.headers, "Idempotency-Key": key}, timeout=30)
            assert r.headers.get("Idempotent-Replayed") == "true" and r.json()["id"] == event_id, r.text
            break
        assert writers.post(victim).status_code == 201  # type: ignore[union-attr]
        wait_until(lambda: health(server)["status"] == "ok", timeout=10, what="/health to be ok again")
        wait_closed(server)
        checked = brain_cli(server, "check")
        assert checked.returncode == 0, checked.stdout + checked.stderr
        assert "Traceback" not in server.log_text(), server.log_text()[-3000:]
        return {"pages": pages, "report": report}
    finally:
        server.close()


def test_a_corrupted_closed_store_is_quarantined_and_repaired_from_the_stream(tmp_path: Path) -> None:
    print("closed store:", corrupt_closed_store(tmp_path))


def corrupt_open_store(workdir: Path, *, users: int = 3, seconds: float = 3.0, seed: int = 0,
                       keep_header: bool = True) -> dict[str, Any]:
    """Pages of a store overwritten while it is open and written to, then brain killed and restarted:
    the damage is found (by SQLite meanwhile, or by the first open's quick_check), the store is
    rebuilt by the server itself (api.auto_repair), every acknowledged event comes back, and the
    other users never see anything but 201."""
    rng = random.Random(seed)
    server = fault_server(workdir, workdir / "data", api={"auto_repair": True})
    server.start()
    try:
        wait_api_ready(server)
        people = sign_up_many(server, users)
        victim, others = people[0], people[1:]
        writers = FaultWriters(server, people, size=20_000, pause=0.005).start()
        try:
            # In WAL mode the database file grows at checkpoints (every ~4 MB of WAL): wait for one.
            wait_until(lambda: store_file(server, victim).exists() and store_file(server, victim).stat().st_size > 1 << 20,
                       timeout=120,
                       what="a checkpointed store worth damaging")
            pages = corrupt_pages(store_file(server, victim), rng, keep_header=keep_header)
            time.sleep(seconds)
        finally:
            writers.stop()
        for user in others:
            assert set(writers.statuses(user.id)) == {201}, writers.statuses(user.id)
        for _, body, _ in writers.of_status(503):
            assert body["code"] == "STORE_UNAVAILABLE" and body["reason"] in ("corrupt", "quarantined"), body
        assert set(writers.statuses(victim.id)) <= {201, 503}, writers.statuses(victim.id)
        server.kill()
        server.start()
        wait_api_ready(server)

        def repaired() -> bool:
            r = answer_of(server, victim)
            assert r.status_code in (200, 503), r.text
            return r.status_code == 200

        wait_until(repaired, timeout=60, what="the victim's store to be repaired")
        for user in people:
            assert not lost(writers.acked[user.id], stored_events(server, user)), user.id
        assert writers.post(victim).status_code == 201  # type: ignore[union-attr]
        return {"pages": pages, "victim": writers.statuses(victim.id), "repairs": health(server)["stores"]}
    finally:
        server.close()


def test_a_store_corrupted_while_open_is_found_and_repaired_automatically(tmp_path: Path) -> None:
    print("open store:", corrupt_open_store(tmp_path))


def test_repair_reports_what_the_stream_no_longer_holds_and_takes_it_from_a_backup(tmp_path: Path) -> None:
    """Events older than the stream's max_age are reported missing by a repair from the stream alone;
    a repair given a backup taken before they expired recovers them too."""
    rng = random.Random(1)
    server = fault_server(tmp_path, tmp_path / "data", api={"store_idle_seconds": 0.5},
                          nats={"max_age_days": 8 / 86400, "duplicate_window_seconds": 1.0})
    server.start()
    try:
        wait_api_ready(server)
        victim = sign_up_many(server, 1)[0]
        writers = FaultWriters(server, [victim], size=500)
        write_some(writers, victim, 10)
        wait_outbox_empty(server)
        backed_up = brain_cli(server, "backup", str(tmp_path / "backups" / "first"))
        assert backed_up.returncode == 0, backed_up.stderr
        url = server.nats_url()
        wait_until(lambda: not stream_messages(url, f"brain.events.{victim.id}.>"), timeout=30,
                   what="the first events to age out of the stream")
        write_some(writers, victim, 10)
        wait_outbox_empty(server)
        wait_closed(server)
        damaged = store_file(server, victim)
        corrupt_pages(damaged, rng, pages=2)
        # And the header: nothing in the damaged file can be read (wherever its tables' pages lie),
        # so the stream and the backup are all a repair has.
        with damaged.open("r+b") as fh:
            fh.write(rng.randbytes(page_size(damaged)))
        assert answer_of(server, victim).json()["reason"] in ("corrupt", "quarantined")
        first = brain_cli(server, "repair", "--user", victim.id, "--json")
        assert first.returncode == 0, first.stderr
        report = json.loads(first.stdout)
        assert report["missing"] == [[1, 10]] and report["from_stream"] == 10 and report["events"] == 10, report
        assert "MISSING: 10 events (ids 1-10): older than the stream's max_age_days" in first.stderr, first.stderr
        again = brain_cli(server, "repair", "--user", victim.id)
        assert again.returncode == 2 and "in place and not quarantined" in again.stderr, again
        assert set(stored_events(server, victim)) == set(range(11, 21))
        server.stop()
        second = brain_cli(server, "repair", "--user", victim.id, "--force", "--backup", str(tmp_path / "backups"),
                           "--json")
        assert second.returncode == 0, second.stderr
        report = json.loads(second.stdout)
        assert report["missing_count"] == 0 and report["from_backup"] == 10 and report["events"] == 20, report
        server.start()
        wait_api_ready(server)
        assert not lost(writers.acked[victim.id], stored_events(server, victim))
        wait_outbox_empty(server)
    finally:
        server.close()


def test_a_store_rebuilt_from_the_stream_keeps_its_deletions(tmp_path: Path) -> None:
    """A deletion is on the stream as its tombstone (event.deleted) while the stream still holds the
    deleted event: a repair keeps the event deleted (by id, in GET /events, in search) and the
    tombstone in the changes feed, and the next event takes the number after it."""
    server = fault_server(tmp_path, tmp_path / "data", api={"store_idle_seconds": 0.5})
    server.start()
    try:
        wait_api_ready(server)
        victim = sign_up_many(server, 1)[0]
        events, headers = f"{server.api_url}/events", victim.headers
        ids = [requests.post(events, json={"type": "note.created", "data": {"text": f"the lease, part {i}"}},
                             headers=headers, timeout=30).json()["id"] for i in range(5)]
        deleted = requests.delete(f"{events}/{ids[1]}", headers=headers, timeout=30)
        assert deleted.status_code == 200, deleted.text
        wait_outbox_empty(server)
        wait_closed(server)
        damaged = store_file(server, victim)
        with damaged.open("r+b") as fh:  # the header: nothing of the damaged file can be read
            fh.write(os.urandom(page_size(damaged)))
        assert answer_of(server, victim).json()["reason"] in ("corrupt", "quarantined")
        repaired = brain_cli(server, "repair", "--user", victim.id, "--json")
        assert repaired.returncode == 0, repaired.stderr
        report = json.loads(repaired.stdout)
        assert report["from_stream"] == 6 and report["events"] == 4 and report["missing"] == [], report

        kept = sorted(set(ids) - {ids[1]})
        listed = requests.get(events, headers=headers, timeout=30).json()["events"]
        assert sorted(e["id"] for e in listed) == kept, listed
        assert requests.get(f"{events}/{ids[1]}", headers=headers, timeout=30).status_code == 404
        changes = requests.get(f"{events}/changes", headers=headers, timeout=30).json()["events"]
        assert [e["id"] for e in changes[:-1]] == kept and changes[-1]["type"] == "event.deleted", changes
        assert changes[-1]["data"]["id"] == ids[1]

        def found() -> list[int] | None:
            page = requests.get(f"{server.api_url}/search", params={"q": "lease", "limit": 10}, headers=headers,
                                timeout=30).json()
            return None if page["partial"] else sorted(hit["event"]["id"] for hit in page["results"])

        assert wait_until(found, timeout=30, what="the rebuilt store's index") == kept
        after = requests.post(events, json={"type": "note.created", "data": {}}, headers=headers, timeout=30)
        assert after.json()["id"] == changes[-1]["id"] + 1, after.text
    finally:
        server.close()


# -- a read-only file system ------------------------------------------------------------------------


def read_only_disk(workdir: Path, *, users: int = 3, events: int = 20) -> dict[str, Any]:
    """The kernel turns the data directory's file system read-only under a running server (an ext4
    error with errors=remount-ro): writes answer 503 `read_only`, reads of open and closed stores
    go on, /health names it, nothing crashes; after fsck and a restart nothing acknowledged is lost."""
    with ext4(workdir / "fs") as fs:
        server = fault_server(workdir, fs.mountpoint / "data", api={"store_idle_seconds": 1.0},
                              server={"min_free_bytes": 4 << 20})
        server.start()
        try:
            wait_api_ready(server)
            people = sign_up_many(server, users)
            writers = FaultWriters(server, people, size=1000)
            for user in people:
                write_some(writers, user, events)
            wait_outbox_empty(server)
            wait_closed(server)
            for user in people[:-1]:  # their stores open again; the last one's stays closed
                write_some(writers, user, 2)
            # On disk first: commits are fsynced at checkpoints (synchronous=NORMAL), so a disk error
            # can take those of the last moments still in the page cache, as a power cut would
            # (docs/guarantees.md). This checks what brain does with the error, not the page cache.
            os.sync()
            fs.fail()
            for user in people:
                r = writers.post(user)
                assert r is not None and r.status_code == 503, r and r.text
                assert r.json()["code"] == "STORE_UNAVAILABLE" and r.json()["reason"] == "read_only", r.text
                assert not lost(writers.acked[user.id], stored_events(server, user)), user.id
            signed = requests.post(f"{server.auth_url}/api/auth/sign-in/email",
                                   json={"email": people[0].email, "password": PASSWORD}, timeout=10)
            assert signed.status_code != 500, signed.text
            doc = health(server)
            assert doc["status"] == "degraded" and any("read-only" in p for p in doc["problems"]), doc
            assert metric(server, "brain_disk_read_only") == 1
            time.sleep(2)  # no crash loop: still serving, same process
            assert server.proc is not None and server.proc.poll() is None
            assert stored_events(server, people[0])
            statuses = writers.statuses()
            assert 500 not in statuses, statuses
            server.stop()
            fs.repair()
            server.start()
            wait_api_ready(server)
            for user in people:
                assert not lost(writers.acked[user.id], stored_events(server, user)), user.id
                assert writers.post(user).status_code == 201  # type: ignore[union-attr]
            assert not integrity_problems(server.data_dir)
            return {"acked": writers.count(), "statuses": statuses}
        finally:
            server.close()


def test_a_read_only_file_system_refuses_writes_and_keeps_reads(tmp_path: Path) -> None:
    print("read-only:", read_only_disk(tmp_path))


# -- resource exhaustion ----------------------------------------------------------------------------


def open_descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def few_descriptors(workdir: Path, *, users: int = 8, rounds: int = 6, spare: int = 5) -> dict[str, Any]:
    """`ulimit -n` just above what the server holds (prlimit(2) on the running process): new stores
    wait for old ones to close or answer 503 `no_descriptors` with Retry-After, stores already
    open keep working, nothing crashes or restarts, and with the limit raised everyone is served."""
    server = fault_server(workdir, workdir / "data")
    server.start()
    try:
        wait_api_ready(server)
        people = sign_up_many(server, users)
        writers = FaultWriters(server, people, size=200)
        sessions = {u.id: requests.Session() for u in people}
        watcher = requests.Session()
        watcher.headers["Authorization"] = f"Bearer {METRICS_TOKEN}"
        watcher.get(f"{server.api_url}/health?detail=1", timeout=10)
        early = people[:2]
        for user in people:  # every client's connection is open before descriptors run short
            sessions[user.id].get(f"{server.api_url}/me", headers=user.headers, timeout=10)
        for user in early:
            write_some(writers, user, 3)
        assert server.proc is not None
        pid = server.proc.pid
        limit = open_descriptors(pid) + spare
        original = resource.prlimit(pid, resource.RLIMIT_NOFILE, (limit, resource.prlimit(pid, resource.RLIMIT_NOFILE)[1]))
        try:
            for _ in range(rounds):
                for user in people:
                    r = writers.post(user, sessions[user.id])
                    assert r is not None, "a client lost its connection"
            statuses = writers.statuses()
            assert set(statuses) <= {201, 503}, statuses
            for _, body, headers in writers.of_status(503):
                assert body["reason"] == "no_descriptors" and int(headers["Retry-After"]) >= 1, body
            for user in early:
                assert 503 not in writers.statuses(user.id), writers.statuses(user.id)
            doc = watcher.get(f"{server.api_url}/health?detail=1", timeout=10).json()
            assert doc["supervisor"] == {"restarts": 0, "escalations": 0}, doc["supervisor"]
            assert server.proc.poll() is None
        finally:
            resource.prlimit(pid, resource.RLIMIT_NOFILE, original)
        for user in people:
            r = writers.post(user)
            assert r is not None and r.status_code == 201, r and r.text
        for user in people:
            assert not lost(writers.acked[user.id], stored_events(server, user)), user.id
        assert "Traceback" not in server.log_text(), server.log_text()[-3000:]
        return {"statuses": statuses, "limit": limit}
    finally:
        server.close()


def test_few_file_descriptors_make_new_stores_wait_or_503_and_nothing_crashes(tmp_path: Path) -> None:
    print("few descriptors:", few_descriptors(tmp_path))


def slow_disk(workdir: Path, *, seconds: float = 2.0, stall_ms: int = 1000) -> dict[str, Any]:
    """Every fsync of one user's store stalls (an LD_PRELOAD shim around libc's fsync/fdatasync):
    that user's writes slow down but all succeed, other users' writes complete while it stalls,
    and after a kill -9 nothing acknowledged is missing."""
    shim = slow_fsync_shim(workdir)
    log = workdir / "stalls.log"
    server = fault_server(workdir, workdir / "data")
    server.start()
    try:
        wait_api_ready(server)
        slow, quick = sign_up_many(server, 2)
        server.stop()
        server.env.update({"LD_PRELOAD": str(shim), "SLOW_FSYNC_MATCH": f"/users/{slow.id}/",
                           "SLOW_FSYNC_MS": str(stall_ms), "SLOW_FSYNC_LOG": str(log)})
        server.start()
        wait_api_ready(server)
        heavy = FaultWriters(server, [slow], size=40_000).start()
        light = FaultWriters(server, [quick], size=100).start()
        try:
            wait_until(lambda: len(stalls(log)) >= 2, timeout=120, what="the slow user's store to fsync")
            time.sleep(seconds)
        finally:
            heavy.stop()
            light.stop()
        assert set(heavy.statuses()) == {201} and set(light.statuses()) == {201}, (heavy.statuses(), light.statuses())
        # The other user's writes went on while the slow store sat in fsync.
        during = max(sum(1 for _, sent, done in light.timings if a <= sent and done <= b) for a, b in stalls(log))
        assert during >= 3, (stalls(log), len(light.timings))
        server.kill()
        server.start()
        wait_api_ready(server)
        assert not lost(heavy.acked[slow.id], stored_events(server, slow))
        assert not lost(light.acked[quick.id], stored_events(server, quick))
        return {"stalls": len(stalls(log)), "answered_during_a_stall": during,
                "p99_ms": {name: _p99(w.timings) for name, w in (("slow", heavy), ("other", light))}}
    finally:
        server.close()


def _p99(timings: list[tuple[str, float, float]]) -> float:
    durations = sorted(done - sent for _, sent, done in timings)
    return round(1000 * durations[min(len(durations) - 1, int(len(durations) * 0.99))], 1)


def test_a_slow_disk_slows_its_own_store_only_and_loses_nothing(tmp_path: Path) -> None:
    print("slow disk:", slow_disk(tmp_path))


def test_a_clock_stepping_back_in_either_role_refuses_no_fresh_token_and_reorders_nothing(tmp_path: Path) -> None:
    """The auth and API roles as two processes, each with a wall clock the test steps (an
    LD_PRELOAD shim): an hour back in the API, then an hour back in the issuer. Fresh JWTs are
    accepted throughout, a session made after the step does not expire before one made before it,
    and events keep their commit order in GET /events and on the stream."""
    auth_clock, api_clock = stepped_clock(tmp_path, "auth"), stepped_clock(tmp_path, "api")
    auth_port, api_port = free_port(), free_port()
    auth = BrainServer(tmp_path / "auth", roles="auth", auth_port=auth_port, api_port=api_port, env=auth_clock.env,
                       config={"auth": dict(NO_LIMITS)})
    api = BrainServer(tmp_path / "api", roles="api", auth_port=auth_port, api_port=api_port,
                      env={**api_clock.env, "AUTH_SERVER_URL": auth.auth_url})
    try:
        auth.start()
        api.start()
        wait_until(lambda: api.health()["jwks"]["loaded"], timeout=30, what="the API to load the issuer's keys")
        first = sign_up(auth).json()
        user_id, email = first["user"]["id"], first["user"]["email"]

        def post(n: int) -> requests.Response:
            jwt = requests.get(f"{auth.auth_url}/api/auth/token", headers=bearer(first["token"]), timeout=10)
            assert jwt.status_code == 200, jwt.text
            return requests.post(f"{api.api_url}/events", json={"type": "clock.step", "data": n},
                                 headers=bearer(jwt.json()["token"]), timeout=10)

        ids = [post(0).json()["id"]]
        api_clock.step_to(-3600)  # the API's clock an hour back: a fresh token is not "from the future"
        answer = post(1)
        assert answer.status_code == 201, answer.text
        ids.append(answer.json()["id"])
        api_clock.step_to(0)
        auth_clock.step_to(-3600)  # the issuer's clock an hour back: a fresh token is not "expired"
        answer = post(2)
        assert answer.status_code == 201, answer.text
        ids.append(answer.json()["id"])
        later = sign_in(auth, email).json()
        assert later["session"]["expiresAt"] >= first["session"]["expiresAt"], (first["session"], later["session"])
        api_clock.step_to(-3600)  # both an hour back
        answer = post(3)
        assert answer.status_code == 201, answer.text
        ids.append(answer.json()["id"])

        assert ids == sorted(ids), ids
        listed = requests.get(f"{api.api_url}/events", headers=bearer(later["jwt"]), timeout=10)
        assert listed.status_code == 200, listed.text
        assert [e["id"] for e in listed.json()["events"]] == ids[::-1], listed.json()
        wait_outbox_empty(api)
        on_stream = [m.headers["Nats-Msg-Id"] for m in stream_messages(api.nats_url(), f"brain.events.{user_id}.>")]
        assert on_stream == [f"{user_id}:{i}" for i in ids], on_stream
    finally:
        api.close()
        auth.close()


def test_a_clock_stepping_back_extends_no_stream_ticket_and_stalls_no_webhook_backoff(tmp_path: Path) -> None:
    """The server's wall clock steps an hour back (an LD_PRELOAD shim) right after a webhook
    attempt failed and a stream ticket was issued: the endpoint is tried again after its backoff,
    not an hour later, and the ticket expires after its own lifetime, not an hour later; a ticket
    issued after the step works."""
    clock = stepped_clock(tmp_path, "brain")
    with Receiver(answer=lambda n: 500 if n == 1 else 200) as receiver:
        server = BrainServer(tmp_path / "brain", env=clock.env, config={
            "auth": dict(NO_LIMITS), "api": {"stream_ticket_seconds": 2.0},
            "webhooks": {**LOCAL, "retry_base_seconds": 3.0, "retry_max_seconds": 3.0},
        })
        server.start()
        try:
            wait_api_ready(server)
            (user,) = sign_up_many(server, 1)
            made = requests.post(f"{server.api_url}/webhooks", json={"url": receiver.url}, headers=user.headers, timeout=10)
            assert made.status_code == 201, made.text
            FaultWriters(server, [user], size=10).post(user)
            wait_until(lambda: health(server)["webhooks"]["failed_attempts"] == 1, timeout=20,
                       what="the first attempt to fail")
            ticket = requests.post(f"{server.api_url}/events/stream/ticket", headers=user.headers, timeout=10)
            assert ticket.status_code == 201, ticket.text
            clock.step_to(-3600)  # takes 1.1 s: the backoff (2.4 to 3.6 s) has not run out
            wait_until(lambda: len(receiver.deliveries()) == 2, timeout=15, what="the attempt after the backoff")
            time.sleep(1.0)  # past the ticket's 2 s by the monotonic clock
            stale = requests.get(f"{server.api_url}/events/stream", params={"ticket": ticket.json()["ticket"]},
                                 stream=True, timeout=10)
            stale.close()
            assert stale.status_code == 401, stale.status_code
            fresh = requests.post(f"{server.api_url}/events/stream/ticket", headers=user.headers, timeout=10)
            opened = requests.get(f"{server.api_url}/events/stream", params={"ticket": fresh.json()["ticket"]},
                                  stream=True, timeout=10)
            opened.close()
            assert opened.status_code == 200, opened.status_code
        finally:
            server.close()

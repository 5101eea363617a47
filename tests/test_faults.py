"""Fault injection (issue 25): a full disk, a corrupted store, a read-only or slow disk, few descriptors.

Each scenario runs the real `brain serve` on a real file system made to fail (see
tests/test_faults_helpers.py) and checks the same four things: the answers promised in
docs/guarantees.md (never a bare 500), what /health and the metrics say, that no acknowledged
event is lost, and that other users are unaffected. `make test` runs each once, small;
tests/soak/test_soak.py runs them bigger and repeatedly.
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import requests

from tests.support import BrainServer, wait_until
from tests.test_auth_helpers import NO_LIMITS
from tests.test_faults_helpers import FaultWriters, lost, stored_events, tmpfs
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
            assert metric(server, "brain_disk_free_bytes") < reserve_mb << 20
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
            return {"acked": writers.count(), "statuses": statuses}
        finally:
            server.close()



def test_disk_full_refuses_writes_with_507_and_loses_nothing(tmp_path: Path) -> None:
    figures = disk_full(tmp_path)
    assert figures["acked"] > 0
    print("disk full:", figures)

"""Durability: kill -9 under a concurrent multi-user write load, at random moments, then restart.

Every event whose POST was answered 2xx must be stored exactly once under the id it was given,
a batch is all or nothing, an idempotent write retried across the crash is stored once, every
database passes `PRAGMA integrity_check`, and JetStream (the embedded nats-server, killed with
brain) carries each stored event exactly once for a consumer. `make test` runs a few cycles;
tests/soak runs many.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

from tests.support import BrainServer
from tests.test_auth_helpers import NO_LIMITS
from tests.test_reliability_helpers import (
    WriteLoad,
    all_events,
    check_events,
    integrity_problems,
    sign_up_many,
    stream_ids,
    wait_api_ready,
    wait_outbox_empty,
)


def kill9_cycles(workdir: Path, *, cycles: int, users: int, threads: int, seed: int) -> dict[str, int]:
    """Run the scenario; returns figures for the caller to report. Fails on any broken promise."""
    rng = random.Random(seed)
    server = BrainServer(workdir, config={"auth": NO_LIMITS, "nats": {"duplicate_window_seconds": 600.0}})
    with server:
        people = sign_up_many(server, users)
        wait_api_ready(server)
        load = WriteLoad(server.api_url, people, threads=threads, seed=seed).start()
        kills = 0
        for _ in range(cycles):
            load.wait_acked(rng.randint(5, 60), timeout=60)
            time.sleep(rng.uniform(0.0, 0.4))  # a random moment, mid-request for some writers
            server.kill()
            kills += 1
            assert not integrity_problems(server.data_dir), integrity_problems(server.data_dir)
            server.start()
            wait_api_ready(server)
        load.wait_acked(20, timeout=60)
        load.stop()
        load.settle()
        assert not load.errors, load.errors[:10]

        stored = {u.id: all_events(server, u) for u in people}
        problems = check_events(load, stored)
        assert not problems, problems[:20]

        # JetStream, as a consumer sees it: every stored event once, nothing else.
        wait_outbox_empty(server)
        expected = {f"{uid}:{e['id']}" for uid, events in stored.items() for e in events}
        on_stream = stream_ids(server)
        missing = expected - set(on_stream)
        assert not missing, f"{len(missing)} stored events never reached JetStream: {sorted(missing)[:5]}"
        assert set(on_stream) == expected, sorted(set(on_stream) - expected)[:5]
        assert all(n == 1 for n in on_stream.values()), [k for k, n in on_stream.items() if n > 1][:5]

        assert server.stop() == 0
        assert not integrity_problems(server.data_dir), integrity_problems(server.data_dir)
        return {
            "kills": kills,
            "acknowledged": load.acked_count,
            "writes": len(load.writes),
            "unacknowledged": sum(1 for w in load.writes if not w.acked),
        }


def test_kill9_under_concurrent_writes_keeps_every_acknowledged_event(tmp_path: Path) -> None:
    figures = kill9_cycles(tmp_path / "brain", cycles=3, users=8, threads=6, seed=8)
    assert figures["kills"] == 3 and figures["acknowledged"] > 100, figures

"""The search index survives kill -9 with its events: both are counted after every restart.

Writers post events (single, batches, idempotent retries) for several users while brain is
killed with SIGKILL at random moments. After each kill every store must hold an index row for
every event before its live tail and none for the tail's (FTS5's own row count, and the
index's times table), FTS5's integrity check must pass; after the restarts every event is
indexed and every acknowledged event is found by searching for its marker.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import requests

from tests.search_support import index_counts
from tests.support import BrainServer
from tests.test_auth_helpers import NO_LIMITS
from tests.test_reliability_helpers import WriteLoad, all_events, check_events, sign_up_many, wait_api_ready


def counts(db_path: Path) -> tuple[int, int, int, str]:
    """(events before the live tail, FTS5 rows, index times rows, FTS5 integrity check) of a store file."""
    found = index_counts(db_path)
    return found.indexed_events, found.rows, found.times, found.check


def test_kill9_during_writes_leaves_events_and_index_consistent(tmp_path: Path) -> None:
    rng = random.Random(16)
    server = BrainServer(tmp_path / "brain", config={"auth": NO_LIMITS})
    with server:
        people = sign_up_many(server, 4)
        wait_api_ready(server)
        load = WriteLoad(server.api_url, people, threads=4, seed=16).start()
        for _ in range(3):
            load.wait_acked(rng.randint(20, 80), timeout=60)
            time.sleep(rng.uniform(0.0, 0.3))
            server.kill()
            stores = sorted((server.data_dir / "users").glob("*/events.db"))
            assert stores
            for path in stores:
                events, rows, times, check = counts(path)
                assert events == rows == times and check == "ok", (path, events, rows, times, check)
            server.start()
            wait_api_ready(server)
        load.wait_acked(20, timeout=60)
        load.stop()
        load.settle()
        assert not load.errors, load.errors[:10]
        stored = {u.id: all_events(server, u) for u in people}
        assert not check_events(load, stored)
        for user in people:
            stats = requests.get(f"{server.api_url}/me/stats", headers=user.headers, timeout=15).json()
            assert stats["events"] == len(stored[user.id]) == stats["index"]["documents"], stats
            for event in rng.sample(stored[user.id], min(10, len(stored[user.id]))):
                r = requests.get(f"{server.api_url}/search", params={"q": f'm:"{event["data"]["m"]}"'},
                                 headers=user.headers, timeout=15)
                assert [h["event"]["id"] for h in r.json()["results"]] == [event["id"]], (event, r.text)
        assert server.stop() == 0
    for path in sorted((server.data_dir / "users").glob("*/events.db")):
        events, rows, times, check = counts(path)
        assert events == rows == times and check == "ok", (path, events, rows, times, check)

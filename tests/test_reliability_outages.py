"""Outages of what brain depends on: the issuer (auth role) and NATS.

- Issuer down for a long while (dozens of failed refreshes): tokens keep working until they
  expire, /health says how stale the keys are; the issuer comes back with a rotated key and the
  API picks the fresh keys up by itself.
- NATS killed -9 and restarted, repeatedly, under a multi-user write load, with brain itself
  killed -9 in the middle of an outage: writes never fail for it, and JetStream ends up with
  every stored event exactly once as a consumer reads it.
"""

from __future__ import annotations

import time
from pathlib import Path

import requests

from tests.support import BrainServer, free_port, wait_until
from tests.test_auth_helpers import NO_LIMITS, brain_cli
from tests.test_jetstream import NatsServer
from tests.test_jwt import assert_refused, me
from tests.test_reliability_helpers import (
    WriteLoad,
    all_events,
    check_events,
    health,
    integrity_problems,
    sign_up_many,
    stream_ids,
    wait_api_ready,
    wait_outbox_empty,
)


def test_long_issuer_outage_tokens_live_to_their_exp_then_fresh_keys(make_server) -> None:  # type: ignore[no-untyped-def]
    auth_port, api_port = free_port(), free_port()
    auth: BrainServer = make_server(
        "auth", roles="auth", auth_port=auth_port, api_port=api_port,
        config={"auth": {**NO_LIMITS, "jwt_ttl_seconds": 4, "key_poll_seconds": 0.3}},
    ).start()
    api: BrainServer = make_server(
        "api", roles="api", auth_port=auth_port, api_port=api_port, env={"AUTH_SERVER_URL": auth.auth_url},
        config={"api": {"jwks_refresh_seconds": 0.3, "leeway_seconds": 1}},
    ).start()
    wait_api_ready(api)
    users = sign_up_many(auth, 2)
    seen, unseen = users
    assert me(api, seen.jwt).status_code == 200  # cached by the API; `unseen` never was
    old_kid = health(api)["jwks"]["kids"]

    assert auth.stop() == 0
    outage_started = time.monotonic()
    wait_until(lambda: health(api)["jwks"]["failures"] >= 10, timeout=20, what="refreshes failing for a while")
    stats = health(api)["jwks"]
    assert stats["stale"] is True and stats["loaded"] is True and stats["last_error"]
    # Valid tokens keep working during the outage, cached or not (a real signature check).
    assert me(api, seen.jwt).status_code == 200
    assert me(api, unseen.jwt).status_code == 200
    # The age grows with the outage; then the tokens expire like any other.
    wait_until(lambda: health(api)["jwks"]["age_seconds"] >= 3, timeout=20, what="the keys' age to grow")
    wait_until(lambda: me(api, seen.jwt).status_code == 401, timeout=20, what="the token to expire")
    assert_refused(me(api, unseen.jwt), "expired")
    stats = health(api)["jwks"]
    assert stats["failures"] >= 10 and stats["age_seconds"] >= time.monotonic() - outage_started - 2, stats

    # While it is down, its key is rotated; it comes back signing with the new key only.
    out = brain_cli(auth, "keys", "rotate", "--now")
    assert out.returncode == 0, out.stderr
    auth.start()
    wait_until(lambda: not health(api)["jwks"]["stale"], timeout=20, what="fresh keys after the issuer returned")
    fresh = requests.post(
        f"{auth.auth_url}/api/auth/sign-in/email", json={"email": seen.email, "password": "correct horse battery"}, timeout=30
    ).json()["jwt"]
    r = me(api, fresh)
    if r.status_code == 401:  # a kid the last refresh did not have yet: one refetch, then it works
        wait_until(lambda: me(api, fresh).status_code == 200, timeout=15, what="the rotated key")
    assert me(api, fresh).json()["id"] == seen.id
    kids = health(api)["jwks"]["kids"]
    assert set(old_kid) <= set(kids) and len(kids) > len(old_kid), (old_kid, kids)


def nats_outages(workdir: Path, *, outages: int, users: int, seed: int) -> dict[str, int]:
    """Kill -9 NATS `outages` times under load (brain killed too, once); every event once on JetStream."""
    nats = NatsServer(workdir / "nats").start()
    try:
        server = BrainServer(
            workdir / "brain", env={"NATS_URL": nats.url},
            config={"auth": NO_LIMITS, "nats": {"reconnect_wait_seconds": 0.2, "publish_timeout_seconds": 1.0,
                                                "duplicate_window_seconds": 600.0}},
        )
        with server:
            people = sign_up_many(server, users)
            wait_api_ready(server)
            load = WriteLoad(server.api_url, people, threads=4, seed=seed, pause=0.01).start()
            for i in range(outages):
                load.wait_acked(40)
                assert nats.proc is not None
                nats.proc.kill()  # kill -9: no goodbye to brain
                nats.proc.wait()
                wait_until(lambda: not health(server)["nats"]["connected"], timeout=15, what="the bus to notice")
                before = load.acked_count
                load.wait_acked(30)  # writes go on without NATS
                assert load.acked_count > before
                if i == outages // 2:
                    server.kill()  # brain dies too, with unpublished events in the outboxes
                    server.start()
                    wait_api_ready(server)
                nats.start()  # same port, same store
                wait_until(lambda: health(server)["nats"]["connected"], timeout=20, what="the bus to reconnect")
            load.wait_acked(20)
            load.stop()
            load.settle()
            assert not load.errors, load.errors[:10]
            stored = {u.id: all_events(server, u) for u in people}
            assert not check_events(load, stored), check_events(load, stored)[:10]
            wait_outbox_empty(server)
            expected = {f"{uid}:{e['id']}" for uid, events in stored.items() for e in events}
            on_stream = stream_ids(server)
            assert set(on_stream) == expected, (len(expected - set(on_stream)), sorted(set(on_stream) - expected)[:5])
            duplicates = [k for k, n in on_stream.items() if n > 1]
            assert not duplicates, duplicates[:5]
            assert server.stop() == 0
            assert not integrity_problems(server.data_dir)
            return {"outages": outages, "events": len(expected), "published": len(on_stream)}
    finally:
        nats.stop()  # the test started it: it stops it, whatever the outcome


def test_nats_killed_repeatedly_under_load_nothing_lost_nothing_doubled(tmp_path: Path) -> None:
    figures = nats_outages(tmp_path, outages=3, users=6, seed=9)
    assert figures["events"] > 150, figures

"""Supervision in the real process: actors crashing over and over while clients keep working.

Crashes are injected inside `brain serve` by tests/plugins/chaos_plugin.py (a tell whose handler
raises, in the actor's own thread: exactly how a bug would crash it); everything after that is
brain's own supervisor. Within the restart intensity the server keeps answering and keeps every
acknowledged write; beyond it the escalation shows in /health and the log, and the process ends
with a clean shutdown (exit 1, databases closed and intact), not a hang.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import requests

from brain.testing.fakes.gmail import FakeGmail
from tests.support import BrainServer, wait_until
from tests.test_auth_helpers import sign_in
from tests.test_mail_engine import gmail_settings
from tests.test_reliability_helpers import (
    Chaos,
    User,
    WriteLoad,
    all_events,
    api_get,
    chaos_server,
    check_events,
    health,
    integrity_problems,
    sign_up_many,
    wait_api_ready,
)

GMAIL_USER = "chaos@example.com"


class Prober:
    """A client that keeps asking the server things during chaos and records what it got."""

    def __init__(self, server: BrainServer, user: User) -> None:
        self.server = server
        self.user = user
        self.statuses: Counter[tuple[str, int]] = Counter()
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="prober", daemon=True)

    def start(self) -> Prober:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=60)

    def _run(self) -> None:
        s = self.server
        session = requests.Session()
        calls = [
            ("health", lambda: session.get(f"{s.api_url}/health", timeout=10)),
            ("me", lambda: session.get(f"{s.api_url}/me", headers=self.user.headers, timeout=10)),
            ("events", lambda: session.get(f"{s.api_url}/events", params={"limit": 5}, headers=self.user.headers, timeout=10)),
            ("token", lambda: session.get(f"{s.auth_url}/api/auth/token", headers={"Authorization": f"Bearer {self.user.token}"}, timeout=10)),
            ("sign-in", lambda: sign_in(s, self.user.email)),
        ]
        i = 0
        while not self._stop.is_set():
            name, call = calls[i % len(calls)]
            i += 1
            try:
                r = call()
            except requests.RequestException as exc:
                self.failures.append(f"{name}: no answer ({type(exc).__name__})")
                continue
            self.statuses[(name, r.status_code)] += 1
            if r.status_code >= 500 and r.status_code != 503:
                self.failures.append(f"{name}: {r.status_code} {r.text[:200]}")
            time.sleep(0.02)


# Which supervisor restarts a crashed actor, and how many crashes it may see within 6 s and
# stay inside its restart intensity (auth_sup, data_sup: at most 3 in 5 s; stores, mail: 50 in 10 s).
SUPERVISED_BY = {"AuthIssuer": "auth_sup", "JwksCache": "auth_sup", "EventBus": "data_sup", "UserStore": "stores", "MailSync": "mail"}
BUDGET = {"auth_sup": 2, "data_sup": 2, "stores": 20, "mail": 20}


def chaos_round(chaos: Chaos, rng: random.Random, *, rounds: int, pace: float, mail: bool) -> Counter[str]:
    """Crash random actors, `rounds` times, `pace` seconds apart; crashes per class.

    Victims are drawn so that no supervisor exceeds its restart intensity: this is the
    "keeps answering" regime; escalation has a test of its own.
    """
    victims = ["UserStore", "UserStore", "JwksCache", "EventBus", "AuthIssuer"] + (["MailSync"] if mail else [])
    recent: dict[str, list[float]] = {sup: [] for sup in BUDGET}
    crashed: Counter[str] = Counter()
    for _ in range(rounds):
        now = time.monotonic()
        for times in recent.values():
            times[:] = [t for t in times if t > now - 6.0]
        allowed = [v for v in victims if len(recent[SUPERVISED_BY[v]]) < BUDGET[SUPERVISED_BY[v]]]
        victim = rng.choice(allowed)
        n = chaos.crash(victim, count=rng.randint(1, 3) if victim == "UserStore" else 1)
        recent[SUPERVISED_BY[victim]] += [now] * n
        crashed[victim] += n
        time.sleep(pace)
    return crashed


def crash_storm(workdir: Path, gmail: FakeGmail, *, rounds: int, pace: float, seed: int) -> dict[str, Any]:
    """Actors of every kind crash while users write, read, sign in and mail syncs; all must hold."""
    rng = random.Random(seed)
    mailbox = gmail.populate(GMAIL_USER, 120)
    gmail.delay(0.02, path_prefix="/batch")  # a sync spread over the chaos
    server = chaos_server(
        workdir,
        config={
            "plugins": {"gmail": gmail_settings(gmail, page_size=20)},
            "mail": {"sync_interval_seconds": 0.5, "retry_base_seconds": 0.2},
        },
    )
    with server:
        users = sign_up_many(server, 6)
        wait_api_ready(server)
        r = requests.post(
            f"{server.api_url}/mail/connect", json={"provider": "gmail", "refresh_token": gmail.issue_refresh_token(GMAIL_USER)},
            headers=users[0].headers, timeout=30,
        )
        assert r.status_code == 201, r.text
        load = WriteLoad(server.api_url, users[1:], threads=4, seed=seed).start()
        prober = Prober(server, users[-1]).start()
        crashed = chaos_round(Chaos(server), rng, rounds=rounds, pace=pace, mail=True)
        prober.stop()
        load.stop()
        load.settle()

        assert not prober.failures, prober.failures[:10]
        assert not load.errors, load.errors[:10]
        # It answered all along: health never failed, and every kind of request succeeded.
        answered = {name for (name, status), _ in prober.statuses.items() if status in (200, 201)}
        assert answered == {"health", "me", "events", "token", "sign-in"}, prober.statuses
        assert ("health", 200) in prober.statuses and not any(n == "health" and st != 200 for n, st in prober.statuses)
        stored = {u.id: all_events(server, u) for u in users[1:]}
        assert not check_events(load, stored), check_events(load, stored)[:10]
        body = health(server)
        # Each crash order is a restart, except one that reached an actor already being stopped
        # (by an event-bus restart, which restarts the stores after it, or by an idle stop).
        assert body["supervisor"]["restarts"] >= 0.8 * sum(crashed.values()) > 0, (body["supervisor"], crashed)
        assert body["supervisor"]["escalations"] == 0, body["supervisor"]

        # Mail sync survived its actor being crashed: the store matches the mailbox.
        gmail.clear_faults()
        owner = users[0]

        def synced() -> bool:
            received = api_get(server, "/events", owner, type="mail.message.received", limit=1000).json()["events"]
            return len(received) == len(mailbox) and {e["data"]["message_id"] for e in received} == set(mailbox)

        wait_until(synced, timeout=60, interval=0.3, what="mail sync to converge after the crashes")
        assert server.stop() == 0
        assert not integrity_problems(server.data_dir), integrity_problems(server.data_dir)
        return {"crashed": dict(crashed), "restarts": body["supervisor"]["restarts"], "acknowledged": load.acked_count}


def test_actors_crashing_repeatedly_the_server_keeps_answering(tmp_path: Path) -> None:
    with FakeGmail() as gmail:
        figures = crash_storm(tmp_path / "brain", gmail, rounds=14, pace=0.6, seed=3)
    assert sum(figures["crashed"].values()) >= 10, figures


def test_escalation_beyond_the_intensity_ends_in_a_clean_shutdown(tmp_path: Path) -> None:
    server = chaos_server(tmp_path / "brain")
    with server:
        users = sign_up_many(server, 4)
        wait_api_ready(server)
        load = WriteLoad(server.api_url, users, threads=3, seed=5).start()
        load.wait_acked(30)
        chaos = Chaos(server)
        escalations_seen = 0
        assert server.proc is not None
        started = time.monotonic()
        # The bus crashes on every restart: data_sup gives up (more than 3 in 5 s) and escalates,
        # the root restarts data_sup, and after 5 of those within 30 s the root gives up too.
        while server.proc.poll() is None and time.monotonic() - started < 90:
            try:
                chaos.crash("EventBus", timeout=1)
            except AssertionError:
                break  # the plugin's thread is gone: the process is going down
            try:
                escalations_seen = max(escalations_seen, health(server)["supervisor"]["escalations"])
            except (requests.RequestException, AssertionError, ValueError):
                pass
            time.sleep(0.05)
        code = server.proc.wait(timeout=30)  # a hang fails here
        elapsed = time.monotonic() - started
        load.stop()
        assert code == 1, code
        assert elapsed < 90, elapsed
        assert escalations_seen >= 1  # visible in /health while it happened
        log = server.log_text()
        assert "more than 3 restarts in 5.0s" in log and "escalat" in log.lower(), log[-3000:]
        assert "root supervisor gave up" in log and "shutdown complete" in log
        assert not integrity_problems(server.data_dir), integrity_problems(server.data_dir)

        # Nothing acknowledged was lost on the way down.
        server.config.setdefault("plugins", {}).pop("chaos", None)
        server.env.pop("BRAIN_PLUGINS__ENABLED", None)
        server.start()
        wait_api_ready(server)
        load.settle()
        stored = {u.id: all_events(server, u) for u in users}
        assert not check_events(load, stored), check_events(load, stored)[:10]

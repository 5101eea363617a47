"""Cluster mode with writes confirmed (docs/cluster.md): a live stream and a webhook show an event
only once the replicated stream holds it, as the 201 does; a mail account's checkpoint moves
only past events the stream holds.

An event committed on a node but not yet acknowledged by JetStream is lost with that node, and
its id may be drawn again for another event on the node that takes the user over; a client that
saw it would resume past an event that does not exist. Here JetStream's acknowledgements are
held back by pausing the only nats-server (SIGSTOP): the write is answered 503 ("not
confirmed"), the open stream, a stream reading the history and the webhook show nothing of it,
and all three show it once the server runs again and acknowledges it. Every process is stopped
by its pid.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import signal
import threading
import time
from pathlib import Path
from typing import Any

import nats as nats_lib
import requests

from brain.api.events import StoredEvent, commit_seq
from brain.api.publisher import headers_for, payload_for, subject_for
from brain.api.outbox import Confirmations
from brain.testing.nats_cluster import NatsCluster
from brain.testing.fakes.gmail import FakeGmail
from tests.support import BrainServer, wait_until
from tests.test_auth_helpers import NO_LIMITS, bearer, new_user
from tests.test_mail_server import GMAIL_USER, Client, gmail, mail_config  # noqa: F401 - the gmail fixture
from tests.test_webhooks import LOCAL, Receiver


class Watcher(threading.Thread):
    """Reads GET /events/stream until it ends: the ids of the events it delivered."""

    def __init__(self, server: BrainServer, jwt: str, **params: Any) -> None:
        super().__init__(daemon=True)
        self.url, self.jwt, self.params = f"{server.api_url}/events/stream", jwt, params
        self.ids: list[int] = []
        self.opened = threading.Event()

    def run(self) -> None:
        with requests.get(self.url, params=self.params, headers=bearer(self.jwt), stream=True, timeout=(10, 120)) as r:
            named = False
            for line in r.iter_lines():
                if line == b": stream open":
                    self.opened.set()
                elif line.startswith(b"event:"):
                    named = True
                elif line.startswith(b"data: ") and not named:
                    self.ids.append(json.loads(line[6:])["id"])
                elif not line:
                    named = False


def stopped(pid: int) -> bool:
    """Whether every thread of the process is stopped (a thread inside a system call stops when it returns)."""
    states = [(task / "stat").read_text().rpartition(")")[2].split()[0] for task in Path(f"/proc/{pid}/task").iterdir()]
    return all(state == "T" for state in states)


def node_config(nats: NatsCluster, **more: Any) -> dict[str, Any]:
    """One cluster node on the one nats-server: writes confirmed, a publish given up after 2 s."""
    return {
        "server": {"secret": secrets.token_urlsafe(32), "public_url": ""},
        "nats": {"url": nats.url, **nats.credentials, "replicas": 1, "publish_timeout_seconds": 2.0},
        "cluster": {"node_id": "a", "node_ttl_seconds": 60.0},
        "auth": dict(NO_LIMITS),
        **more,
    }


def test_a_stream_and_a_webhook_show_an_event_only_once_the_replicated_stream_holds_it(tmp_path: Path) -> None:
    nats = NatsCluster(tmp_path / "nats", size=1).start()
    server = BrainServer(tmp_path / "a", roles="auth,api", config=node_config(nats, webhooks=LOCAL))
    watchers: list[Watcher] = []
    paused = False
    receiver = Receiver().__enter__()  # closed after the node: its sender keeps a connection open
    try:
        server.start(timeout=60)
        wait_until(lambda: server.health()["cluster"]["ready"], timeout=30, what="placement map loaded")
        user = new_user(server)
        jwt = user["jwt"]
        r = requests.post(f"{server.api_url}/webhooks", json={"url": receiver.url}, headers=bearer(jwt), timeout=30)
        assert r.status_code == 201, r.text
        live = Watcher(server, jwt)
        watchers.append(live)
        live.start()
        assert live.opened.wait(30)
        r = requests.post(f"{server.api_url}/events", json={"type": "one", "data": {}}, headers=bearer(jwt), timeout=30)
        assert r.status_code == 201, r.text
        first = r.json()["id"]
        wait_until(lambda: live.ids == [first] and receiver.event_ids() == {first}, timeout=30,
                   what="the acknowledged event on the stream and the webhook")

        # JetStream cannot acknowledge while its server is paused: the write is stored, not confirmed.
        assert nats.procs[0] is not None
        nats.procs[0].send_signal(signal.SIGSTOP)
        paused = True
        wait_until(lambda: stopped(nats.procs[0].pid), timeout=10, what="every thread of nats-server stopped")
        r = requests.post(f"{server.api_url}/events", json={"type": "two", "data": {}}, headers=bearer(jwt), timeout=30)
        assert r.status_code == 503 and "did not confirm" in r.text, r.text
        history = Watcher(server, jwt, after="0")
        watchers.append(history)
        history.start()
        wait_until(lambda: history.ids == [first], timeout=30, what="the history up to the unconfirmed event")
        time.sleep(1.0)
        assert live.ids == [first] and history.ids == [first], "an unconfirmed event was streamed"
        assert receiver.event_ids() == {first}, "an unconfirmed event was sent to a webhook"

        nats.procs[0].send_signal(signal.SIGCONT)
        paused = False
        r = requests.get(f"{server.api_url}/events", params={"type": "two"}, headers=bearer(jwt), timeout=30)
        assert r.status_code == 200, r.text
        second = r.json()["events"][0]["id"]
        wait_until(lambda: live.ids == [first, second] and history.ids == [first, second]
                   and receiver.event_ids() == {first, second}, timeout=30,
                   what="the event on both streams and the webhook once the stream holds it")
        r = requests.post(f"{server.api_url}/events", json={"type": "three", "data": {}}, headers=bearer(jwt), timeout=30)
        assert r.status_code == 201, r.text
        third = r.json()["id"]
        wait_until(lambda: live.ids == [first, second, third] and history.ids == [first, second, third],
                   timeout=30, what="the next event, once, on both streams")
    finally:
        if paused and nats.procs[0] is not None:
            nats.procs[0].send_signal(signal.SIGCONT)
        server.close()  # ends the streams (shutting-down)
        for watcher in watchers:
            watcher.join(timeout=10)
        nats.stop()
        receiver.__exit__(None, None, None)


def test_the_confirmed_frontier_moves_only_past_events_acknowledged_without_a_gap() -> None:
    events = [StoredEvent(n, "t", "{}", "2026-01-01T00:00:00Z") for n in (1, 2, 3, 5)]
    confirmations = Confirmations()
    confirmations.committed("u", events[:3])
    confirmations.committed("u", events[3:])
    assert confirmations.pending() == 4 and confirmations.lowest("v") is None
    assert confirmations.acked("u", 2) is None and confirmations.lowest("u") == 1  # 1 is not on the stream yet
    assert confirmations.confirmed_part("u", events, commit_seq) == ([], True)
    assert confirmations.acked("u", 1) == 2
    assert confirmations.confirmed_part("u", events, commit_seq) == (events[:2], True)
    assert confirmations.acked("u", 1) is None  # a repeated ack moves nothing
    assert confirmations.acked("u", 5) is None and confirmations.lowest("u") == 3
    assert confirmations.acked("u", 3) == 5 and confirmations.lowest("u") is None and confirmations.pending() == 0
    assert confirmations.confirmed_part("u", events, commit_seq) == (events, False)


def test_a_mail_checkpoint_moves_only_past_messages_the_replicated_stream_holds(tmp_path: Path, gmail: FakeGmail) -> None:
    first = gmail.add_message(GMAIL_USER, subject="first", label_ids=["INBOX"])
    nats = NatsCluster(tmp_path / "nats", size=1).start()
    server = BrainServer(tmp_path / "a", roles="auth,api", config=node_config(nats, **mail_config(gmail)))
    paused = False
    try:
        server.start(timeout=60)
        wait_until(lambda: server.health()["cluster"]["ready"], timeout=30, what="placement map loaded")
        alice = Client(server)
        account = alice.connect("gmail", gmail.issue_refresh_token(GMAIL_USER))["account"]
        assert alice.wait_state(account, "idle")["messages_synced"] == 1

        # The sync's events are committed on the node, but JetStream acknowledges nothing: the
        # account's checkpoint must not move past them (a node lost now would lose the message).
        assert nats.procs[0] is not None
        nats.procs[0].send_signal(signal.SIGSTOP)
        paused = True
        wait_until(lambda: stopped(nats.procs[0].pid), timeout=10, what="every thread of nats-server stopped")
        second = gmail.add_message(GMAIL_USER, subject="second", label_ids=["INBOX"])
        r = alice.post(f"/mail/accounts/{account}/sync", {})
        assert r.status_code in (200, 202), r.text
        status = wait_until(lambda: (s := alice.accounts()[account])["last_error"] and s, timeout=30,
                            what="the sync to fail for want of the stream's ack")
        assert status["messages_synced"] == 1, status
        time.sleep(1.0)
        assert alice.accounts()[account]["messages_synced"] == 1

        nats.procs[0].send_signal(signal.SIGCONT)
        paused = False
        wait_until(lambda: alice.accounts()[account]["messages_synced"] == 2, timeout=30,
                   what="the message synced once the stream acknowledged it")
        received = [e["data"]["message_id"] for e in alice.events("mail.message.received")]
        assert sorted(received) == sorted([first, second])  # each once: the retried page replays its key
    finally:
        if paused and nats.procs[0] is not None:
            nats.procs[0].send_signal(signal.SIGCONT)
        server.close()
        nats.stop()


def publish_foreign_event(nats_cluster: NatsCluster, user_id: str, event_id: int) -> None:
    """Put another writer's event `event_id` of the user on the stream, as a node that took the
    user over while this one was thought dead would (same Nats-Msg-Id, other content)."""

    async def publish() -> None:
        nc = await nats_lib.connect(nats_cluster.url, **nats_cluster.credentials, connect_timeout=5)
        try:
            ev = StoredEvent(event_id, "foreign", '{"writer":"another node"}', "2026-01-01T00:00:00.000000Z")
            ack = await nc.jetstream().publish(subject_for("brain.events", user_id, ev.type), payload_for(user_id, ev),
                                               headers=headers_for(user_id, ev, "BRAIN_EVENTS"))
            assert not ack.duplicate
        finally:
            await nc.close()

    asyncio.run(publish())


def stream_types(nats_cluster: NatsCluster, user_id: str) -> list[str]:
    """The types of the user's events on the stream, in stream order."""

    async def read() -> list[str]:
        nc = await nats_lib.connect(nats_cluster.url, **nats_cluster.credentials, connect_timeout=5)
        try:
            js = nc.jetstream()
            last = (await js.stream_info("BRAIN_EVENTS")).state.last_seq
            msgs = [await js.get_msg("BRAIN_EVENTS", seq) for seq in range(1, last + 1)]
            return [m.headers["Brain-Event-Type"] for m in msgs if m.headers and m.headers["Brain-User-Id"] == user_id]
        finally:
            await nc.close()

    return asyncio.run(read())


def test_a_replayed_write_is_not_confirmed_by_another_writers_event_of_its_id(tmp_path: Path) -> None:
    """An idempotent replay publishes its events again and waits for the acks; JetStream answers a
    re-send of an id it holds as a duplicate. That confirms the write only if the stream's message
    under the id is this event: the one a node that took the user over wrote is not (seen in the
    NATS-kill test: two acknowledged events numbered 4, one of them lost)."""
    nats = NatsCluster(tmp_path / "nats", size=1).start()
    server = BrainServer(tmp_path / "a", roles="auth,api", config=node_config(nats))
    try:
        server.start(timeout=60)
        wait_until(lambda: server.health()["cluster"]["ready"], timeout=30, what="placement map loaded")
        user = new_user(server)
        jwt, user_id = user["jwt"], user["user"]["id"]

        def write(key: str, kind: str) -> requests.Response:
            return requests.post(f"{server.api_url}/events", json={"type": kind, "data": {"key": key}},
                                 headers={**bearer(jwt), "Idempotency-Key": key}, timeout=30)

        r = write("k1", "one")
        assert r.status_code == 201, r.text
        first = r.json()["id"]
        # The replay of a write the stream holds is confirmed by the duplicate ack: the same event.
        r = write("k1", "one")
        assert r.status_code == 201 and r.json()["id"] == first, r.text

        publish_foreign_event(nats, user_id, first + 1)
        r = write("k2", "two")  # stored as first + 1; JetStream drops it as a duplicate: not confirmed
        assert r.status_code == 503 and "did not confirm" in r.text, r.text
        for _ in range(2):  # the client repeats it, as the 503 says
            r = write("k2", "two")
            assert r.status_code == 503 and "another writer" in r.text, r.text
        assert stream_types(nats, user_id) == ["one", "foreign"]
    finally:
        server.close()
        nats.stop()

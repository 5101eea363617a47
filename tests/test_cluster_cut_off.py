"""Cluster mode (docs/cluster.md): a node cut off from NATS longer than the TTL, its users taken
over meanwhile, serves none of them from its stale placement map when it is back.

Node b reaches the one nats-server through a TCP proxy in this process; cutting the proxy (every
connection closed, new ones refused) cuts b off while node a goes on. Once a took b's user over,
the proxy opens again and writes go to b at once: each must be forwarded to a (201, readable
there) or refused (503) before anything is stored on b. Before the fence, b stored the first one
on its stale copy of the store ("events 2-2 were stored on node b ... did not confirm"): its map
still named b, as it does whenever the watcher lags the heartbeat. Every process is stopped by its pid.
"""

from __future__ import annotations

import secrets
import socket
import threading
import time
from pathlib import Path

import requests

from brain.nats_embedded import free_port
from brain.testing.nats_cluster import NatsCluster
from tests.support import BrainServer, wait_until
from tests.test_auth_helpers import NO_LIMITS, bearer, new_user

TTL = 3.0


class Proxy(threading.Thread):
    """A TCP proxy on loopback; cut() closes every connection and refuses new ones until restore()."""

    def __init__(self, target_port: int) -> None:
        super().__init__(daemon=True)
        self.port = free_port()
        self.target = target_port
        self.open = True
        self.socks: list[socket.socket] = []
        self.lock = threading.Lock()
        self.server = socket.create_server(("127.0.0.1", self.port))
        self.server.settimeout(0.2)

    def run(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            if not self.open:
                client.close()
                continue
            upstream = socket.create_connection(("127.0.0.1", self.target))
            with self.lock:
                self.socks += [client, upstream]
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self.pipe, args=(src, dst), daemon=True).start()

    def pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self) -> None:
        self.open = False
        with self.lock:
            for s in self.socks:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            self.socks = []

    def restore(self) -> None:
        self.open = True

    def close(self) -> None:
        self.cut()
        self.server.close()


def test_a_node_back_from_a_cut_longer_than_the_ttl_serves_no_user_it_lost_from_its_stale_map(tmp_path: Path) -> None:
    nats = NatsCluster(tmp_path / "nats", size=1).start()
    proxy = Proxy(nats.client_ports[0])
    proxy.start()
    secret = secrets.token_urlsafe(32)
    nodes: dict[str, BrainServer] = {}
    for node, url in (("a", nats.url), ("b", f"nats://127.0.0.1:{proxy.port}")):
        nodes[node] = BrainServer(tmp_path / node, roles="auth,api", config={
            "server": {"secret": secret, "public_url": ""},
            "nats": {"url": url, **nats.credentials, "replicas": 1},
            "cluster": {"node_id": node, "node_ttl_seconds": TTL, "forward_timeout_seconds": 5.0},
            "auth": dict(NO_LIMITS)})
    a, b = nodes["a"], nodes["b"]
    b.config["server"]["public_url"] = a.auth_url  # tokens from a's auth server
    b.config["api"]["auth_server_url"] = a.auth_url
    try:
        for server in (a, b):
            server.start(timeout=60)
            wait_until(lambda: server.health()["cluster"]["ready"], timeout=30, what="placement map loaded")
        jwt = new_user(a)["jwt"]

        def write(n: int) -> requests.Response:
            return requests.post(f"{b.api_url}/events", json={"type": "t", "data": {"n": n}},
                                 headers={**bearer(jwt), "Idempotency-Key": f"w{n}"}, timeout=30)

        r = write(0)  # places the user on b
        assert r.status_code == 201, r.text
        assert b.health()["cluster"]["users_per_node"] == {"b": 1}

        proxy.cut()
        wait_until(lambda: a.health()["cluster"].get("taken_over", 0) >= 1, timeout=60, what="a to take b's user over")
        proxy.restore()
        answers: list[tuple[int, int, str]] = []
        for n in range(1, 31):
            r = write(n)
            answers.append((n, r.status_code, r.text[:200]))
            assert r.status_code in (201, 503), answers
            assert "stored on node b" not in r.text, answers  # served from b's stale map
            time.sleep(0.25)
        acknowledged = {n for n, status, _ in answers if status == 201}
        assert acknowledged, answers
        r = requests.get(f"{a.api_url}/events", params={"limit": 100}, headers=bearer(jwt), timeout=30)
        assert r.status_code == 200, r.text
        on_a = {e["data"]["n"] for e in r.json()["events"]}
        assert acknowledged | {0} <= on_a, sorted(acknowledged - on_a)
        assert b.health()["cluster"]["users_per_node"] == {"a": 1}
    finally:
        for server in (a, b):
            server.close()
        proxy.close()
        nats.stop()

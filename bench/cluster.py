"""What cluster mode adds to a request: forwarding to the user's node over NATS (docs/cluster.md).

A three-server NATS JetStream cluster on loopback (brain.testing.nats_cluster) and two brain
nodes on it, each with its own data directory and R3 streams: `a` (auth and API) and `b` (API).
Node `a` is a client of the first nats-server and `b` of the second (nats-py would otherwise
pick one at random, so the figure moved between runs with the draw), as nodes on machines of
their own each use their own: `b` reaches `a`'s server through the extra connection every node
keeps to the cluster's other servers (brain.api.forwarding). A user is placed on `a` by its first
request there. One client then times the same requests
sent to `b` (forwarded to `a` and back) and to `a` directly, in alternating blocks
(bench.client.Shadow) so that outside load falls on both: the difference is the forward's cost.

Node `b` runs with `cluster.confirm_writes = false`: a second user placed on `b` gives the cost
of answering a write only once JetStream acknowledged it (POST /events to `a` directly, which
waits for the R3 ack, against the same request to `b` directly, which does not). The same pair
gives the live stream's cost (`live_confirmed`/`live_unconfirmed`): each user holds a
`GET /events/stream` on its own node, and the time from sending a POST /events there to the
event's arrival on the stream is timed, alternating between the nodes — `a` streams an event
once JetStream acknowledged it, `b` once it is committed (docs/cluster.md).

`spread` (issue 20's "3 nodes vs 1"): three nodes that all confirm writes, on the same NATS
cluster. One run sends POST /events at 64 connections to node `a` alone for users placed on
`a`; the next spreads the same connections over `a`, `b` and `c` (three wrk processes, as a load
balancer would) for users placed one third on each — so two requests in three are forwarded.
Runs alternate. On a 2-core machine no gain is expected: the figure is what forwarding and
three processes' replication cost against one.
"""

from __future__ import annotations

import re
import secrets
import socket
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple

from bench.client import SHADOW_BLOCK, KeepAliveClient, Shadow, expect, sample_latencies
from bench.load import Req, run_wrk
from bench.users import User, event_body, sign_up, sign_up_many
from brain.testing.nats_cluster import NatsCluster
from tests.support import BrainServer

__all__ = ["Forwarded", "Spread", "measure", "spread"]


class Forwarded(NamedTuple):
    """Latencies (seconds) via the other node, and to the owner directly, per request kind."""

    post_forwarded: list[float]
    post_direct: list[float]
    me_forwarded: list[float]
    me_direct: list[float]
    post_confirmed: list[float]  # to a, answered after the stream's ack
    post_unconfirmed: list[float]  # to b (confirm_writes = false), answered after the local commit
    live_confirmed: list[float]  # POST to a -> the event on a's stream of the user (after the ack)
    live_unconfirmed: list[float]  # the same on b (confirm_writes = false: after the commit)


def measure(
    workdir: Path, config: Callable[[dict[str, Any]], Mapping[str, Mapping[str, Any]]], tag: str, *,
    samples: int, warmup: int, progress: Callable[[str], None],
) -> Forwarded:
    """Start the cluster and the two nodes, time the requests, stop everything.

    `config(extra)`: a node's settings (the benchmark's, `extra`, then the caller's overrides).
    """
    nats_cluster = NatsCluster(workdir / "nats")
    secret = secrets.token_urlsafe(32)
    nodes: list[BrainServer] = []
    try:
        nats_cluster.start()
        def shared(server: int) -> dict[str, Any]:
            return {"nats": {"url": nats_cluster.server_url(server), **nats_cluster.credentials, "replicas": 3}}

        a = BrainServer(workdir / "a", roles="auth,api", config=config({
            **shared(0), "server": {"secret": secret}, "cluster": {"node_id": "a"},
        }))
        nodes.append(a)
        a.start(timeout=60)
        b = BrainServer(workdir / "b", roles="api", config=config({
            **shared(1), "server": {"secret": secret, "public_url": a.auth_url},
            "cluster": {"node_id": "b", "confirm_writes": False},
            "api": {"auth_server_url": a.auth_url},
        }))
        nodes.append(b)
        b.start(timeout=60)
        progress("cluster: 3 nats-servers (R3), node a (auth+api, on n1) and node b (api, on n2) up")
        with KeepAliveClient(a.auth_port) as c:
            user, _ = sign_up(c, tag, 0)
            user_b, _ = sign_up(c, tag, 1)
        with KeepAliveClient(a.api_port) as direct, KeepAliveClient(b.api_port) as other:
            headers = {"Authorization": user.authorization}
            expect(direct.request("POST", "/events", headers=headers, body=event_body(0)), 201, what="placing the user")
            expect(other.request("POST", "/events", headers={"Authorization": user_b.authorization}, body=event_body(0)),
                   201, what="placing the second user on b")
            post = _paired(other, direct, user, "POST", samples=samples, warmup=warmup)
            me = _paired(other, direct, user, "GET", samples=samples, warmup=warmup)
            confirmed = _confirmed(direct, other, user, user_b, samples=samples, warmup=warmup)
            live = _live(direct, other, a.api_port, b.api_port, user, user_b, samples=samples, warmup=warmup)
        return Forwarded(post[0], post[1], me[0], me[1], *confirmed, *live)
    finally:
        for node in nodes:
            node.close()
        nats_cluster.stop()


def _paired(
    other: KeepAliveClient, direct: KeepAliveClient, user: User, method: str, *, samples: int, warmup: int,
) -> tuple[list[float], list[float]]:
    headers = {"Authorization": user.authorization}
    if method == "POST":
        raw = other.encode("POST", "/events", headers=headers, body=event_body(1, kind="bench.cluster"))
        status, what = 201, "POST /events"
    else:
        raw = other.encode("GET", "/me", headers=headers)
        status, what = 200, "GET /me"
    shadow = Shadow(direct, raw, status, [])
    forwarded = sample_latencies(other, lambda _i: raw, count=samples, warmup=warmup, statuses=(status,),
                                 what=f"{what} via another node", shadow=shadow)
    return forwarded, shadow.times


def _confirmed(
    a: KeepAliveClient, b: KeepAliveClient, user_a: User, user_b: User, *, samples: int, warmup: int,
) -> tuple[list[float], list[float]]:
    """POST /events to a (201 after the stream's ack) and, alternating, to b (201 after the commit)."""
    body = event_body(1, kind="bench.cluster")
    unconfirmed = b.encode("POST", "/events", headers={"Authorization": user_b.authorization}, body=body)
    raw = a.encode("POST", "/events", headers={"Authorization": user_a.authorization}, body=body)
    shadow = Shadow(b, unconfirmed, 201, [])
    confirmed = sample_latencies(a, lambda _i: raw, count=samples, warmup=warmup, statuses=(201,),
                                 what="POST /events answered after the stream's ack", shadow=shadow)
    return confirmed, shadow.times


class _Stream:
    """One GET /events/stream on a raw socket, read in the caller's thread: each event's id and
    when it arrived (time.perf_counter, taken as the read returns)."""

    def __init__(self, port: int, authorization: str) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.sock.sendall(f"GET /events/stream HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                          f"Authorization: {authorization}\r\n\r\n".encode())
        self.pending = b""

    def next_id(self) -> tuple[int, float]:
        """The next event's id and arrival time (a frame and its chunk arrive in one read)."""
        while True:
            found = re.search(rb"\nid: (\d+)\n", self.pending)
            if found is not None:
                self.pending = self.pending[found.end():]
                return int(found.group(1)), self.arrived
            data = self.sock.recv(65536)
            self.arrived = time.perf_counter()
            if not data:
                raise AssertionError("the live stream ended")
            self.pending = self.pending[-64:] + data

    def close(self) -> None:
        self.sock.close()


def _live(
    a: KeepAliveClient, b: KeepAliveClient, a_port: int, b_port: int, user_a: User, user_b: User, *,
    samples: int, warmup: int,
) -> tuple[list[float], list[float]]:
    """POST /events -> the event on the user's stream on its node: a (after the ack), b (after the commit),
    in alternating blocks. The stream is read before the POST's answer, in this thread, so the
    arrival time is the stream's own."""
    body = event_body(1, kind="bench.cluster.live")
    sides = [(client, _Stream(port, user.authorization),
              client.encode("POST", "/events", headers={"Authorization": user.authorization}, body=body), [])
             for client, port, user in ((a, a_port, user_a), (b, b_port, user_b))]
    try:
        time.sleep(0.5)  # both streams open
        for i in range(warmup + samples):
            for client, stream, raw, times in sides if (i // SHADOW_BLOCK) % 2 == 0 else sides[::-1]:
                client.send_only(raw)
                sent = time.perf_counter()
                streamed, arrived = stream.next_id()
                event_id = expect(client.receive(), 201, what="POST /events beside a live stream").json()["id"]
                assert streamed == event_id, f"streamed {streamed}, posted {event_id}"
                if i >= warmup:
                    times.append(arrived - sent)
    finally:
        for _, stream, _, _ in sides:
            stream.close()
    return sides[0][3], sides[1][3]


class Spread(NamedTuple):
    """POST /events rates (req/s) of alternating runs: one node alone, and three sharing the load."""

    one: list[float]
    three: list[float]


def spread(
    workdir: Path, config: Callable[[dict[str, Any]], Mapping[str, Mapping[str, Any]]], tag: str, *,
    users: int, connections: int, seconds: float, repeats: int, progress: Callable[[str], None],
) -> Spread:
    """Start the cluster and three nodes, run the alternating loads, stop everything."""
    nats_cluster = NatsCluster(workdir / "nats")
    secret = secrets.token_urlsafe(32)
    nodes: list[BrainServer] = []
    try:
        nats_cluster.start()
        shared = {"nats": {"url": nats_cluster.url, **nats_cluster.credentials, "replicas": 3}}
        a = BrainServer(workdir / "a", roles="auth,api", config=config({
            **shared, "server": {"secret": secret}, "cluster": {"node_id": "a"},
        }))
        nodes.append(a)
        a.start(timeout=60)
        for node in ("b", "c"):
            nodes.append(BrainServer(workdir / node, roles="api", config=config({
                **shared, "server": {"secret": secret, "public_url": a.auth_url},
                "cluster": {"node_id": node}, "api": {"auth_server_url": a.auth_url},
            })))
        for server in nodes[1:]:
            server.start(wait=False)
        for server in nodes[1:]:
            server.wait_ready(60)
        progress("cluster: 3 nats-servers (R3), nodes a (auth+api), b and c (api) up")
        alone = sign_up_many(a.auth_port, f"{tag}-one", range(users))
        shared_users = sign_up_many(a.auth_port, f"{tag}-three", range(users))
        # Placed by their first request: the first group all on a, the second one third on each node.
        for i, user in enumerate(alone + shared_users):
            node = a if i < users else nodes[i % 3]
            with KeepAliveClient(node.api_port) as client:
                expect(client.request("POST", "/events", headers={"Authorization": user.authorization},
                                      body=event_body(0)), 201, what="placing a user")
        one = [Req("POST", "/events", u.authorization, event_body(i)) for i, u in enumerate(alone)]
        three = [Req("POST", "/events", u.authorization, event_body(i)) for i, u in enumerate(shared_users)]
        result = Spread([], [])
        share = [connections // 3 + (1 if k < connections % 3 else 0) for k in range(3)]
        with ThreadPoolExecutor(3) as pool:
            for r in range(repeats):
                result.one.append(run_wrk(a.api_port, one, connections=connections, duration=seconds).rps)
                runs = list(pool.map(lambda k: run_wrk(nodes[k].api_port, three, connections=share[k],
                                                       duration=seconds), range(3)))
                result.three.append(sum(run.rps for run in runs))
                progress(f"run {r + 1}/{repeats}: 1 node {result.one[-1]:,.0f} req/s, "
                         f"3 nodes {result.three[-1]:,.0f} req/s")
        return result
    finally:
        for node in nodes:
            node.close()
        nats_cluster.stop()

"""What cluster mode adds to a request: forwarding to the user's node over NATS (docs/cluster.md).

A three-server NATS JetStream cluster on loopback (brain.testing.nats_cluster) and two brain
nodes on it, each with its own data directory and R3 streams: `a` (auth and API) and `b` (API).
Node `a` is a client of the first nats-server and `b` of the second (nats-py would otherwise
pick one at random, and a forward between nodes on one server skips a route hop each way, so
the figure moved between runs with the draw), so a forward crosses a route both ways, as
between machines. A user is placed on `a` by its first
request there. One client then times the same requests
sent to `b` (forwarded to `a` and back) and to `a` directly, in alternating blocks
(bench.client.Shadow) so that outside load falls on both: the difference is the forward's cost.

Node `b` runs with `cluster.confirm_writes = false`: a second user placed on `b` gives the cost
of answering a write only once JetStream acknowledged it (POST /events to `a` directly, which
waits for the R3 ack, against the same request to `b` directly, which does not).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

from bench.client import KeepAliveClient, Shadow, expect, sample_latencies
from bench.users import User, event_body, sign_up
from brain.testing.nats_cluster import NatsCluster
from tests.support import BrainServer

__all__ = ["Forwarded", "measure"]


class Forwarded(NamedTuple):
    """Latencies (seconds) via the other node, and to the owner directly, per request kind."""

    post_forwarded: list[float]
    post_direct: list[float]
    me_forwarded: list[float]
    me_direct: list[float]
    post_confirmed: list[float]  # to a, answered after the stream's ack
    post_unconfirmed: list[float]  # to b (confirm_writes = false), answered after the local commit


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
        return Forwarded(post[0], post[1], me[0], me[1], *confirmed)
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

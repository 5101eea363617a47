"""`python -m bench.cluster_ab OLD_TREE [--samples N]`: the forward's cost, this tree against another.

What `python -m bench --only cluster` measures (what a request via another node adds), for two
versions of brain in the same run, so that the machine's load falls on both: one 3-server NATS
cluster; nodes a (owner) ← b on this tree and c (owner) ← d on OLD_TREE (a checkout or `git
archive` of the version to compare with, put first on the PYTHONPATH of c and d: the venv's
editable install would otherwise import this tree for all four). a and c are clients of
nats-server n1, b and d of n2, as between machines (a version that forwards straight to the
owner's server reaches n1 through its extra connection; an older one crosses a route each way).
GET /me and POST /events are timed direct to the owner and via the other node, in blocks of 50
whose order is reversed every other round; the figure is the added p50 of each version.
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import tempfile
from pathlib import Path
from typing import Any

from bench.client import KeepAliveClient, expect
from bench.servers import FAST_ARGON2, bench_config
from bench.users import event_body, sign_up
from brain.testing.nats_cluster import NatsCluster
from tests.support import BrainServer

__all__ = ["main"]

BLOCK = 50


def _ms(times: list[float], q: float) -> float:
    """The q-quantile in ms (the median for 0.5)."""
    if q == 0.5:
        return statistics.median(times) * 1000
    return sorted(times)[min(len(times) - 1, int(len(times) * q))] * 1000


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.cluster_ab", description=__doc__.split("\n\n")[0])
    parser.add_argument("old_tree", type=Path, help="the source tree to compare with (its brain/ package)")
    parser.add_argument("--samples", type=int, default=1000, help="timed requests per row (default 1000)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="brain-cluster-ab-") as tmp:
        rows, loads = measure(Path(tmp), args.old_tree.resolve(), args.samples)
    print(f"load (1-min average) during the run: {min(loads):.1f}-{max(loads):.1f}; "
          f"{args.samples} samples per row, blocks of {BLOCK}")
    for name, times in rows.items():
        print(f"{name:18s} p50 {_ms(times, 0.5):.3f} ms  p99 {_ms(times, 0.99):.3f} ms")
    for method in ("GET", "POST"):
        added = {side: _ms(rows[f"{side} {method} via"], 0.5) - _ms(rows[f"{side} {method} direct"], 0.5)
                 for side in ("new", "old")}
        print(f"added p50, {method}: this tree {added['new']:.3f} ms, old tree {added['old']:.3f} ms")


def measure(workdir: Path, old_tree: Path, samples: int) -> tuple[dict[str, list[float]], list[float]]:
    """Start the cluster and the four nodes, time the requests, stop everything."""
    nats_cluster = NatsCluster(workdir / "nats")
    secret = secrets.token_urlsafe(32)
    nodes: dict[str, BrainServer] = {}

    def config(node: str) -> dict[str, Any]:
        auth = nodes.get("a")
        return bench_config(argon2=FAST_ARGON2, extra={
            "nats": {"url": nats_cluster.server_url(0 if node in "ac" else 1), **nats_cluster.credentials, "replicas": 3},
            "server": {"secret": secret, **({"public_url": auth.auth_url} if auth else {})},
            "cluster": {"node_id": node}, **({"api": {"auth_server_url": auth.auth_url}} if auth else {}),
        })

    try:
        nats_cluster.start()
        for node in "abcd":
            env = {"PYTHONPATH": str(old_tree)} if node in "cd" else {}
            nodes[node] = BrainServer(workdir / node, roles="auth,api" if node == "a" else "api",
                                      config=config(node), env=env)
            nodes[node].start(timeout=60)
        with KeepAliveClient(nodes["a"].auth_port) as client:
            users = {"new": sign_up(client, "ab", 0)[0], "old": sign_up(client, "ab", 1)[0]}
        clients = {node: KeepAliveClient(server.api_port) for node, server in nodes.items()}
        plan: list[tuple[str, KeepAliveClient, bytes, int]] = []
        for side, owner, other in (("new", "a", "b"), ("old", "c", "d")):
            headers = {"Authorization": users[side].authorization}
            # Placed on its owner by its first request there.
            expect(clients[owner].request("POST", "/events", headers=headers, body=event_body(0)), 201,
                   what=f"placing the {side} user")
            for method, status in (("GET", 200), ("POST", 201)):
                for how, node in (("direct", owner), ("via", other)):
                    raw = (clients[node].encode("GET", "/me", headers=headers) if method == "GET" else
                           clients[node].encode("POST", "/events", headers=headers, body=event_body(1, kind="bench.ab")))
                    plan.append((f"{side} {method} {how}", clients[node], raw, status))
        for name, client, raw, status in plan:  # warm up
            for _ in range(100):
                expect(client.send(raw), status, what=name)
        rows: dict[str, list[float]] = {name: [] for name, _, _, _ in plan}
        loads = [os.getloadavg()[0]]
        for block in range(max(1, samples // BLOCK)):
            for name, client, raw, status in plan if block % 2 == 0 else plan[::-1]:
                for _ in range(BLOCK):
                    rows[name].append(expect(client.send(raw), status, what=name).elapsed)
            loads.append(os.getloadavg()[0])
        for client in clients.values():
            client.close()
        return rows, loads
    finally:
        for server in nodes.values():
            server.close()
        nats_cluster.stop()


if __name__ == "__main__":
    main()

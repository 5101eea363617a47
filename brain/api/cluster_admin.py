"""`brain cluster status`: what the shared NATS JetStream says about the cluster (docs/cluster.md).

Read from JetStream alone, so it works from any machine with the cluster's NATS settings, whether
or not a node runs there: the nodes whose heartbeat is current (`brain_cluster_nodes`), users
per node (`brain_placement`), mail-account leases per holder (`brain_mail_leases`), and the event
stream's size, leader and replicas (whether each is current, and how far behind).
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections import Counter
from typing import Any

import nats
import nats.errors
import nats.js.errors

from brain.api.cluster import NODES_BUCKET
from brain.api.placement import BUCKET as PLACEMENT_BUCKET
from brain.commands import settings_from_args
from brain.config import Settings
from brain.errors import ConfigError
from brain.nats_auth import connect_options
from brain.redact import redact_text

MAIL_LEASES_BUCKET = "brain_mail_leases"
_TIMEOUT_S = 5.0


async def _values(js: Any, bucket: str) -> dict[str, bytes] | None:
    """Every key's current value in a KV bucket (None: no such bucket)."""
    try:
        kv = await js.key_value(bucket)
    except nats.js.errors.BucketNotFoundError:
        return None
    watcher = await kv.watchall()
    found: dict[str, bytes] = {}
    try:
        while True:
            entry = await watcher.updates(timeout=_TIMEOUT_S)
            if entry is None:
                return found
            if entry.operation not in ("DEL", "PURGE") and entry.value:
                found[entry.key] = entry.value
    finally:
        await watcher.stop()


def _holder(value: bytes) -> str:
    try:
        return str(json.loads(value)["owner"])
    except (ValueError, KeyError, TypeError):
        return "?"


async def gather(settings: Settings) -> dict[str, Any]:
    """The cluster's state as `brain cluster status --json` prints it."""
    if not settings.nats.url:
        raise ConfigError("nats.url: cluster status reads the cluster's NATS; none is configured")
    async with asyncio.timeout(_TIMEOUT_S * 4):
        nc = await nats.connect(**connect_options(settings.nats, settings.nats.url), connect_timeout=_TIMEOUT_S,
                                allow_reconnect=False, max_reconnect_attempts=0)
    try:
        js = nc.jetstream(timeout=_TIMEOUT_S)
        nodes = await _values(js, NODES_BUCKET)
        placement = await _values(js, PLACEMENT_BUCKET)
        leases = await _values(js, MAIL_LEASES_BUCKET)
        users = Counter(v.decode() for v in (placement or {}).values())
        live = sorted(nodes or {})
        out: dict[str, Any] = {
            "nodes": {node: {"alive": node in live, "users": users.get(node, 0)} for node in sorted({*live, *users})},
            "users": sum(users.values()),
            "mail_leases": dict(sorted(Counter(_holder(v) for v in (leases or {}).values()).items())),
        }
        try:
            info = await js.stream_info(settings.nats.stream)
        except nats.js.errors.NotFoundError:
            out["stream"] = None
        else:
            cluster = info.cluster
            out["stream"] = {
                "name": settings.nats.stream, "messages": info.state.messages, "bytes": info.state.bytes,
                "replicas": info.config.num_replicas, "leader": cluster.leader if cluster else None,
                "followers": [
                    {"server": p.name, "current": bool(p.current), "offline": bool(p.offline), "lag": p.lag or 0}
                    for p in ((cluster.replicas if cluster else None) or [])
                ],
            }
        return out
    finally:
        await nc.close()


def status(args: argparse.Namespace) -> int:
    """Print the cluster's state; exit 1 if NATS cannot be reached."""
    settings = settings_from_args(args)
    try:
        state = asyncio.run(gather(settings))
    except (OSError, TimeoutError, nats.errors.Error) as exc:
        print(f"cannot read the cluster's state from NATS: {redact_text(repr(exc))}")
        return 1
    if args.json:
        print(json.dumps(state))
        return 0
    print(f"{'NODE':<24} {'ALIVE':<6} {'USERS':>8}")
    for node, row in state["nodes"].items():
        print(f"{node:<24} {'yes' if row['alive'] else 'NO':<6} {row['users']:>8}")
    print(f"users placed: {state['users']}")
    leases = state["mail_leases"]
    print("mail leases: " + (", ".join(f"{holder} {n}" for holder, n in leases.items()) or "none"))
    stream = state["stream"]
    if stream is None:
        print("event stream: not created yet")
    else:
        followers = ", ".join(
            f"{f['server']} {'current' if f['current'] else 'behind'}{' offline' if f['offline'] else ''} lag {f['lag']}"
            for f in stream["followers"]
        )
        print(f"event stream {stream['name']}: {stream['messages']} messages, R{stream['replicas']}, "
              f"leader {stream['leader'] or '-'}" + (f"; {followers}" if followers else ""))
    return 0

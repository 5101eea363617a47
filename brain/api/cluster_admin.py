"""`brain cluster status`: what the shared NATS JetStream says about the cluster (docs/cluster.md);
`brain cluster drain NODE`: ask a node to hand its users to the others (brain.api.handover).

Read from JetStream alone, so it works from any machine with the cluster's NATS settings, whether
or not a node runs there: the nodes whose heartbeat is current (`brain_cluster_nodes`), users
per node (`brain_placement`), mail accounts per node of their user (`brain_mail_accounts`),
mail-account leases per holder (`brain_mail_leases`), and the event stream's size, leader and replicas (whether each is current, and how far behind).
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
from brain.api.handover import ADMIN_SUBJECT
from brain.api.placement import BUCKET as PLACEMENT_BUCKET
from brain.commands import settings_from_args
from brain.config import Settings
from brain.errors import ConfigError
from brain.leases import bucket_values
from brain.nats_auth import connect_options
from brain.redact import redact_text

MAIL_LEASES_BUCKET = "brain_mail_leases"
MAIL_ACCOUNTS_BUCKET = "brain_mail_accounts"  # brain.mail.directory (a role: not imported here)
_TIMEOUT_S = 5.0


def _account_user(value: bytes) -> str:
    try:
        return str(json.loads(value)["account"]["user_id"])
    except (ValueError, KeyError, TypeError):
        return "?"


def _holder(value: bytes) -> str:
    try:
        return str(json.loads(value)["owner"])
    except (ValueError, KeyError, TypeError):
        return "?"


async def _connect(settings: Settings) -> Any:
    if not settings.nats.url:
        raise ConfigError("nats.url: the cluster commands talk to the cluster's NATS; none is configured")
    async with asyncio.timeout(_TIMEOUT_S * 4):
        return await nats.connect(**connect_options(settings.nats, settings.nats.url), connect_timeout=_TIMEOUT_S,
                                  allow_reconnect=False, max_reconnect_attempts=0)


async def gather(settings: Settings) -> dict[str, Any]:
    """The cluster's state as `brain cluster status --json` prints it."""
    nc = await _connect(settings)
    try:
        js = nc.jetstream(timeout=_TIMEOUT_S)
        nodes = await bucket_values(js, NODES_BUCKET)
        placement = await bucket_values(js, PLACEMENT_BUCKET)
        leases = await bucket_values(js, MAIL_LEASES_BUCKET)
        accounts = await bucket_values(js, MAIL_ACCOUNTS_BUCKET)
        users = Counter(v.decode() for v in (placement or {}).values())
        # A mail account syncs on its user's node (brain.mail.directory).
        mail = Counter((placement or {}).get(_account_user(v), b"?").decode() for v in (accounts or {}).values())
        live = sorted(nodes or {})
        out: dict[str, Any] = {
            "nodes": {node: {"alive": node in live, "users": users.get(node, 0), "mail_accounts": mail.get(node, 0)}
                      for node in sorted({*live, *users})},
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
    print(f"{'NODE':<24} {'ALIVE':<6} {'USERS':>8} {'MAIL':>6}")
    for node, row in state["nodes"].items():
        print(f"{node:<24} {'yes' if row['alive'] else 'NO':<6} {row['users']:>8} {row['mail_accounts']:>6}")
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


async def ask_drain(settings: Settings, node: str, timeout: float) -> dict[str, Any]:
    """The node's answer to a drain: {"node", "moved": {user: new node}, "users"} or {"error"}."""
    nc = await _connect(settings)
    try:
        try:
            reply = await nc.request(f"{ADMIN_SUBJECT}.{node}", json.dumps({"op": "drain"}).encode(), timeout=timeout)
        except nats.errors.NoRespondersError:
            return {"error": f"node {node} is not running, or not connected to NATS"}
        except nats.errors.TimeoutError:
            return {"error": f"node {node} did not finish within {timeout:g}s (it goes on: see `brain cluster status`)"}
        answer: dict[str, Any] = json.loads(reply.data)
        return answer
    finally:
        await nc.close()


def drain(args: argparse.Namespace) -> int:
    """Drain a node; exit 1 if it could not be done."""
    settings = settings_from_args(args)
    try:
        answer = asyncio.run(ask_drain(settings, args.node, args.timeout))
    except (OSError, TimeoutError, nats.errors.Error) as exc:
        answer = {"error": f"cannot reach the cluster's NATS: {redact_text(repr(exc))}"}
    if args.json:
        print(json.dumps(answer))
    elif "error" in answer:
        print(f"drain of {args.node} failed: {answer['error']}")
    else:
        per_node = Counter(answer["moved"].values())
        moved = ", ".join(f"{n} to {target}" for target, n in sorted(per_node.items())) or "none"
        print(f"drained node {answer['node']}: {len(answer['moved'])} of {answer['users']} users moved ({moved})")
    return 1 if "error" in answer else 0

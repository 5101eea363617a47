"""Users moving between cluster nodes: a dead node's users taken over, a live node drained.

Run by the primary worker of each node (brain.api.cluster). Every committed event is on the
replicated stream before its write was answered 201 (brain.api.cluster's `append`), so a user's
store can be rebuilt on any node from `brain.events.<user>.>` (brain.api.repair) and nothing
acknowledged depends on the disk of the node that held it.

**Takeover.** Every third of `cluster.node_ttl_seconds` each node reads the live nodes (the
heartbeats in `brain_cluster_nodes`). A user placed on a node that is not among them is taken by
one live node, chosen per user by rendezvous hashing over the live nodes (so a dead node's users
spread over the survivors), or by any live node once the user has been orphaned for two TTLs
(the chosen one may have died too) — but only a node that has been missing for SETTLE_SECONDS
beyond a third of the TTL, as seen by a node that held its own heartbeat all that time: when the
bucket's leader is lost with a NATS server and its election outlasts the TTL, every node's key
ages out at once (or some of them: their ages differ by up to a beat), and live nodes take theirs
back within a beat and a request's timeout. Taking a user over: a quarantine entry without a file
(brain.api.quarantine: from now on no process of this node opens an empty store in its place),
then the placement entry moved from the dead node to this one by a compare-and-set on its
revision (of two nodes taking one user, exactly one wins; the loser drops its entry), then the
store rebuilt from the stream. Meanwhile the user's requests wait on the rebuilding process up
to `cluster.rebuild_wait_seconds`, or are answered 503 with Retry-After.

**Giving up.** A node that finds a user it held placed elsewhere (it was thought dead, or it
was drained) closes the store and moves its files to `users/<id>/moved/<time>/`: never opened
again, kept as evidence (rows committed there but never acknowledged by JetStream, whose writes
were answered 503, stay in it). Its event bus publishes nothing of such a user (`may_publish`):
those ids belong to the new holder.

**Drain** (`brain cluster drain NODE`, a request on `brain.cluster.admin.<node>`): the node
places no new user on itself, and hands each of its users to a live node (rendezvous again):
the target prepares (the quarantine entry), the placement moves (every node forwards the user's
requests there from then on; the target holds them until it has rebuilt), the old node
publishes what its outbox still holds and waits for JetStream's acks, tells the target, which
rebuilds from the stream and answers, and gives the user up.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import shutil
import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

import nats.errors

from brain.api.events import StoredEvent
from brain.api.outbox import Doorbell
from brain.api.placement import UserPlacement
from brain.api.publisher import AnotherWritersEvent, publish_confirmed
from brain.api.quarantine import move_files, new_entry, pending, quarantine_dir
from brain.api.repair import RepairError, read_stream, rebuild
from brain.api.store_manager import StoreManager
from brain.api.user_store import OutboxBusy, marker_path, store_path
from brain.leases import Leases, bucket_values
from brain.redact import redact_text
from brain.sections import NatsSettings

__all__ = ["ADMIN_SUBJECT", "MOVED", "TAKEOVER", "DrainError", "Handover", "rendezvous"]

# How long, beyond a beat (a third of the TTL), a node must have been missing from the live nodes
# before its users are taken: the heartbeat's JetStream requests time out after 5 s
# (brain.api.cluster), and a live node's beat stuck in one while the bucket elected a leader takes
# its key back that much later.
SETTLE_SECONDS = 5.0

log = logging.getLogger("brain.cluster")

ADMIN_SUBJECT = "brain.cluster.admin"
MOVED = "moved"  # users/<id>/moved/<time>/: a store given up to another node
TAKEOVER = "takeover"  # the reason of the quarantine entry a takeover makes
# Stores rebuilt at once by one node (each reads the user's subjects and writes a database).
REBUILDS_AT_ONCE = 4
OUTBOX_BATCH = 500
# How long the old node of a drained user lets requests it had already routed to itself finish.
SETTLE_SECONDS = 0.5
_ADMIN_TIMEOUT = 120.0
_ASK_ATTEMPTS = 10


class DrainError(Exception):
    """A drain could not be done; the message says why."""


def rendezvous(user_id: str, nodes: Iterable[str]) -> str:
    """The node of `nodes` chosen for the user: the same on every node that sees the same nodes."""
    return max(nodes, key=lambda node: hashlib.sha256(f"{user_id}/{node}".encode()).digest())


def set_aside(data_path: Path, user_id: str, detail: str) -> Path | None:
    """Move the user's store to `users/<id>/moved/<time>/` (None: there was none)."""
    path = store_path(data_path, user_id)
    if not path.exists():
        return None
    entry = new_entry(path.parent / MOVED, user_id, MOVED, detail)
    move_files(path, entry)
    return entry


def prepare_takeover(data_path: Path, user_id: str, from_node: str) -> Path:
    """Block the user's store on this node until it is rebuilt: a quarantine entry without a file."""
    set_aside(data_path, user_id, f"a stale copy, found as the user was taken over from node {from_node}")
    return new_entry(quarantine_dir(store_path(data_path, user_id)), user_id, TAKEOVER,
                     f"taken over from node {from_node}: rebuilt from the event stream")


class Handover:
    """Takeovers, give-ups and drains of one node (its primary worker)."""

    def __init__(
        self, *, node_id: str, nc: Any, js: Any, placement: UserPlacement, heartbeat: Leases, stores: StoreManager,
        bell: Doorbell, nats_settings: NatsSettings, data_path: Path, nodes_bucket: str,
    ) -> None:
        self.node_id = node_id
        self.nc = nc
        self.js = js
        self.placement = placement
        self.heartbeat = heartbeat
        self.stores = stores
        self.bell = bell
        self.nats_settings = nats_settings
        self.data_path = data_path
        self.nodes_bucket = nodes_bucket
        self.interval = heartbeat.ttl / 3
        self.rebuilding: dict[str, asyncio.Event] = {}
        self.handing_off: set[str] = set()
        self._awaiting_ready: set[str] = set()  # prepared for a drain, not yet told to rebuild
        self.draining = False
        # Told the other live nodes when a drain starts, before any user moves: the node's other
        # workers place new users there too (brain.api.cluster).
        self.on_drain: Callable[[set[str]], Awaitable[None]] | None = None
        # Told the events a give-up's flush had acknowledged: a POST of another worker of the
        # node may be waiting for one of them (its own bus no longer publishes for the user).
        self.on_flushed: Callable[[str, list[int]], Awaitable[None]] | None = None
        # Whether a user's account was deleted (brain.api.cluster): a dead node's deleted user is
        # not taken over (an empty store rebuilt for nobody), their placement entry is removed.
        self.deleted: Callable[[str], bool] = lambda _user_id: False
        self.taken_over = 0
        self.given_up = 0
        self.drained = 0
        self._orphaned: dict[str, float] = {}  # user -> since when its node has been dead (monotonic)
        self._missing: dict[str, float] = {}  # node -> since when it has been seen missing (monotonic)
        self._rebuilds = asyncio.Semaphore(REBUILDS_AT_ONCE)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stopping = False

    # -- life -------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Give up stale stores, finish takeovers a crash interrupted, answer admin requests, watch the nodes."""
        await asyncio.get_running_loop().run_in_executor(None, self._give_up_stale)
        for user_id in await asyncio.get_running_loop().run_in_executor(None, self._unfinished_takeovers):
            self._spawn(self._rebuild(user_id))
        await self.nc.subscribe(f"{ADMIN_SUBJECT}.{self.node_id}", cb=self._admin)
        self._spawn(self._watch_nodes())

    async def close(self) -> None:
        """Stop watching and rebuilding (a rebuild cut short is resumed at the next start)."""
        self._stopping = True
        for task in list(self._tasks):
            task.cancel()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- what the request path and the bus ask --------------------------------------------------------

    def may_publish(self, user_id: str) -> bool | None:
        """Whether this node's bus may publish the user's events (None: placement not loaded yet)."""
        if not self.placement.ready:
            return None
        node = self.placement.cached(user_id)
        return node is None or node == self.node_id or user_id in self.handing_off

    async def wait_rebuilt(self, user_id: str, timeout: float) -> None:
        """Return once the user's store is rebuilt here, or after `timeout` (then the store answers 503)."""
        done = self.rebuilding.get(user_id)
        if done is not None:
            try:
                await asyncio.wait_for(done.wait(), timeout)
            except TimeoutError:
                pass

    def on_lost(self, user_id: str, node: str) -> None:
        """The placement watcher saw the user placed elsewhere: give the store up (unless a drain is doing it)."""
        if user_id not in self.handing_off:
            self._spawn(self._give_up(user_id, node))

    # -- takeover ---------------------------------------------------------------------------------------

    async def live_nodes(self) -> set[str]:
        """The nodes whose heartbeat is current."""
        return set(await bucket_values(self.js, self.nodes_bucket) or {})

    async def _watch_nodes(self) -> None:
        while not self._stopping:
            await asyncio.sleep(self.interval)
            try:
                await self.take_over_orphans()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - NATS away, a meta leader election: next round
                log.warning("cluster: looking for dead nodes' users: %s", redact_text(repr(exc)))

    async def take_over_orphans(self) -> None:
        """Take over the users of dead nodes that fall to this node (one round)."""
        live = await self.live_nodes()
        # Only a node sure of its own heartbeat takes users: one cut off from NATS may be the dead one.
        held = self.heartbeat.held_since(self.node_id)
        if (self.draining or self.node_id not in live or held is None
                or self.heartbeat.valid_until(self.node_id) < time.monotonic()):
            self._missing = {}
            return
        now = time.monotonic()
        # A node counts as dead once missing for a beat and SETTLE_SECONDS, counted from no earlier
        # than this node's own heartbeat began (a heartbeat lost and taken back starts it again:
        # the whole bucket may have lapsed, the others' keys with it).
        users = self.placement.users()
        self._missing = {node: max(self._missing.get(node, now), held) for node in set(users.values()) - live}
        settle = self.heartbeat.ttl / 3 + SETTLE_SECONDS
        orphaned: dict[str, float] = {}
        for user_id, node in users.items():
            if node in live or now - self._missing[node] < settle:
                continue
            if self.deleted(user_id):
                if await self.placement.forget(user_id, node):
                    log.warning("cluster: user %s, placed on node %s (not alive), was deleted; placement removed",
                                user_id, node)
                continue
            since = orphaned[user_id] = self._orphaned.get(user_id, now)
            if rendezvous(user_id, live) == self.node_id or now - since > 2 * self.heartbeat.ttl:
                await self._take_over(user_id, node)
        self._orphaned = orphaned

    async def _take_over(self, user_id: str, dead: str) -> None:
        loop = asyncio.get_running_loop()
        entry = await loop.run_in_executor(None, prepare_takeover, self.data_path, user_id, dead)
        if not await self.placement.move(user_id, dead, self.node_id):
            await loop.run_in_executor(None, shutil.rmtree, entry)  # another node took it
            return
        log.warning("cluster: node %s took user %s over from node %s (not alive); rebuilding the store",
                    self.node_id, user_id, dead)
        self.taken_over += 1
        self._spawn(self._rebuild(user_id))

    def _unfinished_takeovers(self) -> list[str]:
        """Users placed here with a takeover's quarantine entry still pending (this node died rebuilding)."""
        found = []
        for user_id, node in self.placement.users().items():
            if node != self.node_id:
                continue
            entry = pending(store_path(self.data_path, user_id))
            if entry is not None and entry.get("reason") == TAKEOVER:
                found.append(user_id)
        return found

    async def _rebuild(self, user_id: str) -> None:
        """Rebuild the user's store from the stream (retried until it works), then serve it."""
        done = self.rebuilding.setdefault(user_id, asyncio.Event())
        loop = asyncio.get_running_loop()
        path = store_path(self.data_path, user_id)
        try:
            async with self._rebuilds:
                while not self._stopping:
                    try:
                        stream = await read_stream(self.js, self.nats_settings, user_id)
                        report = await loop.run_in_executor(None, rebuild, self.data_path, user_id, stream)
                        log.warning("cluster: rebuilt the store of %s: %d events from the stream", user_id,
                                    report.events)
                        break
                    except asyncio.CancelledError:
                        raise
                    except Exception as exc:  # noqa: BLE001 - NATS away, another repair running: again
                        if isinstance(exc, RepairError) and path.exists() and pending(path) is None:
                            break  # rebuilt by another process of this node (api.auto_repair)
                        log.warning("cluster: rebuilding the store of %s failed (%s); retrying", user_id,
                                    redact_text(repr(exc)))
                        await asyncio.sleep(1.0)
            self._forget_unconfirmed(user_id)
            self.stores.note_repaired(user_id)
        finally:
            done.set()
            self.rebuilding.pop(user_id, None)

    # -- giving up ----------------------------------------------------------------------------------------

    async def _give_up(self, user_id: str, node: str) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self._give_up_blocking, user_id, node)

    def _forget_unconfirmed(self, user_id: str) -> None:
        # Ids of a store given up or rebuilt that JetStream never acknowledged will never be: left
        # there, they would hold every later event of the user back from its streams here.
        if self.bell.confirmations is not None:
            self.bell.confirmations.forget(user_id)

    def _give_up_blocking(self, user_id: str, node: str) -> None:
        self.stores.close_store(user_id)
        self._forget_unconfirmed(user_id)
        # Its bus would not publish what is left anyway (may_publish): nothing to look for at the next start.
        marker_path(self.data_path, user_id).unlink(missing_ok=True)
        if set_aside(self.data_path, user_id, f"the user is placed on node {node}") is not None:
            self.given_up += 1
            log.warning("cluster: gave the store of %s up (placed on node %s); moved aside", user_id, node)

    def _give_up_stale(self) -> None:
        """At start: the stores of users placed on another node meanwhile (this node was thought dead)."""
        users = self.data_path / "users"
        try:
            local = [entry.name for entry in users.iterdir() if (entry / "events.db").exists()]
        except FileNotFoundError:
            return
        for user_id in local:
            node = self.placement.cached(user_id)
            if node is not None and node != self.node_id:
                self._give_up_blocking(user_id, node)

    # -- drain ----------------------------------------------------------------------------------------------

    async def _admin(self, msg: Any) -> None:
        # nats-py runs a subscription's callbacks one after another: a drain must not hold up a prepare.
        self._spawn(self._answer_admin(msg))

    async def _answer_admin(self, msg: Any) -> None:
        try:
            request = json.loads(msg.data)
            op = request.get("op")
            if op == "drain":
                answer: dict[str, Any] = await self.drain()
            elif op == "prepare":
                answer = await self._prepare(request["users"], request["from"])
            elif op == "abort":
                answer = await self._abort(request["users"])
            elif op == "ready":
                answer = await self._ready(request["users"])
            else:
                answer = {"error": f"unknown operation {op!r}"}
        except DrainError as exc:
            answer = {"error": str(exc)}
        except Exception as exc:  # noqa: BLE001 - the asker gets the reason, not a timeout
            log.warning("cluster: admin request: %r", exc)
            answer = {"error": redact_text(repr(exc))}
        try:
            await msg.respond(json.dumps(answer).encode())
        except Exception as exc:  # noqa: BLE001 - the asker times out and says so
            log.warning("cluster: could not answer an admin request: %r", exc)

    async def _ask(self, node: str, request: dict[str, Any]) -> dict[str, Any]:
        for attempt in range(_ASK_ATTEMPTS):
            try:
                reply = await self.nc.request(f"{ADMIN_SUBJECT}.{node}", json.dumps(request).encode(),
                                              timeout=_ADMIN_TIMEOUT)
                break
            except nats.errors.NoRespondersError:
                # Alive (its heartbeat is there) but not answering yet: a node still starting.
                if attempt == _ASK_ATTEMPTS - 1:
                    raise DrainError(f"node {node} is not answering admin requests") from None
                await asyncio.sleep(1.0)
            except nats.errors.TimeoutError:
                raise DrainError(f"node {node} did not answer within {_ADMIN_TIMEOUT:g}s") from None
        answer: dict[str, Any] = json.loads(reply.data)
        if "error" in answer:
            raise DrainError(f"node {node}: {answer['error']}")
        return answer

    async def _prepare(self, users: list[str], from_node: str) -> dict[str, Any]:
        """A drain's target: block the users' stores here until they are rebuilt."""
        loop = asyncio.get_running_loop()
        for user_id in users:
            await loop.run_in_executor(None, prepare_takeover, self.data_path, user_id, from_node)
            self.rebuilding.setdefault(user_id, asyncio.Event())
        self._awaiting_ready.update(users)
        self._spawn(self._unless_ready(users))
        return {"prepared": len(users)}

    async def _unless_ready(self, users: list[str]) -> None:
        # The old node died (or lost NATS) mid-drain: the users placed here are rebuilt anyway
        # (everything acknowledged is on the stream); the others did not come.
        await asyncio.sleep(_ADMIN_TIMEOUT)
        left = [u for u in users if u in self._awaiting_ready]
        self._awaiting_ready.difference_update(left)
        mine = [u for u in left if self.placement.cached(u) == self.node_id]
        await self._abort([u for u in left if u not in mine])
        for user_id in mine:
            self._spawn(self._rebuild(user_id))

    async def _abort(self, users: list[str]) -> dict[str, Any]:
        """A drain's target: the users did not come here after all (their placement changed meanwhile)."""
        loop = asyncio.get_running_loop()
        for user_id in users:
            entry = pending(store_path(self.data_path, user_id))
            if entry is not None and entry.get("reason") == TAKEOVER:
                await loop.run_in_executor(None, shutil.rmtree, entry["path"])
            done = self.rebuilding.pop(user_id, None)
            if done is not None:
                done.set()
        return {"aborted": len(users)}

    async def _ready(self, users: list[str]) -> dict[str, Any]:
        """A drain's target: the old node has published everything; rebuild, then answer."""
        self._awaiting_ready.difference_update(users)
        await asyncio.gather(*(self._rebuild(user_id) for user_id in users))
        return {"rebuilt": len(users)}

    async def drain(self) -> dict[str, Any]:
        """Hand every user of this node to the other live nodes; what moved where."""
        others = await self.live_nodes() - {self.node_id}
        if not others:
            raise DrainError(f"no other live node to take the users of node {self.node_id}")
        if self.on_drain is not None:
            await self.on_drain(others)
        self.draining = True
        self.placement.place_new = lambda user_id: rendezvous(user_id, others)
        mine = sorted(u for u, n in self.placement.users().items() if n == self.node_id)
        plan: dict[str, list[str]] = {}
        for user_id in mine:
            plan.setdefault(rendezvous(user_id, others), []).append(user_id)
        moved: dict[str, str] = {}
        for target, users in plan.items():
            moved.update({u: target for u in await self._hand_over(target, users)})
        self.drained += len(moved)
        log.warning("cluster: drained node %s: %d users moved", self.node_id, len(moved))
        return {"node": self.node_id, "moved": moved, "users": len(mine)}

    async def _hand_over(self, target: str, users: list[str]) -> list[str]:
        """Move these users to `target`; the ones that moved."""
        self.handing_off.update(users)
        try:
            await self._ask(target, {"op": "prepare", "users": users, "from": self.node_id})
            moved = [u for u in users if await self.placement.move(u, self.node_id, target)]
            if len(moved) < len(users):
                await self._ask(target, {"op": "abort", "users": sorted(set(users) - set(moved))})
            # Requests this node routed to itself before the move finish here; later ones go to the target.
            await asyncio.sleep(SETTLE_SECONDS)
            for user_id in moved:
                await self._flush(user_id)
            await self._ask(target, {"op": "ready", "users": moved})
            for user_id in moved:
                await self._give_up(user_id, target)
            return moved
        finally:
            self.handing_off.difference_update(users)

    async def _flush(self, user_id: str) -> None:
        """Publish what the user's outbox still holds and wait for JetStream to acknowledge each."""
        loop = asyncio.get_running_loop()
        after = 0
        while True:
            try:
                rows: list[StoredEvent] | None = await loop.run_in_executor(
                    None, self.stores.outbox_batch_blocking, user_id, after, OUTBOX_BATCH, 30.0)
            except OutboxBusy:  # another worker of this node drains it right now: read again
                await asyncio.sleep(0.2)
                continue
            for ev in rows or ():
                # Deduplicated by JetStream if the bus published it already (Nats-Msg-Id).
                try:
                    await publish_confirmed(self.js, self.nats_settings, user_id, ev)
                except AnotherWritersEvent as exc:
                    # The stream's event stands (the next node rebuilds from it); ours cannot be
                    # published under its id. Not retried: it never would be.
                    log.error("handover: %s; this node's event %s of %s is not on the stream", exc, ev.id, user_id)
                self.bell.acked(user_id, ev.id)
            if rows and self.on_flushed is not None:
                await self.on_flushed(user_id, [ev.id for ev in rows])
            if not rows or len(rows) < OUTBOX_BATCH:
                return
            after = rows[-1].id

    def stats(self) -> dict[str, Any]:
        """For /health: users taken over, given up, drained; rebuilds under way."""
        return {"taken_over": self.taken_over, "given_up": self.given_up, "drained": self.drained,
                "rebuilding": len(self.rebuilding), "draining": self.draining}

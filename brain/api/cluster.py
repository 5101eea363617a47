"""This process as a node of a brain cluster (`cluster.node_id`): placement and forwarding.

One NATS connection on the serving loop carries both: the placement bucket's watcher
(brain.api.placement) and this node's forwarding subject (brain.api.forwarding); one more to
each of the cluster's other servers (those nats-py knows: listed in `nats.url` or announced by
the cluster) lets a forward go straight to its owner's server. It connects in
the background, so a node whose NATS is away still starts; until it has loaded the placement map
a request that needs a user's store is answered 503 (with Retry-After). The route guard asks
`route(user_id)` once the caller is known: None means "serve it here".

The node's heartbeat is a lease (brain.leases) on its id in the KV bucket `brain_cluster_nodes`,
renewed every third of `cluster.node_ttl_seconds` by the primary worker: a node whose key is
there is alive (`brain cluster status`); a node killed without warning drops out within the TTL,
and its users are taken over by the others (brain.api.handover, run by the primary worker).

A write is answered only once JetStream has acknowledged its events (`append`): with R3 streams
that means a quorum of servers stored them, so no acknowledged event depends on this node's disk.
The primary worker also answers a write only while its heartbeat is certainly current: the
others take a node's users over no sooner than its heartbeat has lapsed, so what this node
acknowledged before then is on the stream they rebuild from.
"""

from __future__ import annotations

import asyncio
import logging
import time
import concurrent.futures
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import nats.errors
from aiohttp import web

from brain import jetstream
from brain.api.forwarding import MOVED_HEADER, Forwarder, NotThere, forward_marker
from brain.api.handover import Handover, rendezvous
from brain.api.placement import UserPlacement
from brain.api.publisher import AnotherWritersEvent, publish_confirmed
from brain.api.state import LISTENER, doorbell, store_manager, token_verifier
from brain.api.store_manager import AppendResult, stored_dicts
from brain.api.user_store import AppendRequest
from brain.errors import ServiceUnavailable, Unauthorized
from brain.leases import Leases
from brain.nats_auth import process_connect_options
from brain.process import Process
from brain.redact import redact_text
from brain.stash import StashKey
from brain.web import SERVING
from brain.workers.peers import peers_for

__all__ = ["NODES_BUCKET", "ClusterNode", "NodeSink", "cluster_node", "cluster_sink", "confirmed_append"]

log = logging.getLogger("brain.cluster")

NODES_BUCKET = "brain_cluster_nodes"
# What the primary worker tells the node's others when a drain starts (brain.workers.peers).
DRAINING = "cluster.draining"
# ... and the events a give-up's flush put in the stream (their waiting requests answer).
FLUSHED = "cluster.flushed"
# Nodes a request is sent to at the most: the one the placement map names, then wherever the
# user went meanwhile (a drain or a takeover moved it between the lookup and the forward).
FORWARD_HOPS = 3
# How long a node waits for its own placement map to show a move another node told it of.
MOVE_SEEN_SECONDS = 1.0
# What the primary worker tells the node's others when its heartbeat was lost and taken again.
FENCE = "cluster.fence"
# How long a request waits for a fenced map to catch up with the bucket before a 503.
CATCH_UP_SECONDS = 2.0


class ClusterNode:
    """Placement and forwarding of one node (in each of its worker processes)."""

    def __init__(self, rt: Process) -> None:
        settings = rt.settings
        self.rt = rt
        self.node_id = settings.cluster.node_id
        self.placement = UserPlacement(self.node_id, replicas=settings.nats.replicas)
        self.forwarder = Forwarder(
            self.node_id, local_url=settings.local_url(settings.server.api_port), marker=forward_marker(rt.secret),
            listener=lambda: (rt.stash.get(SERVING) or {}).get(LISTENER),
            timeout=settings.cluster.forward_timeout_seconds,
            stream_buffer=settings.api.stream_buffer_bytes,
        )
        self.heartbeat_ttl = settings.cluster.node_ttl_seconds
        self.heartbeat: Leases | None = None
        self.handover: Handover | None = None
        self.stores = store_manager(rt)
        self.bell = doorbell(rt)
        self.ack_timeout = settings.nats.publish_timeout_seconds
        self.rebuild_wait = settings.cluster.rebuild_wait_seconds
        # A store another worker of this node is rebuilding answers 503 with this Retry-After.
        if self.stores.repair_retry_after is None:
            self.stores.repair_retry_after = 1.0
        self.nc: Any = None
        self.loop: asyncio.AbstractEventLoop | None = None
        if rt.worker.several:
            peers_for(rt).answer(DRAINING, self._draining)
            peers_for(rt).answer(FLUSHED, self._flushed)
            peers_for(rt).answer(FENCE, self._fenced_by_primary)
        # The placement map may be stale: this process was cut off from NATS, or the node's
        # heartbeat lapsed (its users may have been taken over meanwhile). No user is served here
        # until the watcher has caught up with the bucket (`current`).
        self.fenced = False
        self._fences = 0
        self._catching_up: asyncio.Task[None] | None = None
        self.serving = False  # placement loaded, stale stores given up, answering forwards and admin requests
        self.last_error = ""
        self.resent = 0  # requests sent on to the node a user moved to, after the first refused them
        self._stopping = False
        self._starting: asyncio.Task[None] | None = None
        self._beating: asyncio.Task[None] | None = None
        self._reaching: asyncio.Task[Any] | None = None
        self._direct: list[Any] = []  # the connections to the other servers (brain.api.forwarding)

    async def start(self, _app: web.Application) -> None:
        """on_startup: connect and load the placement map in the background."""
        self.loop = asyncio.get_running_loop()
        self._starting = asyncio.ensure_future(self._connect())

    async def _connect(self) -> None:
        self.nc = await jetstream.connect_kept(
            process_connect_options(self.rt), name=f"brain-cluster-{self.node_id}", stopping=lambda: self._stopping,
            note=self._note, disconnected_cb=self._on_disconnected,
        )
        if self.nc is None:
            return
        while not self._stopping:
            try:
                # A worker restarted after the node was drained: the node stays drained (the master
                # remembers it until the node restarts).
                drained = await peers_for(self.rt).recall(DRAINING)
                if isinstance(drained, list):
                    await self._draining(drained)
                js = self.nc.jetstream(timeout=5)
                if self.rt.worker.primary and self.heartbeat is None:
                    heartbeat = Leases(js, NODES_BUCKET, ttl=self.heartbeat_ttl, owner=self.node_id,
                                       replicas=self.rt.settings.nats.replicas)
                    await heartbeat.open()
                    # Held before the node serves: a request is refused while the heartbeat is
                    # not current (`current`), so a first claim left to the beat's next round
                    # (TTL/3 later, after a NoStreamResponseError while the bucket's stream had
                    # no leader yet) refused every request of that gap. A failure is retried here.
                    await self._claim(heartbeat)
                    self.heartbeat = heartbeat
                    self._beating = asyncio.ensure_future(self._beat(heartbeat))
                await self.placement.open(js)
                if self.heartbeat is not None and self.handover is None:
                    handover = Handover(
                        node_id=self.node_id, nc=self.nc, js=js, placement=self.placement, heartbeat=self.heartbeat,
                        stores=self.stores, bell=self.bell, nats_settings=self.rt.settings.nats,
                        data_path=self.rt.settings.data_path, nodes_bucket=NODES_BUCKET,
                    )
                    handover.draining = isinstance(drained, list)  # and takes no dead node's users either
                    handover.deleted = self.deleted
                    # Before any request is served here: stale stores are given up first.
                    await handover.start()
                    handover.on_drain = self._tell_draining
                    handover.on_flushed = self._tell_flushed
                    self.handover = handover
                    self.placement.on_lost = handover.on_lost
                elif self.heartbeat is None:
                    self.placement.on_lost = self._close_lost
                await self.forwarder.start(self.nc)
                self._reaching = asyncio.ensure_future(self._reach_servers())
                self.serving = True
                log.info("cluster: node %s serving; placement map loaded (%d users)", self.node_id,
                         sum(self.placement.counts().values()))
                return
            except Exception as exc:  # noqa: BLE001 - JetStream without a meta leader yet: retried
                self._note(f"placement bucket: {redact_text(repr(exc))}")
                await asyncio.sleep(1.0)

    async def _reach_servers(self) -> None:
        """Connect to each other server of the cluster, for the forwards to nodes answering from it
        (each connection retried and reconnected on its own; none holds anything else up)."""
        current = self.nc.connected_url
        others = [url.geturl() for url in self.nc.servers if current is None or url.netloc != current.netloc]
        await asyncio.gather(*(self._reach(url) for url in others))

    async def _reach(self, url: str) -> None:
        def note(message: str) -> None:  # this node serves without it: not a problem to report
            log.debug("cluster: connection for forwards to %s", message)

        nc = await jetstream.connect_kept({**process_connect_options(self.rt), "servers": [url]},
                                          name=f"brain-cluster-{self.node_id}-forwards", stopping=lambda: self._stopping,
                                          note=note)
        if nc is None:
            return
        self._direct.append(nc)
        await self.forwarder.reach_through(nc)

    async def _beat(self, heartbeat: Leases) -> None:
        # The owner is the node id: a node restarted within the TTL takes its own key back.
        while not self._stopping:
            try:
                held = heartbeat.held_since(self.node_id) is not None
                if await self._claim(heartbeat) and not held and self.serving:
                    # Lost and taken again: the users may have moved meanwhile.
                    self.fence()
                    if self.rt.worker.several:
                        asyncio.ensure_future(peers_for(self.rt).broadcast(FENCE, None))
            except Exception as exc:  # noqa: BLE001 - NATS away: the key ages out, and is taken again
                self._note(f"heartbeat: {redact_text(repr(exc))}")
            await asyncio.sleep(heartbeat.ttl / 3)

    async def _claim(self, heartbeat: Leases) -> bool:
        """Take or keep this node's heartbeat; whether it is held (said in the log when not)."""
        if await heartbeat.claim(self.node_id):
            return True
        self._note(f"heartbeat: node id {self.node_id} is held by another process "
                   f"(two nodes with one cluster.node_id?)")
        return False

    async def _on_disconnected(self) -> None:
        if not self._stopping:  # not the close at shutdown
            self.fence()

    async def _fenced_by_primary(self, _data: Any) -> bool:
        self.fence()
        return True

    def fence(self) -> None:
        """Serve no user here until the placement map has caught up with the bucket (see __init__)."""
        if not self.fenced:
            log.warning("cluster: node %s serves no user until its placement map has caught up", self.node_id)
        self.fenced = True
        self._fences += 1

    async def current(self) -> None:
        """Before a user is served here: 503 unless this node's heartbeat is current and its
        placement map has caught up since the last fence (then the caller looks the user up again)."""
        heartbeat = self.heartbeat
        if heartbeat is not None and heartbeat.valid_until(self.node_id) < time.monotonic():
            raise ServiceUnavailable(
                f"node {self.node_id} lost its heartbeat: its users may be moving to another node; try again",
                retry_after=2)
        if not self.fenced:
            return
        if self.nc is None or not self.nc.is_connected:
            raise ServiceUnavailable(
                f"node {self.node_id} is cut off from NATS: its users may have moved to another node; try again",
                retry_after=2)
        if self._catching_up is None or self._catching_up.done():
            self._catching_up = asyncio.ensure_future(self._catch_up())
        try:
            await asyncio.wait_for(asyncio.shield(self._catching_up), CATCH_UP_SECONDS)
        except Exception:  # noqa: BLE001 - timed out, NATS away: the 503 below
            pass
        if self.fenced:
            raise ServiceUnavailable(
                f"node {self.node_id} is catching up with the cluster placement after losing NATS; try again",
                retry_after=1)

    async def owner(self, user_id: str) -> str:
        """The node the user is placed on. When it is this one, only once this node may serve
        the user (`current`, which may wait for the map to catch up), and looked up again then."""
        node = await self.placement.node_of(user_id)
        if node == self.node_id:
            await self.current()
            node = self.placement.cached(user_id) or node
        return node

    async def _catch_up(self) -> None:
        fences = self._fences
        if await self.placement.caught_up(self.nc.jetstream(timeout=5), timeout=10) and fences == self._fences:
            self.fenced = False
            log.info("cluster: node %s placement map caught up", self.node_id)

    async def _tell_draining(self, others: set[str]) -> None:
        # Before the primary moves a user: the other workers place no new user here either, nor
        # does a worker restarted later (the master keeps it until the node restarts).
        peers = peers_for(self.rt)
        await peers.keep(DRAINING, sorted(others))
        if self.rt.worker.several:
            await peers.broadcast(DRAINING, sorted(others))

    async def _tell_flushed(self, user_id: str, ids: list[int]) -> None:
        # A user given up: the events its outbox still held are in the stream now; the other
        # workers' requests waiting for one of them answer (their bus publishes nothing for the user).
        if self.rt.worker.several:
            await peers_for(self.rt).broadcast(FLUSHED, {"user": user_id, "ids": ids})

    async def _flushed(self, data: Any) -> bool:
        if isinstance(data, dict) and isinstance(data.get("user"), str):
            for event_id in data.get("ids") or ():
                if isinstance(event_id, int):
                    self.bell.acked(data["user"], event_id)
        return True

    async def _draining(self, others: list[str]) -> bool:
        targets = frozenset(others)
        self.placement.place_new = lambda user_id: rendezvous(user_id, targets)
        return True

    def _close_lost(self, user_id: str, _node: str) -> None:
        # A worker other than the primary: close its own copy of the store (the primary moves the files).
        asyncio.get_running_loop().run_in_executor(None, self.stores.close_store, user_id)

    def forget_deleted(self, user_id: str, timeout: float = 10) -> None:
        """A deleted user (blocking, from the purge's thread): their placement entry goes, if it
        names this node — the entry of a user placed on a dead node goes when that node's users
        are taken over (brain.api.handover). ServiceUnavailable (the purge is retried) while the
        placement is not loaded; nothing without a server in this process (a command: the
        nodes' own purges do it)."""
        loop = self.loop
        if loop is None or loop.is_closed():
            return
        if not self.serving:
            raise ServiceUnavailable(f"node {self.node_id} has not loaded the cluster placement yet")
        future = asyncio.run_coroutine_threadsafe(self.placement.forget(user_id, self.node_id), loop)
        if future.result(timeout):
            log.info("cluster: placement of deleted user %s removed", user_id)

    def may_publish(self, user_id: str) -> bool | None:
        """Whether this process's event bus may publish the user's events (None: ask again later)."""
        if self.fenced:
            return None
        if self.handover is not None:
            if self.heartbeat is not None and self.heartbeat.valid_until(self.node_id) < time.monotonic():
                return None  # perhaps thought dead: the users may be another node's by now
            return self.handover.may_publish(user_id)
        if not self.placement.ready:
            return None
        node = self.placement.cached(user_id)
        return node is None or node == self.node_id

    async def append(self, user_id: str, request: AppendRequest) -> AppendResult:
        """Commit a write, and return once JetStream acknowledged its new events (503 if it did not in time).

        An idempotent replay's events are published again and their acks awaited (JetStream drops
        the copies): the first answer may have been this 503, sent before the stream had them.
        """
        with self.bell.watch_acks(user_id) as watch:
            results = await self.stores.append_events(user_id, request)
            fresh = [ev.id for ev, replayed in results if not replayed]
            confirmed = not fresh or await watch.wait(fresh, self.ack_timeout)
        if confirmed and len(fresh) < len(results):
            confirmed = self.nc is not None
            try:
                js = self.nc.jetstream(timeout=self.ack_timeout) if confirmed else None
                for ev, replayed in results:
                    if js is not None and replayed:
                        await publish_confirmed(js, self.rt.settings.nats, user_id, ev)
            except nats.errors.Error:  # not connected, no ack in time (nats.js.errors are nats.errors)
                confirmed = False
            except AnotherWritersEvent as exc:
                # The stream's event of that id is another node's: ours was never on it, so the
                # duplicate ack confirms nothing. Once this node's map shows the user's new node,
                # the repeated request goes there.
                raise ServiceUnavailable(
                    f"event {exc.event_id} was stored on node {self.node_id}, but the replicated event stream "
                    f"holds another writer's event {exc.event_id} for this user (another node took the user "
                    "over): this write is not confirmed. Repeat the request with the same Idempotency-Key",
                    retry_after=2) from None
        if not confirmed:
            ids = [ev.id for ev, _ in results]
            raise ServiceUnavailable(
                f"events {ids[0]}-{ids[-1]} were stored on node {self.node_id}, but the replicated event "
                f"stream did not confirm them within {self.ack_timeout:g}s; they are published when it does. "
                "Repeat the request with the same Idempotency-Key to learn the outcome", retry_after=2)
        heartbeat = self.heartbeat
        if heartbeat is not None and heartbeat.valid_until(self.node_id) < time.monotonic():
            raise ServiceUnavailable(
                f"node {self.node_id} lost its heartbeat: its users may be moving to another node. Repeat the "
                "request with the same Idempotency-Key", retry_after=2)
        return results

    def _note(self, message: str) -> None:
        self.last_error = message
        log.warning("cluster: %s", message)

    async def shutting_down(self, _app: web.Application) -> None:
        """on_shutdown: end the streams relayed here from other nodes (as this node's own streams end)."""
        self.forwarder.end_streams()

    async def close(self, _app: web.Application) -> None:
        """on_cleanup: stop answering for this node and close the connection."""
        self._stopping = True
        for task in (self._starting, self._beating, self._reaching):
            if task is not None and not task.done():
                task.cancel()
        if self.handover is not None:
            await self.handover.close()
        if self.heartbeat is not None:
            await self.heartbeat.release(self.node_id)  # gone at once, not after the TTL
        await self.forwarder.close()
        await self.placement.close()
        await asyncio.gather(*(jetstream.close_quietly(nc) for nc in self._direct))
        await jetstream.close_quietly(self.nc)

    async def route(self, request: web.Request, user_id: str, *, streams: bool) -> web.StreamResponse | None:
        """Another node's answer if the user is placed there; None: serve it here.

        `streams`: the route answers with a live stream, relayed from the owner as it comes.
        """
        node = await self.owner(user_id)
        if node == self.node_id:
            await self.rebuilt(user_id)
            return None
        send = self.forwarder.stream if streams else self.forwarder.forward
        body = await self.forwarder.body(request, node)
        for hop in range(FORWARD_HOPS):
            try:
                return await send(request, node, body)
            except NotThere as refused:
                # Nothing was served there: ask where the user is now, and send it on (this node
                # included, over its own subject: the body is read already).
                now = await self._moved_from(user_id, node) if refused.moved_to else self.placement.cached(user_id)
                if hop == FORWARD_HOPS - 1 or now is None or now == node:
                    if isinstance(refused.answer, Exception):
                        raise refused.answer from None
                    return refused.answer
                self.resent += 1
                node = now
        raise AssertionError("unreachable")

    async def _moved_from(self, user_id: str, node: str) -> str | None:
        """The user's node once this node's map no longer names `node` (as it was told), or as it stands
        after MOVE_SEEN_SECONDS."""
        deadline = time.monotonic() + MOVE_SEEN_SECONDS
        while self.placement.cached(user_id) == node and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        return self.placement.cached(user_id)

    async def rebuilt(self, user_id: str) -> None:
        """Return once the user's store is no longer being rebuilt here (or after cluster.rebuild_wait_seconds)."""
        if self.handover is not None and user_id in self.handover.rebuilding:
            await self.handover.wait_rebuilt(user_id, self.rebuild_wait)

    async def serve_forwarded(self, user_id: str) -> None:
        """Before serving a request another node forwarded here: refused if the user has moved on
        since (a store opened here now would be a new, empty one); held while it is rebuilt."""
        if not (self.handover is not None and user_id in self.handover.handing_off):
            await self.current()
        node = self.placement.cached(user_id)
        if node is not None and node != self.node_id and not (
                self.handover is not None and user_id in self.handover.handing_off):
            moved = ServiceUnavailable(f"the user's data moved to node {node} meanwhile: try again", retry_after=1)
            moved.headers[MOVED_HEADER] = node  # the forwarding node sends it on there
            raise moved
        await self.rebuilt(user_id)

    # -- brain.contracts.UserHome (mail sync follows its users) ---------------------------------

    def ready(self) -> bool:
        """Whether the placement map is loaded."""
        return self.serving

    def node_of_user(self, user_id: str) -> str | None:
        """The node the user is placed on, as this node's map says (None: not placed)."""
        return self.placement.cached(user_id)

    def settled(self, user_id: str) -> bool:
        """Whether the user's store here is not being rebuilt from the stream."""
        return self.handover is None or user_id not in self.handover.rebuilding

    def deleted(self, user_id: str) -> bool:
        """Whether the user's account was deleted, as this process heard (brain.api.deletion: the
        deleted stores of this run, and the revoked users kept on disk while their tokens live)."""
        return user_id in self.stores.deleted or user_id in token_verifier(self.rt).revoked

    async def at_home(self, request: web.Request, user_id: str) -> web.StreamResponse | None:
        """The user's node's answer to a public request naming the user (None: serve it here, as
        this is the user's node, or the request is already a replay forwarded here)."""
        if self.forwarder.is_forwarded(request):
            return None
        return await self.route(request, user_id, streams=False)

    def problems(self) -> list[str]:
        """For /health: why this node cannot place users yet."""
        if self.serving:
            return []
        why = f" (last error: {self.last_error})" if self.last_error else ""
        return [f"cluster: the placement map is not loaded{why}"]

    def stats(self) -> dict[str, Any]:
        """For /health: this node, whether placement is loaded, users per node, forwarding counts."""
        return {
            "node": self.node_id, "ready": self.serving, "users_per_node": self.placement.counts(),
            "heartbeat": bool(self.heartbeat and self.heartbeat.held()),
            **self.forwarder.stats(), "resent": self.resent, **(self.handover.stats() if self.handover is not None else {}),
            "last_error": self.last_error,
        }


_CLUSTER: StashKey[ClusterNode] = StashKey("brain.api.cluster")


def cluster_node(rt: Process) -> ClusterNode | None:
    """The process's ClusterNode, or None when it is not a cluster node."""
    if not rt.settings.cluster.node_id:
        return None
    return rt.stash.setdefault(_CLUSTER, lambda: ClusterNode(rt))


def confirmed_append(rt: Process) -> Callable[[str, AppendRequest], Awaitable[AppendResult]] | None:
    """How writes are committed on a cluster node that answers them once replicated
    (`cluster.confirm_writes`); None: through the stores alone."""
    node = cluster_node(rt)
    return node.append if node is not None and rt.settings.cluster.confirm_writes else None


class NodeSink:
    """The event sink (`brain.contracts.EVENT_SINK`) of a cluster node: the writers off the HTTP
    path (mail sync, the webhooks' notices) write as a request does.

    - Only to a user placed on this node (placing a user met for the first time here, as a request
      does; held while the store is rebuilt). A user placed elsewhere is refused with 503: a store
      opened here would be a new, empty one that no node reads and whose events are never
      published (brain.api.handover) — the writer's events would be lost, and a mail account's
      checkpoint would move past them. The writer retries later (mail sync backs off).
    - Answered once JetStream acknowledged the new events (`cluster.confirm_writes`), as the 201:
      a mail account's checkpoint, committed after its page's events, is then never ahead of the
      replicated stream, so a node lost with its disk costs no message (the page is synced again).
    """

    def __init__(self, node: ClusterNode, confirm: bool) -> None:
        self.node = node
        self.stores = node.stores
        self.confirm = confirm

    def append_from_thread(
        self, user_id: str, events: Sequence[Mapping[str, Any]], timeout: float = 30, *,
        max_event_bytes: int | None = None, with_data: bool = True,
    ) -> list[dict[str, Any]]:
        """Store the events all or none on this node, confirmed by the stream (blocking; see the class)."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            raise RuntimeError("blocking store call on an event loop; use the async API")
        request = self.stores.append_request(user_id, events, max_event_bytes)
        loop = self.node.loop
        if loop is None or loop.is_closed():
            raise ServiceUnavailable("the cluster node is not serving", retry_after=2)
        future = asyncio.run_coroutine_threadsafe(self._append(user_id, request), loop)
        try:
            result = future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise ServiceUnavailable(f"no answer from the user's store within {timeout:g}s", retry_after=2) from None
        return stored_dicts(result, with_data)

    async def _append(self, user_id: str, request: AppendRequest) -> AppendResult:
        node = self.node
        if not node.serving:
            raise ServiceUnavailable(f"node {node.node_id} has not loaded the cluster placement yet", retry_after=2)
        if node.deleted(user_id):  # not placed again (its entry went with the account)
            raise Unauthorized("the account was deleted", code="USER_DELETED")
        where = await node.owner(user_id)
        if where != node.node_id:
            raise ServiceUnavailable(f"the user's data is on node {where}, not on {node.node_id}", retry_after=5)
        await node.rebuilt(user_id)
        if self.confirm:
            return await node.append(user_id, request)
        return await self.stores.append_events(user_id, request)


def cluster_sink(rt: Process) -> NodeSink | None:
    """The event sink of a cluster node (see NodeSink); None when this is not one."""
    node = cluster_node(rt)
    return None if node is None else NodeSink(node, rt.settings.cluster.confirm_writes)

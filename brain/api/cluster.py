"""This process as a node of a brain cluster (`cluster.node_id`): placement and forwarding.

One NATS connection on the serving loop carries both: the placement bucket's watcher
(brain.api.placement) and this node's forwarding subject (brain.api.forwarding). It connects in
the background, so a node whose NATS is away still starts; until it has loaded the placement map
a request that needs a user's store is answered 503 (with Retry-After). The route guard asks
`route(user_id)` once the caller is known: None means "serve it here".

The node's heartbeat is a lease (brain.leases) on its id in the KV bucket `brain_cluster_nodes`,
renewed every third of `cluster.node_ttl_seconds` by the primary worker: a node whose key is
there is alive (`brain cluster status`); a node killed without warning drops out within the TTL.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiohttp import web

from brain import jetstream
from brain.api.forwarding import Forwarder, forward_marker
from brain.api.placement import UserPlacement
from brain.errors import ServiceUnavailable
from brain.leases import Leases
from brain.nats_auth import process_connect_options
from brain.process import Process
from brain.redact import redact_text
from brain.stash import StashKey

__all__ = ["NODES_BUCKET", "ClusterNode", "cluster_node"]

log = logging.getLogger("brain.cluster")

NODES_BUCKET = "brain_cluster_nodes"


class ClusterNode:
    """Placement and forwarding of one node (in each of its worker processes)."""

    def __init__(self, rt: Process) -> None:
        settings = rt.settings
        self.rt = rt
        self.node_id = settings.cluster.node_id
        self.placement = UserPlacement(self.node_id, replicas=settings.nats.replicas)
        self.forwarder = Forwarder(
            self.node_id, local_url=settings.local_url(settings.server.api_port), marker=forward_marker(rt.secret),
            timeout=settings.cluster.forward_timeout_seconds,
        )
        self.heartbeat_ttl = settings.cluster.node_ttl_seconds
        self.heartbeat: Leases | None = None
        self.nc: Any = None
        self.last_error = ""
        self._stopping = False
        self._starting: asyncio.Task[None] | None = None
        self._beating: asyncio.Task[None] | None = None

    async def start(self, _app: web.Application) -> None:
        """on_startup: connect and load the placement map in the background."""
        self._starting = asyncio.ensure_future(self._connect())

    async def _connect(self) -> None:
        self.nc = await jetstream.connect(
            process_connect_options(self.rt), stopping=lambda: self._stopping, note=self._note, retry_seconds=1.0,
            name=f"brain-cluster-{self.node_id}", allow_reconnect=True, max_reconnect_attempts=-1,
            reconnect_time_wait=1, connect_timeout=2,
        )
        if self.nc is None:
            return
        while not self._stopping:
            try:
                js = self.nc.jetstream(timeout=5)
                if self.rt.worker.primary and self.heartbeat is None:
                    heartbeat = Leases(js, NODES_BUCKET, ttl=self.heartbeat_ttl, owner=self.node_id,
                                       replicas=self.rt.settings.nats.replicas)
                    await heartbeat.open()
                    self.heartbeat = heartbeat
                    self._beating = asyncio.ensure_future(self._beat(heartbeat))
                await self.placement.open(js)
                await self.forwarder.start(self.nc)
                log.info("cluster: node %s serving; placement map loaded (%d users)", self.node_id,
                         sum(self.placement.counts().values()))
                return
            except Exception as exc:  # noqa: BLE001 - JetStream without a meta leader yet: retried
                self._note(f"placement bucket: {redact_text(repr(exc))}")
                await asyncio.sleep(1.0)

    async def _beat(self, heartbeat: Leases) -> None:
        # The owner is the node id: a node restarted within the TTL takes its own key back.
        while not self._stopping:
            try:
                if not await heartbeat.claim(self.node_id):
                    self._note(f"heartbeat: node id {self.node_id} is held by another process "
                               f"(two nodes with one cluster.node_id?)")
            except Exception as exc:  # noqa: BLE001 - NATS away: the key ages out, and is taken again
                self._note(f"heartbeat: {redact_text(repr(exc))}")
            await asyncio.sleep(heartbeat.ttl / 3)

    def _note(self, message: str) -> None:
        self.last_error = message
        log.warning("cluster: %s", message)

    async def close(self, _app: web.Application) -> None:
        """on_cleanup: stop answering for this node and close the connection."""
        self._stopping = True
        for task in (self._starting, self._beating):
            if task is not None and not task.done():
                task.cancel()
        if self.heartbeat is not None:
            await self.heartbeat.release(self.node_id)  # gone at once, not after the TTL
        await self.forwarder.close()
        await self.placement.close()
        if self.nc is not None and not self.nc.is_closed:
            try:
                await asyncio.wait_for(self.nc.close(), timeout=2)
            except Exception:  # noqa: BLE001 - closing anyway
                pass

    async def route(self, request: web.Request, user_id: str, *, streams: bool) -> web.StreamResponse | None:
        """Another node's answer if the user is placed there; None: serve it here.

        `streams`: the route answers with a live stream, which is not forwarded (only whole
        answers travel over NATS): refused with 503 on a node that does not hold the user.
        """
        node = await self.placement.node_of(user_id)
        if node == self.node_id:
            return None
        if streams:
            raise ServiceUnavailable(f"live streams are served by the node holding the user's data ({node}), "
                                     f"not forwarded: connect to that node", retry_after=5)
        return await self.forwarder.forward(request, node)

    def problems(self) -> list[str]:
        """For /health: why this node cannot place users yet."""
        if self.placement.ready:
            return []
        why = f" (last error: {self.last_error})" if self.last_error else ""
        return [f"cluster: the placement map is not loaded{why}"]

    def stats(self) -> dict[str, Any]:
        """For /health: this node, whether placement is loaded, users per node, forwarding counts."""
        return {
            "node": self.node_id, "ready": self.placement.ready, "users_per_node": self.placement.counts(),
            "heartbeat": bool(self.heartbeat and self.heartbeat.held()),
            **self.forwarder.stats(), "last_error": self.last_error,
        }


_CLUSTER: StashKey[ClusterNode] = StashKey("brain.api.cluster")


def cluster_node(rt: Process) -> ClusterNode | None:
    """The process's ClusterNode, or None when it is not a cluster node."""
    if not rt.settings.cluster.node_id:
        return None
    return rt.stash.setdefault(_CLUSTER, lambda: ClusterNode(rt))

"""Which cluster node holds each user's store: the JetStream KV bucket `brain_placement`.

In cluster mode (`cluster.node_id`, docs/cluster.md) a user's SQLite store lives on exactly one
node at a time. The bucket maps a user id to the node that holds it. The first node that serves
a user places the user on itself with a KV *create*, which JetStream refuses when the key exists:
two nodes placing the same user at once cannot both win, and the loser reads the winner's entry.
Every node watches the bucket and keeps the whole map in memory, so the request path reads a
dict; only a user's first request anywhere waits for the create.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import nats.js.errors

from brain import jetstream
from brain.errors import ServiceUnavailable

__all__ = ["BUCKET", "UserPlacement"]

log = logging.getLogger("brain.cluster")

BUCKET = "brain_placement"
# Operations the watcher reports for a key that is gone (a deleted user).
_GONE = ("DEL", "PURGE")
# A lost create reads the winner's entry this many times, this long apart.
_WINNER_READS = 20
_WINNER_WAIT_S = 0.05


class UserPlacement:
    """This node's view of the placement bucket: a cache kept current by a watcher, and claims."""

    def __init__(self, node_id: str, *, replicas: int) -> None:
        self.node_id = node_id
        self.replicas = replicas
        self.kv: Any = None
        self._nodes: dict[str, str] = {}
        self._watcher: Any = None
        self._watching: asyncio.Task[None] | None = None
        self._loaded = asyncio.Event()
        self.seen = 0  # the bucket's stream sequence of the last entry the watcher applied
        # Told (on the serving loop) when a user placed on this node is placed on another
        # (taken over while this node was thought dead, or handed on by a drain): (user, node).
        self.on_lost: Callable[[str, str], None] | None = None
        # Where a user nobody holds yet is placed: this node, unless it is being drained.
        self.place_new: Callable[[str], str] = lambda _user_id: self.node_id

    async def open(self, js: Any) -> None:
        """Find or create the bucket, then start watching it (returns once the map is loaded)."""
        self.kv = await jetstream.open_bucket(js, BUCKET, replicas=self.replicas)
        self._watcher = await self.kv.watchall()
        self._watching = asyncio.ensure_future(self._watch())
        await self._loaded.wait()

    async def _watch(self) -> None:
        async for entry in self._watcher:
            if entry is None:  # the end of what the bucket held when the watch began
                self._loaded.set()
                continue
            self.seen = max(self.seen, entry.revision or 0)
            if entry.operation in _GONE:
                self._nodes.pop(entry.key, None)
            elif entry.value:
                node = entry.value.decode()
                before = self._nodes.get(entry.key)
                self._nodes[entry.key] = node
                if before == self.node_id and node != self.node_id and self.on_lost is not None:
                    self.on_lost(entry.key, node)

    async def close(self) -> None:
        """Stop watching."""
        if self._watcher is not None:
            try:
                await self._watcher.stop()
            except Exception as exc:  # noqa: BLE001 - the connection is closing anyway
                log.debug("placement watcher: %r", exc)
        if self._watching is not None:
            self._watching.cancel()

    async def caught_up(self, js: Any, timeout: float) -> bool:
        """Whether the watcher has applied every entry the bucket held when this was asked (within
        `timeout`): the map is then at least as current as at the call."""
        last = (await js.stream_info(f"KV_{BUCKET}")).state.last_seq
        deadline = asyncio.get_running_loop().time() + timeout
        while self.seen < last:
            if asyncio.get_running_loop().time() > deadline:
                return False
            await asyncio.sleep(0.02)
        return True

    @property
    def ready(self) -> bool:
        """Whether the map is loaded (before that, nobody can say where a user lives)."""
        return self._loaded.is_set()

    def cached(self, user_id: str) -> str | None:
        """The node holding the user, as last seen (None: not placed, as far as this node knows)."""
        return self._nodes.get(user_id)

    async def node_of(self, user_id: str) -> str:
        """The node holding the user's store, placing the user on this node if nobody holds it."""
        found = self._nodes.get(user_id)
        if found is not None:
            return found
        if not self.ready:
            raise ServiceUnavailable("cluster placement is not loaded yet (is NATS reachable?)")
        node = self.place_new(user_id)
        try:
            await self.kv.create(user_id, node.encode())
        except nats.js.errors.KeyWrongLastSequenceError:
            node = await self._winner(user_id)
        except (nats.errors.Error, nats.js.errors.Error) as exc:
            raise ServiceUnavailable(f"cluster placement unavailable: {exc!r}") from None
        # The watcher will say the same; set now so the next request needs no round trip.
        self._nodes[user_id] = node
        return node

    async def _winner(self, user_id: str) -> str:
        """The node another node placed the user on a moment ago (our create lost). A read may
        reach a replica the winner's entry has not reached yet: asked again for up to a second,
        the watcher's word taken if it comes first."""
        for _ in range(_WINNER_READS):
            seen = self._nodes.get(user_id)
            if seen is not None:
                return seen
            try:
                entry = await self.kv.get(user_id)
                if entry.value:
                    return str(entry.value.decode())
            except nats.js.errors.KeyNotFoundError:
                pass
            except (nats.errors.Error, nats.js.errors.Error) as exc:
                raise ServiceUnavailable(f"cluster placement unavailable: {exc!r}") from None
            await asyncio.sleep(_WINNER_WAIT_S)
        raise ServiceUnavailable("cluster placement unavailable: the user was placed by another node, "
                                 "whose entry is not readable yet; try again")

    def users(self) -> dict[str, str]:
        """Every placed user and their node, as this node sees the bucket (a copy)."""
        return dict(self._nodes)

    async def move(self, user_id: str, from_node: str, to_node: str) -> bool:
        """Place the user on `to_node` if `from_node` still holds it: a compare-and-set on the
        entry's revision, so that of several nodes moving one user at once exactly one succeeds."""
        entry = await self._naming(user_id, from_node)
        if entry is None:
            return False
        try:
            await self.kv.update(user_id, to_node.encode(), last=entry.revision)
        except nats.js.errors.KeyWrongLastSequenceError:
            return False
        self._nodes[user_id] = to_node
        return True

    async def forget(self, user_id: str, node: str) -> bool:
        """Remove a deleted user's entry if it still names `node` (a compare-and-delete on its
        revision: a user moved meanwhile is left to the node that holds it now)."""
        entry = await self._naming(user_id, node)
        if entry is None:
            return False
        try:
            await self.kv.delete(user_id, last=entry.revision)
        except nats.js.errors.KeyWrongLastSequenceError:
            return False
        self._nodes.pop(user_id, None)
        return True

    async def _naming(self, user_id: str, node: str) -> Any:
        """The user's entry as JetStream holds it now, if it names `node` (None: it does not, or there is none)."""
        try:
            entry = await self.kv.get(user_id)
        except nats.js.errors.KeyNotFoundError:
            return None
        return entry if entry.value is not None and entry.value.decode() == node else None

    def counts(self) -> dict[str, int]:
        """Users per node, as this node sees the bucket."""
        out: dict[str, int] = {}
        for node in self._nodes.values():
            out[node] = out.get(node, 0) + 1
        return out

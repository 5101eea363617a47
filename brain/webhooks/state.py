"""What webhooks keep per process (in the stash): who has endpoints, and how to reach the queue and the sender.

The DeliveryQueue and the WebhookSender attach themselves here as they start (and again after
a restart), so the commit listener, the routes and the hooks always reach the live ones
without asking the supervisor.

With several workers (brain.workers) every worker's queue serves the routes over the one
webhooks.db, but only the primary worker's reads the users' commits into deliveries and has a
sender (`delivers_here`): one owner, so no delivery is made twice. The other workers hand the
pokes of their commits to it (`elsewhere`), and every worker re-reads who has endpoints when
one is created or deleted anywhere (brain.webhooks.plugin).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import pykka

from brain.actors import bridge
from brain.errors import ServiceUnavailable
from brain.outbound import Network, allowed_networks
from brain.process import Process
from brain.sealing import SealedBox
from brain.stash import StashKey
from brain.workers.peers import peers_for

log = logging.getLogger("brain.webhooks")

_STATE: StashKey[Webhooks] = StashKey("brain.webhooks")
# What workers ask each other (brain.workers.peers): read this user's commits; re-read who has endpoints.
POKE_ELSEWHERE = "webhooks-poke"
ENDPOINTS_CHANGED = "webhooks-endpoints"


class Poke:
    """A user committed events: queue their deliveries (told to the DeliveryQueue)."""

    __slots__ = ("user_id",)

    def __init__(self, user_id: str) -> None:
        self.user_id = user_id


class Webhooks:
    """The process's webhooks (see the module docstring)."""

    def __init__(self, settings: Any, secret: bytes) -> None:
        self.settings = settings.webhooks
        self.data_path = settings.data_path
        self.allowed: tuple[Network, ...] = allowed_networks(self.settings.allowed_networks,
                                                             field="webhooks.allowed_networks")
        self.box = SealedBox(secret, "webhook secrets v1", salt=b"brain.webhooks")
        # Users with an active endpoint; replaced whole, read from the stores' threads.
        self.users: frozenset[str] = frozenset()
        # Whether this process turns commits into deliveries and sends them; if not, its pokes
        # go to the process that does, through `elsewhere` (any thread).
        self.delivers_here = True
        self.elsewhere: Callable[[str], None] | None = None
        # Tells the other workers that endpoints were created or deleted (None: one process).
        self.announce: Callable[[], Awaitable[Any]] | None = None
        self._queue: pykka.ActorRef[Any] | None = None
        self._queue_proxy: Any = None
        self._pending: set[str] = set()
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: Callable[[], None] | None = None
        self.queued = 0
        self.delivered = 0
        self.failed_attempts = 0
        self.disabled = 0
        self.in_flight = 0
        # The kind of storage fault that keeps webhooks.db closed (None while it is open).
        self.unavailable: str | None = None

    # -- the queue -------------------------------------------------------------------------------

    def attach_queue(self, ref: pykka.ActorRef[Any], users: set[str]) -> None:
        """The DeliveryQueue (re)started: reach it from now on."""
        with self._lock:
            self._queue, self._queue_proxy = ref, ref.proxy()
            self._pending.clear()
        self.users = frozenset(users)

    def queue(self) -> Any:
        """A proxy of the running DeliveryQueue; 503 while there is none."""
        ref = self._queue
        if ref is None or not ref.is_alive():
            raise ServiceUnavailable("webhooks are starting or restarting; try again")
        return self._queue_proxy

    def tell_queue(self, message: Any) -> None:
        """Tell the running DeliveryQueue; ServiceUnavailable while there is none."""
        ref = self._queue
        if ref is None:
            raise ServiceUnavailable("webhooks are starting or restarting")
        ref.tell(message)

    def committed(self, user_id: str, _seq: int) -> None:
        """The commit log's listener (a store's thread): a user with endpoints committed."""
        if user_id in self.users:
            self.poke(user_id)

    def poke(self, user_id: str) -> None:
        """Have the queue read the user's new commits (once, however many commits arrive meanwhile)."""
        if not self.delivers_here:
            if self.elsewhere is not None:
                self.elsewhere(user_id)
            return
        with self._lock:
            ref = self._queue
            if ref is None or user_id in self._pending:
                return
            self._pending.add(user_id)
        try:
            ref.tell(Poke(user_id))
        except pykka.ActorDeadError:
            pass  # the next queue reads every user with endpoints as it starts

    def taken(self, user_id: str) -> None:
        """The queue starts reading a user: commits from now on poke again."""
        with self._lock:
            self._pending.discard(user_id)

    # -- the sender ------------------------------------------------------------------------------

    def attach_sender(self, loop: asyncio.AbstractEventLoop, wake: Callable[[], None]) -> None:
        """The WebhookSender (re)started on this loop; `wake` makes it look for due deliveries."""
        self._loop, self._wake = loop, wake

    def wake_sender(self) -> None:
        """Deliveries were queued (any thread)."""
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None:
            bridge.call_soon_threadsafe(loop, wake)

    def problems(self) -> list[str]:
        """/health: webhooks.db could not be opened, so deliveries and the webhook routes wait."""
        kind = self.unavailable
        if kind is None:
            return []
        return [f"webhooks: webhooks.db cannot be opened ({kind}); deliveries wait and the webhook routes are refused "
                "until it opens (the queue tries again by itself; the storage problem says what to do)"]

    def stats(self) -> dict[str, Any]:
        """Figures for /health (counted since the process started)."""
        return {
            "users_with_endpoints": len(self.users),
            "queued": self.queued,
            "delivered": self.delivered,
            "failed_attempts": self.failed_attempts,
            "endpoints_disabled": self.disabled,
            "in_flight": self.in_flight,
        }


def webhooks(rt: Process) -> Webhooks:
    """The process's Webhooks."""
    return rt.stash.setdefault(_STATE, lambda: Webhooks(rt.settings, rt.secret))


def link_workers(rt: Process, hub: Webhooks) -> None:
    """Several workers: the primary delivers, the others hand it their pokes; all hear of new endpoints."""
    peers = peers_for(rt)
    hub.delivers_here = rt.worker.primary
    # Users whose poke is on its way to the primary (loop only): True if another came meanwhile.
    handing: dict[str, bool] = {}
    tasks: set[asyncio.Task[None]] = set()

    async def hand_over(user_id: str) -> None:
        while True:
            try:
                await peers.broadcast(POKE_ELSEWHERE, user_id)
            except ServiceUnavailable as exc:
                # The primary is restarting: as it starts, its queue reads every user's cursor.
                log.warning("webhooks: could not hand %s's commits to the primary worker: %s", user_id, exc)
            if not handing.pop(user_id):
                return
            handing[user_id] = False  # another commit came while this one was on its way

    def schedule(user_id: str) -> None:
        if user_id in handing:
            handing[user_id] = True
            return
        handing[user_id] = False
        task = asyncio.ensure_future(hand_over(user_id))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    def elsewhere(user_id: str) -> None:
        loop = rt.loop
        if loop is not None:
            bridge.call_soon_threadsafe(loop, schedule, user_id)

    async def poked(user_id: Any) -> None:
        if hub.delivers_here and isinstance(user_id, str):
            hub.poke(user_id)

    async def endpoints_changed(_data: Any) -> None:
        await bridge.ask(hub.queue().reload_users())

    async def announce() -> None:
        try:
            await peers.broadcast(ENDPOINTS_CHANGED, None)
        except ServiceUnavailable as exc:  # the endpoint is made; a restarted worker reads them all anyway
            log.warning("webhooks: could not tell the other workers of changed endpoints: %s", exc)

    hub.elsewhere = elsewhere
    hub.announce = announce
    peers.answer(POKE_ELSEWHERE, poked)
    peers.answer(ENDPOINTS_CHANGED, endpoints_changed)

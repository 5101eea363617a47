"""Other workers' commits, as pokes to this worker's streams: a NATS subscription per streamed user.

With several workers (brain.workers) a stream's user may commit through any of them, and one
process's Doorbell hears only its own commits. Every commit reaches JetStream on the user's
subjects (`{nats.subject_prefix}.{user_id}.{type}`, published by the committing worker's
EventBus), so while a worker holds streams of a user it holds one plain NATS subscription to
`{prefix}.{user_id}.>` (not a JetStream consumer: nothing is stored for it), opened with the
user's first stream and dropped with the last (docs/live.md).

A message is only a poke: the streams of that user read their store from the last id they
wrote (brain.api.stream), so the order, the seam and the lack of repeats are the store's, and a
late, repeated or lost message costs a read, never an event. What NATS could not carry (an
outbox publishing late, the connection down) comes with the next message, the reconnect (every
watched user is poked) or the stream's heartbeat (a read of its own).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

import nats

from brain.api.live import Dispatcher
from brain.nats_auth import process_connect_options
from brain.process import Process

log = logging.getLogger("brain.api.live")


@dataclass
class _Watch:
    streams: int = 0
    subscription: asyncio.Task[Any] | None = None


class LiveFeed:
    """The NATS subscriptions of the users streamed by this worker (see the module docstring)."""

    def __init__(self, rt: Process, dispatcher: Dispatcher) -> None:
        self.rt = rt
        self.dispatcher = dispatcher
        self.prefix = rt.settings.nats.subject_prefix
        self._nc: Any = None
        self._connecting: asyncio.Task[Any] | None = None
        self._watches: dict[str, _Watch] = {}

    async def watch(self, user_id: str) -> None:
        """A stream of `user_id` opens here: hear of the user's commits from now on.

        Returns once the subscription is in place at the NATS server, so that a stream reading
        its history after this misses nothing; if NATS cannot be reached in time, it returns
        anyway (the stream's heartbeat reads then carry it).
        """
        watch = self._watches.setdefault(user_id, _Watch())
        watch.streams += 1
        if watch.subscription is None:
            watch.subscription = asyncio.ensure_future(self._subscribe(user_id))
        try:
            await asyncio.wait_for(asyncio.shield(watch.subscription), self.rt.settings.nats.publish_timeout_seconds)
        except Exception as exc:  # noqa: BLE001 - a stream without pokes still reads its store on each heartbeat
            log.warning("live: cannot subscribe to the commits of %s: %r", user_id, exc)

    def unwatch(self, user_id: str) -> None:
        """A stream of `user_id` closed here: the last one drops the subscription."""
        watch = self._watches.get(user_id)
        if watch is None:
            return
        watch.streams -= 1
        if watch.streams > 0:
            return
        del self._watches[user_id]
        if watch.subscription is not None:
            watch.subscription.add_done_callback(_unsubscribe)

    async def close(self) -> None:
        """Drop every subscription and the connection (shutdown)."""
        self._watches.clear()
        nc, self._nc = self._nc, None
        if self._connecting is not None:
            self._connecting.cancel()
        if nc is not None:
            try:
                await nc.close()
            except Exception:  # noqa: BLE001 - shutting down either way
                pass

    async def _subscribe(self, user_id: str) -> Any:
        nc = await self._connection()

        async def poked(_msg: Any) -> None:
            self.dispatcher.poke(user_id)

        subscription = await nc.subscribe(f"{self.prefix}.{user_id}.>", cb=poked)
        await nc.flush()
        return subscription

    async def _connection(self) -> Any:
        if self._nc is not None:
            return self._nc
        if self._connecting is None or self._connecting.done():  # none yet, or the last attempt failed
            self._connecting = asyncio.ensure_future(self._connect())
        return await asyncio.shield(self._connecting)

    async def _connect(self) -> Any:
        async def reconnected() -> None:
            # What was committed while the connection was down reached nobody here.
            for user_id in list(self._watches):
                self.dispatcher.poke(user_id)

        self._nc = await nats.connect(
            **process_connect_options(self.rt), name="brain-live", allow_reconnect=True,
            max_reconnect_attempts=-1, reconnect_time_wait=self.rt.settings.nats.reconnect_wait_seconds,
            connect_timeout=2, reconnected_cb=reconnected,
        )
        return self._nc


def _unsubscribe(task: asyncio.Task[Any]) -> None:
    if task.cancelled() or task.exception() is not None:
        return
    unsubscribing = asyncio.ensure_future(task.result().unsubscribe())
    unsubscribing.add_done_callback(_quiet)


def _quiet(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()  # a closed connection: nothing to drop

"""EventBus: publishes every committed event to JetStream, through the per-user outbox.

Three parts: `brain.api.outbox` (the Doorbell stores ring), `brain.api.publisher` (the
Publisher: nats-py, pipelined publishes, outbox drains; subjects, headers and payload are
documented there) and this module's EventBus, the supervised actor that runs the publisher.

How events reach it, and why nothing is lost or doubled:

- A UserStore commits each event together with an outbox row, then rings the `Doorbell`
  with the new events (a deque append: NATS being down never fails or slows a write).
- The bus runs nats-py on the HTTP event loop (its own loop thread when there is none).
  Connected, it publishes queued events pipelined (up to `nats.max_in_flight` awaiting their
  acks) and tells each store which rows JetStream acknowledged; the store deletes them.
- Disconnected, or when a publish fails or times out, it keeps no event in memory: it marks
  the user "dirty" and, once connected, drains that user's outbox rows from the database in
  batches, oldest first.
- Finding pending rows after a crash without opening 10,000 databases: a store creates its
  marker `data/outbox/{user_id}` when it opens and removes it only when it closes with an
  empty outbox. On start the bus lists that directory (at most the stores open at the crash
  plus those closed with unpublished rows) and drains those users.
- A row published but not yet deleted when brain dies is published again after the restart
  with the same Nats-Msg-Id, which JetStream drops within `nats.duplicate_window_seconds`:
  a consumer sees every event exactly once as long as the restart is shorter than the window.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from brain.actors.base import Link
from brain.actors.loop import LoopActor
from brain.api.outbox import Doorbell
from brain.api.publisher import Publisher
from brain.api.store_manager import StoreManager
from brain.sections import NatsSettings


class EventBus(LoopActor):
    """The supervised owner of the publisher; a crash of its coroutine is a crash of the actor.

    The publisher runs on the HTTP event loop when there is one, else on a loop thread of its
    own (see `brain.actors.loop.LoopActor`).
    """

    def __init__(
        self,
        *,
        link: Link | None = None,
        doorbell: Doorbell,
        stores: StoreManager,
        connect: Mapping[str, Any],
        settings: NatsSettings,
        data_path: Path,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(link=link, loop=loop, own_loop=True)
        assert self.loop is not None
        self.doorbell = doorbell
        self.publisher = Publisher(connect=connect, settings=settings, stores=stores, data_path=data_path, loop=self.loop)

    def on_start(self) -> None:
        """Start publishing, then take the stores' events."""
        super().on_start()
        self.doorbell.attach(self.publisher)

    async def main(self) -> None:
        """The publisher's loop."""
        await self.publisher.run()

    async def close(self) -> None:
        """Close the NATS connection; the publisher's worker threads go too."""
        await self.publisher.close()
        self.publisher.executor.shutdown(wait=False, cancel_futures=True)

    def stats(self) -> dict[str, Any]:
        """The publisher's figures."""
        return self.publisher.stats()

    def on_stop(self) -> None:
        """Stop taking events, then stop publishing."""
        self._stop_publisher()
        super().on_stop()

    def on_failure(self, *exc_info: object) -> None:
        """Stop taking events, then stop publishing."""
        self._stop_publisher()
        super().on_failure(*exc_info)

    def _stop_publisher(self) -> None:
        self.doorbell.detach(self.publisher)
        self.publisher._stopping = True  # noqa: SLF001 - the actor owns its publisher

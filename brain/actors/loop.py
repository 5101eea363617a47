"""An actor whose work is one coroutine on an event loop: the coroutine's crash is the actor's.

Network clients such as nats-py live on an asyncio loop, while supervision is for actors.
`LoopActor` joins the two: it runs its `main()` coroutine on the serving loop (with one GIL a
thread of its own would buy no parallelism, only wake-ups and hand-offs), or, with
`own_loop=True` and no serving loop running (a tree started outside `brain serve`), on a loop
thread of its own. If `main()` ends or raises while the actor is not stopping, the actor
crashes and its supervisor restarts it. Stopping (or crashing) cancels `main()` and runs
`close()` on the loop, so connections are released on the thread that owns them.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from dataclasses import dataclass
from typing import Any

from brain.actors.base import BrainActor, Link

__all__ = ["LoopActor"]

log = logging.getLogger("brain.actors")

# How long stopping waits for close() on the loop before abandoning it.
_CLOSE_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class _Crashed:
    error: BaseException


class LoopActor(BrainActor):
    """Runs `main()` on an event loop for as long as the actor lives (see the module docstring)."""

    def __init__(
        self, *, link: Link | None = None, loop: asyncio.AbstractEventLoop | None = None, own_loop: bool = False
    ) -> None:
        super().__init__(link=link)
        serving = loop is not None and not loop.is_closed() and loop.is_running()
        self._own_loop = own_loop and not serving
        self.loop: asyncio.AbstractEventLoop | None = asyncio.new_event_loop() if self._own_loop else (
            loop if serving else None
        )
        self.stopping = False
        self._main: concurrent.futures.Future[None] | None = None
        self._thread: threading.Thread | None = None

    async def main(self) -> None:
        """The actor's work; returns only when asked to stop."""
        raise NotImplementedError

    async def close(self) -> None:
        """Release what `main()` opened (runs on the loop once the actor stops)."""

    def on_start(self) -> None:
        """Start `main()` on the loop (without a loop there is nothing to run: the actor idles)."""
        loop = self.loop
        if loop is None:
            return
        if self._own_loop:
            self._thread = threading.Thread(target=loop.run_forever, name=f"{type(self).__name__}-loop", daemon=True)
            self._thread.start()
        self._main = asyncio.run_coroutine_threadsafe(self.main(), loop)
        ref = self.actor_ref

        def crashed(fut: concurrent.futures.Future[None]) -> None:
            if fut.cancelled() or self.stopping:
                return
            try:
                ref.tell(_Crashed(fut.exception() or RuntimeError(f"{type(self).__name__}: main() returned")))
            except Exception:  # noqa: BLE001 - the actor is gone already
                pass

        self._main.add_done_callback(crashed)

    def on_receive(self, message: Any) -> Any:
        """A crash of `main()` is a crash of the actor (its supervisor restarts it)."""
        if isinstance(message, _Crashed):
            raise RuntimeError(f"{type(self).__name__}: its coroutine failed") from message.error
        return super().on_receive(message)

    def on_stop(self) -> None:
        """Cancel `main()` and close."""
        self._shutdown()

    def on_failure(self, *_exc: object) -> None:
        """Cancel `main()` and close."""
        self._shutdown()

    def _shutdown(self) -> None:
        self.stopping = True
        if self._main is not None:
            self._main.cancel()
        loop = self.loop
        if loop is None:
            return
        if not loop.is_closed() and loop.is_running():
            try:
                asyncio.run_coroutine_threadsafe(self.close(), loop).result(timeout=_CLOSE_TIMEOUT_S)
            except Exception:  # noqa: BLE001 - a wedged loop is abandoned
                log.warning("%s: did not close cleanly", type(self).__name__)
        if self._own_loop:
            loop.call_soon_threadsafe(loop.stop)
            if self._thread is not None:
                self._thread.join(timeout=5)
            if not loop.is_running():
                loop.close()

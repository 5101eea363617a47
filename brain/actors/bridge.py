"""Await actor replies from asyncio without blocking the event loop.

``await pykka_future`` is a trap: pykka's ``__await__`` calls the blocking ``get()`` on the loop
thread, stalling every other request until the actor answers. Instead, ``wrap`` turns a pykka
future into an asyncio future that the actor's thread resolves through
``loop.call_soon_threadsafe``:

    event = await bridge.ask(store_proxy.append(evt))

Pykka 4.5's futures have no completion callback, so asks to a ``BrainActor`` return a
``CallbackFuture`` (see ``brain.actors.base``) whose ``add_done_callback`` this module uses. Any
other future (plain pykka actors, lazy futures from ``map``/``join``/``ActorRef.stop``) falls
back to ``get()`` in the loop's default executor: correct, but it spends a worker thread per
pending ask.

Replies are handed to the loop in bursts: each one is queued, and only the first of a burst
pays ``loop.call_soon_threadsafe`` (a self-pipe write that wakes the loop); the loop then
settles every reply queued by the time it runs. Under load (many actors answering at once)
that is one wake-up for many replies instead of one each. ``settle_threadsafe`` (answering
without a pykka future) and ``call_soon_threadsafe`` (any callback) share the same queue.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

import pykka

from brain.actors.base import CallbackFuture

__all__ = ["ask", "call_soon_threadsafe", "settle_threadsafe", "wrap"]


def wrap(future: pykka.Future[Any], loop: asyncio.AbstractEventLoop | None = None) -> asyncio.Future[Any]:
    """An asyncio future resolved (value or exception) when the pykka future is."""
    if loop is None:
        loop = asyncio.get_running_loop()
    if not isinstance(future, CallbackFuture) or future.is_lazy:
        return loop.run_in_executor(None, future.get)

    result: asyncio.Future[Any] = loop.create_future()
    replies = _replies_for(loop)

    def on_done(done: pykka.Future[Any]) -> None:
        # Runs in the actor's thread (or here, if already resolved); get() returns at once.
        try:
            value = done.get(timeout=0)
        except BaseException as exc:  # noqa: BLE001 - every outcome belongs to the awaiting task
            replies.post(result, exc, _ERROR)
        else:
            replies.post(result, value, _RESULT)

    future.add_done_callback(on_done)
    return result


async def ask(
    future_or_callable: pykka.Future[Any] | Callable[[], pykka.Future[Any]],
    *,
    timeout: float | None = None,
) -> Any:
    """Await an actor's reply: ``await ask(proxy.method(arg))`` or ``await ask(lambda: ...)``."""
    if isinstance(future_or_callable, pykka.Future):
        future = future_or_callable
    else:
        future = future_or_callable()
    if timeout is None:
        return await wrap(future)
    return await asyncio.wait_for(wrap(future), timeout)


def settle_threadsafe(fut: asyncio.Future[Any], value: Any = None, *, error: BaseException | None = None) -> None:
    """Resolve an asyncio future from any thread (value, or `error`); batched like ask replies.

    For actors that answer the event loop without a pykka future (brain.api.user_store's inbox):
    the future must not be awaited anywhere but on its own loop.
    """
    if error is None:
        _replies_for(fut.get_loop()).post(fut, value, _RESULT)
    else:
        _replies_for(fut.get_loop()).post(fut, error, _ERROR)


def call_soon_threadsafe(loop: asyncio.AbstractEventLoop, callback: Callable[..., None], *args: Any) -> None:
    """`loop.call_soon_threadsafe`, sharing the loop's wake-up with the replies queued meanwhile.

    Silently dropped if the loop is closed.
    """
    _replies_for(loop).post(callback, args, _CALL)


_RESULT, _ERROR, _CALL = 0, 1, 2


class _Replies:
    """What waits for one loop (replies, calls), and whether a wake-up is already on its way."""

    __slots__ = ("loop", "queue", "wake_pending")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.queue: deque[tuple[Any, Any, int]] = deque()
        self.wake_pending = False

    def post(self, target: Any, value: Any, kind: int) -> None:
        """Queue a reply or call (any thread); wake the loop unless a wake-up is already pending."""
        self.queue.append((target, value, kind))
        # Safe without a lock: drain() clears the flag *before* it empties the queue, so an
        # entry appended after the drain's last popleft always sees the flag down and wakes.
        if not self.wake_pending:
            self.wake_pending = True
            try:
                self.loop.call_soon_threadsafe(self.drain)
            except RuntimeError:
                pass  # the loop is closed: nobody is left to receive it

    def drain(self) -> None:
        """Settle every queued reply and run every queued call, in order (on the loop)."""
        self.wake_pending = False
        queue = self.queue
        while queue:
            target, value, kind = queue.popleft()
            if kind == _CALL:
                try:
                    target(*value)
                except Exception as exc:  # noqa: BLE001 - as the loop itself would: report, go on
                    self.loop.call_exception_handler({"message": f"exception in callback {target!r}", "exception": exc})
            elif target.done():  # the awaiting task may have been cancelled meanwhile
                continue
            elif kind == _ERROR:
                target.set_exception(value)
            else:
                target.set_result(value)


_replies: dict[asyncio.AbstractEventLoop, _Replies] = {}
_replies_lock = threading.Lock()


def _replies_for(loop: asyncio.AbstractEventLoop) -> _Replies:
    replies = _replies.get(loop)
    if replies is None:
        with _replies_lock:
            # Closed loops are dropped here, so the map never outgrows the loops alive.
            for old in [old for old in _replies if old.is_closed()]:
                del _replies[old]
            replies = _replies.setdefault(loop, _Replies(loop))
    return replies

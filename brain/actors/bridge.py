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
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pykka

from brain.actors.base import CallbackFuture

__all__ = ["ask", "wrap"]


def wrap(future: pykka.Future[Any], loop: asyncio.AbstractEventLoop | None = None) -> asyncio.Future[Any]:
    """An asyncio future resolved (value or exception) when the pykka future is."""
    if loop is None:
        loop = asyncio.get_running_loop()
    if not isinstance(future, CallbackFuture) or future.is_lazy:
        return loop.run_in_executor(None, future.get)

    result: asyncio.Future[Any] = loop.create_future()

    def on_done(done: pykka.Future[Any]) -> None:
        # Runs in the actor's thread (or here, if already resolved); get() returns at once.
        try:
            value = done.get(timeout=0)
        except BaseException as exc:  # noqa: BLE001 - every outcome belongs to the awaiting task
            _post(loop, _set_exception, result, exc)
        else:
            _post(loop, _set_result, result, value)

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


def _post(loop: asyncio.AbstractEventLoop, fn: Callable[..., None], *args: Any) -> None:
    try:
        loop.call_soon_threadsafe(fn, *args)
    except RuntimeError:
        pass  # the loop is closed: nobody is left to receive the reply


def _set_result(fut: asyncio.Future[Any], value: Any) -> None:
    if not fut.done():  # the awaiting task may have been cancelled meanwhile
        fut.set_result(value)


def _set_exception(fut: asyncio.Future[Any], exc: BaseException) -> None:
    if not fut.done():
        fut.set_exception(exc)

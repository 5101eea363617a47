"""The asyncio <-> actor bridge: replies and errors arrive without blocking the event loop."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import pykka
import pytest

from brain.actors import bridge
from brain.actors.base import BrainActor, CallbackFuture


class Echo(BrainActor):
    """Answers asks, slowly if told to."""

    def echo(self, value: Any) -> Any:
        return value

    def slow(self, seconds: float) -> str:
        time.sleep(seconds)
        return "done"

    def fail(self) -> None:
        raise KeyError("nope")


class PlainEcho(pykka.ThreadingActor):
    """A plain pykka actor: its futures have no callbacks, so the bridge must fall back."""

    use_daemon_thread = True

    def echo(self, value: Any) -> Any:
        return value


@pytest.fixture
def echo() -> Iterator[pykka.ActorRef[Echo]]:
    ref = Echo.start()
    yield ref
    ref.stop(block=True, timeout=5)


class Ticker:
    """Measures the longest gap between ticks of a task that wants to run every 5 ms."""

    def __init__(self) -> None:
        self.max_gap = 0.0
        self._last = time.perf_counter()
        self._task: asyncio.Task[None] | None = None

    def _tick(self) -> None:
        now = time.perf_counter()
        self.max_gap = max(self.max_gap, now - self._last)
        self._last = now

    async def _run(self) -> None:
        self._last = time.perf_counter()
        while True:
            await asyncio.sleep(0.005)
            self._tick()

    async def __aenter__(self) -> Ticker:
        self._task = asyncio.create_task(self._run())
        await asyncio.sleep(0.02)  # let it tick before the measured work starts
        return self

    async def __aexit__(self, *exc: Any) -> None:
        assert self._task is not None
        # A stall right before exit would otherwise go unseen: the task is cancelled unwoken.
        self._tick()
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass


@pytest.mark.asyncio
async def test_result_arrives(echo):
    assert await bridge.ask(echo.proxy().echo({"a": 1})) == {"a": 1}
    assert await bridge.wrap(echo.ask("raw", block=False)) is None  # on_receive default reply
    assert await bridge.ask(lambda: echo.proxy().echo(5)) == 5


@pytest.mark.asyncio
async def test_exception_arrives(echo):
    with pytest.raises(KeyError, match="nope"):
        await bridge.ask(echo.proxy().fail())
    assert echo.is_alive()  # an ask failure is the caller's, not a crash


@pytest.mark.asyncio
async def test_loop_keeps_running_while_the_actor_is_slow(echo):
    async with Ticker() as ticker:
        t0 = time.perf_counter()
        assert await bridge.ask(echo.proxy().slow(0.3)) == "done"
        elapsed = time.perf_counter() - t0
    assert elapsed >= 0.3
    assert ticker.max_gap < 0.1, f"loop stalled {ticker.max_gap * 1000:.0f} ms"


@pytest.mark.asyncio
async def test_native_await_of_a_pykka_future_does_block_the_loop(echo):
    # Why the bridge exists: if pykka ever fixes this, the bridge can become a thin alias.
    async with Ticker() as ticker:
        assert await echo.proxy().slow(0.2) == "done"
    assert ticker.max_gap >= 0.15


@pytest.mark.asyncio
async def test_actor_dead_error_propagates(echo):
    dead = Echo.start()
    dead_proxy = dead.proxy()
    dead.stop(block=True, timeout=5)
    with pytest.raises(pykka.ActorDeadError):
        await bridge.ask(dead_proxy.echo(1))

    # An ask queued behind a stop is answered with ActorDeadError when the actor stops.
    slow = echo.proxy().slow(0.1)
    echo.stop(block=False)
    late = echo.ask("x", block=False)  # the actor is still busy, so this lands behind the stop
    with pytest.raises(pykka.ActorDeadError, match="stopped before handling"):
        await bridge.wrap(late)
    assert await bridge.ask(slow) == "done"


@pytest.mark.asyncio
async def test_ask_that_raced_the_actors_death_is_still_answered():
    from pykka._envelope import Envelope  # to replay pykka's is_alive()-then-put race exactly

    ref = Echo.start()
    ref.stop(block=True, timeout=5)
    orphan = Echo._create_future()
    ref.actor_inbox.put(Envelope("late", reply_to=orphan))  # lands after pykka's own drain
    with pytest.raises(pykka.ActorDeadError):
        await bridge.ask(orphan, timeout=3)


@pytest.mark.asyncio
async def test_already_resolved_future(echo):
    future = echo.proxy().echo("early")
    future.get(timeout=5)
    assert await bridge.wrap(future) == "early"


@pytest.mark.asyncio
async def test_many_concurrent_asks(echo):
    proxy = echo.proxy()
    results = await asyncio.gather(*(bridge.ask(proxy.echo(i)) for i in range(2000)))
    assert results == list(range(2000))


@pytest.mark.asyncio
async def test_timeout(echo):
    with pytest.raises(asyncio.TimeoutError):
        await bridge.ask(echo.proxy().slow(0.3), timeout=0.05)


@pytest.mark.asyncio
async def test_futures_without_callbacks_fall_back_to_a_thread():
    plain = PlainEcho.start()
    try:
        assert await bridge.ask(plain.proxy().echo(3)) == 3
        assert await bridge.wrap(plain.stop(block=False)) is True  # a lazy future
    finally:
        plain.stop(block=True, timeout=5)


def test_callback_future_semantics():
    calls: list[tuple[str, Any]] = []
    future = CallbackFuture()
    future.add_done_callback(lambda f: calls.append((threading.current_thread().name, f.get(timeout=0))))
    assert calls == []
    setter = threading.Thread(target=future.set, args=(42,), name="setter")
    setter.start()
    setter.join()
    # Pending callbacks run in the setting thread, and get() inside them does not block.
    assert calls == [("setter", 42)]
    # Added after resolution: runs at once, in the adding thread.
    future.add_done_callback(lambda f: calls.append((threading.current_thread().name, f.get(timeout=0))))
    assert calls[-1] == (threading.current_thread().name, 42)

    failed = CallbackFuture()
    try:
        raise ValueError("boom")
    except ValueError:
        failed.set_exception()
    seen: list[BaseException] = []

    def grab(f: CallbackFuture) -> None:
        try:
            f.get(timeout=0)
        except ValueError as exc:
            seen.append(exc)

    failed.add_done_callback(grab)
    assert len(seen) == 1 and str(seen[0]) == "boom"

"""The master's side of the worker links: requests between workers, and the shared rate limits.

The master runs no event loop and no thread (it forks), so the hub is driven by the master's
`selectors` loop: `readable`/`writable` when a link's socket is ready, `expire` now and then.
Every socket is non-blocking; what a worker is not reading yet waits in that link's buffer.

What a worker asks (brain.workers.wire):

- `ready`: it serves its listeners (`on_ready(index)`);
- `limit`: one operation on a shared sliding window (brain.ratelimit), answered at once: the
  windows live here, so a limit holds for the whole server whichever worker a client reaches;
- `gather`: the hub asks every other worker the same (`ask`) and answers with all their answers
  (and the master's own figures) once each has answered, died or run out of time;
- `broadcast`: the same, for a worker telling the others something they must act on;
- `keep` / `recall`: a value remembered here for the server's lifetime, which a worker started
  later (a restarted one) reads (a cluster node's drain).
"""

from __future__ import annotations

import itertools
import logging
import selectors
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from brain.ratelimit import SlidingWindow
from brain.workers.wire import MAX_LINE, decode, encode

__all__ = ["Hub"]

log = logging.getLogger("brain.master")

_LIMIT_CALLS = frozenset({"take", "hit", "reset", "retry_after"})


@dataclass
class _Link:
    index: int
    sock: socket.socket
    inbox: bytearray = field(default_factory=bytearray)
    outbox: bytearray = field(default_factory=bytearray)


@dataclass
class _Fanout:
    """A gather or broadcast waiting for the workers' answers."""

    origin: int  # the asking worker
    origin_id: Any  # its request id
    waiting: set[int]
    deadline: float
    answers: dict[str, Any] = field(default_factory=dict)


class Hub:
    """Routes messages between the master and its workers (see the module docstring)."""

    def __init__(self, selector: selectors.BaseSelector, *, on_ready: Callable[[int], None],
                 figures: Callable[[], dict[str, Any]]) -> None:
        self.selector = selector
        self.on_ready = on_ready
        self.figures = figures
        self.links: dict[int, _Link] = {}
        self.windows: dict[str, SlidingWindow] = {}
        self._fanouts: dict[int, _Fanout] = {}
        self._asks: dict[int, tuple[int, int]] = {}  # ask id -> (fanout id, worker index)
        self._ids = itertools.count(1)
        self.kept: dict[str, Any] = {}

    # -- links ------------------------------------------------------------------------------

    def attach(self, index: int, sock: socket.socket) -> None:
        """A new worker's end of the pair is `sock`'s peer: read and answer it."""
        sock.setblocking(False)
        link = self.links[index] = _Link(index, sock)
        self.selector.register(sock, selectors.EVENT_READ, (self._on_event, link))

    def detach(self, index: int) -> None:
        """The worker is gone: forget its link; fan-outs stop waiting for it."""
        link = self.links.pop(index, None)
        if link is None:
            return
        try:
            self.selector.unregister(link.sock)
        except (KeyError, ValueError):
            pass
        link.sock.close()
        for ask_id, (fanout_id, worker) in list(self._asks.items()):
            if worker == index:
                del self._asks[ask_id]
                self._settle(fanout_id, worker, {"error": "the worker exited"})

    def fds(self) -> list[int]:
        """The master-side descriptors (a forked worker closes its copies)."""
        return [link.sock.fileno() for link in self.links.values()]

    def expire(self, now: float | None = None) -> float | None:
        """Answer fan-outs whose time is up; seconds until the next deadline (None: none waits)."""
        now = time.monotonic() if now is None else now
        for fanout_id, fanout in list(self._fanouts.items()):
            if fanout.deadline <= now:
                for worker in list(fanout.waiting):
                    self._settle(fanout_id, worker, {"error": "no answer in time"})
        deadlines = [f.deadline for f in self._fanouts.values()]
        return max(0.0, min(deadlines) - now) if deadlines else None

    # -- I/O ------------------------------------------------------------------------------------

    def _on_event(self, link: _Link, mask: int) -> None:
        if mask & selectors.EVENT_WRITE:
            self._flush(link)
        if mask & selectors.EVENT_READ and link.index in self.links:
            self._read(link)

    def _read(self, link: _Link) -> None:
        try:
            data = link.sock.recv(1 << 20)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            # The worker died (the master reaps it and detaches); stop polling a dead socket.
            self._unwatch(link)
            return
        link.inbox += data
        while True:
            end = link.inbox.find(b"\n")
            if end < 0:
                if len(link.inbox) > MAX_LINE:
                    log.error("worker %s sent an over-long message; its link is dropped", link.index)
                    self._unwatch(link)
                break
            line = bytes(link.inbox[:end])
            del link.inbox[: end + 1]
            try:
                self._handle(link, decode(line))
            except Exception:  # noqa: BLE001 - one bad message must not stop the master
                log.exception("worker %s: unreadable message %r", link.index, line[:200])

    def _unwatch(self, link: _Link) -> None:
        try:
            self.selector.unregister(link.sock)
        except (KeyError, ValueError):
            pass

    def _send(self, index: int, message: dict[str, Any]) -> None:
        link = self.links.get(index)
        if link is None:
            return
        link.outbox += encode(message)
        self._flush(link)

    def _flush(self, link: _Link) -> None:
        while link.outbox:
            try:
                sent = link.sock.send(link.outbox)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                link.outbox.clear()  # the worker is dying; its exit detaches it
                break
            del link.outbox[:sent]
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if link.outbox else 0)
        try:
            self.selector.modify(link.sock, events, (self._on_event, link))
        except (KeyError, ValueError):
            pass

    # -- messages -------------------------------------------------------------------------------

    def _handle(self, link: _Link, message: dict[str, Any]) -> None:
        if "re" in message:
            route = self._asks.pop(message["re"], None)
            if route is not None:
                fanout_id, worker = route
                answer = {"error": message["error"]} if "error" in message else message.get("result")
                self._settle(fanout_id, worker, answer)
            return
        op = message.get("op")
        if op == "ready":
            self.on_ready(link.index)
        elif op == "limit":
            try:
                result = self._limit(message)
            except (KeyError, TypeError, ValueError) as exc:
                self._reply(link.index, message, error=f"bad limit request: {exc!r}")
            else:
                self._reply(link.index, message, result=result)
        elif op in ("gather", "broadcast"):
            self._fan_out(link.index, message)
        elif op == "keep":
            self.kept[str(message.get("what"))] = message.get("data")
            self._reply(link.index, message)
        elif op == "recall":
            self._reply(link.index, message, result=self.kept.get(str(message.get("what"))))
        else:
            self._reply(link.index, message, error=f"unknown op {op!r}")

    def _reply(self, index: int, message: dict[str, Any], *, result: Any = None, error: str | None = None) -> None:
        if "id" not in message:
            return
        self._send(index, {"re": message["id"], "error": error} if error is not None else {"re": message["id"],
                                                                                           "result": result})

    def _limit(self, message: dict[str, Any]) -> float | None:
        """One operation on a shared window: `take`/`retry_after` answer seconds to wait."""
        name, call, key = message["table"], message["call"], message["key"]
        if call not in _LIMIT_CALLS or not isinstance(key, str):
            raise ValueError(f"bad limit call {call!r}")
        window = self.windows.get(name)
        limit, window_s, max_keys = message["spec"]
        if window is None or (window.limit, window.window_s, window.max_keys) != (limit, window_s, max_keys):
            window = self.windows[name] = SlidingWindow(int(limit), float(window_s), max_keys=int(max_keys))
        if call == "take":
            return window.take(key)
        if call == "retry_after":
            return window.retry_after(key)
        if call == "hit":
            window.hit(key)
        else:
            window.reset(key)
        return None

    def _fan_out(self, origin: int, message: dict[str, Any]) -> None:
        fanout_id = next(self._ids)
        others = [index for index in self.links if index != origin]
        wait = float(message.get("wait", 2.0))
        fanout = self._fanouts[fanout_id] = _Fanout(origin, message.get("id"), set(others), time.monotonic() + wait)
        for index in others:
            ask_id = next(self._ids)
            self._asks[ask_id] = (fanout_id, index)
            self._send(index, {"id": ask_id, "op": "ask", "what": message.get("what"), "data": message.get("data")})
        if not fanout.waiting:
            self._finish(fanout_id)

    def _settle(self, fanout_id: int, worker: int, answer: Any) -> None:
        fanout = self._fanouts.get(fanout_id)
        if fanout is None or worker not in fanout.waiting:
            return
        fanout.waiting.discard(worker)
        fanout.answers[str(worker)] = answer
        if not fanout.waiting:
            self._finish(fanout_id)

    def _finish(self, fanout_id: int) -> None:
        fanout = self._fanouts.pop(fanout_id)
        for ask_id, (other, _) in list(self._asks.items()):
            if other == fanout_id:
                del self._asks[ask_id]
        self._send(fanout.origin, {"re": fanout.origin_id, "result": {"workers": fanout.answers, "master": self.figures()}})

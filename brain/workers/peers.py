"""A worker's link to its master and, through it, to the other workers of the server.

`peers_for(rt)` is the process's `Peers`. Core code that must reach every worker registers what
it answers (`answer("health", fn)`) and asks:

- `gather(what)`: every worker's answer, this one's included, keyed by worker index (for
  /health and /metrics of the whole server);
- `broadcast(what, data)`: the other workers' answers, once each has acted (a deletion, a
  revoked API key: effective everywhere before the client hears back);
- `request(op, ...)`: the master itself (the shared rate limits of brain.ratelimit);
- `keep(what, data)` / `recall(what)`: what the master remembers for the server's lifetime, so
  that a worker restarted later learns it too (a cluster node's drain: brain.api.cluster).

A single process (`rt.worker.several` false) has no master: `gather` asks only itself,
`broadcast` has nobody to tell. The link runs on the serving event loop; if the master goes
away, the worker stops (nobody would restart it, and it must not hold the ports alone).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import socket
from collections.abc import Awaitable, Callable
from typing import Any

from brain.errors import ServiceUnavailable
from brain.process import Process
from brain.stash import StashKey
from brain.workers.wire import MAX_LINE, decode, encode

__all__ = ["Peers", "peers_for"]

log = logging.getLogger("brain.workers")

Answer = Callable[[Any], Awaitable[Any]]


class Peers:
    """This process's side of the master link (see the module docstring)."""

    def __init__(self, rt: Process) -> None:
        self.rt = rt
        self._answers: dict[str, Answer] = {}
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._ids = itertools.count(1)
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._kept: dict[str, Any] = {}  # a single process is the server: it remembers for itself

    @property
    def linked(self) -> bool:
        """Whether a master is there to talk to."""
        return self._writer is not None

    def answer(self, what: str, fn: Answer) -> None:
        """Answer the master's `ask` for `what` (and this worker's own `gather`) with `fn(data)`."""
        if what in self._answers:
            raise ValueError(f"{what!r} is answered twice")
        self._answers[what] = fn

    async def connect(self, sock: socket.socket, on_lost: Callable[[], None]) -> None:
        """Talk to the master over `sock` (this worker's end of its socket pair), on this loop."""
        reader, self._writer = await asyncio.open_connection(sock=sock, limit=MAX_LINE)
        self._reader_task = asyncio.ensure_future(self._read(reader, on_lost))

    def ready(self) -> None:
        """Tell the master this worker serves its listeners."""
        self._send({"op": "ready"})

    async def request(self, op: str, timeout: float = 5.0, **fields: Any) -> Any:
        """Ask the master; its result (ServiceUnavailable if it does not answer in time)."""
        if self._writer is None:
            raise ServiceUnavailable("this worker has lost its master")
        loop = asyncio.get_running_loop()
        msg_id = next(self._ids)
        fut: asyncio.Future[Any] = loop.create_future()
        self._pending[msg_id] = fut
        try:
            self._send({"id": msg_id, "op": op, **fields})
            return await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            raise ServiceUnavailable(f"the master did not answer {op!r} in time") from None
        finally:
            self._pending.pop(msg_id, None)

    async def gather(self, what: str, data: Any = None, timeout: float = 2.0) -> dict[str, Any]:
        """Every worker's answer to `what`, by worker index ("1", "2", ...); `"master"`: the master's figures."""
        own = await self._answers[what](data)
        index = str(self.rt.worker.index)
        if not self.linked:
            return {index: own}
        try:
            found = await self.request("gather", timeout=timeout + 1, what=what, data=data, wait=timeout)
        except ServiceUnavailable as exc:
            return {index: own, "master": {"error": str(exc)}}
        answers: dict[str, Any] = found["workers"]
        answers[index] = own
        answers["master"] = found["master"]
        return answers

    async def broadcast(self, what: str, data: Any, timeout: float = 5.0) -> dict[str, Any]:
        """Have every other worker answer `what` (each acts on it); their answers by index."""
        if not self.linked:
            return {}
        found = await self.request("broadcast", timeout=timeout + 1, what=what, data=data, wait=timeout)
        return found["workers"]  # type: ignore[no-any-return]

    async def keep(self, what: str, data: Any) -> None:
        """Have the master remember `data` under `what` until the server stops (workers restarted
        meanwhile `recall` it)."""
        if not self.linked:
            self._kept[what] = data
            return
        await self.request("keep", what=what, data=data)

    async def recall(self, what: str) -> Any:
        """What was last kept under `what` while the server runs (None: nothing)."""
        if not self.linked:
            return self._kept.get(what)
        return await self.request("recall", what=what)

    async def close(self) -> None:
        """Stop reading (shutdown); pending requests fail."""
        if self._reader_task is not None:
            self._reader_task.cancel()
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    # -- internals ----------------------------------------------------------------------------

    def _send(self, message: dict[str, Any]) -> None:
        if self._writer is not None and not self._writer.is_closing():
            self._writer.write(encode(message))

    async def _read(self, reader: asyncio.StreamReader, on_lost: Callable[[], None]) -> None:
        try:
            while True:
                line = await reader.readline()
                if not line:
                    break
                try:
                    message = decode(line)
                except ValueError:
                    log.error("unreadable message from the master: %r", line[:200])
                    continue
                if "re" in message:
                    fut = self._pending.get(message["re"])
                    if fut is not None and not fut.done():
                        if "error" in message:
                            fut.set_exception(ServiceUnavailable(str(message["error"])))
                        else:
                            fut.set_result(message.get("result"))
                elif message.get("op") == "ask":
                    task = asyncio.ensure_future(self._answer(message))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            log.error("the link to the master broke: %r", exc)
        except asyncio.CancelledError:
            return
        self._writer = None
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(ServiceUnavailable("this worker has lost its master"))
        log.critical("the master is gone; this worker stops")
        on_lost()

    async def _answer(self, message: dict[str, Any]) -> None:
        what = message.get("what")
        fn = self._answers.get(what) if isinstance(what, str) else None
        try:
            if fn is None:
                raise LookupError(f"nothing answers {what!r} here")
            self._send({"re": message["id"], "result": await fn(message.get("data"))})
        except Exception as exc:  # noqa: BLE001 - the asker hears of it; this worker goes on
            log.exception("answering the master's %r failed", what)
            self._send({"re": message["id"], "error": repr(exc)})


_PEERS: StashKey[Peers] = StashKey("brain.workers.peers")


def peers_for(rt: Process) -> Peers:
    """The process's Peers (created on first use)."""
    return rt.stash.setdefault(_PEERS, lambda: Peers(rt))

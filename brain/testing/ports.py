"""Loopback ports for servers a test starts as processes of their own.

A port that a test picks and a server binds a moment later is free for that moment only. Asked
with bind(0), the kernel picks from its ephemeral range, the same range it picks from for every
other process's bind(0) and outgoing connections, so under pytest-xdist (and beside other suites
on the machine) another process can be handed the same port before the server binds it.
`free_port()` therefore counts through ports below the ephemeral range, which the kernel never
hands out on its own: each xdist worker through a block of its own, from a point that differs per
process, skipping any port that something holds.
"""

from __future__ import annotations

import os
import random
import socket
import threading
from pathlib import Path

__all__ = ["free_port"]

_LOWEST = 10000
# Linux's default start of the ephemeral range, for a kernel that does not say.
_EPHEMERAL_START = 32768


def _ephemeral_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return _EPHEMERAL_START


def _worker_block() -> range:
    """The ports this process counts through: its xdist worker's share of those below the ephemeral range."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    index = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw"))
    size = (_ephemeral_start() - _LOWEST) // workers
    start = _LOWEST + index * size
    return range(start, start + size)


def _bindable(port: int) -> bool:
    # Without SO_REUSEADDR, so a port with connections in TIME_WAIT is passed over too.
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class _PortCounter:
    """Counts through `block` (by default this process's) from `start` (by default a random point)."""

    def __init__(self, block: range | None = None, start: int | None = None) -> None:
        self._lock = threading.Lock()
        self._block = block
        self._next = start

    def take(self) -> int:
        with self._lock:
            if self._block is None:
                self._block = _worker_block()
            if self._next is None:
                # Not the random module's state, which a test (hypothesis does) may have seeded.
                self._next = random.SystemRandom().randrange(len(self._block))
            for _ in range(len(self._block)):
                port = self._block[self._next]
                self._next = (self._next + 1) % len(self._block)
                if _bindable(port):
                    return port
        raise AssertionError(f"no free loopback port in {self._block}")


_counter = _PortCounter()


def free_port() -> int:
    """A loopback TCP port that is free now and that no other process is about to be given."""
    if _ephemeral_start() - _LOWEST < 1000:
        # A kernel whose ephemeral range starts low leaves no room below it: the kernel's pick.
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return int(s.getsockname()[1])
    return _counter.take()

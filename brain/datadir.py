"""The data directory's lock: a server holds it shared for its life; a command may take it alone.

A running `brain serve` holds a *shared* lock on `data/serve.lock` from before its first actor
starts until it exits. A command that edits the data directory offline (`brain users delete`)
tries to take it *exclusively*: if it gets it, no server runs on this directory (and none can
start until it is done: a starting server waits for it); if not, a server runs and the command
must go through it.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

from brain.errors import ConfigError

log = logging.getLogger("brain.datadir")

LOCK_FILE = "serve.lock"
# A server start waits this long for a command that holds the data directory.
_LOCK_WAIT_S = 60.0


def _lock_fd(data_path: Path) -> int:
    data_path.mkdir(parents=True, exist_ok=True)
    return os.open(data_path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)


def hold_shared(data_path: Path) -> int:
    """Take the shared lock (waits while a command holds it alone); the fd to close to release it."""
    fd = _lock_fd(data_path)
    deadline = time.monotonic() + _LOCK_WAIT_S
    waiting = False
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() > deadline:
                os.close(fd)
                raise ConfigError(f"{data_path}: locked by another brain command for over "
                                  f"{_LOCK_WAIT_S:.0f}s (see {LOCK_FILE})") from None
            if not waiting:
                log.warning("waiting for another brain command (users delete) to release %s", data_path)
                waiting = True
            time.sleep(0.1)


@contextlib.contextmanager
def exclusive(data_path: Path) -> Iterator[bool]:
    """Hold the data directory exclusively if no server runs on it; yields whether it could."""
    fd = _lock_fd(data_path)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)  # releases the lock

"""Token buckets in memory every worker of the server shares: one budget per key, whichever worker a request reaches.

The API role's request limits (brain.api.limits) are checked on every request, before any
other work, so asking the master over the worker's link (as the auth role's sliding windows
do) would put a process hop on the hot path. Instead the buckets live in a file in the
master's shared directory (`WorkerSlot.shared_dir`, on /dev/shm when there is one), mapped
by every worker: a fixed open-addressing table of `slots` entries, each a key's hash, its
tokens left and when they were counted. One operation holds an exclusive `flock` on the file
for a few dozen bytecodes; the kernel drops the lock of a process that dies, so a worker
killed while holding it blocks nobody.

A key is its `hash()`: every worker is forked from the master and shares its hash seed (a
replacement too), and a 64-bit collision between two keys only merges their budgets. A key is
looked for among `PROBE` slots from where it hashes; a new key takes the first empty one, else
one whose bucket has refilled (the same as no bucket), else the one counted longest ago, so
the table never grows and every operation is bounded, whatever keys a client invents.
"""

from __future__ import annotations

import fcntl
import mmap
import os
from pathlib import Path

__all__ = ["PROBE", "SharedTokenBuckets"]

# Slots a key may sit in, from where it hashes.
PROBE = 16
_HEADER = 8  # one int64: slots ever taken (for /health)


class SharedTokenBuckets:
    """`rate` requests a second for each key, `burst` at once, counted across processes (see the module docstring)."""

    def __init__(self, path: Path, rate: float, burst: int, *, max_keys: int = 100_000) -> None:
        self.rate = rate
        self.burst = float(burst)
        slots = 1
        while slots < 2 * max_keys:
            slots *= 2
        self.mask = slots - 1
        size = _HEADER + slots * 24
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            try:
                if os.fstat(self._fd).st_size < size:
                    os.ftruncate(self._fd, size)  # zeros: every slot empty
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            self._map = mmap.mmap(self._fd, size, mmap.MAP_SHARED)
        except BaseException:
            os.close(self._fd)
            raise
        view = memoryview(self._map)
        self._taken = view[:_HEADER].cast("q")
        self._hashes = view[_HEADER:_HEADER + slots * 8].cast("q")
        self._values = view[_HEADER + slots * 8:].cast("d")  # tokens, counted at: two per slot

    def take(self, key: str, now: float, cost: float = 1.0) -> float:
        """Spend `cost` tokens of `key`: 0 when allowed, else the seconds until they are there."""
        fd = self._fd
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            slot = self._slot(hash(key) or 1, now, claim=True)  # 0 marks an empty slot
            tokens = self._tokens(slot, now)
            self._values[2 * slot + 1] = max(now, self._values[2 * slot + 1])
            if tokens >= cost:
                self._values[2 * slot] = tokens - cost
                return 0.0
            self._values[2 * slot] = tokens
            return (cost - tokens) / self.rate
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)

    def available(self, key: str, now: float) -> float:
        """The tokens `key` could spend now."""
        fd = self._fd
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            slot = self._slot(hash(key) or 1, now, claim=False)
            return self.burst if slot < 0 else self._tokens(slot, now)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)

    def _tokens(self, slot: int, now: float) -> float:
        """The slot's tokens at `now` (under the lock)."""
        tokens = self._values[2 * slot]
        # Another worker may have counted later than this one's `now` (read before the lock):
        # no time has passed then.
        elapsed = now - self._values[2 * slot + 1]
        return min(self.burst, tokens + elapsed * self.rate) if elapsed > 0 else tokens

    def _slot(self, h: int, now: float, *, claim: bool) -> int:
        """The slot of hash `h` (under the lock); if it has none, a new full bucket's, or -1 when not `claim`."""
        hashes, values, rate, burst = self._hashes, self._values, self.rate, self.burst
        start = h & self.mask
        spare = -1
        oldest, oldest_at = start, float("inf")
        for step in range(PROBE):
            slot = (start + step) & self.mask
            found = hashes[slot]
            if found == h:
                return slot
            if found == 0:
                if spare < 0:
                    spare = slot
                break  # slots are never emptied: the key is not further on
            counted_at = values[2 * slot + 1]
            if spare < 0 and values[2 * slot] + (now - counted_at) * rate >= burst:
                spare = slot
            if counted_at < oldest_at:
                oldest, oldest_at = slot, counted_at
        if not claim:
            return -1
        slot = spare if spare >= 0 else oldest
        if hashes[slot] == 0:
            self._taken[0] += 1
        hashes[slot] = h
        values[2 * slot] = burst
        values[2 * slot + 1] = now
        return slot

    def __len__(self) -> int:
        """Slots ever taken (a refilled bucket's slot is reused, not freed)."""
        return int(self._taken[0])

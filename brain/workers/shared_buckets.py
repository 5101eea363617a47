"""Token buckets in memory every worker of the server shares: one budget per key, whichever worker a request reaches.

The API role's request limits (brain.api.limits) are checked on every request, before any
other work, so asking the master over the worker's link (as the auth role's sliding windows
do) would put a process hop on the hot path. Instead the buckets live in a file in the
master's shared directory (`WorkerSlot.shared_dir`, on /dev/shm when there is one), mapped
by every worker: a fixed open-addressing table of `slots` entries, each a key's hash, its
tokens left and when they were counted. One operation holds the table's lock for a few dozen
bytecodes: a process-shared *robust* pthread mutex in the file's header, so that a worker
killed while holding it blocks nobody (the next to lock it is told the owner died, and goes on:
the table is counts, and a count torn by a death only misstates one key's budget). Taken and
released uncontended it is two atomic instructions in user space, called through ctypes with
the GIL held; a `flock` is two system calls that each let go of the GIL, about a tenth of a
cheap request's CPU with three limits (docs/performance.md). Only a lock that must wait lets
go of the GIL. Where the C library has no robust mutexes, the lock is an `flock` on the file.

A key is its `hash()`: every worker is forked from the master and shares its hash seed (a
replacement too), and a 64-bit collision between two keys only merges their budgets. A key is
looked for among `PROBE` slots from where it hashes; a new key takes the first empty one, else
one whose bucket has refilled (the same as no bucket), else the one counted longest ago, so
the table never grows and every operation is bounded, whatever keys a client invents.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import mmap
import os
from collections.abc import Callable
from pathlib import Path

__all__ = ["PROBE", "SharedTokenBuckets"]

# Slots a key may sit in, from where it hashes.
PROBE = 16
# The header: slots ever taken (int64, for /health), whether the mutex was made (int64), the
# mutex (40 bytes on x86-64, 48 on arm64).
_TAKEN, _MADE, _MUTEX, _HEADER = 0, 8, 16, 64
_MUTEX_BYTES = _HEADER - _MUTEX
# Tries of a held lock before waiting for it (each ~0.2 us).
_SPIN = 20
_PTHREAD_PROCESS_SHARED = 1
_PTHREAD_MUTEX_ROBUST = 1


def _pthread() -> tuple[ctypes.PyDLL, ctypes.CDLL] | None:
    """The C library twice: calls that keep the GIL (never wait) and calls that let go of it; None
    without robust mutexes."""
    try:
        keeping, releasing = ctypes.PyDLL(None, use_errno=True), ctypes.CDLL(None, use_errno=True)
        for lib in (keeping, releasing):
            for name in ("pthread_mutex_lock", "pthread_mutex_trylock", "pthread_mutex_unlock", "pthread_mutex_consistent"):
                getattr(lib, name).argtypes = (ctypes.c_void_p,)
        keeping.pthread_mutexattr_setrobust.argtypes = (ctypes.c_void_p, ctypes.c_int)
    except (OSError, AttributeError):
        return None
    return keeping, releasing


_PTHREAD = _pthread()


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
                self._map = mmap.mmap(self._fd, size, mmap.MAP_SHARED)
                self._lock, self._unlock = self._mutex() if _PTHREAD is not None else self._flock()
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        except BaseException:
            os.close(self._fd)
            raise
        view = memoryview(self._map)
        self._taken = view[_TAKEN:_TAKEN + 8].cast("q")
        self._hashes = view[_HEADER:_HEADER + slots * 8].cast("q")
        self._values = view[_HEADER + slots * 8:].cast("d")  # tokens, counted at: two per slot

    def _mutex(self) -> tuple[Callable[[], None], Callable[[], None]]:
        """Lock and unlock of the header's robust mutex, made by the first process (under the flock)."""
        assert _PTHREAD is not None
        keeping, releasing = _PTHREAD
        address = ctypes.addressof((ctypes.c_char * _MUTEX_BYTES).from_buffer(self._map, _MUTEX))
        made = memoryview(self._map)[_MADE:_MADE + 8].cast("q")
        if not made[0]:
            attr = ctypes.create_string_buffer(64)  # a pthread_mutexattr_t is 4 or 8 bytes
            keeping.pthread_mutexattr_init(attr)
            keeping.pthread_mutexattr_setpshared(attr, _PTHREAD_PROCESS_SHARED)
            keeping.pthread_mutexattr_setrobust(attr, _PTHREAD_MUTEX_ROBUST)
            failed = keeping.pthread_mutex_init(ctypes.c_void_p(address), attr)
            keeping.pthread_mutexattr_destroy(attr)
            if failed:
                raise OSError(failed, f"pthread_mutex_init: {os.strerror(failed)}")
            made[0] = 1
        made.release()
        trylock, wait, consistent = keeping.pthread_mutex_trylock, releasing.pthread_mutex_lock, keeping.pthread_mutex_consistent
        unlock = keeping.pthread_mutex_unlock

        def lock() -> None:
            failed = trylock(address)
            if failed == errno.EBUSY:
                # Another worker holds it for a few microseconds, unless the kernel took its CPU
                # away meanwhile: try a little longer before sleeping (a sleep and a wake-up cost
                # more than the hold), then wait without the GIL.
                for _ in range(_SPIN):
                    failed = trylock(address)
                    if failed != errno.EBUSY:
                        break
                else:
                    failed = wait(address)
            if failed == errno.EOWNERDEAD:
                consistent(address)  # its holder died: the lock is ours
            elif failed:
                raise OSError(failed, f"pthread_mutex_lock: {os.strerror(failed)}")

        return lock, lambda: unlock(address)

    def _flock(self) -> tuple[Callable[[], None], Callable[[], None]]:
        """Lock and unlock by `flock` on the file (the kernel drops a dead process's lock)."""
        fd = self._fd
        return lambda: fcntl.flock(fd, fcntl.LOCK_EX), lambda: fcntl.flock(fd, fcntl.LOCK_UN)

    def take(self, key: str, now: float, cost: float = 1.0) -> float:
        """Spend `cost` tokens of `key`: 0 when allowed, else the seconds until they are there."""
        h = hash(key) or 1  # 0 marks an empty slot
        values = self._values
        # Every line under the lock is another worker's wait: the common case (the key in the
        # slot it hashes to) is inline.
        self._lock()
        try:
            slot = h & self.mask
            if self._hashes[slot] != h:
                slot = self._slot(h, now, claim=True)
            tokens, counted_at = values[2 * slot], values[2 * slot + 1]
            # Another worker may have counted later than this one's `now` (read before the
            # lock): no time has passed then.
            if now > counted_at:
                tokens += (now - counted_at) * self.rate
                if tokens > self.burst:
                    tokens = self.burst
                values[2 * slot + 1] = now
            if tokens >= cost:
                values[2 * slot] = tokens - cost
                return 0.0
            values[2 * slot] = tokens
            return (cost - tokens) / self.rate
        finally:
            self._unlock()

    def available(self, key: str, now: float) -> float:
        """The tokens `key` could spend now."""
        self._lock()
        try:
            slot = self._slot(hash(key) or 1, now, claim=False)
            return self.burst if slot < 0 else self._tokens(slot, now)
        finally:
            self._unlock()

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

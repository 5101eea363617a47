"""Converting a page of messages on every core: the mail model's conversion is CPU-bound Python
(MIME parsing, HTML to text, clean text), and one account's sync runs in one thread of one
process, so its initial sync would otherwise convert at the speed of one core, under the GIL
shared with the store writes and the JetStream publisher beside it.

`ConversionPool` converts in worker processes (`[mail] convert_workers`; 0: in the calling
thread; -1: one per core, none on a single core), started on first use with ``spawn`` (forking
a process full of threads is unsafe). Even on two cores, where the workers share the cores with
the server's own threads (the store, the publisher, the event loop), converting beside them
beats converting under their GIL: `make bench` measures it (`--set mail.convert_workers=N`).
Pages too small to be worth the hop are converted in place. A worker exits when the process
that started it is gone, even after a kill -9, so none outlives brain.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import os
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

from brain.mail.provider import convert_inline

__all__ = ["ConversionPool"]

T = TypeVar("T")

log = logging.getLogger("brain.mail")

# Fewer messages than this are converted in place: the round trip would cost more than it saves.
MIN_POOLED = 8
# The workers' nice value (`_start_worker`).
WORKER_NICE = 19


class ConversionPool:
    """Worker processes for `SyncContext.convert`; safe to use from many threads."""

    def __init__(self, workers: int) -> None:
        if workers < 0:
            cores = usable_cores()
            workers = cores if cores > 1 else 0
        self.workers = workers
        self._executor: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()

    def map(self, fn: Callable[..., T], *iterables: Iterable[Any]) -> list[T]:
        """``list(map(fn, *iterables))``, in the workers when worth it; ``fn`` must pickle (a
        module-level function, or a functools.partial of one)."""
        columns = [list(column) for column in iterables]
        count = min((len(c) for c in columns), default=0)
        if self.workers <= 0 or count < MIN_POOLED:
            return convert_inline(fn, *columns)
        executor = self._started()
        chunk = max(1, math.ceil(count / (self.workers * 4)))
        try:
            return list(executor.map(fn, *columns, chunksize=chunk))
        except BrokenProcessPool:
            # A worker died (killed, or it could not read what it was sent): start afresh next
            # time, and convert this page here rather than fail the sync.
            log.exception("mail conversion workers failed; converting in place")
            with self._lock:
                if self._executor is executor:
                    self._executor = None
            executor.shutdown(wait=False, cancel_futures=True)
            return convert_inline(fn, *columns)

    def close(self) -> None:
        """Stop the workers (waiting for what they are converting)."""
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)

    def _started(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._executor is None:
                self._executor = ProcessPoolExecutor(
                    self.workers,
                    mp_context=multiprocessing.get_context("spawn"),
                    initializer=_start_worker,
                    initargs=(os.getpid(),),
                )
            return self._executor


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, which a container or taskset narrows)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _start_worker(parent: int) -> None:
    """In a worker: yield the CPU to the server's own threads, and exit as soon as the process
    that started it is gone (kill -9 included).

    A worker converts the page after the one being stored (the sync reads a page ahead): work
    the store's thread will want next, not now. At nice WORKER_NICE it gives way to that thread
    when it wakes (brain.api.user_store._schedule_as) and to the event loop's requests, and still
    has every CPU they leave idle.
    """
    try:
        os.nice(WORKER_NICE)
    except OSError:  # a hint only
        pass

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, name="brain-convert-parent-watch", daemon=True).start()

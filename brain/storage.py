"""Storage faults: a full, read-only, corrupt, busy or descriptor-starved disk, named once.

SQLite says what went wrong as an error code (`SQLITE_FULL`, `SQLITE_CORRUPT`,
`SQLITE_IOERR_WRITE` ...), the OS as an errno, peewee wraps either, and some codes do not say
enough: a write to a file system remounted read-only is `SQLITE_IOERR_WRITE`, opening a
database without a free descriptor `SQLITE_CANTOPEN`. `classify` is the one place that turns
any of them into a typed `brain.errors.StorageFault`, asking the file system itself when the
code is ambiguous; `brain.web.failure_response` answers every fault that reaches it from
there, so a storage fault is never a bare 500.

`StorageFaults` (one per process, in the stash) counts faults by kind and database (the
metrics), remembers the last one of each database (`/health` stays degraded for a minute after
one) and logs each kind once a minute with what an operator should do. Its `DiskGuard` refuses
event writes while the data directory's file system has less than `server.min_free_bytes`
free, so SQLite does not meet ENOSPC halfway through a checkpoint and auth.db, mail.db and the
NATS store keep room to work. `WatchedDatabase` is peewee's SqliteDatabase (auth.db, mail.db)
raising its faults typed and reporting them.

A built-in plugin of the core: the disk and fault problems on /health, and their metrics.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import resource
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import peewee
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from brain.errors import (
    ADVICE,
    DiskFull,
    NoFileDescriptors,
    ReadOnlyStorage,
    StorageFault,
    StorageIOError,
    StoreBusy,
    StoreCorrupt,
    StoreQuarantined,
    explain,
)
from brain.plugins import hookimpl
from brain.process import Process
from brain.stash import StashKey

__all__ = [
    "DiskGuard", "STORAGE_FAULTS", "StorageFaults", "WatchedDatabase", "classify", "quick_check", "storage_faults",
]

log = logging.getLogger("brain.storage")

# The answers clients get. They name no path and no user: the log has the detail.
DISK_FULL = "the server's disk is full: writes are refused until space is freed (reads still work)"
READ_ONLY = "the server's storage is read-only: writes are refused (reads still work)"
CORRUPT = "the store is damaged and was taken offline"
QUARANTINED = "the store was found damaged and is offline until it is rebuilt"
BUSY = "the store is busy; try again"
NO_DESCRIPTORS = "the server cannot open more files right now; try again"
IO_ERROR = "the server's storage failed; try again later"

# Retry-After of each answer: when trying again may help.
RETRY_DISK_FULL = 30.0
RETRY_BUSY = 1.0
RETRY_NO_DESCRIPTORS = 2.0
RETRY_IO = 5.0


_ERRNO_FAULTS: dict[int, type[StorageFault]] = {
    errno.ENOSPC: DiskFull,
    errno.EDQUOT: DiskFull,
    errno.EROFS: ReadOnlyStorage,
    errno.EMFILE: NoFileDescriptors,
    errno.ENFILE: NoFileDescriptors,
    errno.EIO: StorageIOError,
}
_MESSAGES: dict[type[StorageFault], tuple[str, float | None]] = {
    DiskFull: (DISK_FULL, RETRY_DISK_FULL),
    ReadOnlyStorage: (READ_ONLY, None),
    StoreCorrupt: (CORRUPT, None),
    StoreQuarantined: (QUARANTINED, None),
    StoreBusy: (BUSY, RETRY_BUSY),
    NoFileDescriptors: (NO_DESCRIPTORS, RETRY_NO_DESCRIPTORS),
    StorageIOError: (IO_ERROR, RETRY_IO),
}
# Below this much free space an ambiguous I/O error is taken for a full disk.
_NEARLY_FULL = 1 << 20
# This close to the open-file limit, a failed open is taken for a lack of descriptors.
_DESCRIPTOR_SLACK = 8
# How long a fault keeps /health degraded, and how often each kind is logged per database.
FAULT_MEMORY_SECONDS = 60.0


def fault(kind: type[StorageFault], detail: str = "") -> StorageFault:
    """A fault of this kind with its standard message and Retry-After."""
    message, retry_after = _MESSAGES[kind]
    return kind(message, retry_after=retry_after, detail=detail)


def classify(exc: BaseException, directory: Path | None = None) -> StorageFault | None:
    """The storage fault behind an exception (SQLite's, the OS's, peewee's), or None if it is not one.

    `directory` is where the database lives: asked whether it is read-only or full when SQLite's
    code does not say.
    """
    for cause in _causes(exc):
        if isinstance(cause, StorageFault):
            return cause
        if isinstance(cause, sqlite3.Error):
            found = _from_sqlite(cause, directory)
            if found is not None:
                return found
            # Not a storage code ("cannot rollback" after one): look further along the chain.
        elif isinstance(cause, OSError) and cause.errno in _ERRNO_FAULTS:
            return fault(_ERRNO_FAULTS[cause.errno], f"{cause.__class__.__name__}: {cause}")
    return None


def _causes(exc: BaseException) -> Iterator[BaseException]:
    # peewee re-raises sqlite3's error as its own, carrying the original as args[0].
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo and len(seen) < 8:
        current = todo.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        todo.extend(c for c in (current.__cause__, current.__context__) if c is not None)
        if current.args and isinstance(current.args[0], BaseException):
            todo.append(current.args[0])


def _from_sqlite(exc: sqlite3.Error, directory: Path | None) -> StorageFault | None:
    name = getattr(exc, "sqlite_errorname", "") or ""
    detail = f"{name or exc.__class__.__name__}: {exc}"
    if name == "SQLITE_FULL":
        return fault(DiskFull, detail)
    if name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB")):
        return fault(StoreCorrupt, detail)
    if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
        return fault(StoreBusy, detail)
    if name.startswith(("SQLITE_IOERR", "SQLITE_CANTOPEN", "SQLITE_READONLY")):
        return fault(_file_system_fault(directory), detail)
    return None


def _file_system_fault(directory: Path | None) -> type[StorageFault]:
    """What an ambiguous I/O error most likely was, judging by the file system and the process."""
    if directory is not None:
        try:
            st = os.statvfs(directory)
        except OSError as exc:
            return _ERRNO_FAULTS.get(exc.errno or 0, StorageIOError)
        if st.f_flag & os.ST_RDONLY:
            return ReadOnlyStorage
        if st.f_bavail * st.f_frsize < _NEARLY_FULL:
            return DiskFull
        refused = write_refused(directory)
        if refused is not None:
            return refused
    if out_of_descriptors():
        return NoFileDescriptors
    return StorageIOError


def write_refused(directory: Path) -> type[StorageFault] | None:
    """Why a file cannot be created in directory right now (None: it can), by trying.

    statvfs does not show every read-only file system: ext4 turned read-only by an error
    (errors=remount-ro) keeps its mount flags and refuses writes with EROFS.
    """
    probe = directory / f".brain-write-probe-{os.getpid()}-{threading.get_ident()}"
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600))
        os.unlink(probe)
    except OSError as exc:
        return _ERRNO_FAULTS.get(exc.errno or 0)
    return None


def quick_check(db: sqlite3.Connection) -> str:
    """SQLite's quick_check verdict on an open database: "ok", or what is wrong (one line)."""
    rows = db.execute("PRAGMA quick_check(20)").fetchall()
    return "; ".join(str(row[0]) for row in rows)[:2000]


def read_only_file_system(directory: Path) -> bool:
    """Whether the file system holding directory refuses writes as read-only now (mounted so, or by error)."""
    try:
        if os.statvfs(directory).f_flag & os.ST_RDONLY:
            return True
    except OSError:
        return False
    return write_refused(directory) is ReadOnlyStorage


def out_of_descriptors() -> bool:
    """Whether this process is at (or within a few of) its open-file limit right now.

    Close to it rather than at it: by the time an error is looked into, another thread may
    have closed a descriptor.
    """
    try:
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        used = len(os.listdir("/proc/self/fd"))
    except OSError as exc:
        return exc.errno in (errno.EMFILE, errno.ENFILE)
    return soft != resource.RLIM_INFINITY and used >= soft - _DESCRIPTOR_SLACK


class DiskGuard:
    """Refuses writes while the data directory's file system is read-only or short of its reserve.

    `statvfs` is asked at most every RECHECK_SECONDS while space is plentiful; near the reserve,
    for every write. Between two looks the bytes written are subtracted from the last figure
    (times WRITE_AMPLIFICATION: the WAL, then the checkpoint into the database).

    What the file system does not show yet is subtracted too: the pages each open store's WAL
    holds beyond the end of its database file (`owe`), which its next checkpoint adds to the
    file — up to wal_autocheckpoint's 1000 pages a store, written after the writes that made
    them were admitted (eight stores can owe several MiB between them).
    """

    RECHECK_SECONDS = 0.5
    WRITE_AMPLIFICATION = 3
    # Closer to the reserve than this, every write looks again.
    NEAR = 16 << 20
    # Once a write has been refused for want of room (by the guard or by SQLite), the disk counts
    # as short (/health degraded) until this much beyond the reserve is free again: the room the
    # next writes need is not known, and /health should not flap with every write let in.
    FULL_MARGIN = 1 << 20

    def __init__(self, path: Path, reserve: int) -> None:
        self.path = path
        self.reserve = reserve
        # (free bytes, read-only, monotonic time of the look); replaced whole, read without a lock.
        self._seen: tuple[int, bool, float] = (-1, False, -1e9)
        self._written = 0
        self._suspect_read_only = False
        self._short = False  # a write was refused for want of room and FULL_MARGIN has not come back since
        self._owed_lock = threading.Lock()
        self._owed: dict[str, int] = {}
        self.owed = 0  # the sum of _owed

    def suspect_read_only(self) -> None:
        """A write was refused as read-only: look (and try) again before the next write."""
        self._suspect_read_only = True
        self._seen = (self._seen[0], True, -1e9)

    def met_full(self) -> None:
        """A write was refused for want of room (here or by SQLite): look again before the next
        write, and count the disk as short until FULL_MARGIN beyond the reserve is free."""
        self._seen = (self._seen[0], self._seen[1], -1e9)
        self._short = True

    def owe(self, writer: str, nbytes: int) -> None:
        """`writer` (a store) will write `nbytes` more on its own (a checkpoint); 0 once it has."""
        with self._owed_lock:
            self.owed += nbytes - self._owed.pop(writer, 0)
            if nbytes > 0:
                self._owed[writer] = nbytes

    def look(self) -> tuple[int, bool]:
        """(free bytes, read-only) of the data directory's file system now ((-1, False) if unknown)."""
        try:
            st = os.statvfs(self.path)
        except OSError:
            free, read_only = -1, False
        else:
            free, read_only = st.f_bavail * st.f_frsize, bool(st.f_flag & os.ST_RDONLY)
        if self._suspect_read_only and not read_only:
            # Refused writes with the mount flags saying read-write: try one until it works.
            read_only = write_refused(self.path) is ReadOnlyStorage
            self._suspect_read_only = read_only
        self._seen = (free, read_only, time.monotonic())
        self._written = 0
        return free, read_only

    def check(self, nbytes: int) -> None:
        """Raise DiskFull or ReadOnlyStorage if `nbytes` more must not be written now."""
        free, read_only, at = self._seen
        self._written += nbytes
        estimate = free - self.owed - self._written * self.WRITE_AMPLIFICATION
        if time.monotonic() - at >= self.RECHECK_SECONDS or estimate < self.reserve + self.NEAR:
            free, read_only = self.look()
            estimate = free - self.owed - nbytes * self.WRITE_AMPLIFICATION
        if read_only:
            raise fault(ReadOnlyStorage, f"{self.path} is on a read-only file system")
        if free >= 0 and estimate < self.reserve:
            raise fault(DiskFull, f"{free} bytes free on the file system of {self.path}, {self.owed} of them "
                                  f"owed to the stores' checkpoints: below server.min_free_bytes ({self.reserve}) "
                                  "once this write is in")

    def problems(self) -> list[str]:
        """What /health says about the data directory's file system (fresh look)."""
        free, read_only = self.look()
        if read_only:
            return [f"disk: the data directory's file system is read-only; writes are refused ({ADVICE['read_only']})"]
        room = free - self.owed
        if self._short and room >= self.reserve + self.FULL_MARGIN:
            self._short = False
        if free >= 0 and (room < self.reserve or self._short):
            return [f"disk: {free} bytes free on the data directory's file system ({self.owed} of them owed to "
                    f"the stores' checkpoints), at server.min_free_bytes ({self.reserve}); event writes are "
                    f"refused with 507 ({ADVICE['disk_full']})"]
        return []


class StorageFaults:
    """The process's storage faults: counted by kind and database, remembered, logged with advice."""

    def __init__(self, data_path: Path, min_free_bytes: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.guard = DiskGuard(data_path, min_free_bytes)
        self._clock = clock
        self._lock = threading.Lock()
        self.counts: Counter[tuple[str, str]] = Counter()
        self._last: dict[str, tuple[str, float, str]] = {}  # database -> (kind, when, detail)
        self._logged: dict[tuple[str, str], float] = {}

    def record(self, fault: StorageFault, database: str, *, subject: str = "") -> StorageFault:
        """Count a fault met on `database` ("auth.db", "events.db"...), log it, and return it."""
        fault.recorded = True
        now = self._clock()
        if isinstance(fault, ReadOnlyStorage):
            self.guard.suspect_read_only()
        elif isinstance(fault, DiskFull):
            self.guard.met_full()
        with self._lock:
            self.counts[(fault.kind, database)] += 1
            self._last[database] = (fault.kind, now, fault.detail)
            last_logged = self._logged.get((fault.kind, database), -1e9)
            due = now - last_logged >= FAULT_MEMORY_SECONDS
            if due:
                self._logged[(fault.kind, database)] = now
        if due:
            about = f" ({subject})" if subject else ""
            log.error("storage fault on %s%s: %s", database, about, explain(fault))
        return fault

    def recent(self) -> dict[str, tuple[str, float, str]]:
        """database -> (kind, seconds ago, detail) of each database's last fault within the last minute."""
        now = self._clock()
        with self._lock:
            return {
                db: (kind, now - when, detail)
                for db, (kind, when, detail) in self._last.items()
                if now - when < FAULT_MEMORY_SECONDS
            }

    def typed(self, exc: BaseException) -> StorageFault | None:
        """The storage fault behind an exception that reached the HTTP layer untyped (counted), or None."""
        found = classify(exc, self.guard.path)
        if found is not None and not found.recorded:
            self.record(found, "other")
        return found

    def problems(self) -> list[str]:
        """The disk's state, and each database that met another fault in the last minute."""
        found = self.guard.problems()
        for db, (kind, ago, detail) in sorted(self.recent().items()):
            if kind in ("disk_full", "read_only", "quarantined"):
                continue  # the disk's own state (above) and the stores' quarantine say it, and say when it ends
            found.append(f"{db}: {kind} {ago:.0f}s ago ({detail}); {ADVICE.get(kind, ADVICE['io_error'])}")
        return found

    def figures(self) -> dict[str, Any]:
        """JSON-able figures for /health."""
        free, read_only, _ = self.guard._seen  # noqa: SLF001 - the guard's last look, as problems() just took it
        with self._lock:
            faults = [{"kind": kind, "database": db, "count": n} for (kind, db), n in sorted(self.counts.items())]
        return {"free_bytes": free, "owed_bytes": self.guard.owed, "min_free_bytes": self.guard.reserve,
                "read_only": read_only, "faults": faults}

    def metrics(self) -> list[Metric]:
        """brain_storage_faults_total by kind and database, free space, the reserve, read-only."""
        free, read_only, _ = self.guard._seen  # noqa: SLF001
        if free < 0:
            free, read_only = self.guard.look()
        faults = CounterMetricFamily(
            "brain_storage_faults", "Storage faults met, by kind (disk_full, read_only, corrupt, quarantined, busy, "
            "no_descriptors, io_error) and database.", labels=("kind", "database"))
        with self._lock:
            for (kind, db), n in sorted(self.counts.items()):
                faults.add_metric([kind, db], n)
        return [
            faults,
            GaugeMetricFamily("brain_disk_free_bytes", "Free bytes on the data directory's file system.", value=free),
            GaugeMetricFamily("brain_disk_owed_bytes",
                              "Bytes the open stores' checkpoints will still add to their database files.",
                              value=self.guard.owed),
            GaugeMetricFamily("brain_disk_min_free_bytes",
                              "server.min_free_bytes: below it event writes are refused (507).",
                              value=self.guard.reserve),
            GaugeMetricFamily("brain_disk_read_only", "1 while the data directory's file system is read-only.",
                              value=int(read_only)),
        ]


STORAGE_FAULTS: StashKey[StorageFaults] = StashKey("brain.storage")


def storage_faults(rt: Process) -> StorageFaults:
    """The process's StorageFaults (created on first use)."""
    return rt.stash.setdefault(
        STORAGE_FAULTS, lambda: StorageFaults(rt.settings.data_path, rt.settings.server.min_free_bytes)
    )


class WatchedDatabase(peewee.SqliteDatabase):
    """peewee's SqliteDatabase whose storage faults are raised typed and, once watched, reported."""

    def __init__(self, path: str | Path, *, label: str, **kwargs: Any) -> None:
        super().__init__(str(path), **kwargs)
        self.label = label
        self.directory = Path(path).parent
        self.faults: StorageFaults | None = None

    def watch(self, faults: StorageFaults) -> None:
        """Report faults to the process's StorageFaults from now on."""
        self.faults = faults

    @contextlib.contextmanager
    def _typed(self) -> Iterator[None]:
        try:
            yield
        except (peewee.DatabaseError, sqlite3.Error, OSError) as exc:
            found = classify(exc, self.directory)
            if found is None:
                raise
            if self.faults is not None:
                self.faults.record(found, self.label)
            elif not found.detail.startswith(self.label):
                # Met before the process watches it (opening it at start-up): the detail names it.
                found.detail = f"{self.label}: {found.detail}"
            raise found from exc

    def connect(self, reuse_if_open: bool = False) -> bool:  # noqa: D102 - peewee's
        with self._typed():
            return bool(super().connect(reuse_if_open))

    def execute_sql(self, sql: str, params: Any = None) -> Any:  # noqa: D102 - peewee's
        with self._typed():
            return super().execute_sql(sql, params)

    def begin(self, *args: Any, **kwargs: Any) -> Any:  # noqa: D102 - peewee's
        # atomic("IMMEDIATE") takes the write lock here, past execute_sql: on a read-only file
        # system this is where the write is refused.
        with self._typed():
            return super().begin(*args, **kwargs)

    def commit(self) -> Any:  # noqa: D102 - peewee's
        with self._typed():
            return super().commit()


@hookimpl
def register_health(rt: Process, register: Callable[..., None]) -> None:
    """`storage`: free space, the reserve, read-only, faults by kind; degraded while the disk is short or faulty."""
    faults = storage_faults(rt)
    register("storage", figures=faults.figures, problems=faults.problems)


@hookimpl
def register_metrics(rt: Process, register: Callable[..., None]) -> None:
    """Storage faults by kind and database; free space and the reserve."""
    register("storage", storage_faults(rt).metrics)

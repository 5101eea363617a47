"""Helpers of the fault-injection tests (tests/test_faults*.py and their soak forms; no tests here).

Real faults, not mocks: a small tmpfs that fills up, an ext4 file system on a loop device that
the kernel turns read-only (ext4's `trigger_fs_error`, the path of a real I/O error with
`errors=remount-ro`), pages of a store overwritten with random bytes, a low `ulimit -n`
(`prlimit` on the server process) and a slow fsync (an LD_PRELOAD shim compiled with gcc).
Each needs root and the tools named; a missing capability is a test failure, never a skip.
Every mount is undone in a `finally`, lazily if something still holds it.
"""

from __future__ import annotations

import os
import random
import shutil
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.support import BrainServer, wait_until
from tests.test_reliability_helpers import User


def need(condition: bool, what: str) -> None:
    """Fail (never skip) when the machine lacks what a fault test needs."""
    if not condition:
        pytest.fail(f"fault injection needs {what}; this machine (or CI runner) lacks it", pytrace=False)


def run(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a system command, failing the test with its output if it fails."""
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    if check and proc.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr or proc.stdout}", pytrace=False)
    return proc


def _unmount(path: Path) -> None:
    for _ in range(50):
        if run("umount", str(path), check=False).returncode == 0 or not os.path.ismount(path):
            return
        time.sleep(0.1)
    run("umount", "-l", str(path), check=False)  # something still holds it: detach, never leave it


@contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` mounted on path (created) for the duration; unmounted whatever happens."""
    need(os.geteuid() == 0, "root (to mount a tmpfs)")
    path.mkdir(parents=True, exist_ok=True)
    run("mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path))
    try:
        yield path
    finally:
        _unmount(path)


class Ext4:
    """An ext4 file system in an image file, loop-mounted with errors=remount-ro."""

    def __init__(self, image: Path, mountpoint: Path, size_mb: int) -> None:
        self.image = image
        self.mountpoint = mountpoint
        self.size_mb = size_mb

    def mount(self) -> None:
        run("mount", "-o", "loop,errors=remount-ro", str(self.image), str(self.mountpoint))

    @property
    def device(self) -> str:
        return run("findmnt", "-n", "-o", "SOURCE", str(self.mountpoint)).stdout.strip()

    def fail(self) -> None:
        """Make the kernel meet an ext4 error: with errors=remount-ro it turns the file system read-only
        at once, open files included (what a failing disk does)."""
        trigger = Path("/sys/fs/ext4") / os.path.basename(self.device) / "trigger_fs_error"
        need(trigger.exists(), f"{trigger} (ext4's error trigger)")
        trigger.write_text("brain fault test\n")

        def refused() -> bool:
            try:
                (self.mountpoint / "probe").write_text("x")
            except OSError:
                return True
            return False

        # Newer kernels keep the mount flags and refuse writes (ext4's emergency_ro): try one.
        wait_until(refused, timeout=10, what="the file system to refuse writes")

    def repair(self) -> None:
        """What an operator does once nothing uses it: unmount, fsck, mount again read-write."""
        _unmount(self.mountpoint)
        run("e2fsck", "-f", "-y", str(self.image), check=False)  # exit 1: errors corrected
        self.mount()


@contextmanager
def ext4(path: Path, size_mb: int = 64) -> Iterator[Ext4]:
    """A loop-mounted ext4 file system on path (created) for the duration; unmounted whatever happens."""
    need(os.geteuid() == 0, "root (to loop-mount a file system)")
    for tool in ("mkfs.ext4", "e2fsck", "losetup", "findmnt"):
        need(shutil.which(tool) is not None, tool)
    path.mkdir(parents=True, exist_ok=True)
    image = path.parent / f"{path.name}.ext4"
    with image.open("wb") as fh:
        fh.truncate(size_mb << 20)
    run("mkfs.ext4", "-q", "-F", str(image))
    fs = Ext4(image, path, size_mb)
    fs.mount()
    try:
        yield fs
    finally:
        _unmount(path)
        image.unlink(missing_ok=True)


# -- damage -----------------------------------------------------------------------------------


def page_size(path: Path) -> int:
    """The page size recorded in an SQLite file's header."""
    with path.open("rb") as fh:
        header = fh.read(100)
    size = int.from_bytes(header[16:18], "big")
    return 65536 if size == 1 else size


def corrupt_pages(path: Path, rng: random.Random, pages: int = 4, *, keep_header: bool = True) -> list[int]:
    """Overwrite `pages` random pages of an SQLite file with random bytes; their numbers (1-based).

    With keep_header, page 1 (the header and schema) is spared, so the damage is found by
    reading the data, not by opening the file.
    """
    size = page_size(path)
    count = path.stat().st_size // size
    first = 2 if keep_header else 1
    need(count >= first + pages, f"a store of at least {first + pages} pages to damage ({path} has {count})")
    chosen = sorted(rng.sample(range(first, count + 1), pages))
    with path.open("r+b") as fh:
        for number in chosen:
            fh.seek((number - 1) * size)
            fh.write(rng.randbytes(size))
        fh.flush()
        os.fsync(fh.fileno())
    return chosen


# -- writers ------------------------------------------------------------------------------------


@dataclass
class Acked:
    """What the server acknowledged to one user: id -> (type, data, created_at)."""

    events: dict[int, tuple[str, Any, str]] = field(default_factory=dict)


class FaultWriters:
    """One thread per user posting events until stopped; every answer is sorted into what it means.

    Acknowledged events (201) are remembered event by event; every other status is counted
    with its body, so a test can check that a fault was answered as promised (and never 500).
    """

    def __init__(self, server: BrainServer, users: list[User], *, size: int = 2000, pause: float = 0.0) -> None:
        self.server = server
        self.users = users
        self.size = size
        self.pause = pause
        self.acked: dict[str, Acked] = {u.id: Acked() for u in users}
        self.answers: list[tuple[str, int, dict[str, Any], dict[str, str]]] = []
        # (user id, sent, answered) of every request, on time.monotonic's clock (CLOCK_MONOTONIC).
        self.timings: list[tuple[str, float, float]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> FaultWriters:
        for user in self.users:
            t = threading.Thread(target=self._run, args=(user,), daemon=True, name=f"writer-{user.id}")
            t.start()
            self._threads.append(t)
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=60)
            assert not t.is_alive(), f"{t.name} did not stop"
        self._threads.clear()

    def post(self, user: User, session: requests.Session | None = None, n: int = 0) -> requests.Response | None:
        """One write of `size` bytes for user; None if the connection failed."""
        data = {"n": n, "owner": user.id, "pad": "x" * self.size}
        started = time.monotonic()
        try:
            r = (session or requests).post(f"{self.server.api_url}/events", json={"type": "fault.write", "data": data},
                                           headers=user.headers, timeout=30)
        except requests.RequestException:
            return None
        with self._lock:
            self.timings.append((user.id, started, time.monotonic()))
        self.note(user, r)
        return r

    def note(self, user: User, r: requests.Response) -> None:
        """Remember an answer (and, for a 201, the acknowledged event)."""
        try:
            body = r.json()
        except ValueError:
            body = {"raw": r.text[:200]}
        with self._lock:
            self.answers.append((user.id, r.status_code, body, dict(r.headers)))
            if r.status_code == 201:
                self.acked[user.id].events[body["id"]] = (body["type"], body["data"], body["created_at"])

    def _run(self, user: User) -> None:
        session = requests.Session()
        n = 0
        while not self._stop.is_set():
            n += 1
            r = self.post(user, session, n)
            if r is None or r.status_code != 201:
                time.sleep(0.05)
            elif self.pause:
                time.sleep(self.pause)

    def statuses(self, user_id: str | None = None) -> dict[int, int]:
        """How often each status was answered (to one user, or to all)."""
        with self._lock:
            out: dict[int, int] = {}
            for uid, status, _, _ in self.answers:
                if user_id is None or uid == user_id:
                    out[status] = out.get(status, 0) + 1
            return out

    def of_status(self, status: int) -> list[tuple[str, dict[str, Any], dict[str, str]]]:
        with self._lock:
            return [(uid, body, headers) for uid, s, body, headers in self.answers if s == status]

    def count(self) -> int:
        with self._lock:
            return sum(len(a.events) for a in self.acked.values())


def stored_events(server: BrainServer, user: User) -> dict[int, tuple[str, Any, str]]:
    """Every event of the user as GET /events returns it: id -> (type, data, created_at)."""
    out: dict[int, tuple[str, Any, str]] = {}
    params: dict[str, Any] = {"limit": 1000}
    while True:
        r = requests.get(f"{server.api_url}/events", params=params, headers=user.headers, timeout=30)
        assert r.status_code == 200, r.text
        page = r.json()
        for e in page["events"]:
            out[e["id"]] = (e["type"], e["data"], e["created_at"])
        if not page["next_cursor"]:
            return out
        params["cursor"] = page["next_cursor"]


def lost(acked: Acked, stored: dict[int, tuple[str, Any, str]]) -> list[str]:
    """Acknowledged events missing from (or different in) what is stored."""
    return [f"event {i}: acknowledged {v!r:.80}, stored {stored.get(i)!r:.80}"
            for i, v in sorted(acked.events.items()) if stored.get(i) != v]


def store_rows(path: Path) -> dict[int, tuple[str, str, str, str | None]]:
    """Every row of an events.db, read directly: id -> (type, data text, created_at, key)."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return {row[0]: tuple(row[1:]) for row in db.execute("SELECT id, type, data, created_at, key FROM events")}
    finally:
        db.close()


# -- a slow disk --------------------------------------------------------------------------------

SLOW_FSYNC_C = r"""
/* LD_PRELOAD shim: fsync and fdatasync of files whose path contains $SLOW_FSYNC_MATCH stall for
   $SLOW_FSYNC_MS milliseconds first; each stall is appended to $SLOW_FSYNC_LOG as
   "start end" in CLOCK_MONOTONIC seconds. Everything else goes straight to libc. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static int matches(int fd) {
    const char *match = getenv("SLOW_FSYNC_MATCH");
    char link[64], path[4096];
    ssize_t n;
    if (!match || !*match) return 0;
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    n = readlink(link, path, sizeof path - 1);
    if (n < 0) return 0;
    path[n] = 0;
    return strstr(path, match) != NULL;
}

static void stall(void) {
    const char *ms = getenv("SLOW_FSYNC_MS"), *log = getenv("SLOW_FSYNC_LOG");
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    usleep((useconds_t)(ms ? atoi(ms) : 1000) * 1000);
    clock_gettime(CLOCK_MONOTONIC, &b);
    if (log) {
        char line[96];
        int f = open(log, O_WRONLY | O_APPEND | O_CREAT, 0600), len;
        if (f < 0) return;
        len = snprintf(line, sizeof line, "%ld.%09ld %ld.%09ld\n", (long)a.tv_sec, a.tv_nsec, (long)b.tv_sec, b.tv_nsec);
        if (write(f, line, len) < 0) {}
        close(f);
    }
}

int fsync(int fd) {
    static int (*real)(int);
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    if (matches(fd)) stall();
    return real(fd);
}

int fdatasync(int fd) {
    static int (*real)(int);
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    if (matches(fd)) stall();
    return real(fd);
}
"""


def slow_fsync_shim(directory: Path) -> Path:
    """The LD_PRELOAD shim above, compiled with gcc (a real stall inside the real fsync call)."""
    need(shutil.which("gcc") is not None, "gcc (to build the slow-fsync LD_PRELOAD shim)")
    directory.mkdir(parents=True, exist_ok=True)  # the soak passes a fresh subdirectory
    source = directory / "slow_fsync.c"
    source.write_text(SLOW_FSYNC_C)
    library = directory / "slow_fsync.so"
    run("gcc", "-O2", "-shared", "-fPIC", "-o", str(library), str(source), "-ldl")
    return library


def stalls(log: Path) -> list[tuple[float, float]]:
    """The (start, end) of every stall the shim logged."""
    if not log.exists():
        return []
    return [(float(a), float(b)) for a, b in (line.split() for line in log.read_text().splitlines() if line.strip())]


# -- a clock that jumps -------------------------------------------------------------------------

STEP_CLOCK_C = r"""
/* LD_PRELOAD shim: the wall clock (CLOCK_REALTIME and its coarse form, gettimeofday, time) runs
   $STEP_CLOCK_FILE's whole seconds off the real one; the file is read again at most every 50 ms,
   so writing a new offset into it steps the process's clock (what NTP or `date -s` does). The
   monotonic clocks are left alone. libfaketime does the same but breaks CPython's time.sleep
   (its clock_nanosleep answers EINVAL) when told to leave CLOCK_MONOTONIC alone. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/time.h>
#include <time.h>

static int (*real_clock_gettime)(clockid_t, struct timespec *);
static long offset_s, checked_ms = -1000000;

static long offset(void) {
    struct timespec now;
    long ms;
    real_clock_gettime(CLOCK_MONOTONIC, &now);
    ms = (long)now.tv_sec * 1000 + now.tv_nsec / 1000000;
    if (ms - __atomic_load_n(&checked_ms, __ATOMIC_RELAXED) >= 50) {
        const char *path = getenv("STEP_CLOCK_FILE");
        FILE *f = path ? fopen(path, "r") : NULL;
        long value = 0;
        if (f) {
            if (fscanf(f, "%ld", &value) == 1) __atomic_store_n(&offset_s, value, __ATOMIC_RELAXED);
            fclose(f);
        }
        __atomic_store_n(&checked_ms, ms, __ATOMIC_RELAXED);
    }
    return __atomic_load_n(&offset_s, __ATOMIC_RELAXED);
}

int clock_gettime(clockid_t clock, struct timespec *ts) {
    int rc;
    if (!real_clock_gettime) real_clock_gettime = dlsym(RTLD_NEXT, "clock_gettime");
    rc = real_clock_gettime(clock, ts);
    if (rc == 0 && (clock == CLOCK_REALTIME || clock == CLOCK_REALTIME_COARSE)) ts->tv_sec += offset();
    return rc;
}

int gettimeofday(struct timeval *tv, void *tz) {
    struct timespec ts;
    int rc = clock_gettime(CLOCK_REALTIME, &ts);
    (void)tz;
    if (rc == 0 && tv) { tv->tv_sec = ts.tv_sec; tv->tv_usec = ts.tv_nsec / 1000; }
    return rc;
}

time_t time(time_t *out) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    if (out) *out = ts.tv_sec;
    return ts.tv_sec;
}
"""


class SteppedClock:
    """The wall clock of the processes started with `env`, stepped at will (STEP_CLOCK_C above)."""

    def __init__(self, library: Path, offset_file: Path) -> None:
        self.offset_file = offset_file
        self.env = {"LD_PRELOAD": str(library), "STEP_CLOCK_FILE": str(offset_file)}
        self.step_to(0)

    def step_to(self, offset_s: int) -> None:
        """From now on the processes' wall clock reads offset_s seconds off the real one."""
        self.offset_file.write_text(f"{offset_s}\n")
        # The shim reads the file every 50 ms; past a second boundary, a JWT minted now differs
        # from one minted before (iat has whole seconds), so no verifier cache answers for it.
        time.sleep(1.1)


def stepped_clock(directory: Path, name: str) -> SteppedClock:
    """A clock shim (compiled with gcc) and its offset file, both in directory."""
    need(shutil.which("gcc") is not None, "gcc (to build the clock-stepping LD_PRELOAD shim)")
    library = directory / "step_clock.so"
    if not library.exists():
        source = directory / "step_clock.c"
        source.write_text(STEP_CLOCK_C)
        run("gcc", "-O2", "-shared", "-fPIC", "-o", str(library), str(source), "-ldl")
    return SteppedClock(library, directory / f"{name}.clock")

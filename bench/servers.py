"""The processes under measurement: the real `brain serve`, the bare baseline, and /proc readings.

brain runs through `tests.support.BrainServer` (ports, data dir, config TOML, readiness), with
the settings a benchmark needs layered over brain's defaults: production-strength argon2id,
auth rate limits lifted (every request comes from 127.0.0.1), tokens that outlive a long run.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.baseline import READY_LINE
from tests.support import METRICS_TOKEN, REPO, BrainServer, free_port

# OWASP's minimum for argon2id, which is also brain's default: the sign-up/sign-in figures
# must be taken at these (BrainServer's own defaults are fast test parameters).
PRODUCTION_ARGON2 = {"argon2_memory_kib": 19456, "argon2_time_cost": 2}
FAST_ARGON2 = {"argon2_memory_kib": 1024, "argon2_time_cost": 1}

_CLK_TCK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def bench_config(
    *, argon2: Mapping[str, int] = PRODUCTION_ARGON2, extra: Mapping[str, Mapping[str, Any]] | None = None
) -> dict[str, dict[str, Any]]:
    """brain settings for a benchmark run (everything not named here stays at brain's default)."""
    config: dict[str, dict[str, Any]] = {
        "auth": {
            **argon2,
            # One client address sends everything; the limits exist for attackers, not for us.
            "rate_limit_ip_per_minute": 1_000_000_000,
            "rate_limit_account_failures": 1_000_000_000,
            "jwt_ttl_seconds": 4 * 3600,
        },
        # /metrics off as by default (no measuring middleware); the token opens /health?detail=1.
        "metrics": {"enabled": False, "token": METRICS_TOKEN},
        # The API's request limits stay on (their cost is part of every figure) but out of reach.
        "api": {"rate_limit_user_per_second": 1e9, "rate_limit_ip_per_second": 1e9},
    }
    for section, values in (extra or {}).items():
        config.setdefault(section, {}).update(values)
    return config


def detail_headers(server: BrainServer) -> dict[str, str]:
    """The header that opens /health?detail=1 of a server started with bench_config."""
    return {"Authorization": f"Bearer {server.config['metrics']['token']}"}


def wait_published(server: BrainServer, timeout: float = 60.0) -> None:
    """Wait until every committed event is in JetStream (the outbox drained): a timing taken
    right after a seeding would otherwise measure the publishing too."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        nats = server.health()["nats"]
        if not nats.get("queued") and not nats.get("in_flight"):
            return
        time.sleep(0.2)


def start_brain(
    workdir: Path,
    *,
    config: Mapping[str, Mapping[str, Any]],
    roles: str = "auth,api",
    env: Mapping[str, str] | None = None,
    timeout: float = 60.0,
) -> BrainServer:
    """Start `brain serve` with this config and wait until it is ready."""
    server = BrainServer(workdir, config=config, roles=roles, env=env)
    try:
        server.start(timeout=timeout)
    except BaseException:
        server.close()
        raise
    return server


class BaselineServer:
    """The bare aiohttp baseline (`bench.baseline`) as its own process."""

    def __init__(self, floor_dir: str | None = None) -> None:
        self.port = free_port()
        self.floor_dir = floor_dir
        self.proc: subprocess.Popen[str] | None = None

    def start(self, timeout: float = 20.0) -> BaselineServer:
        """Start it and wait for its ready line."""
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.baseline", "http", "--port", str(self.port),
             *(["--floor", self.floor_dir] if self.floor_dir else [])],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if READY_LINE in line:
                return self
            if not line and self.proc.poll() is not None:
                break
        self.stop()
        raise RuntimeError("the baseline server did not start")

    @property
    def pid(self) -> int:
        """Its process id."""
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> None:
        """Stop it (SIGTERM, then SIGKILL if it hangs)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> BaselineServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass(frozen=True)
class ProcSample:
    """One reading of a process from /proc."""

    cpu_seconds: float  # user + system time of all its threads
    rss_bytes: int
    threads: int
    open_fds: int
    at: float  # time.monotonic()


def proc_sample(pid: int) -> ProcSample:
    """Read /proc/<pid>/stat, statm, status and fd/ now."""
    base = Path(f"/proc/{pid}")
    stat = (base / "stat").read_text()
    # Fields after the command name (which may contain spaces) start at field 3 (state).
    fields = stat[stat.rindex(")") + 2:].split()
    utime, stime = int(fields[11]), int(fields[12])
    rss_pages = int((base / "statm").read_text().split()[1])
    threads = 0
    for line in (base / "status").read_text().splitlines():
        if line.startswith("Threads:"):
            threads = int(line.split()[1])
            break
    fds = len(os.listdir(base / "fd"))
    return ProcSample(
        cpu_seconds=(utime + stime) / _CLK_TCK,
        rss_bytes=rss_pages * _PAGE,
        threads=threads,
        open_fds=fds,
        at=time.monotonic(),
    )


def tree_cpu_seconds(pid: int) -> dict[int, float]:
    """CPU seconds (user + system) of ``pid`` and of every live process descended from it, by
    pid: brain's conversion workers and its embedded NATS server count with it."""
    parents: dict[int, int] = {}
    cpu: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue  # gone meanwhile
        fields = stat[stat.rindex(")") + 2:].split()
        parents[int(entry)] = int(fields[1])
        cpu[int(entry)] = (int(fields[11]) + int(fields[12])) / _CLK_TCK
    tree = {pid}
    grew = True
    while grew:
        grew = False
        for child, parent in parents.items():
            if parent in tree and child not in tree:
                tree.add(child)
                grew = True
    return {p: cpu[p] for p in tree if p in cpu}


def tree_cpu_used(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds a process tree used between two `tree_cpu_seconds` samples (a process
    started meanwhile counts from zero)."""
    return sum(seconds - before.get(pid, 0.0) for pid, seconds in after.items())


def cpu_utilisation(before: ProcSample, after: ProcSample) -> float:
    """Process CPU time over wall time between two samples (2.0 = both cores of this box busy)."""
    wall = after.at - before.at
    return (after.cpu_seconds - before.cpu_seconds) / wall if wall > 0 else 0.0

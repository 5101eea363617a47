"""Throughput with concurrent clients: brain's endpoints beside their baselines, same run.

Cases run interleaved (every case once, then every case again, ...) so a burst of noise from
the rest of the machine lands on brain and baseline alike; each figure is the median of its
runs. Sign-in under 16 clients also reads the server's CPU time from /proc to show whether
hashing keeps both cores busy, beside an argon2id-only baseline process.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from bench.load import LoadResult, Req, run_wrk
from bench.servers import cpu_utilisation, proc_sample
from tests.support import REPO


@dataclass
class Case:
    """One load to apply, repeatedly."""

    key: str
    port: int
    requests: Sequence[Req]
    connections: int
    pid: int | None = None  # the server's pid, to read its CPU time around each run
    results: list[LoadResult] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    error: str | None = None

    def run(self, duration: float) -> None:
        """One run (a case that failed once stays failed: its figure is not trustworthy)."""
        if self.error is not None:
            return
        before = proc_sample(self.pid) if self.pid else None
        try:
            result = run_wrk(self.port, self.requests, connections=self.connections, duration=duration)
        except Exception as exc:  # noqa: BLE001 - reported as "not measured (reason)"
            self.error = str(exc)
            return
        if before is not None and self.pid:
            self.cpu.append(cpu_utilisation(before, proc_sample(self.pid)))
        self.results.append(result)

    @property
    def rates(self) -> list[float]:
        """Requests per second of each run."""
        return [r.rps for r in self.results]


def run_interleaved(cases: Sequence[Case], *, repeats: int, duration: float, warmup: float = 0.0,
                    progress: Callable[[str], None] = lambda _m: None) -> None:
    """Run every case `repeats` times, round-robin, after an optional warm-up run of each."""
    if warmup > 0:
        for case in cases:
            progress(f"warm-up {case.key}")
            case.run(warmup)
            case.results.clear()
            case.cpu.clear()
    for r in range(repeats):
        for case in cases:
            progress(f"run {r + 1}/{repeats} {case.key}")
            case.run(duration)


def argon2_baseline(
    *, seconds: float, threads: int, memory_kib: int, time_cost: int, parallelism: int
) -> tuple[float, float]:
    """(argon2id verifications/s, its CPU/wall) on `threads` threads, in a process of its own."""
    proc = subprocess.run(
        [sys.executable, "-m", "bench.baseline", "argon2", "--seconds", str(seconds), "--threads", str(threads),
         "--memory-kib", str(memory_kib), "--time-cost", str(time_cost), "--parallelism", str(parallelism)],
        cwd=REPO, capture_output=True, text=True, timeout=seconds + 60, check=True,
    )
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    return float(result["verifications_per_second"]), float(result["cpu_utilisation"])


def median_cpu(case: Case) -> float | None:
    """The median CPU utilisation over the case's runs."""
    return statistics.median(case.cpu) if case.cpu else None

"""Load generation with Debian's `wrk`: pre-built request lists, bounded runs, JSON summaries.

The harness writes every request a run may send (method, path, bearer token, body) into a file
that `bench/lua/requests.lua` rotates over, so tokens are spread over many users and each POST
carries a real body. A run with any socket or HTTP error (wrk counts status >= 400) is not a
figure: it raises `LoadError`, and the caller reports the measurement as not measured.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

LUA_SCRIPT = Path(__file__).resolve().parent / "lua" / "requests.lua"
_SUMMARY_MARK = "BENCH-JSON "


class LoadError(RuntimeError):
    """A load run that cannot be used as a figure."""


class Req(NamedTuple):
    """One request in a load run's rotation."""

    method: str
    path: str
    authorization: str = ""
    body: Any = None  # JSON-able, sent as application/json

    def line(self) -> str:
        """The tab-separated line `requests.lua` reads."""
        body = "" if self.body is None else json.dumps(self.body, separators=(",", ":"))
        for field in (self.method, self.path, self.authorization, body):
            if "\t" in field or "\n" in field:
                raise ValueError(f"request field contains a tab or newline: {field[:40]!r}")
        return "\t".join((self.method, self.path, self.authorization, body))


@dataclass(frozen=True)
class LoadResult:
    """What one wrk run measured."""

    rps: float
    requests: int
    seconds: float
    latency_p50_ms: float
    latency_p99_ms: float
    started: float  # time.monotonic() around the run, for CPU accounting
    ended: float


def wrk_available() -> str | None:
    """The path of wrk, or None."""
    return shutil.which("wrk")


def run_wrk(
    port: int,
    requests: Sequence[Req] | Iterable[Req],
    *,
    connections: int,
    duration: float,
    threads: int = 1,
    timeout: float = 10.0,
) -> LoadResult:
    """One bounded wrk run against 127.0.0.1:port rotating over requests; LoadError on any error."""
    wrk = wrk_available()
    if wrk is None:
        raise LoadError("wrk is not installed (apt-get install wrk)")
    with tempfile.NamedTemporaryFile("w", prefix="bench-requests-", suffix=".tsv", delete=False) as fh:
        count = 0
        for req in requests:
            fh.write(req.line() + "\n")
            count += 1
        path = Path(fh.name)
    if count == 0:
        path.unlink()
        raise LoadError("no requests to send")
    seconds = max(1, round(duration))
    cmd = [
        wrk, f"-t{threads}", f"-c{connections}", f"-d{seconds}s", f"--timeout={int(timeout)}s",
        "-s", str(LUA_SCRIPT), f"http://127.0.0.1:{port}/", "--", str(path),
    ]
    try:
        started = time.monotonic()
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + timeout + 30)
        ended = time.monotonic()
    except subprocess.TimeoutExpired:
        raise LoadError(f"wrk did not finish within {seconds + timeout + 30}s") from None
    finally:
        path.unlink(missing_ok=True)
    summary = _summary(proc)
    errors = {k: v for k, v in summary["errors"].items() if v}
    if errors:
        raise LoadError(f"wrk saw errors {errors} in {summary['requests']} requests (status = HTTP >= 400)")
    if summary["requests"] == 0:
        raise LoadError("wrk completed no request")
    run_seconds = summary["duration_us"] / 1e6
    return LoadResult(
        rps=summary["requests"] / run_seconds,
        requests=summary["requests"],
        seconds=run_seconds,
        latency_p50_ms=summary["latency_us"]["p50"] / 1000,
        latency_p99_ms=summary["latency_us"]["p99"] / 1000,
        started=started,
        ended=ended,
    )


def _summary(proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    for line in proc.stdout.splitlines():
        if line.startswith(_SUMMARY_MARK):
            return json.loads(line[len(_SUMMARY_MARK):])
    tail = (proc.stderr or proc.stdout).strip()[-400:]
    raise LoadError(f"wrk exited {proc.returncode} without a summary: {tail}")

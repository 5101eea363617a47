"""Shared fixtures: a running brain server process per test (or per module).

Also a session-end check: every nats-server or dovecot the suite started (recognised by the
session's temporary directory in its command line, so processes of other suites on the same
machine are never looked at; under pytest-xdist the controller's, which holds every worker's)
must be gone when the suite ends; a leftover one fails the run and is then stopped, so it does
not outlive the suite.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import BrainServer

# Programs the suite starts as processes of their own (brain itself is stopped by its fixtures).
_WATCHED_PROGRAMS = (b"nats-server", b"dovecot")


def leftover_processes(marker: str) -> dict[int, str]:
    """pid -> command line of each watched program whose command line mentions `marker`."""
    found: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue  # exited meanwhile, or not ours to read
        if argv and any(p in Path(argv[0].decode(errors="replace")).name.encode() for p in _WATCHED_PROGRAMS):
            line = b" ".join(argv).decode(errors="replace")
            if marker in line:
                found[int(entry.name)] = line
    return found


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the run if a nats-server or dovecot started by this session is still running."""
    if hasattr(session.config, "workerinput"):
        # An xdist worker: its temp dir lies under the controller's, whose check (once every
        # worker has finished) sees the worker's processes too and decides the run's outcome.
        return
    factory = getattr(session.config, "_tmp_path_factory", None)
    if factory is None:
        return
    # With the separator: pytest-4's marker must not match a process of pytest-41.
    marker = f"{factory.getbasetemp()}{os.sep}"
    deadline = time.monotonic() + 5  # a process told to stop a moment ago may still be exiting
    leftovers = leftover_processes(marker)
    while leftovers and time.monotonic() < deadline:
        time.sleep(0.1)
        leftovers = leftover_processes(marker)
    if not leftovers:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    lines = [f"  pid {pid}: {cmd}" for pid, cmd in sorted(leftovers.items())]
    message = "processes started by the suite were still running at its end (now stopped):\n" + "\n".join(lines)
    if reporter is not None:
        reporter.write_line("\n" + message, red=True)
    for pid in leftovers:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture
def brain_server(tmp_path: Path) -> Iterator[BrainServer]:
    """A started brain (both roles, embedded NATS) in a fresh data dir; stopped afterwards."""
    server = BrainServer(tmp_path / "brain")
    with server:
        yield server


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator[type]:
    """Factory for servers a test configures itself; all are stopped afterwards."""
    made: list[BrainServer] = []

    def factory(name: str = "brain", **kwargs: object) -> BrainServer:
        server = BrainServer(tmp_path / name, **kwargs)  # type: ignore[arg-type]
        made.append(server)
        return server

    try:
        yield factory  # type: ignore[misc]
    finally:
        for server in made:
            server.close()

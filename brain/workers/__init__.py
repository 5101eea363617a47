"""Several worker processes behind each port: `brain serve --workers N` (docs/workers.md).

A small master process (`brain.workers.master`) binds the listening sockets, runs the embedded
nats-server, forks N workers (each a whole `brain.runtime.Runtime`: its own actor tree and
event loop), restarts a worker that dies and stops them all on SIGTERM/SIGINT. The master and
its workers talk over one Unix socket pair per worker (`brain.workers.hub`, `brain.workers.peers`):
shared rate limits, /health and /metrics for the whole server, and what every worker must hear
at once (a deletion, a revoked API key).

`WorkerSlot` is what a process knows of its place: `rt.worker` (a single process is worker 1
of 1). Work that must happen once per server either runs in the primary worker (`primary`) or is
owned through a lease (brain.leases).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from brain.config import Settings

__all__ = ["SINGLE", "WorkerSlot", "worker_count"]


@dataclass(frozen=True)
class WorkerSlot:
    """Which of the server's worker processes this one is."""

    index: int = 1
    count: int = 1
    # The embedded nats-server the master runs for its workers ("" when it runs none).
    embedded_nats_url: str = ""
    # A directory the master made for this run, where workers keep what they share in memory
    # (brain.workers.shared_buckets); "" in a single process.
    shared_dir: str = ""

    @property
    def primary(self) -> bool:
        """Whether this process does the once-per-server duties (key rotation, sweeps, the control socket)."""
        return self.index == 1

    @property
    def several(self) -> bool:
        """Whether other worker processes share the ports (there is a master)."""
        return self.count > 1


SINGLE = WorkerSlot()


def worker_count(settings: Settings) -> int:
    """How many workers `server.workers` asks for (0: one per CPU)."""
    return settings.server.workers or os.cpu_count() or 1

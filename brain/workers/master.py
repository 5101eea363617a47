"""`brain serve`: one process, or a master and N worker processes behind the same ports.

With `server.workers` (`--workers`) at 1 the runtime serves in this very process, as it always
did. With more, this process becomes the master (docs/workers.md):

- it binds every listener once per worker with `SO_REUSEPORT` (the kernel spreads connections
  evenly over the workers' sockets; one shared socket let the first worker to wake take most of
  them) and keeps them: a dead worker's socket stays open, so connections that reach it wait for
  its replacement instead of being reset;
- it runs the embedded nats-server (when `nats.url` is empty) for all its workers;
- it forks the workers from itself, with every module already imported, so a replacement is
  serving within a second or two. It therefore never starts a thread or an event loop: its own
  loop is `selectors` over the workers' links (brain.workers.hub) and a signal pipe. Worker 1
  (the primary) starts first and the others once it serves: it creates what a fresh data
  directory lacks (databases, the signing key), which SQLite does not let two processes do at
  once;
- a worker that dies is restarted at once; more than `server.worker_max_restarts` restarts
  within `server.worker_restart_window_seconds` (an OTP supervisor's intensity) and the master
  stops everything and exits 1. A worker that dies before it ever served is a start-up error:
  the master stops at once with its exit code;
- SIGTERM or SIGINT: every worker gets SIGTERM and stops gracefully (in-flight requests get half
  of `server.shutdown_timeout`, the actor tree the rest); what still runs when the timeout is up
  is killed; then NATS stops.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import logging
import os
import selectors
import shutil
import signal
import socket
import tempfile
import threading
import time
from typing import Any, NoReturn

import brain
from brain.commands import settings_from_args
from brain.config import Settings, server_secret
from brain.errors import BrainError
from brain.files import secure_data_dir
from brain.logs import setup_logging
from brain.nats_auth import embedded_credential
from brain.nats_embedded import NatsServer, free_port, store_dir_for
from brain.plugins.manager import PluginManager, load_plugins
from brain.redact import redact_url
from brain.runtime import Runtime, bind_sockets
from brain.workers import WorkerSlot, worker_count
from brain.workers.hub import Hub

__all__ = ["Master", "serve_command"]

log = logging.getLogger("brain.master")

# How often the master looks at its children when nothing else wakes it.
_TICK_S = 0.5


def serve_command(args: argparse.Namespace) -> int:
    """`brain serve`: load the plugins, bind their listeners, serve until asked to stop."""
    settings = settings_from_args(args)
    count = worker_count(settings)
    setup_logging(settings.log.format, settings.log.level, worker="master" if count > 1 else "")
    pm = load_plugins(settings.plugins.enabled)
    if count > 1:
        return Master(settings, pm, count).run()
    settings, [sockets] = bind_sockets(settings, pm)
    runtime = Runtime(settings, plugin_manager=pm)
    log.info(
        "starting brain %s: roles %s, data %s, nats %s",
        brain.__version__, ",".join(settings.server.roles), settings.data_path,
        redact_url(settings.nats.url) or "embedded",
    )
    return asyncio.run(runtime.serve(sockets))


class Master:
    """Forks, watches and stops the workers (see the module docstring)."""

    def __init__(self, settings: Settings, pm: PluginManager, count: int) -> None:
        self.settings = settings
        self.pm = pm
        self.count = count
        self.selector = selectors.DefaultSelector()
        self.hub = Hub(self.selector, on_ready=self._on_ready, figures=self.figures)
        self.sockets: list[dict[str, socket.socket]] = []
        self.nats: NatsServer | None = None
        self.pids: dict[int, int] = {}  # worker index -> pid
        self.serving: set[int] = set()  # workers whose current process serves
        self.ever_served: set[int] = set()
        self.restarts: collections.deque[float] = collections.deque()
        self.total_restarts = 0
        self.started_at = time.time()
        self.exit_code = 0
        self.stopping = False
        self._deadline = 0.0
        self._killed = False
        self._announced = False
        self._signalled: int | None = None
        self._wake_r, self._wake_w = os.pipe()
        self.shared_dir = ""

    # -- running ------------------------------------------------------------------------------

    def run(self) -> int:
        """Start NATS and the workers, watch them until stopped; the exit code."""
        data = self.settings.data_path
        secure_data_dir(data)
        server_secret(self.settings)  # made once here, not raced for by the workers
        self.settings, self.sockets = bind_sockets(self.settings, self.pm, copies=self.count)
        # What the workers share in memory (the API's request limits): in RAM where there is a
        # /dev/shm, made afresh for this run and removed with it.
        self.shared_dir = tempfile.mkdtemp(prefix="brain-workers-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
        try:
            if not self.settings.nats.url:
                store = store_dir_for(data)
                port = self.settings.nats.embedded_port or free_port()
                self.nats = NatsServer(store_dir=store, port=port, credential=embedded_credential(store))
                self.nats.start()
            log.info(
                "starting brain %s: %d workers, roles %s, data %s, nats %s", brain.__version__, self.count,
                ",".join(self.settings.server.roles), data,
                redact_url(self.settings.nats.url) or (self.nats.url if self.nats else ""),
            )
            self._install_signals()
            if threading.active_count() != 1:
                log.warning("the master runs threads; forking it is not safe: %s", threading.enumerate())
            self._spawn(1)  # the others once it serves (_on_ready)
            self._loop()
        finally:
            if self.nats is not None:
                self.nats.terminate(timeout=2.0)
            for sockets in self.sockets:
                for sock in sockets.values():
                    sock.close()
            self.selector.close()
            shutil.rmtree(self.shared_dir, ignore_errors=True)
        log.info("shutdown complete")
        return self.exit_code

    def figures(self) -> dict[str, Any]:
        """The master's own figures for /health and /metrics."""
        return {
            "pid": os.getpid(), "workers": self.count, "serving": len(self.serving), "restarts": self.total_restarts,
            "uptime_seconds": round(time.time() - self.started_at, 3),
        }

    def _loop(self) -> None:
        while True:
            if self._signalled is not None and not self.stopping:
                log.info("received %s, stopping the workers", signal.Signals(self._signalled).name)
                self._stop(0)
            timeout = _TICK_S
            waiting = self.hub.expire()
            if waiting is not None:
                timeout = min(timeout, waiting)
            if self.stopping:
                timeout = min(timeout, max(0.0, self._deadline - time.monotonic()))
            for key, mask in self.selector.select(timeout):
                callback, arg = key.data
                callback(arg, mask)
            self._reap()
            if self.stopping:
                if not self.pids:
                    return
                if not self._killed and time.monotonic() >= self._deadline:
                    self._killed = True
                    log.warning("workers %s did not stop within %ss; killing them", sorted(self.pids),
                                self.settings.server.shutdown_timeout)
                    for pid in self.pids.values():
                        _signal(pid, signal.SIGKILL)
            else:
                self._watch_nats()

    def _stop(self, code: int) -> None:
        """Stop every worker (SIGTERM now, SIGKILL at the deadline); the first code wins."""
        if self.stopping:
            return
        self.stopping = True
        self.exit_code = code
        self._deadline = time.monotonic() + self.settings.server.shutdown_timeout
        for pid in self.pids.values():
            _signal(pid, signal.SIGTERM)

    # -- signals ----------------------------------------------------------------------------------

    def _install_signals(self) -> None:
        os.set_blocking(self._wake_w, False)
        os.set_blocking(self._wake_r, False)
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        self.selector.register(self._wake_r, selectors.EVENT_READ, (self._drain_wakeups, None))
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        # Only to wake the loop (through the wakeup fd) when a worker dies.
        signal.signal(signal.SIGCHLD, lambda *_: None)

    def _on_signal(self, signum: int, _frame: object) -> None:
        if self._signalled is None:
            self._signalled = signum

    def _drain_wakeups(self, _arg: object, _mask: int) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass

    # -- workers ------------------------------------------------------------------------------------

    def _spawn(self, index: int) -> None:
        ours, theirs = socket.socketpair()
        pid = os.fork()
        if pid == 0:
            ours.close()
            self._become_worker(index, theirs)
        theirs.close()
        self.pids[index] = pid
        self.hub.attach(index, ours)
        log.info("worker %d started (pid %d)", index, pid)

    def _become_worker(self, index: int, link: socket.socket) -> NoReturn:
        """The forked child: drop the master's descriptors and signal handling, then serve."""
        code = 1
        try:
            signal.set_wakeup_fd(-1)
            for sig in (signal.SIGTERM, signal.SIGCHLD):
                signal.signal(sig, signal.SIG_DFL)
            # A Ctrl-C reaches every process of the terminal's group: the master turns it into
            # one orderly SIGTERM per worker.
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            for fd in (*self.hub.fds(), self._wake_r, self._wake_w):
                os.close(fd)
            self.selector.close()
            for other, sockets in enumerate(self.sockets, start=1):
                if other != index:
                    for sock in sockets.values():
                        sock.close()
            setup_logging(self.settings.log.format, self.settings.log.level, worker=str(index))
            slot = WorkerSlot(index, self.count, embedded_nats_url=self.nats.url if self.nats else "",
                              shared_dir=self.shared_dir)
            runtime = Runtime(self.settings, plugin_manager=self.pm, worker=slot)
            code = asyncio.run(runtime.serve(self.sockets[index - 1], master=link))
        except BrainError as exc:
            log.critical("worker %d cannot start: %s", index, exc)
            code = 2
        except BaseException:  # noqa: BLE001 - the child must never return into the master's code
            log.exception("worker %d failed", index)
        finally:
            logging.shutdown()
            os._exit(code)

    def _on_ready(self, index: int) -> None:
        self.serving.add(index)
        self.ever_served.add(index)
        if index == 1 and not self._announced and not self.stopping:
            for other in range(2, self.count + 1):
                if other not in self.pids:
                    self._spawn(other)
        if not self._announced and len(self.serving) == self.count:
            self._announced = True
            log.info("brain %s ready (pid %s, %d workers)", brain.__version__, os.getpid(), self.count)
        elif self._announced:
            log.info("worker %d serves again", index)

    def _reap(self) -> None:
        for index, pid in list(self.pids.items()):
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done, status = pid, 0
            if done == 0:
                continue
            del self.pids[index]
            self.serving.discard(index)
            self.hub.detach(index)
            self._exited(index, pid, os.waitstatus_to_exitcode(status))

    def _exited(self, index: int, pid: int, code: int) -> None:
        how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
        if self.stopping:
            log.info("worker %d (pid %d) stopped (%s)", index, pid, how)
            return
        if index not in self.ever_served:
            log.critical("worker %d (pid %d) %s before it served; stopping", index, pid, how)
            self._stop(code if code > 0 else 1)
            return
        if not self._may_restart():
            log.critical("worker %d (pid %d) %s; more than %d restarts within %ss: stopping the server",
                         index, pid, how, self.settings.server.worker_max_restarts,
                         self.settings.server.worker_restart_window_seconds)
            self._stop(1)
            return
        log.error("worker %d (pid %d) %s; restarting it", index, pid, how)
        self._spawn(index)

    def _may_restart(self) -> bool:
        """Count one restart; False when that is more than the intensity allows."""
        now = time.monotonic()
        window = self.settings.server.worker_restart_window_seconds
        while self.restarts and self.restarts[0] <= now - window:
            self.restarts.popleft()
        self.restarts.append(now)
        self.total_restarts += 1
        return len(self.restarts) <= self.settings.server.worker_max_restarts

    def _watch_nats(self) -> None:
        if self.nats is None:
            return
        code = self.nats.exited()
        if code is None:
            return
        if not self._may_restart():
            log.critical("embedded nats-server exited with code %s once too often; stopping the server", code)
            self._stop(1)
            return
        log.error("embedded nats-server exited with code %s; restarting it", code)
        try:
            self.nats.start()
        except (OSError, RuntimeError) as exc:
            log.critical("embedded nats-server could not be restarted: %s", exc)
            self._stop(1)


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass

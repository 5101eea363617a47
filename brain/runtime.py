"""The server process: settings, plugins, the supervision tree and the HTTP listeners.

The runtime knows no role: everything it runs comes through the plugin hooks
(`brain.plugins.hookspecs`), the built-in roles' included. Start-up order: bind the listening
sockets the plugins declare (so port 0 resolves before any URL is derived), start the
supervision tree they register, then serve their routes. Shutdown runs the other way: stop
accepting, let in-flight requests finish, stop the tree in reverse order (which closes every
database), exit.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
import os
import signal
import socket
import ssl
import time
import weakref
from collections.abc import Iterable, Mapping
from typing import Any

import pluggy
import pykka
from aiohttp import web

import brain
from brain.actors import bridge
from brain.actors.supervisor import ChildSpec, Supervisor
from brain.actors.tree import Child, Group, build_tree
from brain.config import Settings, server_secret
from brain.datadir import hold_shared
from brain.errors import ConfigError, PluginError
from brain.files import secure_data_dir
from brain.health import HEALTH, Health, answer_health
from brain.logs import access_logger_for
from brain.nats_auth import connect_options
from brain.plugins.manager import PluginManager, load_plugins
from brain.routes import Components, Listener, Route
from brain.stash import Stash
from brain.storage import storage_faults
from brain.web import BODY_TIMEOUT_KEY, FAULTS_KEY, GUARD_KEY, MAX_BODY_KEY, SERVING, add_hsts, add_route, error_middleware
from brain.workers import SINGLE, WorkerSlot
from brain.workers.peers import peers_for

log = logging.getLogger("brain.server")
# The longest request line a listener reads (aiohttp's default is 8190 bytes). Long enough for a
# 10 KB search query, so that it reaches the route's own checks and gets a JSON 400 saying
# what is wrong, not the HTTP parser's plain-text one.
MAX_REQUEST_LINE = 16 * 1024


class Runtime:
    """Everything one `brain serve` process owns; what plugins see of it is `brain.process.Process`."""

    def __init__(
        self, settings: Settings, *, plugin_manager: PluginManager | None = None, offline: bool = False,
        worker: WorkerSlot = SINGLE,
    ) -> None:
        """A process for these settings; `offline`: one that serves nothing and in which every
        plugin is active (a command working on the data directory while no server runs);
        `worker`: its place among the server's workers (brain.workers)."""
        self.settings = settings
        self.worker = worker
        secure_data_dir(settings.data_path)  # before the secret or any database is written
        self.secret = server_secret(settings)
        self.pm = plugin_manager or load_plugins(settings.plugins.enabled)
        self.stash = Stash()
        self.started_at = time.time()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.root: pykka.ActorRef[Supervisor] | None = None
        self.nats_url = settings.nats.url
        if settings.nats.url:
            connect_options(settings.nats, settings.nats.url)  # unreadable files: a start-up error
        self.exit_code = 0
        self._stop_event: asyncio.Event | None = None
        self._runners: list[web.AppRunner] = []
        self._routes: dict[str, list[Route | Components]] = {}
        self.listeners = collect_listeners(self.pm, settings)
        served = frozenset(name for name, listener in self.listeners.items() if listener.served)
        self._served = frozenset() if offline else served
        # The wiring hooks of plugins that serve a listener this process does not are not called.
        self.hook = _ActiveHooks(self.pm, () if offline else self.pm.inactive(served))
        self.pm.hook.brain_startup.call_historic(
            kwargs={"settings": settings, "plugin_settings": settings.plugins.settings}
        )
        self.hook.setup_process(rt=self)
        health = self.stash.setdefault(HEALTH, Health)
        self.hook.register_health(rt=self, register=health.register)
        answer_health(self)

    @property
    def roles(self) -> frozenset[str]:
        """The HTTP roles this process serves (`server.roles`)."""
        return frozenset(self.settings.server.roles)

    def serves(self, listener: str) -> bool:
        """Whether this process serves the named listener."""
        return listener in self._served

    @property
    def main_listener(self) -> str | None:
        """The served, documented listener with the lowest rank."""
        candidates = [l for l in self.listeners.values() if l.served and l.documented]
        return min(candidates, key=lambda l: l.rank).name if candidates else None

    def routes(self, listener: str) -> list[Route | Components]:
        """What the plugins register for a listener, once per process (apps and /openapi.json share it)."""
        found = self._routes.get(listener)
        if found is None:
            found = []
            seen: dict[tuple[str, str], Route] = {}

            def register(entry: Route | Components) -> None:
                if isinstance(entry, Route):
                    key = (entry.method.upper(), entry.path)
                    if key in seen:
                        raise PluginError(f"{entry.method} {entry.path} is registered twice on the {listener} listener")
                    seen[key] = entry
                found.append(entry)

            # All plugins, active or not: a listener served elsewhere is still described.
            self.pm.hook.register_routes(rt=self, listener=listener, register=register)
            self._routes[listener] = found
        return found

    # Supervision tree ---------------------------------------------------------------

    def child_specs(self) -> list[ChildSpec]:
        """The root's children, in start order, as the plugins register them."""
        entries: list[Child | Group] = []
        self.hook.register_children(rt=self, register=entries.append)
        return build_tree(entries)

    def start_tree(self) -> None:
        """Start the root supervisor and, through it, every actor (blocking)."""
        # Before any actor opens a database: an offline `brain users delete` may be at work.
        weakref.finalize(self, os.close, hold_shared(self.settings.data_path))
        self.root = Supervisor.start(
            name="root",
            strategy="one_for_one",
            children=self.child_specs(),
            max_restarts=5,
            max_seconds=30,
            on_give_up=self._root_gave_up,
        )
        # The root starts its subtree in on_start, child by child; an ask is answered only
        # after that, so once it returns every actor is up (or the tree gave up).
        try:
            self.root.proxy().count_children().get(timeout=120)
        except pykka.ActorDeadError:
            log.critical("the supervision tree could not be started")

    def lookup(self, path: str) -> pykka.ActorRef[Any] | None:
        """Find an actor by its path under the root, e.g. "data_sup/stores" (blocking ask)."""
        ref: pykka.ActorRef[Any] | None = self.root
        for part in path.split("/"):
            if ref is None or not ref.is_alive():
                return None
            try:
                ref = ref.proxy().get_child(part).get(timeout=5)
            except pykka.ActorDeadError:
                return None
        return ref

    async def alookup(self, path: str) -> pykka.ActorRef[Any] | None:
        """`lookup` for coroutines: each hop is awaited through the bridge."""
        ref: pykka.ActorRef[Any] | None = self.root
        for part in path.split("/"):
            if ref is None or not ref.is_alive():
                return None
            try:
                ref = await bridge.ask(ref.proxy().get_child(part))
            except pykka.ActorDeadError:
                return None
        return ref

    def _root_gave_up(self, reason: str) -> None:
        log.critical("root supervisor gave up (%s); shutting down", reason)
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self.request_stop, 1)

    def stop_tree(self) -> None:
        """Stop every actor, children before parents, in reverse start order (blocking)."""
        root, self.root = self.root, None
        if root is not None and root.is_alive():
            try:
                root.stop(block=True, timeout=self.settings.server.shutdown_timeout * 4)
            except pykka.Timeout:
                log.error("supervision tree did not stop within the timeout")

    # HTTP listeners -------------------------------------------------------------------

    def make_app(self, listener: str) -> web.Application:
        """The aiohttp application of a listener, from the routes the plugins register for it."""
        spec = self.listeners[listener]
        guard = spec.guard(self) if spec.guard is not None else None
        app = web.Application(
            client_max_size=self.settings.server.max_body_bytes,
            # A guarded listener wraps each route instead (brain.routes): no middleware there.
            middlewares=[] if guard is not None else [error_middleware],
        )
        app[MAX_BODY_KEY] = self.settings.server.max_body_bytes
        app[BODY_TIMEOUT_KEY] = self.settings.server.body_timeout_seconds
        app[FAULTS_KEY] = storage_faults(self)
        if guard is not None:
            app[GUARD_KEY] = guard
        for entry in self.routes(listener):
            if isinstance(entry, Route):
                add_route(app, entry.method, entry.path, entry.handler, public=entry.public)
        self.hook.setup_app(rt=self, listener=listener, app=app)
        if spec.finish is not None:
            spec.finish(app)
        if spec.tls and self.settings.tls and self.settings.server.mode == "production":
            app.on_response_prepare.append(add_hsts)  # only here: dev and plain http pay nothing
        return app

    def request_stop(self, code: int = 0) -> None:
        """Ask the serving loop to shut down (idempotent; the first code wins)."""
        if self._stop_event is not None and not self._stop_event.is_set():
            self.exit_code = code
            self._stop_event.set()

    async def serve(self, sockets: dict[str, socket.socket], *, master: socket.socket | None = None) -> int:
        """Serve the roles on the given bound sockets until asked to stop; return the exit code.

        `master`: a worker's end of its link to the master (brain.workers), which then owns
        SIGINT (it sends each worker a SIGTERM) and whose loss stops the worker.
        """
        self.loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        peers = peers_for(self)
        if master is not None:
            await peers.connect(master, on_lost=lambda: self.request_stop(1))
        for sig in (signal.SIGTERM,) if master is not None else (signal.SIGINT, signal.SIGTERM):
            try:
                self.loop.add_signal_handler(sig, self._on_signal, sig)
            except (NotImplementedError, RuntimeError):  # pragma: no cover - not the main thread
                pass
        ssl_ctx = self._ssl_context()  # before the tree: a bad certificate is a start-up error
        await self.loop.run_in_executor(None, self.start_tree)
        if self.root is None or not self.root.is_alive():
            log.critical("the supervision tree failed to start")
            await self.loop.run_in_executor(None, self.stop_tree)
            return 1
        try:
            names = sorted(sockets, key=lambda n: self.listeners[n].rank)
            # A worker accepts on a listener only once it can answer there: until then the
            # kernel's queue of its socket holds what reaches it (brain.workers.master).
            gated = [n for n in names if master is not None and self.listeners[n].ready is not None]
            for name in names:
                if name not in gated:
                    await self._start_site(name, sockets[name], ssl_ctx, worker=master is not None)
            if gated:
                await self._until_ready(gated)
            for name in gated:
                await self._start_site(name, sockets[name], ssl_ctx, worker=True)
            if self.settings.server.tune_gc:
                tune_gc()
            if master is not None:
                log.info("worker %d serving (pid %s)", self.worker.index, os.getpid())
                peers.ready()
            else:
                log.info("brain %s ready (pid %s)", brain.__version__, os.getpid())
            await self._stop_event.wait()
        finally:
            await self.shutdown()
            await peers.close()
        return self.exit_code

    async def _start_site(self, name: str, sock: socket.socket, ssl_ctx: ssl.SSLContext | None, *, worker: bool) -> None:
        """Serve one listener on its bound socket."""
        listener = self.listeners[name]
        access_log = self.settings.log.access_log and listener.access_log
        runner = web.AppRunner(
            self.make_app(name),
            access_log_class=access_logger_for(name),
            access_log=logging.getLogger(f"brain.access.{name}") if access_log else None,
            # A worker's whole stop must fit the master's timeout: requests get half of it.
            shutdown_timeout=self.settings.server.shutdown_timeout / (2 if worker else 1),
            keepalive_timeout=self.settings.server.idle_timeout_seconds,
            handle_signals=False,
            max_line_size=MAX_REQUEST_LINE,
        )
        await runner.setup()
        self._runners.append(runner)
        tls = ssl_ctx if listener.tls else None
        await web.SockSite(runner, sock, ssl_context=tls, backlog=LISTEN_BACKLOG).start()
        assert runner.server is not None
        self.stash.setdefault(SERVING, dict)[name] = runner.server
        host, port = sock.getsockname()[:2]
        log.info("%s listening on %s://%s:%s", name, "https" if tls else "http", host, port)

    async def _until_ready(self, names: list[str]) -> None:
        """Wait until each listener's `ready` holds (at most READY_WAIT_SECONDS: then serve anyway)."""
        checks = {name: ready for name in names if (ready := self.listeners[name].ready) is not None}
        stop = self._stop_event
        assert stop is not None
        deadline = time.monotonic() + READY_WAIT_SECONDS
        waiting = [name for name, ready in checks.items() if not ready(self)]
        while waiting and time.monotonic() < deadline and not stop.is_set():
            await asyncio.sleep(READY_POLL_SECONDS)
            waiting = [name for name in waiting if not checks[name](self)]
        if waiting:
            log.warning("%s not ready after %ss; serving anyway", ", ".join(waiting), READY_WAIT_SECONDS)

    def _on_signal(self, sig: signal.Signals) -> None:
        log.info("received %s, shutting down", sig.name)
        self.request_stop(0)

    async def shutdown(self) -> None:
        """Stop accepting, finish in-flight requests, stop the actors (reverse order)."""
        self.stash.setdefault(SERVING, dict).clear()  # nothing is handed in by memory either
        for runner in reversed(self._runners):
            await runner.cleanup()
        self._runners.clear()
        assert self.loop is not None
        await self.loop.run_in_executor(None, self.stop_tree)
        log.info("shutdown complete")

    def _ssl_context(self) -> ssl.SSLContext | None:
        if not self.settings.tls:
            return None
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.set_alpn_protocols(["http/1.1"])
        try:
            ctx.load_cert_chain(self.settings.server.tls_cert, self.settings.server.tls_key)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"server.tls_cert / server.tls_key: cannot load the certificate and key: {exc}") from None
        return ctx


# Connections the kernel queues for a listener until it accepts them.
LISTEN_BACKLOG = 1024
# A worker waits this long at most for a listener to be ready (an issuer that is down must
# not keep the whole server from starting), looking this often.
READY_WAIT_SECONDS = 15.0
READY_POLL_SECONDS = 0.05

# Young-generation collections happen every this many net allocations (CPython's default: 700).
GC_YOUNG_THRESHOLD = 20_000


def tune_gc() -> None:
    """Fewer, shorter cyclic-GC pauses for a long-running server (docs/performance.md).

    Start-up leaves a large heap of objects that live as long as the process (modules, classes,
    the plugins' tables); frozen, full collections no longer walk them. With the young
    generation collected less often, the short-lived objects of a request are mostly gone by
    the time a collection runs, instead of being promoted towards the old generation, whose
    growth is what triggers the long full collections.
    """
    gc.collect()
    gc.freeze()
    _young, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)


def collect_listeners(pm: pluggy.PluginManager, settings: Settings) -> dict[str, Listener]:
    """Every listener the plugins declare for these settings, by name."""
    found: dict[str, Listener] = {}

    def register(listener: Listener) -> None:
        if listener.name in found:
            raise PluginError(f"two listeners are named {listener.name!r}")
        found[listener.name] = listener

    pm.hook.register_listeners(settings=settings, register=register)
    return found


def bind_sockets(
    settings: Settings, pm: pluggy.PluginManager, copies: int = 1
) -> tuple[Settings, list[dict[str, socket.socket]]]:
    """Bind every served listener's socket now; settings get the real ports (port 0 resolved).

    `copies` > 1: that many sockets per listener, all on one port with SO_REUSEPORT (one set
    per worker, brain.workers.master).
    """
    sets: list[dict[str, socket.socket]] = [{} for _ in range(copies)]
    ports: dict[str, int] = {}
    try:
        for name, listener in collect_listeners(pm, settings).items():
            if not listener.served:
                continue
            port = listener.port
            for sockets in sets:
                sockets[name] = _listen(name, listener.host, port, reuse_port=copies > 1)
                port = sockets[name].getsockname()[1]  # the copies join the port the first one got
            if listener.port_setting:
                ports[listener.port_setting] = port
    except OSError:
        for sockets in sets:
            for s in sockets.values():
                s.close()
        raise
    return _with_values(settings, ports), sets


def _listen(name: str, host: str, port: int, *, reuse_port: bool) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port} for the {name} role: {exc.strerror}") from None
    # A worker's copy listens only when the worker starts serving it (asyncio listens as it
    # serves): until then the kernel sends this port's connections to the workers that serve.
    # Once listened on it stays so, in the master too, so what reaches a dead worker's copy waits
    # for its replacement.
    if not reuse_port:
        sock.listen(LISTEN_BACKLOG)
    sock.setblocking(False)
    return sock


def _with_values(settings: Settings, values: Mapping[str, Any]) -> Settings:
    """Settings with some `section.key` values replaced."""
    sections: dict[str, dict[str, Any]] = {}
    for dotted, value in values.items():
        section, _, key = dotted.partition(".")
        sections.setdefault(section, {})[key] = value
    changes = {name: dataclasses.replace(getattr(settings, name), **keys) for name, keys in sections.items()}
    return dataclasses.replace(settings, **changes)


class _ActiveHooks:
    """`pm.hook`, minus the plugins that serve a listener this process does not."""

    def __init__(self, pm: pluggy.PluginManager, inactive: Iterable[object]) -> None:
        self._pm = pm
        self._inactive = list(inactive)
        self._callers: dict[str, Any] = {}

    def __getattr__(self, name: str) -> Any:
        caller = self._callers.get(name)
        if caller is None:
            caller = self._callers[name] = self._pm.subset_hook_caller(name, self._inactive)
        return caller

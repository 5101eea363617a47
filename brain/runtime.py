"""The server process: settings, plugins, the supervision tree and the two HTTP roles.

Start-up order: bind the listening sockets (so port 0 resolves before any URL is derived),
load plugins, start the supervision tree (embedded NATS, auth_sup, data_sup), then serve HTTP.
Shutdown runs the other way: stop accepting, let in-flight requests finish, stop the tree in
reverse order (which closes every database), exit.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import signal
import socket
import ssl
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pluggy
import pykka
from aiohttp import web

import brain
from brain.actors import bridge, supervisor
from brain.actors.supervisor import ChildSpec, Supervisor
from brain.apikeys import ApiKeyHub
from brain.config import Settings, server_secret
from brain.errors import ConfigError
from brain.files import secure_data_dir
from brain.logs import access_logger_for
from brain.nats_auth import Credential, connect_options, embedded_credential
from brain.nats_embedded import EmbeddedNats, free_port, store_dir_for
from brain.plugins.manager import load_plugins
from brain.redact import redact_url
from brain.web import BODY_TIMEOUT_KEY, MAX_BODY_KEY, add_hsts, error_middleware

if TYPE_CHECKING:
    from brain.api.bus import Doorbell
    from brain.api.jwks import JwksState
    from brain.api.stores import StoreManager
    from brain.api.tokens import TokenVerifier
    from brain.metrics import Metrics

log = logging.getLogger("brain.server")

RUNTIME_KEY: web.AppKey["Runtime"] = web.AppKey("runtime")


class Runtime:
    """Everything one `brain serve` process owns; handed to every subsystem."""

    def __init__(self, settings: Settings, *, plugin_manager: pluggy.PluginManager | None = None) -> None:
        self.settings = settings
        secure_data_dir(settings.data_path)  # before the secret or any database is written
        self.secret = server_secret(settings)
        self.pm = plugin_manager or load_plugins(settings.plugins.enabled, builtins=_builtin_plugins())
        self.started_at = time.time()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.root: pykka.ActorRef[Supervisor] | None = None
        self.nats_url = settings.nats.url
        # The embedded server's own credential (set when it is one of our children).
        self.nats_credential: Credential | None = None
        if settings.nats.url:
            connect_options(settings.nats, settings.nats.url)  # unreadable files: a start-up error
        self.exit_code = 0
        self._stop_event: asyncio.Event | None = None
        self._runners: list[web.AppRunner] = []
        # Set by the API role (brain.api): the user stores, the JWKS cache's shared state, the
        # bearer-token verifier and the outbox doorbell of the EventBus.
        self.stores: StoreManager | None = None
        self.jwks: JwksState | None = None
        self.token_verifier: TokenVerifier | None = None
        self.event_bus: Doorbell | None = None
        # API keys: the auth role's directory and the API role's cache meet here (brain.apikeys).
        self.api_keys = ApiKeyHub()
        # name -> callable returning a JSON-able dict, shown on /health?detail=1.
        self.health_sources: dict[str, Callable[[], Any]] = {
            "nats": lambda: {"url": self.nats_shown_url, "embedded": not settings.nats.url},
        }
        # Prometheus metrics, only when /metrics is served somewhere (see brain.metrics).
        self.metrics: Metrics | None = None
        if settings.metrics.exposed:
            from brain.metrics import Metrics

            self.metrics = Metrics(self)
        self.pm.hook.brain_startup.call_historic(
            kwargs={"settings": settings, "plugin_settings": settings.plugins.settings}
        )

    def nats_connect_options(self) -> dict[str, Any]:
        """`nats.connect()` keyword arguments for this process's NATS (brain.nats_auth)."""
        return connect_options(self.settings.nats, self.nats_url, self.nats_credential)

    @property
    def nats_shown_url(self) -> str:
        """The NATS URL as logs and /health show it (credentials masked)."""
        return redact_url(self.nats_url)

    @property
    def roles(self) -> frozenset[str]:
        """The HTTP roles this process serves."""
        return frozenset(self.settings.server.roles)

    def health_problems(self) -> dict[str, str]:
        """Why the API role is degraded right now, by name (empty: ok): no usable keys, NATS not connected."""
        problems: dict[str, str] = {}
        if self.jwks is not None and self.jwks.current(time.time()) is None:
            why = f" (last error: {self.jwks.last_error})" if self.jwks.last_error else ""
            problems["jwks"] = f"no usable signing keys from {self.jwks.shown_url}{why}"
        if self.event_bus is not None and not self.event_bus.stats().get("connected"):
            problems["nats"] = f"the event bus is not connected to {self.nats_shown_url}; events wait in the outboxes"
        return problems

    def health(self, *, detail: bool) -> dict[str, Any]:
        """The /health document: status, version and problems by name; with detail, every figure.

        The public form is what a load balancer needs and nothing more: the detail (URLs, key ids,
        error texts, counts) helps an attacker map the deployment, so it is for the metrics
        token's bearer only (brain.api.routes, brain.metrics).
        """
        problems = self.health_problems()
        body: dict[str, Any] = {
            "status": "degraded" if problems else "ok",
            "problems": list(problems),
            "version": brain.__version__,
        }
        if not detail:
            return body
        body["problems"] = [f"{name}: {message}" for name, message in problems.items()]
        body["uptime_seconds"] = round(time.time() - self.started_at, 3)
        body["supervisor"] = {"restarts": supervisor.total_restarts(), "escalations": supervisor.total_escalations()}
        for name, source in self.health_sources.items():
            body[name] = source()
        return body

    # Supervision tree ---------------------------------------------------------------

    def child_specs(self) -> list[ChildSpec]:
        """The root's children, in start order."""
        from brain import api, auth, mail

        specs: list[ChildSpec] = []
        if not self.nats_url:
            port = self.settings.nats.embedded_port or free_port()
            self.nats_url = f"nats://127.0.0.1:{port}"
            store = store_dir_for(self.settings.data_path)
            credential = self.nats_credential = embedded_credential(store)
            specs.append(
                ChildSpec(
                    id="nats",
                    start=lambda link: EmbeddedNats.start(link=link, store_dir=store, port=port, credential=credential),
                )
            )
        auth_children = [*auth.child_specs(self), *api.auth_child_specs(self)]
        specs.append(
            ChildSpec(
                id="auth_sup",
                # A supervisor waits for its children, each bounded by its own timeout (OTP).
                shutdown_timeout=math.inf,
                start=lambda link: Supervisor.start(
                    link=link, name="auth_sup", strategy="one_for_one", children=auth_children
                ),
            )
        )
        if "api" in self.roles:
            data_children = [
                *api.data_child_specs(self),
                ChildSpec(
                    id="stores",
                    shutdown_timeout=math.inf,
                    start=lambda link: Supervisor.start(
                        link=link, name="stores", strategy="one_for_one", max_restarts=50, max_seconds=10,
                        stop_together=True,  # independent stores: their databases close concurrently
                    ),
                ),
                *mail.child_specs(self),  # the "mail" supervisor; it resumes connected accounts
            ]
            specs.append(
                ChildSpec(
                    id="data_sup",
                    shutdown_timeout=math.inf,
                    start=lambda link: Supervisor.start(
                        link=link, name="data_sup", strategy="rest_for_one", children=data_children
                    ),
                )
            )
        # Last: account deletions reach the API side through it, and it stops before the stores.
        specs.extend(auth.deletion_child_specs(self))
        return specs

    def start_tree(self) -> None:
        """Start the root supervisor and, through it, every actor (blocking)."""
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

    # HTTP roles ----------------------------------------------------------------------

    def make_app(self, role: str) -> web.Application:
        """The aiohttp application of one role."""
        from brain import api, auth

        app = web.Application(
            client_max_size=self.settings.server.max_body_bytes,
            # The API role guards each route instead (brain.api.routes.guard): no middleware there.
            middlewares=[] if role == "api" else [error_middleware],
        )
        app[RUNTIME_KEY] = self
        app[MAX_BODY_KEY] = self.settings.server.max_body_bytes
        app[BODY_TIMEOUT_KEY] = self.settings.server.body_timeout_seconds
        if role == "auth":
            auth.setup_routes(app, self)
        else:
            api.setup_routes(app, self)
        if self.metrics is not None:
            self.metrics.install(app, role)
        if role == "api":
            api.finish_routes(app)
        if self.settings.tls and self.settings.server.mode == "production":
            app.on_response_prepare.append(add_hsts)  # only here: dev and plain http pay nothing
        return app

    def request_stop(self, code: int = 0) -> None:
        """Ask the serving loop to shut down (idempotent; the first code wins)."""
        if self._stop_event is not None and not self._stop_event.is_set():
            self.exit_code = code
            self._stop_event.set()

    async def serve(self, sockets: dict[str, socket.socket]) -> int:
        """Serve the roles on the given bound sockets until asked to stop; return the exit code."""
        self.loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
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
            for role in ("auth", "api"):
                if role not in sockets:
                    continue
                runner = web.AppRunner(
                    self.make_app(role),
                    access_log_class=access_logger_for(role),
                    access_log=logging.getLogger(f"brain.access.{role}") if self.settings.log.access_log else None,
                    shutdown_timeout=self.settings.server.shutdown_timeout,
                    keepalive_timeout=self.settings.server.idle_timeout_seconds,
                    handle_signals=False,
                )
                await runner.setup()
                self._runners.append(runner)
                site = web.SockSite(runner, sockets[role], ssl_context=ssl_ctx)
                await site.start()
                host, port = sockets[role].getsockname()[:2]
                log.info("%s role listening on %s://%s:%s", role, "https" if ssl_ctx else "http", host, port)
            if self.metrics is not None and "metrics" in sockets:
                runner = web.AppRunner(self.metrics.listener_app(), access_log=None, handle_signals=False)
                await runner.setup()
                self._runners.append(runner)
                await web.SockSite(runner, sockets["metrics"]).start()
                host, port = sockets["metrics"].getsockname()[:2]
                log.info("metrics listening on http://%s:%s/metrics", host, port)
            log.info("brain %s ready (pid %s)", brain.__version__, _pid())
            await self._stop_event.wait()
        finally:
            await self.shutdown()
        return self.exit_code

    def _on_signal(self, sig: signal.Signals) -> None:
        log.info("received %s, shutting down", sig.name)
        self.request_stop(0)

    async def shutdown(self) -> None:
        """Stop accepting, finish in-flight requests, stop the actors (reverse order)."""
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


def bind_sockets(settings: Settings) -> tuple[Settings, dict[str, socket.socket]]:
    """Bind each role's listening socket now; settings get the real ports (port 0 resolved)."""
    host = settings.server.host
    sockets: dict[str, socket.socket] = {}
    ports = {"auth": settings.server.auth_port, "api": settings.server.api_port, "metrics": settings.metrics.port}
    hosts = {"auth": host, "api": host, "metrics": settings.metrics.host}
    wanted = [r for r in ("auth", "api") if r in settings.server.roles]
    if settings.metrics.exposed and settings.metrics.port:
        wanted.append("metrics")  # the separate metrics listener
    try:
        for role in wanted:
            family = socket.AF_INET6 if ":" in hosts[role] else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((hosts[role], ports[role]))
            except OSError as exc:
                sock.close()
                raise OSError(f"cannot listen on {hosts[role]}:{ports[role]} for the {role} role: {exc.strerror}") from None
            sock.listen(1024)
            sock.setblocking(False)
            ports[role] = sock.getsockname()[1]
            sockets[role] = sock
    except OSError:
        for s in sockets.values():
            s.close()
        raise
    server = dataclasses.replace(settings.server, auth_port=ports["auth"], api_port=ports["api"])
    return dataclasses.replace(settings, server=server), sockets


def _builtin_plugins() -> list[object]:
    """Default implementations that ship with the core, registered like any plugin."""
    from brain.auth.smtp import SmtpMailer
    from brain.mail.plugin import MailPlugin

    return [SmtpMailer(), MailPlugin()]


def _pid() -> int:
    import os

    return os.getpid()

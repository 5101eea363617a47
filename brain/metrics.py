"""Prometheus metrics: `GET /metrics` in the text exposition format (prometheus-client).

Two kinds of figures:

- per-route request counts and latency histograms, from a tiny middleware on each role's app
  (labels `role`, `route` = the matched route's canonical path such as `/events`, or
  `unmatched` for 404/405, `method` from a fixed set, `status`), so label values stay bounded
  whatever URLs clients send. The middleware adds to plain per-route counters on the event
  loop (~2 us a request on this 2-core machine); prometheus-client's own Counter and
  Histogram take a lock per increment (~6 us a request), a lot beside GET /me's ~150 us;
- everything else, read at scrape time by `BrainCollector` from the figures the subsystems
  keep anyway (JWKS state, token cache, stores, event bus, mail.db, supervisors): the request
  path pays nothing for them.

Where it is served (`[metrics]`): on a listener of its own when `port` is set (meant for
loopback or a private network), else on the API port (the auth port in an auth-only
process), and there only when a `token` is set. A set token is required wherever /metrics
is served (`Authorization: Bearer <token>`). `Settings.metrics.exposed` is false with
neither, and then neither the route nor the middleware exists.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

import brain
from brain.actors import supervisor
from brain.web import UNMATCHED_ATTR, Handler, add_route, error_middleware, json_response, require_bearer

if TYPE_CHECKING:
    from brain.runtime import Runtime

log = logging.getLogger("brain.metrics")

PATH = "/metrics"
ROUTE_UNMATCHED = "unmatched"
# Anything else a client sends as a method is counted as OTHER (label values stay bounded).
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# API answers take well under a millisecond; sign-up and sign-in tens of milliseconds (argon2).
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

Middleware = Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]


class Metrics:
    """The process's registry, the request middleware of each role and the /metrics handler."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.settings = rt.settings.metrics
        self.requests = RequestStats()
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(self.requests)
        self.registry.register(BrainCollector(rt))
        ProcessCollector(registry=self.registry)
        self._token = self.settings.token.encode()

    # -- wiring -------------------------------------------------------------------------------

    def install(self, app: web.Application, role: str) -> None:
        """Measure every request of a role's app; add /metrics to it if it is where it is served."""
        app.middlewares.insert(0, self.requests.middleware(role))
        if not self.settings.port and role == ("api" if "api" in self.rt.roles else "auth"):
            self.add_route(app)

    def add_route(self, app: web.Application) -> None:
        """Add GET /metrics (open to the bearer of the metrics token, or to all without one)."""

        from brain.api.routes import public

        @public  # on the API port: the metrics token, not a user's JWT
        async def metrics(request: web.Request) -> web.Response:
            return await self.handle(request)

        add_route(app, "GET", PATH, metrics)

    def listener_app(self) -> web.Application:
        """The app of the separate metrics listener (`metrics.port`): /metrics and /health's detail."""
        app = web.Application(middlewares=[error_middleware])
        self.add_route(app)
        app.router.add_get("/health", self.health)
        return app

    async def health(self, request: web.Request) -> web.Response:
        """GET /health on the metrics listener: the detailed document, to whoever may scrape."""
        if self._token:
            require_bearer(request, self._token, realm="metrics")
        return json_response(self.rt.health(detail=True), headers={"Cache-Control": "no-store"})

    # -- GET /metrics ------------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.Response:
        """The exposition; the figures are gathered on a worker thread (mail.db is read)."""
        if self._token:
            require_bearer(request, self._token, realm="metrics")
        body = await asyncio.get_running_loop().run_in_executor(None, generate_latest, self.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_PLAIN_0_0_4, "Cache-Control": "no-store"})


class _Route:
    """The figures of one (role, route, method): latency buckets, their sum, counts by status."""

    __slots__ = ("labels", "buckets", "total", "statuses")

    def __init__(self, labels: list[str]) -> None:
        self.labels = labels
        self.buckets = [0] * (len(LATENCY_BUCKETS) + 1)  # the last one is +Inf
        self.total = 0.0
        self.statuses: dict[int, int] = {}


class RequestStats(Collector):
    """Per-route request figures, written by the roles' middlewares on the event loop only."""

    def __init__(self) -> None:
        # Per role: (resource, method) -> _Route, every entry exactly once.
        self._tables: list[dict[tuple[Any, str], _Route]] = []

    def middleware(self, role: str) -> Middleware:
        """A middleware counting and timing each request of `role` (a dict lookup when warm)."""
        perf = time.perf_counter
        bounds = LATENCY_BUCKETS
        # A matched route -> its _Route, so a warm request costs one dict lookup. Unmatched
        # requests get a fresh SystemRoute each, so they are not keyed by route: they share one
        # entry per method (the table stays bounded whatever URLs arrive).
        table: dict[Any, _Route] = {}
        by_method: dict[tuple[Any, str], _Route] = {}
        self._tables.append(by_method)

        def resolve(route: Any, method: str) -> _Route:
            if method not in METHODS:
                method = "OTHER"
            resource = route.resource
            if getattr(route.handler, UNMATCHED_ATTR, False):
                resource = None  # the API's catch-all: counted like aiohttp's own 404/405
            key = (resource, method)
            entry = by_method.get(key)
            if entry is None:
                label = ROUTE_UNMATCHED if resource is None else resource.canonical
                by_method[key] = entry = _Route([role, label, method])
            if resource is not None and route.method != "*":  # the route fixes the method
                table[route] = entry
            return entry

        def record(request: web.Request, status: int, started: float) -> None:
            elapsed = perf() - started
            route = request.match_info.route
            entry = table.get(route) or resolve(route, request.method)
            entry.total += elapsed
            entry.buckets[bisect.bisect_left(bounds, elapsed)] += 1  # bucket i: elapsed <= bounds[i]
            statuses = entry.statuses
            statuses[status] = statuses.get(status, 0) + 1

        @web.middleware
        async def measure(request: web.Request, handler: Handler) -> web.StreamResponse:
            started = perf()
            try:
                response = await handler(request)
            except web.HTTPException as exc:
                record(request, exc.status, started)
                raise
            except Exception:
                record(request, 500, started)
                raise
            record(request, response.status, started)
            return response

        return measure

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "brain_http_requests",
            "HTTP requests answered, by role, route (canonical path), method and status.",
            labels=["role", "route", "method", "status"],
        )
        latency = HistogramMetricFamily(
            "brain_http_request_duration_seconds",
            "Time from the request reaching brain's middleware to its response, by role, route and method.",
            labels=["role", "route", "method"],
        )
        les = [floatToGoString(b) for b in LATENCY_BUCKETS] + ["+Inf"]
        for table in self._tables:
            # Written on the event loop while this runs on a worker thread: each copy below is
            # one C-level operation under the GIL, so it is consistent in itself.
            for entry in list(table.values()):
                buckets, total, statuses = list(entry.buckets), entry.total, dict(entry.statuses)
                for status, count in sorted(statuses.items()):
                    requests.add_metric([*entry.labels, str(status)], count)
                cumulative, running = [], 0
                for le, count in zip(les, buckets):
                    running += count
                    cumulative.append((le, running))
                latency.add_metric(entry.labels, cumulative, total)
        yield requests
        yield latency


class BrainCollector(Collector):
    """Reads the subsystems' own figures at scrape time; one failing source skips only itself."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self._failing: set[str] = set()

    def describe(self) -> list[Metric]:
        # Families vary with the roles this process runs; nothing to check names against.
        return []

    def collect(self) -> Iterator[Metric]:
        sources: list[tuple[str, Callable[[], list[Metric]]]] = [
            ("process", self._process),
            ("jwks", self._jwks),
            ("token_cache", self._token_cache),
            ("stores", self._stores),
            ("event_bus", self._event_bus),
            ("mail", self._mail),
        ]
        for name, source in sources:
            try:
                families = source()
            except Exception:  # noqa: BLE001 - a scrape must not fail for one subsystem
                if name not in self._failing:
                    self._failing.add(name)
                    log.warning("metrics: reading %s failed", name, exc_info=True)
                continue
            self._failing.discard(name)
            yield from families

    def _process(self) -> list[Metric]:
        rt = self.rt
        info = InfoMetricFamily("brain_build", "brain's version and the roles this process serves.")
        info.add_metric([], {"version": brain.__version__, "roles": ",".join(sorted(rt.roles))})
        out: list[Metric] = [info]
        if "api" in rt.roles:
            out.append(_gauge("brain_healthy", "1 when /health says ok (signing keys loaded, NATS connected), else 0.",
                              0 if rt.health_problems() else 1))
        out.append(_counter("brain_supervisor_restarts", "Actor restarts by any supervisor since start.",
                            supervisor.total_restarts()))
        out.append(_counter("brain_supervisor_escalations", "Supervisors that gave up (restart intensity exceeded).",
                            supervisor.total_escalations()))
        return out

    def _jwks(self) -> list[Metric]:
        state = self.rt.jwks
        if state is None:
            return []
        snap = state.snapshot
        out = [
            _gauge("brain_jwks_keys", "Usable keys in the API role's cached JWKS (0: none loaded).",
                   0 if snap is None else len(snap.keys)),
            _counter("brain_jwks_refreshes", "Successful JWKS fetches.", state.fetches),
            _counter("brain_jwks_refresh_failures", "Failed JWKS fetches (the last good keys are kept).", state.failures),
            _gauge("brain_jwks_consecutive_failures", "Failed JWKS fetches since the last success.",
                   state.consecutive_failures),
            _counter("brain_jwks_unknown_kid_refetches", "Refetches asked for by tokens with an unknown kid.",
                     state.refetches),
        ]
        if snap is not None:
            out.append(_gauge("brain_jwks_age_seconds", "Age of the cached JWKS (grows while refreshes fail).",
                              time.time() - snap.fetched_at))
            out.append(_gauge("brain_jwks_max_staleness_seconds", "Age at which the cached keys are dropped (503).",
                              state.max_staleness))
        return out

    def _token_cache(self) -> list[Metric]:
        verifier = self.rt.token_verifier
        if verifier is None:
            return []
        stats = verifier.stats()
        return [
            _counter("brain_jwt_cache_hits", "Bearer tokens found verified in the token cache.", stats["hits"]),
            _counter("brain_jwt_cache_misses", "Bearer tokens that needed a full check.", stats["misses"]),
            _gauge("brain_jwt_cache_entries", "Tokens in the token cache.", stats["size"]),
        ]

    def _stores(self) -> list[Metric]:
        stores = self.rt.stores
        if stores is None:
            return []
        stats = stores.stats()
        return [
            _gauge("brain_stores_open", "User stores open now (one SQLite file and actor each).", stats["open"]),
            _gauge("brain_stores_max_open", "Open user stores allowed before the least recently used closes.",
                   stats["max_open"]),
            _counter("brain_store_activations", "User stores opened.", stats["activations"]),
            _counter("brain_store_evictions", "User stores closed to stay under max_open.", stats["evictions"]),
        ]

    def _event_bus(self) -> list[Metric]:
        doorbell = self.rt.event_bus
        if doorbell is None:
            return []
        stats = doorbell.stats()
        out = [_gauge("brain_nats_connected", "1 while the event bus is connected to NATS JetStream.",
                      1 if stats.get("connected") else 0)]
        if "published" not in stats:  # the bus is (re)starting: no publisher figures
            return out
        out += [
            _counter("brain_events_published", "Events JetStream acknowledged as new.", stats["published"]),
            _counter("brain_events_publish_duplicates", "Re-sent events JetStream dropped as duplicates.",
                     stats["duplicates"]),
            _counter("brain_events_publish_failures", "Publishes that failed or timed out (retried from the outbox).",
                     stats["failures"]),
            _counter("brain_events_drained", "Events published from the outboxes on disk (after an outage).",
                     stats["drained"]),
            _gauge("brain_outbox_queued_events", "Committed events waiting in memory to be published.", stats["queued"]),
            _gauge("brain_outbox_in_flight_events", "Events published and awaiting JetStream's acknowledgement.",
                   stats["in_flight"]),
            _gauge("brain_outbox_dirty_users", "Users whose unpublished events wait in their outbox on disk.",
                   stats["dirty_users"]),
            _gauge("brain_outbox_oldest_unacked_seconds",
                   "Age of the oldest publish still awaiting its JetStream acknowledgement (0: none).",
                   _oldest_unacked_seconds(doorbell)),
        ]
        return out

    def _mail(self) -> list[Metric]:
        if "api" not in self.rt.roles:
            return []
        from peewee import fn

        from brain.mail import service_for
        from brain.mail.db import Account, States

        db = service_for(self.rt).db
        with db.unit():
            rows = list(Account.select(Account.state, fn.COUNT(Account.id)).group_by(Account.state).tuples())
        counts = dict.fromkeys(
            (States.SYNCING, States.IDLE, States.BACKOFF, States.NEEDS_REAUTH, States.ERROR, States.DISCONNECTED), 0
        )
        counts.update(rows)
        family = GaugeMetricFamily("brain_mail_accounts", "Connected mail accounts by sync state.", labels=["state"])
        for state, count in sorted(counts.items()):
            family.add_metric([state], count)
        return [family]


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


def _counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, documentation, value=value)


def _oldest_unacked_seconds(doorbell: Any) -> float:
    """Seconds the oldest in-flight publish has waited (read from the publisher, approximately)."""
    # The publisher keeps in-flight publishes in send order, each with its ack deadline; it
    # runs on another thread, so the read may race a change: then report nothing pending.
    publisher = getattr(doorbell, "_publisher", None)
    sent = getattr(publisher, "_sent", None)
    if not sent:
        return 0.0
    try:
        first = next(iter(sent.values()))
    except (StopIteration, RuntimeError):
        return 0.0
    sent_at = first.deadline - publisher.settings.publish_timeout_seconds  # type: ignore[union-attr]
    return max(0.0, time.monotonic() - sent_at)

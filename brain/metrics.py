"""Prometheus metrics: `GET /metrics` in the text exposition format (prometheus-client).

Two kinds of figures:

- per-route request counts and latency histograms, from a tiny middleware on each role's app
  (labels `role`, `route` = the matched route's canonical path such as `/events`, or
  `unmatched` for 404/405, `method` from a fixed set, `status`), so label values stay bounded
  whatever URLs clients send. The middleware adds to plain per-route counters on the event
  loop: prometheus-client's own Counter and Histogram take a lock per increment, which costs
  a cheap request several times more (docs/performance.md);
- everything else, read at scrape time from the figures the subsystems keep anyway (JWKS
  state, token cache, stores, event bus, mail.db, supervisors): each plugin contributes its own
  through `register_metrics`, and the request path pays nothing for them.

With several workers (brain.workers), /metrics answers for the whole server whichever worker
takes the scrape: every worker's families are gathered through the master, each sample labelled
`worker="K"` (`sum without (worker)` is the server's figure), beside the master's own
(`brain_workers`, `brain_workers_serving`, `brain_worker_restarts_total`).

Where it is served (`[metrics]`): on a listener of its own when `port` is set (meant for
loopback or a private network), else on the API port (the auth port in an auth-only
process), and there only when a `token` is set. A set token is required wherever /metrics
is served (`Authorization: Bearer <token>`). `Settings.metrics.exposed` is false with
neither, and then neither the route nor the middleware exists.

A built-in plugin of the core: the metrics listener, the /metrics route, the request
middleware on every other served listener, and the process-wide figures.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import Any

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
from brain.errors import StorageFault
from brain.health import server_health
from brain.openapi import error
from brain.plugins import hookimpl
from brain.process import Process
from brain.routes import Components, Listener, Route
from brain.stash import StashKey
from brain.web import UNMATCHED_ATTR, Handler, json_response, require_bearer
from brain.workers.peers import peers_for

log = logging.getLogger("brain.metrics")

PATH = "/metrics"
LISTENER = "metrics"
ROUTE_UNMATCHED = "unmatched"
# Anything else a client sends as a method is counted as OTHER (label values stay bounded).
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# API answers take well under a millisecond; sign-up and sign-in tens of milliseconds (argon2).
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

Middleware = Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]
Source = Callable[[], Iterable[Metric]]

METRICS_TOKEN_SCHEME = {"type": "http", "scheme": "bearer", "description": "The [metrics] token"}
OPERATION: dict[str, Any] = {
    "operationId": "metrics",
    "summary": "Prometheus metrics (text exposition format); needs the metrics token, not a JWT",
    "security": [{"metricsToken": []}],
    "responses": {
        "200": {"description": "OK", "content": {"text/plain": {"schema": {"type": "string"}}}},
        "401": error("Missing or wrong metrics token", "UNAUTHORIZED"),
    },
}


class Metrics:
    """The process's registry, the request middleware of each listener and the /metrics handler."""

    def __init__(self, rt: Process) -> None:
        self.rt = rt
        self.settings = rt.settings.metrics
        self.requests = RequestStats()
        self.collector = BrainCollector()
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(self.requests)
        self.registry.register(self.collector)
        ProcessCollector(registry=self.registry)
        self._token = self.settings.token.encode()
        rt.hook.register_metrics(rt=rt, register=self.collector.register)

    def check_token(self, request: web.Request) -> None:
        """Refuse a request without the metrics token, when one is set (Unauthorized)."""
        if self._token:
            require_bearer(request, self._token, realm="metrics")

    async def handle(self, request: web.Request) -> web.Response:
        """GET /metrics: the exposition; the figures are gathered on a worker thread (mail.db is read)."""
        self.check_token(request)
        loop = asyncio.get_running_loop()
        if self.rt.worker.several:
            found = await peers_for(self.rt).gather("metrics", timeout=5.0)
            registry = CollectorRegistry(auto_describe=False)
            registry.register(_Gathered(found))
            body = await loop.run_in_executor(None, generate_latest, registry)
        else:
            body = await loop.run_in_executor(None, generate_latest, self.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_PLAIN_0_0_4, "Cache-Control": "no-store"})

    async def families(self, _data: object = None) -> list[list[Any]]:
        """This process's families as JSON-able lists (what a gathering worker merges)."""
        collected = await asyncio.get_running_loop().run_in_executor(None, lambda: list(self.registry.collect()))
        return [[f.name, f.type, f.documentation, f.unit, [[s.name, s.labels, s.value] for s in f.samples]]
                for f in collected]


class _Gathered(Collector):
    """Every worker's families, each sample labelled with its worker, and the master's figures."""

    def __init__(self, found: dict[str, Any]) -> None:
        self.found = found

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        merged: dict[str, Metric] = {}
        for index, families in sorted(self.found.items()):
            if index == "master" or not isinstance(families, list):
                continue  # a worker that did not answer is missing from the scrape
            for name, kind, documentation, unit, samples in families:
                family = merged.get(name)
                if family is None:
                    family = merged[name] = Metric(name, documentation, kind, unit)
                for sample_name, labels, value in samples:
                    family.add_sample(sample_name, {**labels, "worker": index}, value)
        yield from merged.values()
        master = self.found.get("master") or {}
        if "workers" in master:
            yield GaugeMetricFamily("brain_workers", "Worker processes the server runs.", value=master["workers"])
            yield GaugeMetricFamily("brain_workers_serving", "Worker processes serving right now.",
                                    value=master["serving"])
            yield CounterMetricFamily("brain_worker_restarts", "Worker (and embedded NATS) restarts by the master.",
                                      value=master["restarts"])


METRICS: StashKey[Metrics] = StashKey("brain.metrics")


def metrics_for(rt: Process) -> Metrics:
    """The process's Metrics (created on first use)."""
    return rt.stash.setdefault(METRICS, lambda: Metrics(rt))


# Hooks ----------------------------------------------------------------------------------------


@hookimpl
def setup_process(rt: Process) -> None:
    """Let the server's /metrics (on whichever worker) read this process's families."""
    if rt.settings.metrics.exposed:
        peers_for(rt).answer("metrics", lambda data: metrics_for(rt).families(data))


@hookimpl
def register_listeners(settings: Any, register: Callable[[Listener], None]) -> None:
    """The separate metrics listener, when `metrics.port` is set (plain http, not described)."""
    if settings.metrics.exposed and settings.metrics.port:
        register(Listener(
            name=LISTENER, host=settings.metrics.host, port=settings.metrics.port, served=True, rank=1000,
            tls=False, access_log=False, documented=False,
        ))


@hookimpl
def register_routes(rt: Process, listener: str, register: Callable[[Route | Components], None]) -> None:
    """GET /metrics on its own listener, or on the main one (then described, with its token scheme)."""
    main = listener == rt.main_listener
    if main:
        register(Components({"securitySchemes": {"metricsToken": METRICS_TOKEN_SCHEME}}))
    settings = rt.settings.metrics
    if not settings.exposed or listener != (LISTENER if settings.port else rt.main_listener):
        return

    async def metrics(request: web.Request) -> web.Response:
        return await metrics_for(rt).handle(request)

    # Public on a guarded listener: the metrics token, not a user's JWT.
    register(Route("GET", PATH, metrics, operation=None if settings.port else OPERATION, public=True))
    if listener == LISTENER:

        async def health_detail(request: web.Request) -> web.Response:
            # /health's detail, to whoever may scrape (the API listener's asks for the token too).
            metrics_for(rt).check_token(request)
            body = await server_health(rt, detail=True)
            return json_response(body, headers={"Cache-Control": "no-store"})

        register(Route("GET", "/health", health_detail, public=True))


@hookimpl
def setup_app(rt: Process, listener: str, app: web.Application) -> None:
    """Measure every request of each served listener but the metrics listener itself."""
    if rt.settings.metrics.exposed and listener != LISTENER:
        app.middlewares.insert(0, metrics_for(rt).requests.middleware(listener))


@hookimpl
def register_metrics(rt: Process, register: Callable[[str, Source], None]) -> None:
    """The build, the roles served, and the supervisors' restarts."""

    def process() -> list[Metric]:
        info = InfoMetricFamily("brain_build", "brain's version and the roles this process serves.")
        info.add_metric([], {"version": brain.__version__, "roles": ",".join(sorted(rt.roles))})
        return [
            info,
            counter("brain_supervisor_restarts", "Actor restarts by any supervisor since start.",
                    supervisor.total_restarts()),
            counter("brain_supervisor_escalations", "Supervisors that gave up (restart intensity exceeded).",
                    supervisor.total_escalations()),
        ]

    register("process", process)


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
    """Reads the plugins' own figures at scrape time; one failing source skips only itself."""

    def __init__(self) -> None:
        self._sources: list[tuple[str, Source]] = []
        self._failing: set[str] = set()

    def register(self, name: str, collect: Source) -> None:
        """Add a source of metric families (the `register_metrics` callback)."""
        self._sources.append((name, collect))

    def describe(self) -> list[Metric]:
        # Families vary with the plugins active in this process; nothing to check names against.
        return []

    def collect(self) -> Iterator[Metric]:
        for name, source in self._sources:
            try:
                families = list(source())
            except Exception as exc:  # noqa: BLE001 - a scrape must not fail for one subsystem
                if name not in self._failing:
                    self._failing.add(name)
                    # A storage fault is counted and explained where it is met: no traceback.
                    log.warning("metrics: reading %s failed: %s", name, exc, exc_info=not isinstance(exc, StorageFault))
                continue
            self._failing.discard(name)
            yield from families


def gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    """A gauge family of one sample (for `register_metrics` sources)."""
    return GaugeMetricFamily(name, documentation, value=value)


def counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    """A counter family of one sample (for `register_metrics` sources)."""
    return CounterMetricFamily(name, documentation, value=value)

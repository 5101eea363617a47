"""The benchmark run: what is measured, in which order, on which servers, against which goals.

Every measurement is guarded: if a feature is missing or a step fails, its figures become
"not measured (reason)" and their targets count as missed; nothing is ever estimated.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import cluster, design_floor, ingest, jetstream, jwt_inprocess, latency, live, mail_convert, scale, search
from bench.baseline import BARE_EVENTS_PATH, BARE_STREAM_PATH, GET_PATH, PAGE_PATH, POST_PATH, page_body
from bench.client import KeepAliveClient
from bench.load import Req, wrk_available
from bench.report import Figure, Target, latency_figure, not_measured, rate_figure
from bench.servers import FAST_ARGON2, PRODUCTION_ARGON2, BaselineServer, bench_config, detail_headers, start_brain, wait_published
from bench.throughput import Case, argon2_baseline, median_cpu, run_interleaved
from bench.users import (
    SIGN_IN, User, create_api_keys, event_body, run_tag, seed_events, sign_in_body, sign_up, sign_up_many,
)
from brain.sections import NatsSettings
from tests.support import REPO, BrainServer

MIB = 1024 * 1024


@dataclass(frozen=True)
class Plan:
    """How much of everything a run does (`full` for `make bench`, `quick` for `make bench-quick`)."""

    name: str
    jwt_samples: int
    latency_samples: int
    latency_warmup: int
    users: int  # the users of every load (100: "spread over 100 users")
    signup_samples: int  # how many of them sign up one by one, timed
    signin_samples: int
    connections: int
    repeats: int
    seconds: float
    warmup_seconds: float
    signin_repeats: int
    signin_seconds: float
    stream_events: int
    ingest_messages: int
    ingest_max_seconds: float  # the rate is taken over what was synced by then if not complete
    scale_users: int
    scale_max_open: int | None  # [api] max_open_stores for the scale run; None: brain's default
    scale_max_seconds: float  # activation stops here even if not every user had its turn
    convert_messages: int  # raw messages converted to the mail model per timed pass
    convert_repeats: int
    live_streams: int  # concurrent event streams on one process
    live_rate: float  # events/s spread over the streams' users
    live_seconds: float
    live_post_seconds: float  # each POST /events run with and without the idle streams
    search_events: int  # the store searched (issue 16 asks for 100,000)
    search_samples: int  # GET /search, and POST /events on each side of the A/B


FULL = Plan(
    name="full", jwt_samples=20_000, latency_samples=1000, latency_warmup=100, users=100, signup_samples=100, signin_samples=200,
    connections=64, repeats=3, seconds=8, warmup_seconds=2, signin_repeats=3, signin_seconds=6,
    stream_events=500, ingest_messages=5000, ingest_max_seconds=120, scale_users=10_000, scale_max_open=None, scale_max_seconds=900,
    convert_messages=1000, convert_repeats=5,
    live_streams=1000, live_rate=500.0, live_seconds=20.0, live_post_seconds=8.0,
    search_events=100_000, search_samples=2000,
)
QUICK = Plan(
    name="quick", jwt_samples=5000, latency_samples=200, latency_warmup=20, users=64, signup_samples=20, signin_samples=20,
    connections=64, repeats=3, seconds=1, warmup_seconds=0, signin_repeats=1, signin_seconds=1,
    stream_events=60, ingest_messages=1000, ingest_max_seconds=3, scale_users=100, scale_max_open=32, scale_max_seconds=10,
    convert_messages=200, convert_repeats=3,
    live_streams=200, live_rate=100.0, live_seconds=3.0, live_post_seconds=1.0,
    search_events=10_000, search_samples=300,
)

# Every figure a run reports, in table order: (key, label, unit).
CATALOGUE: list[tuple[str, str, str]] = [
    ("jwt.uncached", "JWT check in-process, uncached (RS256)", "ms"),
    ("jwt.cached", "JWT check in-process, cached token", "ms"),
    ("client.get", "client overhead: bare aiohttp GET, 1 client", "ms"),
    ("client.post", "client overhead: bare aiohttp POST, 1 client", "ms"),
    ("signup.latency", "sign-up, 1 client", "ms"),
    ("signin.latency", "sign-in, 1 client", "ms"),
    ("me.latency", "GET /me, 1 client", "ms"),
    ("me.apikey.latency", "GET /me with an API key, 1 client", "ms"),
    ("events.post.latency", "POST /events, 1 client", "ms"),
    ("events.get.latency", "GET /events?limit=100, 1 client", "ms"),
    ("me.rps", "GET /me, {conns} conns, {users} users", "req/s"),
    ("me.apikey.rps", "GET /me with API keys, {conns} conns, {users} users", "req/s"),
    ("events.post.rps", "POST /events, {conns} conns, {users} users", "req/s"),
    ("events.get.rps", "GET /events?limit=100, {conns} conns, {users} users", "req/s"),
    ("events.mixed.rps", "GET /events?limit=100, a POST per 4 reads, {conns} conns, {users} users", "req/s"),
    ("jwks.rps", "GET /api/auth/jwks, {conns} conns", "req/s"),
    ("signin.rps", "sign-in, 16 clients", "req/s"),
    ("jetstream.latency", "JetStream: commit -> stored in stream", "ms"),
    ("ingest.rate", "mail ingest, instant fake provider (initial sync)", "msg/s"),
    ("ingest.bodies", "mail ingest with bodies (20 KiB HTML), instant provider", "msg/s"),
    ("ingest.gmail", "mail ingest, Gmail client vs fake Gmail (initial sync)", "msg/s"),
    (mail_convert.KEY, mail_convert.LABEL, "msg/s"),
    ("live.latency", "live stream: commit -> delivered, {streams} streams, {rate} events/s", "ms"),
    ("live.post.rps", "POST /events, {conns} conns, {streams} idle streams open", "req/s"),
    ("workers.post.rps", "POST /events, --workers 2, {conns} conns, {users} users", "req/s"),
    ("workers.post.bare", "POST /events, --workers 2, beside the bare POST", "req/s"),
    ("workers.post.latency", "POST /events, --workers 2, 1 client", "ms"),
    ("workers.me.rps", "GET /me, --workers 2, {conns} conns, {users} users", "req/s"),
    ("workers.get.rps", "GET /events?limit=100, --workers 2, {conns} conns, {users} users", "req/s"),
    ("cluster.post.latency", "cluster: POST /events via another node, 1 client", "ms"),
    ("cluster.me.latency", "cluster: GET /me via another node, 1 client", "ms"),
    ("cluster.confirm.latency", "cluster: POST /events with the 201 after the stream's R3 ack, 1 client", "ms"),
    ("cluster.live.latency", "cluster: POST /events -> on the user's live stream, streamed after the R3 ack", "ms"),
    ("cluster.spread.rps", "cluster: POST /events, {conns} conns spread over 3 nodes, {users} users", "req/s"),
    *search.CATALOGUE,
    ("scale.cold_new", "scale: first request of a new user's store", "ms"),
    ("scale.cold_reopen", "scale: first request, evicted store reopened", "ms"),
    ("scale.fds", "scale: open fds, peak minus idle", "fds"),
    ("scale.threads", "scale: threads, peak minus idle", "threads"),
    ("scale.rss", "scale: RSS growth over the second half", "MiB"),
]

# An evicted store's file descriptors: events.db, its -wal and -shm.
FDS_PER_STORE = 3
FD_SLACK = 64
THREAD_SLACK = 32
RSS_SECOND_HALF_MIB = 32


def targets(max_open_stores: int) -> list[Target]:
    """The goals of issues 3, 4, 5, 7, 15, 16, 17, 18, 19, 20 and 22, judged from this run's figures."""
    fds = FDS_PER_STORE * max_open_stores + FD_SLACK
    threads = max_open_stores + THREAD_SLACK
    return [
        Target("jwt.uncached", "<=", 0.1, text="p50 <= 0.1 ms"),
        Target("jwt.cached", "<=", 0.01, text="p50 <= 0.01 ms"),
        Target("events.post.latency", "<=", 1.0, text="p50 <= 1 ms"),
        # Issue 22: a page of 100 events (~15 KB) from one client.
        Target("events.get.latency", "<=", 0.6, text="p50 <= 0.6 ms"),
        Target("signup.latency", "<=", 50.0, text="p50 <= 50 ms"),
        # Issue 18: the original's 30 ms is below one argon2id verify at OWASP's parameters on
        # this CPU, so the goal is what a sign-in adds to that verify, measured in the same run.
        Target("signin.latency", "<=", 5.0, field="beyond argon2id ms", text="p50 within 5 ms of argon2id verify alone"),
        # Issue 20: "the forward adds <= 1 ms p50 on loopback".
        Target("cluster.post.latency", "<=", 1.0, field="added p50 ms", text="forward adds <= 1 ms p50"),
        Target("signin.rps", ">=", 1.5, field="cpu_utilisation", text="server CPU/wall >= 1.5 (both cores busy)"),
        Target("me.rps", ">=", 0.8, field="ratio", text=">= 0.8x bare GET"),
        # Issue 18: an API key costs a request no more than a JWT does.
        Target("me.apikey.latency", "<=", 1.0, field="ratio", text="p50 <= the JWT's (alternating blocks, same run)"),
        Target("me.apikey.rps", ">=", 1.0, field="ratio", text=">= JWT GET /me (interleaved runs)"),
        Target("events.post.rps", ">=", 0.5, field="ratio", text=">= 0.5x bare POST"),
        # Issue 22: the read path against the bare GET of a prebuilt page of the same bytes.
        Target("events.get.rps", ">=", 0.5, field="ratio", text=">= 0.5x bare GET of a prebuilt page"),
        Target("ingest.rate", ">=", 2000.0, text=">= 2,000 msg/s"),
        Target("ingest.bodies", ">=", 1000.0, text=">= 1,000 msg/s"),
        # Issue 17: the live stream on one process.
        Target("live.latency", "<=", 5.0, text="p50 <= 5 ms"),
        Target("live.latency", "<=", 50.0, field="p99", text="p99 <= 50 ms"),
        Target("live.post.rps", ">=", 0.9, field="ratio", text=">= 0.9x without the streams (alternating runs)"),
        mail_convert.TARGET,
        # Issue 19: every core.
        Target("workers.post.rps", ">=", 1.6, field="ratio", text=">= 1.6x --workers 1 (same run)"),
        Target("workers.post.bare", ">=", 0.7, field="ratio", text=">= 0.7x bare single-process POST"),
        Target("workers.post.latency", "<=", 0.6, text="p50 <= 0.6 ms"),
        Target("workers.me.rps", ">=", 1.0, field="ratio", text=">= 1.0x bare single-process GET"),
        *search.TARGETS,
        Target("scale.fds", "<=", fds, text=f"<= {FDS_PER_STORE}x max_open_stores + {FD_SLACK} = {fds}"),
        Target("scale.threads", "<=", threads, text=f"<= max_open_stores + {THREAD_SLACK} = {threads}"),
        Target("scale.rss", "<=", RSS_SECOND_HALF_MIB, text=f"<= {RSS_SECOND_HALF_MIB} MiB (flat once stores are capped)"),
    ]


def _say(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class Run:
    """One benchmark run: its servers, users and figures."""

    def __init__(self, plan: Plan, *, only: Sequence[str] = (), overrides: dict[str, dict[str, Any]] | None = None) -> None:
        self.plan = plan
        self.only = set(only)
        # brain settings the caller changes for an experiment (`--set`), applied last everywhere.
        self.overrides = overrides or {}
        self.figures: dict[str, Figure] = {}
        self.tag = run_tag()
        self.workdir = Path(tempfile.mkdtemp(prefix="brain-bench-"))
        self.users: list[User] = []
        self.key_auths: list[str] = []  # `Bearer <API key>` of each user, same order
        self.meta: dict[str, Any] = {}
        self.labels = {
            key: (label.format(users=plan.users, conns=plan.connections, streams=f"{plan.live_streams:,}",
                               rate=f"{plan.live_rate:g}", events=f"{plan.search_events:,}"), unit)
            for key, label, unit in CATALOGUE
        }
        self.max_open_stores = self.overrides.get("api", {}).get("max_open_stores") or plan.scale_max_open or _default_max_open_stores()

    # -- bookkeeping -------------------------------------------------------------------

    def wanted(self, section: str) -> bool:
        """Whether this run includes a section (all, unless --only narrowed it)."""
        return not self.only or section in self.only

    def put(self, fig: Figure) -> None:
        """Record a figure."""
        self.figures[fig.key] = fig

    def miss(self, keys: Sequence[str], reason: str) -> None:
        """Record every figure in keys that is still missing as not measured."""
        for key in keys:
            if key not in self.figures:
                label, unit = self.labels[key]
                self.figures[key] = not_measured(key, label, unit, reason)

    @contextmanager
    def step(self, keys: Sequence[str], what: str) -> Iterator[None]:
        """Run a measurement step; any failure leaves its figures "not measured (reason)"."""
        _say(what)
        try:
            yield
        except Exception as exc:  # noqa: BLE001 - the reason goes into the report
            reason = _reason(exc)
            _say(f"{what}: not measured: {reason}")
            if os.environ.get("BENCH_TRACEBACK"):
                traceback.print_exc()
            self.miss(keys, reason)

    def latency(self, key: str, seconds: list[float], *, note: str = "") -> Figure:
        """Record a latency figure under its catalogue label."""
        label, unit = self.labels[key]
        fig = latency_figure(key, label, seconds, note=note, unit=unit)
        self.put(fig)
        return fig

    def rate(self, key: str, runs: list[float], *, baseline: Case | None = None, baseline_label: str | None = None,
             note: str = "") -> Figure:
        """Record a throughput figure beside its baseline."""
        label, unit = self.labels[key]
        fig = rate_figure(
            key, label, unit, runs, baseline_runs=baseline.rates if baseline else (), baseline_label=baseline_label, note=note
        )
        self.put(fig)
        return fig

    def config(self, argon2: dict[str, int], extra: dict[str, Any]) -> dict[str, dict[str, Any]]:
        """A server's settings: the benchmark's, this server's, then the caller's overrides."""
        merged = {section: dict(values) for section, values in extra.items()}
        for section, values in self.overrides.items():
            merged.setdefault(section, {}).update(values)
        return bench_config(argon2=argon2, extra=merged)

    # -- the run -----------------------------------------------------------------------

    def execute(self) -> None:
        """Everything, in order; figures of sections not run are reported as not measured."""
        self.meta = _environment(self.plan)
        self.meta["overrides"] = self.overrides
        try:
            if self.wanted("jwt"):
                self.jwt()
            if self.wanted("mail"):
                self.mail_conversion()
            if self.wanted("http") or self.wanted("stream") or self.wanted("ingest"):
                self.main_server()
            if self.wanted("live"):
                self.live()
            if self.wanted("workers"):
                self.workers()
            if self.wanted("cluster"):
                self.cluster()
            if self.wanted("search"):
                self.search()
            if self.wanted("scale"):
                self.scale()
        finally:
            self.meta["loadavg_end"] = _loadavg()
            self.meta["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            shutil.rmtree(self.workdir, ignore_errors=True)
        self.miss([k for k, _, _ in CATALOGUE], "not run (excluded with --only)")

    def jwt(self) -> None:
        """JWT validation in-process."""
        with self.step(["jwt.uncached", "jwt.cached"], "JWT validation in-process"):
            timings = jwt_inprocess.measure(self.plan.jwt_samples)
            fig = self.latency("jwt.uncached", timings.uncached, note="brain.api.verifier.TokenVerifier.verify, every check")
            fig.baseline = latency_figure("sig", "sig", timings.signature_only).value
            fig.baseline_label = "the RS256 signature check alone (cryptography), same tokens, alternated"
            self.latency("jwt.cached", timings.cached, note="TokenVerifier.authenticate, token in the cache")

    def mail_conversion(self) -> None:
        """Raw MIME -> the mail model in-process, on one core, beside the stdlib parse alone."""
        with self.step([mail_convert.KEY], f"mail conversion x{self.plan.convert_messages}, one core"):
            self.put(mail_convert.figure(mail_convert.measure(self.plan.convert_messages, self.plan.convert_repeats)))

    def search(self) -> None:
        """Backfill, search latency and the index's cost to a write, on a store of mixed notes and mail."""
        plan = self.plan
        with self.step(list(search.KEYS), f"search over {plan.search_events:,} events"):
            result = search.measure(self.workdir / "search", events=plan.search_events, samples=plan.search_samples,
                                    post_samples=plan.search_samples, progress=_say, overrides=self.overrides)
            for fig in search.figures(result, self.labels):
                self.put(fig)

    def main_server(self) -> None:
        """The HTTP, JetStream and ingest figures, against one brain and one baseline process."""
        http_keys = [k for k, _, _ in CATALOGUE if k.split(".")[0] in ("client", "signup", "signin", "me", "events", "jwks")]
        fake = None
        try:
            with self.step(["ingest.gmail"], f"fake Gmail with {self.plan.ingest_messages} messages"):
                if self.wanted("ingest"):
                    fake = ingest.start_fake_gmail(self.plan.ingest_messages)
            extra: dict[str, Any] = {}
            env: dict[str, str] = {}
            if self.wanted("ingest"):
                extra["plugins"] = {name: {"messages": self.plan.ingest_messages} for name in ("instant", "instant_html")}
                env = ingest.instant_env()
            if fake is not None:
                extra["plugins"]["gmail"] = ingest.gmail_settings(fake)
            config = self.config(PRODUCTION_ARGON2, extra)
            self.meta["brain_config"] = config
            with self.step(http_keys + ["jetstream.latency", "ingest.rate", "ingest.bodies", "ingest.gmail"],
                           "starting brain (auth+api) and the baseline"):
                brain = start_brain(self.workdir / "main", config=config, env=env)
                try:
                    floor_dir = self.workdir / "floor"
                    floor_dir.mkdir(parents=True, exist_ok=True)
                    with BaselineServer(floor_dir=str(floor_dir)) as base:
                        self.meta["brain_pid"], self.meta["baseline_pid"] = brain.proc.pid, base.pid
                        if self.wanted("http"):
                            self.http(brain, base)
                        else:
                            self.users = sign_up_many(brain.auth_port, self.tag, range(3))  # one per ingest
                        if self.wanted("stream"):
                            self.stream(brain)
                        if self.wanted("ingest"):
                            self.ingest(brain, "ingest.rate", ingest.INSTANT_CONNECT, user=0,
                                        note="a provider that answers at once, no I/O: brain's own pipeline")
                            self.ingest(brain, "ingest.bodies", ingest.INSTANT_HTML_CONNECT, user=2,
                                        note="the same with bodies: HTML converted to text, events of ~20 KB")
                        if self.wanted("ingest") and fake is not None:
                            self.ingest(brain, "ingest.gmail", ingest.gmail_connect(fake), user=1,
                                        note="google-api-python-client batches against the fake; quota pacing lifted")
                finally:
                    brain.close()
        finally:
            if fake is not None:
                fake.stop()

    def http(self, brain: BrainServer, base: BaselineServer) -> None:
        """Single-client latencies, then throughput beside the baselines."""
        plan = self.plan
        n, warm = plan.latency_samples, plan.latency_warmup
        with self.step(["client.get", "client.post"], "client overhead against the bare baseline"):
            get, post = latency.bare(base.port, samples=n, warmup=warm)
            self.latency("client.get", get, note="raw socket keep-alive client + bare aiohttp: the floor")
            self.latency("client.post", post)
        with self.step(["signup.latency"], f"sign-up x{plan.signup_samples}, one client"):
            self.users, took = latency.sign_ups(brain.auth_port, self.tag, plan.signup_samples)
            if len(self.users) < plan.users:
                _say(f"signing up {plan.users - len(self.users)} more users (untimed, 4 clients)")
                self.users += sign_up_many(brain.auth_port, self.tag, range(len(self.users), plan.users))
            argon = brain.config["auth"]
            self.latency(
                "signup.latency", took,
                note=f"argon2id m={argon['argon2_memory_kib']} KiB t={argon['argon2_time_cost']} p=1 (production)",
            )
        if not self.users:
            self.miss(
                ["signin.latency", "me.latency", "me.apikey.latency", "events.post.latency", "events.get.latency", "me.rps",
                 "me.apikey.rps",
                 "events.post.rps", "events.get.rps", "events.mixed.rps", "signin.rps", "jetstream.latency", "ingest.rate",
                 "ingest.bodies",
                 "ingest.gmail"],
                "no users: sign-up failed",
            )
        else:
            with self.step(["signin.latency"], "sign-in, one client, beside argon2id verify alone"):
                auth = brain.config["auth"]
                paired = latency.sign_ins_beside_argon2(
                    brain.auth_port, self.users, samples=plan.signin_samples, memory_kib=auth["argon2_memory_kib"],
                    time_cost=auth["argon2_time_cost"], parallelism=auth.get("argon2_parallelism", 1),
                )
                fig = self.latency(
                    "signin.latency", paired.times,
                    note="argon2id verify alone: same parameters, in the bench's process, blocks alternating with the sign-ins",
                )
                alone_p50 = statistics.median(paired.bare) * 1000.0
                fig.extra["argon2id verify alone p50"] = round(alone_p50, 2)
                fig.extra["beyond argon2id ms"] = round(fig.value - alone_p50, 2)
            self.api_latencies(brain, base)
        self.throughput(brain, base)
        if self.users:
            self.sign_in_load(brain)

    def api_latencies(self, brain: BrainServer, base: BaselineServer) -> None:
        """GET /me (JWT, then API key beside JWT), POST /events and GET /events?limit=100 from one
        client, each beside bare requests."""
        n, warm, user = self.plan.latency_samples, self.plan.latency_warmup, self.users[0]
        port, bare = brain.api_port, base.port
        with self.step(["me.latency"], "GET /me, one client"):
            self._paired("me.latency", latency.get_me(port, user, samples=n, warmup=warm, bare_port=bare), "GET")
        with self.step(["me.apikey.latency", "me.apikey.rps"], f"API keys for {len(self.users)} users"):
            self.key_auths = create_api_keys(brain.auth_port, self.users)
        if self.key_auths:
            with self.step(["me.apikey.latency"], "GET /me with an API key beside GET /me with a JWT, one client"):
                got = latency.get_me_with_key(port, user, self.key_auths[0], samples=n, warmup=warm)
                fig = self.latency("me.apikey.latency", got.times, note="Authorization: Bearer <key>, key cached")
                fig.baseline = latency_figure("jwt", "jwt", got.bare).value
                fig.baseline_label = "GET /me with the same user's JWT, alternating blocks, same server"
        with self.step(["events.post.latency"], "POST /events, one client"):
            self._paired("events.post.latency", latency.post_events(port, user, samples=n, warmup=warm, bare_port=bare), "POST")
        with self.step(["events.get.latency"], "GET /events?limit=100, one client"):
            seed_events(port, [user])
            wait_published(brain)
            got = latency.get_events(port, user, limit=100, samples=n, warmup=warm, bare_port=bare)
            self._paired("events.get.latency", got, "GET")

    def _paired(self, key: str, measured: latency.Paired, method: str) -> None:
        """Record a latency with the bare requests alternated with it: their p50 and the net p50."""
        fig = self.latency(key, measured.times)
        if measured.bare:
            bare_p50 = latency_figure("bare", "bare", measured.bare).value
            fig.extra[f"bare {method} p50 (alternating blocks)"] = round(bare_p50, 4)
            fig.extra["p50 net of bare"] = round(fig.value - bare_p50, 4)

    def throughput(self, brain: BrainServer, base: BaselineServer) -> None:
        """GET /me, POST /events, GET /events, JWKS at 64 connections, interleaved with the baselines."""
        plan = self.plan
        rate_keys = ["me.rps", "me.apikey.rps", "events.post.rps", "events.get.rps", "events.mixed.rps", "jwks.rps"]
        if wrk_available() is None:
            self.miss(rate_keys + ["signin.rps"], "wrk is not installed (apt-get install wrk)")
            return
        conns = plan.connections
        bare_get = Case("bare.get", base.port, [Req("GET", GET_PATH)], conns, pid=base.pid)
        bare_post = Case("bare.post", base.port, [Req("POST", POST_PATH, "", event_body(1))], conns, pid=base.pid)
        # The read floor (issue 22): a page of events like the seeded users', prebuilt, no store.
        bare_page = Case("bare.page", base.port, [Req("GET", PAGE_PATH)], conns, pid=base.pid)
        cases = [bare_get, bare_post, bare_page]
        jwks = Case("jwks.rps", brain.auth_port, [Req("GET", "/api/auth/jwks")], conns, pid=brain.proc.pid)
        cases.append(jwks)
        if self.users:
            auths = [u.authorization for u in self.users]
            with self.step(["events.get.rps"], f"seeding 100 events for each of {len(self.users)} users"):
                seed_events(brain.api_port, self.users)
            cases += [
                # The architecture's floor (bench.floor): bare POST + one SQLite commit on a thread per user.
                Case("floor.thread", base.port,
                     [Req("POST", f"/floor/thread/u{i}", "", event_body(i)) for i in range(len(auths))], conns, pid=base.pid),
                Case("me.rps", brain.api_port, [Req("GET", "/me", a) for a in auths], conns, pid=brain.proc.pid),
                Case("events.post.rps", brain.api_port,
                     [Req("POST", "/events", a, event_body(i)) for i, a in enumerate(auths)], conns, pid=brain.proc.pid),
            ]
            if self.key_auths:
                cases.append(Case("me.apikey.rps", brain.api_port, [Req("GET", "/me", k) for k in self.key_auths], conns,
                                  pid=brain.proc.pid))
            if "events.get.rps" not in self.figures:
                cases.append(Case("events.get.rps", brain.api_port,
                                  [Req("GET", "/events?limit=100", a) for a in auths], conns, pid=brain.proc.pid))
            if "events.mixed.rps" not in self.figures:
                # Reads after writes (issue 22): each user's newest page is read 4 times, then
                # written to, so a fifth of the requests are POSTs and every write is read after.
                reads = [Req("GET", "/events?limit=100", a) for _ in range(4) for a in auths]
                writes = [Req("POST", "/events", a, event_body(i)) for i, a in enumerate(auths)]
                cases.append(Case("events.mixed.rps", brain.api_port, reads + writes, conns, pid=brain.proc.pid))
        _say(f"throughput: {len(cases)} cases x {plan.repeats} runs of {plan.seconds:.0f}s at {conns} connections")
        run_interleaved(cases, repeats=plan.repeats, duration=plan.seconds, warmup=plan.warmup_seconds, progress=_say)
        for case in cases:
            if case.key.startswith(("bare.", "floor.")) or case.error is None:
                continue
            self.miss([case.key], case.error)
        for name, case in (("bare GET", bare_get), ("bare POST", bare_post), ("bare page GET", bare_page)):
            if case.error is not None:
                self.miss(rate_keys, f"the {name} baseline failed: {case.error}")
        floor = next((c for c in cases if c.key == "floor.thread"), None)
        jwt_me = next((c for c in cases if c.key == "me.rps"), None)
        for case in cases:
            if case.key.startswith(("bare.", "floor.")) or case.key in self.figures:
                continue
            if case.key == "events.post.rps":
                baseline, label = bare_post, "bare aiohttp JSON POST"
            elif case.key in ("events.get.rps", "events.mixed.rps"):
                baseline, label = bare_page, f"bare aiohttp GET of a prebuilt {len(page_body()) / 1000:.1f} KB page"
            elif case.key == "me.apikey.rps" and jwt_me is not None and jwt_me.error is None:
                baseline, label = jwt_me, "GET /me with JWTs"
            else:
                baseline, label = bare_get, "bare aiohttp GET"
            fig = self.rate(case.key, case.rates, baseline=baseline, baseline_label=f"{label}, {conns} conns, same run")
            # A server that cannot use a whole core under this load is waiting on something; the
            # baseline's figure says what one core was worth right then.
            for name, source in (("server CPU/wall", case), ("baseline CPU/wall", baseline)):
                cpu = median_cpu(source)
                if cpu is not None:
                    fig.extra[name] = round(cpu, 2)
            if case.key in ("me.apikey.rps", "events.get.rps") and bare_get.rates:
                fig.extra["ratio to bare GET"] = round(statistics.median(case.rates) / statistics.median(bare_get.rates), 2)
            if case.key == "events.post.rps" and floor is not None and floor.rates and bare_post.rates:
                # What the parts alone allow: no token, validation, outbox or JetStream (bench.floor).
                ratio = statistics.median(floor.rates) / statistics.median(bare_post.rates)
                fig.extra["floor: bare POST + SQLite commit on a thread per user, ratio"] = round(ratio, 2)
        self.miss(rate_keys, "no users: sign-up failed")

    def sign_in_load(self, brain: BrainServer) -> None:
        """Sign-in with 16 clients: throughput and whether hashing keeps both cores busy."""
        plan = self.plan
        with self.step(["signin.rps"], f"sign-in, 16 clients, {plan.signin_repeats} x {plan.signin_seconds:.0f}s"):
            if wrk_available() is None:
                raise RuntimeError("wrk is not installed (apt-get install wrk)")
            case = Case("signin.rps", brain.auth_port,
                        [Req("POST", SIGN_IN, "", sign_in_body(u)) for u in self.users], 16, pid=brain.proc.pid)
            auth = brain.config["auth"]
            workers = int(auth.get("hash_workers", _default_hash_workers()))
            baseline: list[tuple[float, float]] = []
            # Alternate brain and the hashing-only baseline, so outside load falls on both.
            for r in range(plan.signin_repeats):
                _say(f"run {r + 1}/{plan.signin_repeats} sign-in, then argon2id alone")
                case.run(plan.signin_seconds)
                if case.error is not None:
                    raise RuntimeError(case.error)
                baseline.append(argon2_baseline(
                    seconds=plan.signin_seconds, threads=workers, memory_kib=auth["argon2_memory_kib"],
                    time_cost=auth["argon2_time_cost"], parallelism=auth.get("argon2_parallelism", 1),
                ))
            rates = [rate for rate, _cpu in baseline]
            label, unit = self.labels["signin.rps"]
            fig = rate_figure(
                "signin.rps", label, unit, case.rates, baseline_runs=rates,
                baseline_label=f"argon2id verify alone on {workers} threads (hash_workers), same params, own process",
            )
            cpu = median_cpu(case)
            fig.extra["cpu_utilisation"] = round(cpu, 2) if cpu is not None else None
            # What the hashing-only process got of the machine: under outside load, brain cannot
            # be expected to get more.
            fig.extra["baseline CPU/wall"] = round(statistics.median(c for _r, c in baseline), 2)
            fig.note = "cpu_utilisation = server process CPU time / wall time (2.0 = both cores)"
            self.put(fig)

    def stream(self, brain: BrainServer) -> None:
        """JetStream commit-to-stream latency."""
        plan = self.plan
        with self.step(["jetstream.latency"], f"JetStream: {plan.stream_events} events, commit -> stream"):
            if not self.users:
                raise RuntimeError("no users: sign-up failed")
            url = brain.nats_url()  # the embedded server's, with the credential from the data dir
            nats_defaults = NatsSettings()
            timings = asyncio.run(jetstream.measure(
                nats_url=url, stream=nats_defaults.stream, subject_prefix=nats_defaults.subject_prefix,
                api_port=brain.api_port, user=self.users[-1], marker=self.tag, count=plan.stream_events,
            ))
            if not timings.stored:
                raise RuntimeError(f"none of {plan.stream_events} events reached the stream")
            fig = self.latency(
                "jetstream.latency", timings.stored,
                note="stream timestamp minus the event's created_at (brain's clock as it writes the event, just "
                     "before the commit); one event per 10 ms",
            )
            fig.extra["to subscriber p50 ms"] = round(latency_figure("x", "x", timings.delivered).value, 3)
            if timings.lost:
                fig.extra["not seen within 15 s"] = timings.lost

    def ingest(self, brain: BrainServer, key: str, connect_body: dict[str, Any], *, user: int, note: str) -> None:
        """Mail ingest rate of one provider."""
        with self.step([key], f"mail ingest ({connect_body['provider']}): initial sync of {self.plan.ingest_messages} messages"):
            if not self.users:
                raise RuntimeError("no users: sign-up failed")
            owner = self.users[user % len(self.users)]
            nats_defaults, url = NatsSettings(), brain.nats_url()
            subject = f"{nats_defaults.subject_prefix}.{owner.id}.mail.message.received"
            result = ingest.measure(
                brain.api_port, brain.proc.pid, owner, connect_body,
                messages=self.plan.ingest_messages, max_seconds=self.plan.ingest_max_seconds,
                streamed=lambda: jetstream.subject_count(nats_url=url, stream=nats_defaults.stream, subject=subject),
            )
            label, unit = self.labels[key]
            fig = Figure(key=key, label=label, unit=unit, value=result.rate, samples=1)
            fig.extra["messages"] = result.messages
            fig.extra["seconds"] = round(result.seconds, 2)
            fig.extra["brain CPU/wall"] = round(result.brain_cpu, 2)
            fig.extra["harness CPU/wall"] = round(result.fake_cpu, 2)
            fig.extra["brain CPU ms/msg (with its workers and NATS)"] = round(result.cpu_ms_per_message, 3)
            if result.written_bytes is not None:
                fig.extra["brain MB written"] = round(result.written_bytes / 1e6)
            if result.streamed_rate is not None:
                fig.extra["all in JetStream after s"] = round(result.streamed_seconds or 0.0, 2)
                fig.extra["msg/s into JetStream"] = round(result.streamed_rate)
            elif result.complete:
                fig.extra["all in JetStream"] = "not within twice the time cap"
            fig.note = note + "; connect -> /mail/status complete"
            if not result.complete:
                fig.note += f"; time cap: rate over the {result.messages} synced by {result.seconds:.1f}s"
            self.put(fig)

    def live(self) -> None:
        """1,000 event streams on one process: commit -> delivered, and POST /events beside them."""
        plan = self.plan
        keys = ["live.latency", "live.post.rps"]
        with self.step(keys, f"live: {plan.live_streams} streams on an API-only server"):
            issuer = _fake_issuer(self.tag)
            if issuer is None:
                raise RuntimeError("tests/fakes/issuer.py is needed to mint a thousand users' tokens")
            fake, mint = issuer
            try:
                # Every streaming user writes: their stores all stay open (see bench/live.py).
                api = {"issuer": fake.issuer, "max_open_stores": plan.live_streams + plan.users + 64}
                config = self.config(FAST_ARGON2, {"api": api})
                self.meta["live_config"] = config
                brain = start_brain(self.workdir / "live", config=config, roles="api",
                                    env={"AUTH_SERVER_URL": fake.base_url})
                try:
                    self._live_figures(brain, mint)
                finally:
                    brain.close()
            finally:
                fake.stop()

    def _live_figures(self, brain: BrainServer, mint: scale.TokenSource) -> None:
        plan = self.plan
        with self.step(["live.latency"], f"live: commit -> delivered, {plan.live_rate:g} events/s, beside the bare stream"):
            auths = [mint(i) for i in range(plan.live_streams)]
            _say(f"creating {len(auths)} users' stores (one event each, untimed)")
            live.create_stores(brain.api_port, auths)
            with BaselineServer() as base:
                got = live.measure_delivery(
                    [live.StreamTarget("brain", brain.api_port, auths),
                     live.StreamTarget("bare", base.port, auths, BARE_STREAM_PATH, BARE_EVENTS_PATH)],
                    self.workdir, rate=plan.live_rate, seconds=plan.live_seconds * 2, progress=_say,
                )
            mine, bare = got["brain"], got["bare"]
            if not mine.latencies or not bare.latencies:
                raise RuntimeError(f"no event arrived (brain: {mine.posted} posted, {mine.post_errors} failed; "
                                   f"bare: {bare.posted} posted, {bare.post_errors} failed)")
            fig = self.latency("live.latency", mine.latencies,
                               note="arrival in a separate holder process minus the event's created_at (brain's clock "
                                    "as it writes the event); open-loop posts round-robin over the streams' users, "
                                    "switching between brain and the bare stream every second")
            floor = latency_figure("bare", "bare", bare.latencies)
            fig.baseline, fig.baseline_label = floor.value, (
                "bare aiohttp: POST written at once to the poster's open stream (bench.baseline), same holder and "
                "poster, alternating seconds; p50")
            fig.extra.update({
                "bare p99 ms": round(floor.p99 or 0, 3), "events posted": mine.posted, "post errors": mine.post_errors,
                "lost": mine.lost, "duplicates": mine.duplicates, "on another user's stream": mine.misrouted,
                "achieved events/s": round(mine.achieved_rate, 1),
                "bare lost": bare.lost + bare.post_errors,
            })
        if wrk_available() is None:
            self.miss(["live.post.rps"], "wrk is not installed (apt-get install wrk)")
            return
        with self.step(["live.post.rps"], f"live: POST /events with and without {plan.live_streams} idle streams"):
            runs = live.measure_post_throughput(
                brain.api_port, mint, self.workdir, posters=plan.users, streams=plan.live_streams,
                connections=plan.connections, repeats=plan.repeats, seconds=plan.live_post_seconds, progress=_say,
            )
            fig = rate_figure(
                "live.post.rps", *self.labels["live.post.rps"], runs.with_streams, baseline_runs=runs.without,
                baseline_label=f"the same POST /events without the streams, alternating runs, {plan.users} users",
            )
            fig.note = "streams belong to other users than the posters (idle: no event for them)"
            self.put(fig)

    def workers(self) -> None:
        """`--workers 2` beside `--workers 1` and the bare single process, all up at once: POST
        /events, GET /events and GET /me at 64 connections (interleaved runs), and one client's POST."""
        plan = self.plan
        keys = ["workers.post.rps", "workers.post.bare", "workers.post.latency", "workers.me.rps", "workers.get.rps"]
        with self.step(keys, "--workers 2 beside --workers 1 and the bare baseline"), ExitStack() as stack:
            if wrk_available() is None:
                raise RuntimeError("wrk is not installed (apt-get install wrk)")
            servers = {}
            for count in (1, 2):
                config = self.config(FAST_ARGON2, {"server": {"workers": count}})
                self.meta[f"workers{count}_config"] = config
                servers[count] = start_brain(self.workdir / f"workers{count}", config=config)
                stack.callback(servers[count].close)
            base = stack.enter_context(BaselineServer())
            # The least this design costs in Python on 2 processes (bench.design_floor): a ceiling
            # for the --workers 2 figure on this machine, measured in the same runs.
            floor = stack.enter_context(design_floor.DesignFloor(self.workdir / "design_floor", 2))
            _say(f"signing up {plan.users} users on each server (fast argon2, untimed)")
            users = {n: sign_up_many(server.auth_port, f"{self.tag}w{n}", range(plan.users)) for n, server in servers.items()}
            with self.step(["workers.post.latency"], "POST /events, --workers 2, one client"):
                got = latency.post_events(servers[2].api_port, users[2][0], samples=plan.latency_samples,
                                          warmup=plan.latency_warmup, bare_port=base.port)
                self._paired("workers.post.latency", got, "POST")

            _say("seeding 100 events for each user on each server (untimed)")
            for count, server in servers.items():
                seed_events(server.api_port, users[count])
                wait_published(server)

            def posts(count: int) -> list[Req]:
                return [Req("POST", "/events", u.authorization, event_body(i)) for i, u in enumerate(users[count])]

            def pages(count: int) -> list[Req]:
                return [Req("GET", "/events?limit=100", u.authorization) for u in users[count]]

            conns = plan.connections
            bare_get = Case("bare.get", base.port, [Req("GET", GET_PATH)], conns, pid=base.pid)
            bare_post = Case("bare.post", base.port, [Req("POST", POST_PATH, "", event_body(1))], conns, pid=base.pid)
            one = Case("workers1.post", servers[1].api_port, posts(1), conns)
            two = Case("workers2.post", servers[2].api_port, posts(2), conns)
            me = Case("workers2.me", servers[2].api_port, [Req("GET", "/me", u.authorization) for u in users[2]], conns)
            # Pages are full (limit 100) from the seeding on: the POST runs only add events beyond them.
            get_one = Case("workers1.get", servers[1].api_port, pages(1), conns)
            get_two = Case("workers2.get", servers[2].api_port, pages(2), conns)
            design = Case("floor.workers2", floor.port, design_floor.requests(plan.users), conns)
            cases = [bare_post, one, two, design, bare_get, me, get_one, get_two]
            _say(f"workers: {len(cases)} cases x {plan.repeats} runs of {plan.seconds:.0f}s at {conns} connections")
            run_interleaved(cases, repeats=plan.repeats, duration=plan.seconds, warmup=plan.warmup_seconds, progress=_say)
            failed = [f"{c.key}: {c.error}" for c in cases if c.error is not None and c is not design]
            if failed:
                raise RuntimeError("; ".join(failed))
            same = f"{conns} conns, same run"
            self.rate("workers.post.rps", two.rates, baseline=one, baseline_label=f"POST /events, --workers 1, {same}",
                      note="JetStream publishing on in both; 2 workers on a 2-core machine shared with wrk")
            fig = self.rate("workers.post.bare", two.rates, baseline=bare_post,
                            baseline_label=f"bare aiohttp JSON POST, one process, {same}")
            fig.extra["--workers 1 ratio to bare POST"] = round(statistics.median(one.rates) / fig.baseline, 2)
            fig.extra["design floor, 2 processes (bench.design_floor), ratio to bare POST"] = (
                round(statistics.median(design.rates) / fig.baseline, 2) if design.rates and design.error is None
                else f"not measured ({design.error})"
            )
            self.rate("workers.me.rps", me.rates, baseline=bare_get, baseline_label=f"bare aiohttp GET, one process, {same}")
            self.rate("workers.get.rps", get_two.rates, baseline=get_one,
                      baseline_label=f"GET /events?limit=100, --workers 1, {same}")

    def cluster(self) -> None:
        """Issue 20: what forwarding to the user's node adds, on a 3-server NATS cluster (bench/cluster.py)."""
        plan = self.plan
        keys = ["cluster.post.latency", "cluster.me.latency", "cluster.confirm.latency", "cluster.live.latency"]
        with self.step(keys, "cluster: requests via another node vs to the user's node, 3 nats-servers, R3"):
            got = cluster.measure(
                self.workdir / "cluster", lambda extra: self.config(FAST_ARGON2, extra), self.tag,
                samples=plan.latency_samples, warmup=plan.latency_warmup, progress=_say,
            )
            for key, forwarded, direct in (("cluster.post.latency", got.post_forwarded, got.post_direct),
                                           ("cluster.me.latency", got.me_forwarded, got.me_direct)):
                fig = self.latency(key, forwarded, note="node b sends it to node a over NATS request/reply; "
                                                        "a replays it on its own listener (docs/cluster.md)")
                floor = latency_figure("direct", "direct", direct)
                fig.baseline = floor.value
                fig.baseline_label = "the same request sent to node a directly, alternating blocks; p50"
                fig.extra["added p50 ms"] = round((fig.value or 0) - (floor.value or 0), 3)
                fig.extra["added p99 ms"] = round((fig.p99 or 0) - (floor.p99 or 0), 3)
            fig = self.latency("cluster.confirm.latency", got.post_confirmed,
                               note="node a answers once JetStream acknowledged the event (R3: on 2 of 3 servers); "
                                    "docs/cluster.md")
            floor = latency_figure("unconfirmed", "unconfirmed", got.post_unconfirmed)
            fig.baseline = floor.value
            fig.baseline_label = "the same POST to node b (cluster.confirm_writes = false), alternating blocks; p50"
            fig.extra["added p50 ms"] = round((fig.value or 0) - (floor.value or 0), 3)
            fig.extra["added p99 ms"] = round((fig.p99 or 0) - (floor.p99 or 0), 3)
            fig = self.latency("cluster.live.latency", got.live_confirmed,
                               note="sent to node a -> the event on the user's GET /events/stream on a, which streams "
                                    "it once JetStream acknowledged it (docs/cluster.md)")
            floor = latency_figure("unconfirmed", "unconfirmed", got.live_unconfirmed)
            fig.baseline = floor.value
            fig.baseline_label = ("the same on node b (cluster.confirm_writes = false: streamed once committed), "
                                  "alternating blocks; p50")
            fig.extra["added p50 ms"] = round((fig.value or 0) - (floor.value or 0), 3)
            fig.extra["added p99 ms"] = round((fig.p99 or 0) - (floor.p99 or 0), 3)
        if wrk_available() is None:
            self.miss(["cluster.spread.rps"], "wrk is not installed (apt-get install wrk)")
            return
        with self.step(["cluster.spread.rps"], "cluster: POST /events spread over 3 nodes vs 1 node, alternating runs"):
            rates = cluster.spread(
                self.workdir / "cluster-spread", lambda extra: self.config(FAST_ARGON2, extra), self.tag,
                users=plan.users, connections=plan.connections, seconds=plan.seconds, repeats=plan.repeats,
                progress=_say,
            )
            fig = rate_figure(
                "cluster.spread.rps", *self.labels["cluster.spread.rps"], rates.three, baseline_runs=rates.one,
                baseline_label=f"the same load on node a alone, for {plan.users} users placed there; alternating runs",
            )
            fig.note = ("three wrk processes, one per node, a third of the connections each; users placed one third "
                        "on each node, so two requests in three are forwarded; every node answers after the R3 ack")
            self.put(fig)

    def scale(self) -> None:
        """Activate many users' stores in turn on an API-only server."""
        plan = self.plan
        keys = ["scale.cold_new", "scale.cold_reopen", "scale.fds", "scale.threads", "scale.rss"]
        with self.step(keys, f"scale: {plan.scale_users} users' stores, one after another"):
            source, brain, note, cleanup = self._scale_server()
            try:
                result = scale.measure(
                    pid=brain.proc.pid, api_port=brain.api_port, detail_headers=detail_headers(brain), tokens=source,
                    users=plan.scale_users,
                    max_open=self.max_open_stores, max_seconds=plan.scale_max_seconds, progress=_say,
                )
            finally:
                brain.close()
                cleanup()
            self._scale_figures(result, note)

    def _scale_server(self) -> tuple[scale.TokenSource, BrainServer, str, Callable[[], None]]:
        """A server for the scale run and where its tokens come from."""
        # The token cache is capped below the user count so that the run shows the plateau of a
        # full cache; at its default (10,000) it would still be filling at the end.
        token_cache = min(1000, max(1, self.plan.scale_users // 4))
        api = {"max_open_stores": self.max_open_stores, "token_cache_size": token_cache}
        issuer = _fake_issuer(self.tag)
        if issuer is not None:
            fake, mint = issuer
            config = self.config(FAST_ARGON2, {"api": {**api, "issuer": fake.issuer}})
            self.meta["scale_config"] = config
            try:
                brain = start_brain(self.workdir / "scale", config=config, roles="api", env={"AUTH_SERVER_URL": fake.base_url})
            except BaseException:
                fake.stop()
                raise
            return mint, brain, f"tokens from tests/fakes/issuer.py; token_cache_size={token_cache}", fake.stop
        config = self.config(FAST_ARGON2, {"api": api})
        self.meta["scale_config"] = config
        brain = start_brain(self.workdir / "scale", config=config)
        client = KeepAliveClient(brain.auth_port)

        def mint(i: int) -> tuple[str, str]:
            user, _ = sign_up(client, f"s{self.tag}", i)
            return user.id, user.authorization

        return mint, brain, f"tokens from real sign-ups (fast argon2); token_cache_size={token_cache}", client.close

    def _scale_figures(self, result: scale.ScaleResult, note: str) -> None:
        context = f"{result.users} users, max_open_stores={self.max_open_stores}; {note}"
        if result.users < self.plan.scale_users:
            context += f"; time cap {self.plan.scale_max_seconds:.0f}s reached before {self.plan.scale_users} users"
        fig = self.latency("scale.cold_new", result.new_store, note="creates events.db; includes the uncached JWT check")
        fig.extra["users/s"] = round(result.users / result.seconds, 1)
        if result.reopened:
            self.latency("scale.cold_reopen", result.reopened, note="GET /events?limit=1 of a user evicted long ago")
        else:
            self.miss(["scale.cold_reopen"], "too few users to have evicted any")
        idle = result.idle
        for key, attr, unit_note in (("scale.fds", "open_fds", "fds"), ("scale.threads", "threads", "threads")):
            label, unit = self.labels[key]
            peak = result.peak(attr)
            fig = Figure(key=key, label=label, unit=unit, value=peak - getattr(idle, attr), samples=len(result.points))
            fig.extra.update({"idle": getattr(idle, attr), "peak": peak, "end": getattr(result.points[-1][1], attr)})
            fig.note = context if key == "scale.fds" else ""
            self.put(fig)
        half, end = result.at_fraction(0.5), result.points[-1][1]
        label, unit = self.labels["scale.rss"]
        fig = Figure(key="scale.rss", label=label, unit=unit, value=(end.rss_bytes - half.rss_bytes) / MIB,
                     samples=len(result.points))
        fig.extra.update({
            "idle MiB": round(idle.rss_bytes / MIB, 1), "half-way MiB": round(half.rss_bytes / MIB, 1),
            "end MiB": round(end.rss_bytes / MIB, 1), "peak MiB": round(result.peak("rss_bytes") / MIB, 1),
            "open stores at end": result.open_stores.get("open"),
        })
        self.put(fig)


def _fake_issuer(tag: str) -> tuple[Any, scale.TokenSource] | None:
    """The running fake foreign issuer (tests/fakes/issuer.py) and its token minter, if it exists."""
    try:
        from tests.fakes.issuer import FakeIssuer
    except ImportError:
        return None
    fake = FakeIssuer().start()

    def mint(i: int) -> tuple[str, str]:
        sub = f"scale-{tag}-{i:05d}"
        return sub, f"Bearer {fake.token(sub, ttl=4 * 3600)}"

    return fake, mint


def _default_max_open_stores() -> int:
    from brain.api.settings import ApiSettings

    return ApiSettings().max_open_stores


def _default_hash_workers() -> int:
    from brain.auth.settings import AuthSettings

    return AuthSettings().hash_workers


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:300]


def _loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def _environment(plan: Plan) -> dict[str, Any]:
    """Where and how this run happened (kept in the JSON)."""
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True).stdout.strip())
    except OSError:
        rev, dirty = "?", False
    wrk = wrk_available()
    wrk_version = subprocess.run([wrk, "-v"], capture_output=True, text=True).stdout.splitlines()[0] if wrk else None
    return {
        "plan": dataclasses.asdict(plan),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "git": rev + ("+dirty" if dirty else ""),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "loadavg_start": _loadavg(),
        "wrk": wrk_version,
        "event_loop": "asyncio (default), same for brain and the baseline",
    }


def dump_meta(meta: dict[str, Any]) -> str:
    """The environment in one line for the printed report."""
    return json.dumps({k: meta.get(k) for k in ("git", "python", "cpus", "loadavg_start", "loadavg_end", "wrk")})

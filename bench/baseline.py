"""Baselines measured beside brain in the same run, each in its own process.

- `python -m bench.baseline http --port N`: the bare aiohttp server, the cheapest GET and JSON
  POST this machine can serve right now, on the same event loop settings as `brain serve`
  (plain `asyncio.run`, an `AppRunner` on a pre-bound socket, no uvloop). No access log and no
  middleware: this is the floor, not a second brain.
- `python -m bench.baseline argon2 ...`: argon2id verifications per second on N threads at the
  given parameters, the most sign-ins per second this machine could do with N hash workers.
- `... http --port N --floor DIR`: the same server plus the "architecture floor" routes that
  `bench.floor` measures: the bare POST plus a committed SQLite insert into one database per
  user, done on the loop (`/floor/inline/{user}`) or on a thread per user that answers through
  `call_soon_threadsafe` (`/floor/thread/{user}`), as brain's stores do, and nothing else (no
  token, no validation, no outbox, no JetStream).

- The same server always serves a bare event stream too: `GET /bare/stream` holds one
  Server-Sent Events response per `Authorization` value, and `POST /bare/events` stamps a
  `created_at`, gives the event an id and writes it to that value's streams at once. No token,
  no store, no commit: the floor of "a client posts, another process reads it from a stream"
  on this machine right now, beside brain's commit -> delivered (`bench.live`).

A brain figure divided by its baseline from the same run cancels out much of the machine's noise.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import queue
import signal
import socket
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from aiohttp import web

from bench.users import seed_event

GET_PATH = "/get"
POST_PATH = "/post"
PAGE_PATH = "/page"
# The same small bodies the brain requests carry, so both sides parse and write alike.
GET_BODY = b'{"id":"u1","email":"user@example.com","name":"User"}'
READY_LINE = "baseline ready"


async def handle_get(_request: web.Request) -> web.Response:
    """A small JSON document."""
    return web.Response(body=GET_BODY, content_type="application/json")


def page_body(count: int = 100) -> bytes:
    """A GET /events page as brain renders it for the benchmark's seeded users: `count` events
    of the shape `bench.users.seed_events` posts, newest first, with a next_cursor."""
    events = [{"id": 1000 - i, **seed_event(i), "created_at": "2026-12-04T08:00:00.000000Z"} for i in range(count)]
    cursor = "WyIyMDI2LTEyLTA0VDA4OjAwOjAwLjAwMDAwMFoiLDkwMV0.lrvqzxh6ua6wrX3hDcskTl2m"
    return json.dumps({"events": events, "next_cursor": cursor}, separators=(",", ":"), ensure_ascii=False).encode()


_PAGE_BODY = page_body()


async def handle_page(_request: web.Request) -> web.Response:
    """A prebuilt page of events (the read floor: no store, no rendering, only the bytes)."""
    return web.Response(body=_PAGE_BODY, content_type="application/json")


async def handle_post(request: web.Request) -> web.Response:
    """Parse a small JSON body and answer with a small JSON document, as a create would."""
    doc = await request.json()
    body = json.dumps({"id": 1, "type": doc.get("type"), "data": doc.get("data")}, separators=(",", ":"))
    return web.Response(status=201, body=body.encode(), content_type="application/json")


BARE_STREAM_PATH = "/bare/stream"
BARE_EVENTS_PATH = "/bare/events"


class _BareStreams:
    """The bare event stream: what a POST carries, written at once to the poster's open streams."""

    def __init__(self) -> None:
        self.streams: dict[str, set[web.StreamResponse]] = {}
        self.next_id = 0

    async def stream(self, request: web.Request) -> web.StreamResponse:
        key = request.headers.get("Authorization", "")
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store"})
        await response.prepare(request)
        await response.write(b": stream open\n\n")
        self.streams.setdefault(key, set()).add(response)
        try:
            while request.transport is not None and not request.transport.is_closing():
                await asyncio.sleep(0.5)  # until the client goes
        finally:
            self.streams.get(key, set()).discard(response)
        return response

    async def post(self, request: web.Request) -> web.Response:
        doc = await request.json()
        seconds, micros = divmod(time.time_ns() // 1000, 1_000_000)
        created_at = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{micros:06d}Z"
        self.next_id += 1
        event = {"id": self.next_id, "type": doc.get("type"), "data": doc.get("data"), "created_at": created_at}
        text = json.dumps(event, separators=(",", ":"))
        frame = f"id: {self.next_id}\ndata: {text}\n\n".encode()
        for response in list(self.streams.get(request.headers.get("Authorization", ""), ())):
            try:
                await response.write(frame)
            except ConnectionError:
                self.streams[request.headers.get("Authorization", "")].discard(response)
        return web.Response(status=201, body=text.encode(), content_type="application/json")


def make_app(floor_dir: str | None = None) -> web.Application:
    """The baseline application (with the floor routes when given a directory for their databases)."""
    app = web.Application()
    app.router.add_get(GET_PATH, handle_get)
    app.router.add_post(POST_PATH, handle_post)
    app.router.add_get(PAGE_PATH, handle_page)
    bare = _BareStreams()
    app.router.add_get(BARE_STREAM_PATH, bare.stream)
    app.router.add_post(BARE_EVENTS_PATH, bare.post)
    if floor_dir:
        floor = _Floor(floor_dir)
        app.router.add_post("/floor/inline/{user}", floor.inline)
        app.router.add_post("/floor/thread/{user}", floor.threaded)
    return app


FLOOR_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS events (id INTEGER PRIMARY KEY, type TEXT NOT NULL, data TEXT NOT NULL,"
    " created_at TIMESTAMP NOT NULL);"
    "CREATE INDEX IF NOT EXISTS events_created_at ON events (created_at);"
    "CREATE INDEX IF NOT EXISTS events_type_created_at ON events (type, created_at);"
)


class _Floor:
    """The least a POST that commits to a per-user SQLite file can cost, two ways."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.inline_dbs: dict[str, sqlite3.Connection] = {}
        self.threads: dict[str, queue.SimpleQueue[Any]] = {}

    def _open(self, kind: str, user: str) -> sqlite3.Connection:
        path = os.path.join(self.directory, f"{kind}-{user}.db")
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.executescript(FLOOR_SCHEMA)
        return db

    @staticmethod
    def _insert(db: sqlite3.Connection, doc: dict[str, Any]) -> bytes:
        created_at = time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime())
        data = json.dumps(doc.get("data"), separators=(",", ":"))
        cur = db.execute("INSERT INTO events (type, data, created_at) VALUES (?, ?, ?)", (doc.get("type"), data, created_at))
        return json.dumps(
            {"id": cur.lastrowid, "type": doc.get("type"), "data": doc.get("data"), "created_at": created_at},
            separators=(",", ":"),
        ).encode()

    @staticmethod
    def _user(request: web.Request) -> str:
        user = request.match_info["user"]
        if not user.isalnum():  # it names a file; checked here, before any thread is started for it
            raise web.HTTPBadRequest()
        return user

    async def inline(self, request: web.Request) -> web.Response:
        user = self._user(request)
        doc = await request.json()
        db = self.inline_dbs.get(user) or self.inline_dbs.setdefault(user, self._open("inline", user))
        return web.Response(status=201, body=self._insert(db, doc), content_type="application/json")

    async def threaded(self, request: web.Request) -> web.Response:
        user = self._user(request)
        doc = await request.json()
        inbox = self.threads.get(user)
        if inbox is None:
            inbox = self.threads[user] = queue.SimpleQueue()
            threading.Thread(target=self._serve, args=(user, inbox), daemon=True).start()
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        inbox.put((doc, fut, loop))
        return web.Response(status=201, body=await fut, content_type="application/json")

    def _serve(self, user: str, inbox: queue.SimpleQueue[Any]) -> None:
        db = self._open("thread", user)
        while True:
            doc, fut, loop = inbox.get()
            loop.call_soon_threadsafe(fut.set_result, self._insert(db, doc))


async def serve(port: int, floor_dir: str | None = None) -> None:
    """Serve until SIGTERM/SIGINT, the way brain's runtime does (AppRunner + SockSite)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(1024)
    sock.setblocking(False)
    runner = web.AppRunner(make_app(floor_dir), access_log=None, handle_signals=False)
    await runner.setup()
    await web.SockSite(runner, sock).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"{READY_LINE} on 127.0.0.1:{sock.getsockname()[1]}", flush=True)
    await stop.wait()
    await runner.cleanup()


def argon2_verifier(*, memory_kib: int, time_cost: int, parallelism: int) -> Callable[[], object]:
    """One argon2id verification of a stored hash at these parameters, as a sign-in does it."""
    from argon2 import PasswordHasher, Type

    hasher = PasswordHasher(time_cost=time_cost, memory_cost=memory_kib, parallelism=parallelism, type=Type.ID)
    password = "bench-password-0123456789"
    stored = hasher.hash(password)
    return functools.partial(hasher.verify, stored, password)


def argon2_rate(
    *, seconds: float, threads: int, memory_kib: int, time_cost: int, parallelism: int
) -> tuple[float, float]:
    """(argon2id verifications per second, process CPU time / wall) on `threads` threads."""
    verify = argon2_verifier(memory_kib=memory_kib, time_cost=time_cost, parallelism=parallelism)
    done = [0] * threads
    stop = threading.Event()

    def work(slot: int) -> None:
        while not stop.is_set():
            verify()
            done[slot] += 1

    with ThreadPoolExecutor(max_workers=threads) as pool:
        start, cpu_start = time.perf_counter(), time.process_time()
        futures = [pool.submit(work, i) for i in range(threads)]
        time.sleep(seconds)
        stop.set()
        for f in futures:
            f.result()
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    return sum(done) / elapsed, cpu / elapsed


def main() -> None:
    """Command line: `http --port N` or `argon2 --seconds S --threads T ...`."""
    parser = argparse.ArgumentParser(prog="python -m bench.baseline")
    sub = parser.add_subparsers(dest="what", required=True)
    http = sub.add_parser("http", help="serve the bare aiohttp baseline")
    http.add_argument("--port", type=int, required=True)
    http.add_argument("--floor", metavar="DIR", help="also serve the architecture-floor routes, databases in DIR")
    a2 = sub.add_parser("argon2", help="print argon2id verifications per second")
    a2.add_argument("--seconds", type=float, default=2.0)
    a2.add_argument("--threads", type=int, default=2)
    a2.add_argument("--memory-kib", type=int, default=19456)
    a2.add_argument("--time-cost", type=int, default=2)
    a2.add_argument("--parallelism", type=int, default=1)
    args = parser.parse_args()
    if args.what == "http":
        asyncio.run(serve(args.port, args.floor))
        return
    rate, cpu = argon2_rate(
        seconds=args.seconds, threads=args.threads, memory_kib=args.memory_kib,
        time_cost=args.time_cost, parallelism=args.parallelism,
    )
    print(json.dumps({"verifications_per_second": rate, "cpu_utilisation": cpu}))


if __name__ == "__main__":
    main()

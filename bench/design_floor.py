"""`python -m bench.design_floor`: the least brain's write design costs in Python on N processes.

Issue 19 asks POST /events at 64 connections over 100 users with `brain serve --workers 2` to
reach 0.7x a bare single-process aiohttp JSON POST. `bench.floor` measures one process; this
measures, against the same bare POST in the same run, a server that does only what that design
cannot leave out, on N processes sharing one port (SO_REUSEPORT) as brain's workers do:

- the Authorization header mapped to a user by a dict (no token check),
- the JSON body parsed and its shape checked,
- one INSERT into that user's own SQLite file (WAL, synchronous=NORMAL, brain's two indexes and
  its outbox trigger), committed on the event loop; any process may write any user's file, as
  in brain (another process's write lock: retried after a short sleep, the loop never blocks),
- the event published to JetStream (a file stream, `Nats-Msg-Id`) with a reply subject, as one
  ready-made HPUB frame, pipelined; each ack read, and the acknowledged outbox rows deleted in
  one statement per user every 0.2 s,
- the 201 with the stored event.

No validation beyond the shape, no request limits, quotas, access log, search index,
idempotency keys, kept pages or actors. Whatever this reaches is a ceiling for brain's
`--workers N` on this machine; its CPU per request (its processes and the nats-server beside
them) says what an event costs before brain adds anything.

`python -m bench.design_floor serve --port P --workers N --dir D --nats URL` is the server alone
(`DesignFloor` starts it, with a nats-server of its own, for `bench.suite`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import queue
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections import defaultdict
from pathlib import Path
from typing import Any

from bench.baseline import FLOOR_SCHEMA, POST_PATH
from bench.load import Req, wrk_available
from bench.servers import BaselineServer, tree_cpu_seconds
from bench.throughput import Case, run_interleaved
from bench.users import event_body

READY_LINE = "design floor ready"
STREAM = "FLOOR"
PREFIX = "floor"
# The outbox as brain's schema has it: the INSERT's trigger writes the row.
SCHEMA = FLOOR_SCHEMA + (
    "CREATE TABLE IF NOT EXISTS outbox (event_id INTEGER PRIMARY KEY);"
    "CREATE TRIGGER IF NOT EXISTS events_outbox AFTER INSERT ON events"
    " BEGIN INSERT INTO outbox (event_id) VALUES (new.id); END;"
)
ACK_DELAY = 0.2
BUSY_RETRY_SECONDS = 0.0005


class _Worker:
    """One process's server: its users' connections, its publishes in flight, its acks."""

    def __init__(self, directory: str, index: int) -> None:
        self.directory = directory
        self.index = index
        self.users: dict[str, str] = {}
        self.dbs: dict[str, sqlite3.Connection] = {}
        self.inflight: dict[int, tuple[str, int]] = {}
        self.acked: dict[str, list[int]] = defaultdict(list)
        self.seq = 0
        self.nc: Any = None
        self.reply_prefix = f"_INBOX.floor{os.getpid()}"

    def user(self, authorization: str) -> str:
        user = self.users.get(authorization)
        if user is None:  # the same user in every process (hash() is salted per process)
            user = self.users[authorization] = f"u{zlib.crc32(authorization.encode()):08x}"
        return user

    def db(self, user: str) -> sqlite3.Connection:
        db = self.dbs.get(user)
        if db is None:
            db = sqlite3.connect(os.path.join(self.directory, user + ".db"), isolation_level=None)
            db.execute("PRAGMA busy_timeout=5000")
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(SCHEMA)
            db.execute("PRAGMA busy_timeout=0")
            self.dbs[user] = db
        return db

    async def post(self, request: Any) -> Any:
        from aiohttp import web
        from nats.protocol.command import hpub_cmd

        user = self.user(request.headers.get("Authorization", ""))
        doc = await request.json()
        kind, data = doc.get("type"), doc.get("data")
        if not isinstance(kind, str) or not isinstance(data, dict):
            raise web.HTTPBadRequest()
        text = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
        seconds, micros = divmod(time.time_ns() // 1000, 1_000_000)
        created = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{micros:06d}Z"
        db = self.db(user)
        while True:
            try:
                event_id = db.execute(
                    "INSERT INTO events (type, data, created_at) VALUES (?, ?, ?)", (kind, text, created)
                ).lastrowid
                break
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc):
                    raise
                await asyncio.sleep(BUSY_RETRY_SECONDS)  # another process writes this user: later
        body = f'{{"id":{event_id},"type":"{kind}","data":{text},"created_at":"{created}"}}'
        self.seq += 1
        self.inflight[self.seq] = (user, event_id)
        payload = f'{{"id":{event_id},"user_id":"{user}","type":"{kind}","data":{text},"created_at":"{created}"}}'
        header = f"NATS/1.0\r\nNats-Msg-Id: {user}:{event_id}\r\n\r\n".encode()
        nc = self.nc
        await nc._send_command(  # noqa: SLF001 - the frame brain's publisher sends (brain.api.publisher)
            hpub_cmd(f"{PREFIX}.{user}.{kind}", f"{self.reply_prefix}.{self.seq}", header, payload.encode())
        )
        if nc._flush_queue is not None and nc._flush_queue.empty():  # noqa: SLF001
            await nc._flush_pending()  # noqa: SLF001
        return web.Response(status=201, body=body.encode(), content_type="application/json")

    async def on_ack(self, msg: Any) -> None:
        sent = self.inflight.pop(int(msg.subject.rpartition(".")[2]), None)
        if sent is not None and b'"error"' not in msg.data:
            self.acked[sent[0]].append(sent[1])

    async def delete_acked(self) -> None:
        while True:
            await asyncio.sleep(ACK_DELAY)
            acked, self.acked = self.acked, defaultdict(list)
            for user, ids in acked.items():
                statement = f"DELETE FROM outbox WHERE event_id IN ({','.join(map(str, ids))})"
                while True:
                    try:
                        self.dbs[user].execute(statement)
                        break
                    except sqlite3.OperationalError:
                        await asyncio.sleep(BUSY_RETRY_SECONDS)

    async def run(self, port: int, nats_url: str) -> None:
        import nats
        from aiohttp import web

        self.nc = await nats.connect(nats_url)
        await self.nc.subscribe(self.reply_prefix + ".*", cb=self.on_ack)
        asyncio.get_running_loop().create_task(self.delete_acked())
        app = web.Application()
        app.router.add_post("/events", self.post)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port, reuse_port=True).start()
        print(READY_LINE, self.index, flush=True)
        await asyncio.Event().wait()


async def _make_stream(nats_url: str) -> None:
    import nats
    from nats.js.api import StorageType, StreamConfig

    nc = await nats.connect(nats_url)
    try:
        await nc.jetstream().add_stream(StreamConfig(name=STREAM, subjects=[f"{PREFIX}.>"], storage=StorageType.FILE))
    finally:
        await nc.close()


def serve(port: int, workers: int, directory: str, nats_url: str) -> int:
    """Make the stream, fork the worker processes, stop them all on SIGTERM."""
    asyncio.run(_make_stream(nats_url))
    children = []
    for index in range(workers):
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            try:
                asyncio.run(_Worker(directory, index).run(port, nats_url))
            finally:
                os._exit(1)
        children.append(pid)

    def stop(*_: Any) -> None:
        for child in children:
            try:
                os.kill(child, signal.SIGTERM)
            except OSError:
                pass

    signal.signal(signal.SIGTERM, stop)
    for child in children:
        os.waitpid(child, 0)
    return 0


class DesignFloor:
    """The design floor server on `workers` processes, with a nats-server of its own, in `directory`."""

    def __init__(self, directory: Path, workers: int = 2) -> None:
        from tests.support import free_port

        self.directory = directory
        self.workers = workers
        self.port = free_port()
        self.nats_port = free_port()
        self.nats: subprocess.Popen[bytes] | None = None
        self.proc: subprocess.Popen[str] | None = None

    def start(self, timeout: float = 30.0) -> DesignFloor:
        from brain.nats_embedded import find_nats_server, wait_for_port

        self.directory.mkdir(parents=True, exist_ok=True)
        self.nats = subprocess.Popen(
            [find_nats_server(), "-a", "127.0.0.1", "-p", str(self.nats_port), "-js", "-sd", str(self.directory / "jetstream")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        try:
            if not wait_for_port("127.0.0.1", self.nats_port, timeout, self.nats):
                raise RuntimeError("the design floor's nats-server did not start")
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "bench.design_floor", "serve", "--port", str(self.port), "--workers",
                 str(self.workers), "--dir", str(self.directory), "--nats", f"nats://127.0.0.1:{self.nats_port}"],
                stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parent.parent,
            )
            lines: queue.SimpleQueue[str] = queue.SimpleQueue()
            stdout = self.proc.stdout
            assert stdout is not None
            threading.Thread(target=lambda: [lines.put(line) for line in iter(stdout.readline, "")], daemon=True).start()
            ready = 0
            deadline = time.monotonic() + timeout
            while ready < self.workers:
                try:
                    ready += READY_LINE in lines.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    raise RuntimeError("the design floor server did not start") from None
        except BaseException:
            self.stop()
            raise
        return self

    def cpu_seconds(self) -> float:
        """CPU seconds so far of its processes and its nats-server (brain's figures count their nats-server too)."""
        total = 0.0
        for proc in (self.proc, self.nats):
            if proc is not None:
                total += sum(tree_cpu_seconds(proc.pid).values())
        return total

    def stop(self) -> None:
        for proc in (self.proc, self.nats):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()

    def __enter__(self) -> DesignFloor:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()


def requests(users: int) -> list[Req]:
    """POST /events of `users` users (an Authorization value each), the bodies brain's bench posts."""
    return [Req("POST", "/events", f"Bearer floor-user-{i}", event_body(i)) for i in range(users)]


def main(argv: list[str] | None = None) -> int:
    """`serve`, or measure the floor beside the bare POST and print medians, ratios and CPU per request."""
    parser = argparse.ArgumentParser(prog="python -m bench.design_floor", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command")
    s = sub.add_parser("serve")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--workers", type=int, default=2)
    s.add_argument("--dir", required=True)
    s.add_argument("--nats", required=True)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=8)
    args = parser.parse_args(argv)
    if args.command == "serve":
        return serve(args.port, args.workers, args.dir, args.nats)
    if wrk_available() is None:
        print("wrk is not installed (apt-get install wrk)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="brain-design-floor-") as directory, BaselineServer() as base, \
            DesignFloor(Path(directory), args.workers) as floor:
        bare = Case("bare aiohttp JSON POST", base.port, [Req("POST", POST_PATH, "", event_body(1))], args.connections, pid=base.pid)
        case = Case(f"design floor, {args.workers} processes", floor.port, requests(args.users), args.connections)
        rates, cpus = [], []
        progress = lambda m: print(f"[design floor] {m}", file=sys.stderr, flush=True)  # noqa: E731
        run_interleaved([bare, case], repeats=0, duration=args.seconds, warmup=1, progress=progress)
        for _ in range(args.repeats):
            bare.run(args.seconds)
            before = floor.cpu_seconds()
            case.run(args.seconds)
            if case.error is None:
                rates.append(case.results[-1].rps)
                cpus.append((floor.cpu_seconds() - before) / case.results[-1].requests)
    for c in (bare, case):
        if c.error:
            print(f"{c.key}: not measured ({c.error})")
            return 1
    base_rate = statistics.median(bare.rates)
    print(f"{args.connections} connections over {args.users} users, median of {args.repeats} x {args.seconds:.0f} s, alternating")
    print(f"  {bare.key:34s} {base_rate:8,.0f} req/s")
    print(f"  {case.key:34s} {statistics.median(rates):8,.0f} req/s  {statistics.median(rates) / base_rate:5.2f}x bare  "
          f"{statistics.median(cpus) * 1e6:5.0f} us CPU/request (its processes + nats-server)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

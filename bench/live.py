"""The live event stream under load: 1,000 concurrent streams on one brain process.

Two measurements, each against an API-only `brain serve` whose tokens come from the fake issuer
(tests/fakes/issuer.py), so a thousand users cost no sign-ups:

- **commit -> delivered**: a holder process (`python -m bench.live hold ...`) keeps one
  `GET /events/stream` open for each of 1,000 users and notes when each event arrives; this
  process posts `rate` events a second, open loop, round-robin over the same users (whose
  stores were created beforehand, and all stay open: `api.max_open_stores` is set above the
  user count, so the figure is the stream's, not store activation's). Latency = arrival time
  in the holder minus the event's `created_at` (brain's clock as it writes the event, just
  before the commit); both are this machine's clock. Every event must arrive exactly once, on
  its own user's stream. The same holder and poster run against the bare event stream of
  `bench.baseline` (no token, no store: POST straight to the open responses), the poster
  switching between the two every second, so both see the same machine.
- **POST /events throughput with 1,000 idle streams**: wrk at 64 connections over 100 users'
  tokens, alternating runs without streams and with 1,000 streams of *other* users open (the
  holder opens them before the run and drops them after), so both halves share the noise.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from bench.load import Req, run_wrk
from bench.users import event_body
from tests.support import REPO

TokenSource = Callable[[int], tuple[str, str]]  # index -> (user id, "Bearer ...")


@dataclass
class Delivery:
    """Latencies of one target's share of a run, and what went wrong."""

    latencies: list[float] = field(default_factory=list)  # seconds, commit -> delivered
    posted: int = 0
    post_errors: int = 0
    lost: int = 0
    duplicates: int = 0
    misrouted: int = 0
    achieved_rate: float = 0.0


@dataclass(frozen=True)
class StreamTarget:
    """A server that streams users' events: brain, or the bare baseline (`bench.baseline`)."""

    name: str
    port: int
    auths: Sequence[tuple[str, str]]  # one per stream: (user id, "Bearer ...")
    stream_path: str = "/events/stream"
    events_path: str = "/events"


class Holder:
    """The holder process: one open stream per user of a target, recording what arrives."""

    def __init__(self, target: StreamTarget, workdir: Path) -> None:
        self.tokens_file = workdir / f"holder-{target.name}-{time.monotonic_ns()}.tsv"
        self.out_file = self.tokens_file.with_suffix(".json")
        self.tokens_file.write_text("".join(f"{uid}\t{auth}\n" for uid, auth in target.auths))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.live", "hold", "--url", f"http://127.0.0.1:{target.port}{target.stream_path}",
             "--tokens", str(self.tokens_file), "--out", str(self.out_file)],
            cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Until every stream is open (the holder says READY)."""
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"the stream holder exited ({self.proc.wait()})")
            if line.startswith("READY"):
                return
            if line.startswith("FAILED"):
                raise RuntimeError(f"the stream holder could not open its streams: {line.strip()}")
        raise RuntimeError("the stream holder did not open its streams in time")

    def finish(self, timeout: float = 60.0) -> list[tuple[int, int, float, float]]:
        """Close the streams; what arrived: (user index, event id, created_at, arrived)."""
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=timeout)
        rows = json.loads(self.out_file.read_text()) if self.out_file.exists() else []
        self.tokens_file.unlink(missing_ok=True)
        self.out_file.unlink(missing_ok=True)
        return [tuple(row) for row in rows]  # type: ignore[misc]


async def _post(targets: Sequence[StreamTarget], rate: float, seconds: float, slice_seconds: float,
                posted: dict[str, dict[tuple[int, int], float]], errors: dict[str, int]) -> dict[str, float]:
    """Open-loop POSTs at `rate`, to each target in turn for `slice_seconds`, round-robin over its
    users; `posted[target][(user, id)]` = when sent. Returns each target's posting seconds."""
    connector = aiohttp.TCPConnector(limit=64)
    busy = {t.name: 0.0 for t in targets}
    async with aiohttp.ClientSession(connector=connector) as http:

        async def one(target: StreamTarget, k: int) -> None:
            user = k % len(target.auths)
            sent = time.time()
            try:
                async with http.post(f"http://127.0.0.1:{target.port}{target.events_path}",
                                     json=event_body(k, kind="bench.live"),
                                     headers={"Authorization": target.auths[user][1]}) as r:
                    if r.status != 201:
                        errors[target.name] += 1
                        return
                    posted[target.name][(user, (await r.json())["id"])] = sent
            except aiohttp.ClientError:
                errors[target.name] += 1

        tasks = []
        start = time.monotonic()
        total = int(rate * seconds)
        per_slice = max(1, int(rate * slice_seconds))
        for k in range(total):
            delay = start + k / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            target = targets[(k // per_slice) % len(targets)]
            busy[target.name] += 1 / rate
            tasks.append(asyncio.create_task(one(target, k)))
        await asyncio.gather(*tasks)
    return busy


def measure_delivery(targets: Sequence[StreamTarget], workdir: Path, *, rate: float, seconds: float,
                     slice_seconds: float = 1.0, progress: Callable[[str], None]) -> dict[str, Delivery]:
    """commit -> delivered on every target, the poster alternating between them each slice."""
    holders: dict[str, Holder] = {}
    posted: dict[str, dict[tuple[int, int], float]] = {t.name: {} for t in targets}
    errors = {t.name: 0 for t in targets}
    arrived: dict[str, list[tuple[int, int, float, float]]] = {}
    try:
        for target in targets:
            progress(f"{target.name}: opening {len(target.auths)} streams")
            holders[target.name] = Holder(target, workdir)
            holders[target.name].wait_ready()
        progress(f"posting {rate:g} events/s for {seconds:g}s, alternating every {slice_seconds:g}s")
        started = time.monotonic()
        busy = asyncio.run(_post(targets, rate, seconds, slice_seconds, posted, errors))
        elapsed = time.monotonic() - started
        time.sleep(2.0)  # stragglers
    finally:
        for name, holder in holders.items():
            arrived[name] = holder.finish()
    results = {}
    for target in targets:
        result = results[target.name] = Delivery(posted=len(posted[target.name]) + errors[target.name],
                                                 post_errors=errors[target.name])
        share = elapsed * busy[target.name] / sum(busy.values())  # its slices of the posting time
        result.achieved_rate = result.posted / share
        seen: set[tuple[int, int]] = set()
        for user, event_id, created, at in arrived[target.name]:
            if (user, event_id) in seen:
                result.duplicates += 1
                continue
            seen.add((user, event_id))
            if (user, event_id) not in posted[target.name]:
                result.misrouted += 1
                continue
            result.latencies.append(at - created)
        result.lost = len(set(posted[target.name]) - seen)
    return results


def create_stores(port: int, auths: Sequence[tuple[str, str]]) -> None:
    """One event for each user, so their stores exist before anything is timed."""
    target = StreamTarget("warm-up", port, auths)
    errors = {"warm-up": 0}
    asyncio.run(_post([target], rate=10_000, seconds=len(auths) / 10_000, slice_seconds=1.0,
                      posted={"warm-up": {}}, errors=errors))
    if errors["warm-up"]:
        raise RuntimeError(f"{errors['warm-up']} of the {len(auths)} first POST /events failed")


@dataclass
class PostThroughput:
    """POST /events req/s per run, without and with the idle streams."""

    without: list[float] = field(default_factory=list)
    with_streams: list[float] = field(default_factory=list)


def measure_post_throughput(api_port: int, tokens: TokenSource, workdir: Path, *, posters: int, streams: int,
                            connections: int, repeats: int, seconds: float,
                            progress: Callable[[str], None]) -> PostThroughput:
    """wrk POST /events without and with `streams` idle streams of other users, alternating."""
    requests = [Req("POST", "/events", tokens(i)[1], event_body(i)) for i in range(posters)]
    idle = StreamTarget("idle", api_port, [tokens(posters + i) for i in range(streams)])
    out = PostThroughput()
    run_wrk(api_port, requests, connections=connections, duration=1.0)  # warm-up: every poster's store open
    for r in range(repeats):
        progress(f"run {r + 1}/{repeats}: POST /events without streams")
        out.without.append(run_wrk(api_port, requests, connections=connections, duration=seconds).rps)
        holder = Holder(idle, workdir)
        try:
            holder.wait_ready()
            progress(f"run {r + 1}/{repeats}: POST /events with {streams} idle streams open")
            out.with_streams.append(run_wrk(api_port, requests, connections=connections, duration=seconds).rps)
        finally:
            holder.finish()
    return out


# -- the holder process ---------------------------------------------------------------------------

def _epoch(text: str) -> float:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


async def _hold(url: str, auths: list[tuple[str, str]], out: Path) -> None:
    arrived: list[tuple[int, int, float, float]] = []
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=None, sock_read=None)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
        opened: list[aiohttp.ClientResponse] = []
        sem = asyncio.Semaphore(100)

        async def open_one(index: int) -> None:
            async with sem:
                response = await http.get(url, headers={"Authorization": auths[index][1]})
                if response.status != 200:
                    raise RuntimeError(f"stream {index}: HTTP {response.status} {await response.text()}")
                await response.content.readline()  # the first line: the stream is open
                opened.append(response)

        try:
            await asyncio.gather(*(open_one(i) for i in range(len(auths))))
        except Exception as exc:  # noqa: BLE001 - told to the parent, which reports it
            print(f"FAILED {exc}", flush=True)
            return

        async def read(index: int, response: aiohttp.ClientResponse) -> None:
            async for raw in response.content:
                if raw.startswith(b"data: "):
                    now = time.time()
                    event = json.loads(raw[6:])
                    if "id" in event:  # not a stream's last word (token-expired, too-slow)
                        arrived.append((index, event["id"], _epoch(event["created_at"]), now))

        readers = [asyncio.create_task(read(i, r)) for i, r in enumerate(opened)]
        print(f"READY {len(opened)}", flush=True)
        # Until the parent closes our stdin.
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        for task in readers:
            task.cancel()
        for response in opened:
            response.close()
    out.write_text(json.dumps(arrived))


def _hold_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.live hold")
    parser.add_argument("--url", required=True)
    parser.add_argument("--tokens", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    auths = [tuple(line.split("\t", 1)) for line in args.tokens.read_text().splitlines() if line]
    asyncio.run(_hold(args.url, auths, args.out))  # type: ignore[arg-type]


if __name__ == "__main__":
    if sys.argv[1:2] != ["hold"]:
        sys.exit("usage: python -m bench.live hold --url URL --tokens FILE --out FILE")
    _hold_main(sys.argv[2:])


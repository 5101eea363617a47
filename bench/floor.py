"""`python -m bench.floor`: what the parts brain must have cost before brain adds anything.

Issue 4 asks POST /events at 64 connections over 100 users to reach 0.5x a bare aiohttp JSON
POST. This measures, in the same run and against the same bare POST, two servers that do the
least such an endpoint can do: parse the JSON and commit one INSERT into that user's own SQLite
file (WAL, synchronous=NORMAL, the two indexes brain's schema has), either on the event loop or
on a thread per user that answers through `call_soon_threadsafe` (how a Pykka actor that owns
the database must answer). No token check, no validation, no outbox, no JetStream. Whatever
these reach is a ceiling for brain's on this machine: throughput at 64 connections over 100
users (ratio to the bare POST), and the single-client p50 of each.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile

from bench.client import KeepAliveClient, expect

from bench.baseline import POST_PATH
from bench.load import Req, wrk_available
from bench.servers import BaselineServer
from bench.throughput import Case, median_cpu, run_interleaved
from bench.users import event_body


def main(argv: list[str] | None = None) -> int:
    """Run the floor cases beside the bare POST, print medians and ratios."""
    parser = argparse.ArgumentParser(prog="python -m bench.floor", description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--samples", type=int, default=1000, help="single-client requests per case")
    args = parser.parse_args(argv)
    if wrk_available() is None:
        print("wrk is not installed (apt-get install wrk)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="brain-floor-") as directory, BaselineServer(floor_dir=directory) as base:
        users = range(args.users)
        bare = Case("bare aiohttp JSON POST", base.port, [Req("POST", POST_PATH, "", event_body(1))], args.connections, pid=base.pid)
        cases = [
            bare,
            Case("+ SQLite commit on the loop", base.port,
                 [Req("POST", f"/floor/inline/u{i}", "", event_body(i)) for i in users], args.connections, pid=base.pid),
            Case("+ SQLite commit on a thread per user", base.port,
                 [Req("POST", f"/floor/thread/u{i}", "", event_body(i)) for i in users], args.connections, pid=base.pid),
        ]
        latencies = single_client(base.port, args.samples)
        run_interleaved(cases, repeats=args.repeats, duration=args.seconds, warmup=1,
                        progress=lambda m: print(f"[floor] {m}", file=sys.stderr, flush=True))
    for case in cases:
        if case.error:
            print(f"{case.key}: not measured ({case.error})")
            return 1
    print("single client, one keep-alive connection, p50 (blocks of 50 alternating between the cases)")
    for name, times in latencies.items():
        print(f"  {name:40s} {statistics.median(times) * 1000:6.3f} ms")
    base_rate = statistics.median(bare.rates)
    print(f"architecture floor, {args.connections} connections over {args.users} users, median of {args.repeats} x {args.seconds:.0f} s")
    for case in cases:
        rate = statistics.median(case.rates)
        cpu = median_cpu(case)
        print(f"  {case.key:40s} {rate:8,.0f} req/s  {rate / base_rate:5.2f}x bare  "
              f"runs {', '.join(f'{r:,.0f}' for r in case.rates)}  CPU/wall {cpu:.2f}")
    return 0


def single_client(port: int, samples: int, block: int = 50) -> dict[str, list[float]]:
    """p50 material for each case: one connection per case, blocks of requests in turn."""
    paths = {
        "bare aiohttp JSON POST": POST_PATH,
        "+ SQLite commit on the loop": "/floor/inline/single",
        "+ SQLite commit on a thread per user": "/floor/thread/single",
    }
    out: dict[str, list[float]] = {name: [] for name in paths}
    clients = {name: KeepAliveClient(port) for name in paths}
    try:
        raws = {name: clients[name].encode("POST", path, body=event_body(1)) for name, path in paths.items()}
        for name in paths:  # warm-up: connections open, the database and its thread exist
            for _ in range(20):
                expect(clients[name].send(raws[name]), 201, what=name)
        while len(out["bare aiohttp JSON POST"]) < samples:
            for name in paths:
                for _ in range(block):
                    out[name].append(expect(clients[name].send(raws[name]), 201, what=name).elapsed)
    finally:
        for client in clients.values():
            client.close()
    return out


if __name__ == "__main__":
    sys.exit(main())

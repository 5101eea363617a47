"""`python -m bench.floor`: what the parts brain must have cost before brain adds anything.

Issue 4 asks POST /events at 64 connections over 100 users to reach 0.5x a bare aiohttp JSON
POST. This measures, in the same run and against the same bare POST, two servers that do the
least such an endpoint can do: parse the JSON and commit one INSERT into that user's own SQLite
file (WAL, synchronous=NORMAL, the two indexes brain's schema has), either on the event loop or
on a thread per user that answers through `call_soon_threadsafe` (how a Pykka actor that owns
the database must answer). No token check, no validation, no outbox, no JetStream. Whatever
ratio these reach is a ceiling for brain's, on this machine.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile

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
        run_interleaved(cases, repeats=args.repeats, duration=args.seconds, warmup=1,
                        progress=lambda m: print(f"[floor] {m}", file=sys.stderr, flush=True))
    for case in cases:
        if case.error:
            print(f"{case.key}: not measured ({case.error})")
            return 1
    base_rate = statistics.median(bare.rates)
    print(f"architecture floor, {args.connections} connections over {args.users} users, median of {args.repeats} x {args.seconds:.0f} s")
    for case in cases:
        rate = statistics.median(case.rates)
        cpu = median_cpu(case)
        print(f"  {case.key:40s} {rate:8,.0f} req/s  {rate / base_rate:5.2f}x bare  "
              f"runs {', '.join(f'{r:,.0f}' for r in case.rates)}  CPU/wall {cpu:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

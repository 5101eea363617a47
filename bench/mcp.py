"""`python -m bench.mcp [--quick]`: what the MCP door adds to a search (issue 21).

One server, one user whose store holds the search bench's corpus (bench/search.py: notes and
~20 KiB mails), posted through POST /events so it is indexed as it is written. One client,
one keep-alive connection, one request at a time, the same query mix as bench/search.py:

- `mcp.search`: POST /mcp `tools/call search {q, limit: 10}` in an open session;
- its baseline, in alternating blocks of 50 on the same connection: GET /search?q=...&limit=10
  for the same query.

The figure is the p50 of each and their difference (the issue asks for at most 2 ms more).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.client import KeepAliveClient, expect
from bench.report import Figure, Target, latency_figure, percentile, render_table, summary_lines
from bench.search import Corpus
from bench.servers import FAST_ARGON2, bench_config, start_brain
from bench.users import run_tag, sign_up

KEY = "mcp.search"
LABEL = "MCP tools/call search, 1 client, {events}-event store"
TARGETS = [Target(KEY, "<=", 2.0, field="p50 above REST ms", text="p50 no more than 2 ms above GET /search")]
BLOCK = 50
POST_BATCH = 500
# Under the API's request body limit (1 MiB by default).
POST_BYTES = 700_000
ACCEPT = "application/json, text/event-stream"


@dataclass
class McpBench:
    """Latencies (seconds) of the two sides, and the store size."""

    mcp: list[float]
    rest: list[float]
    events: int
    queries: int


def measure(workdir: Path, *, events: int, samples: int) -> McpBench:
    """Fill a store, open an MCP session, time both sides in alternating blocks."""
    corpus = Corpus()
    config = bench_config(argon2=FAST_ARGON2, extra={"api": {"max_events_per_minute": 0, "max_user_bytes": 0}})
    server = start_brain(workdir / "brain", config=config)
    try:
        with KeepAliveClient(server.auth_port) as c:
            user, _ = sign_up(c, run_tag(), 0)
        auth = {"Authorization": f"Bearer {user.jwt}"}
        with KeepAliveClient(server.api_port) as client:
            batch: list[dict[str, Any]] = []
            size = 0
            for etype, data, created_at in corpus.events(events):
                # mail.* is mail sync's: the same payloads go in under a type clients may write.
                batch.append({"type": "bench.mail" if etype.startswith("mail.") else etype,
                              "data": json.loads(data), "created_at": created_at})
                size += len(data) + 100
                if len(batch) == POST_BATCH or size > POST_BYTES:
                    expect(client.request("POST", "/events", headers=auth, body=batch), 201, what="POST /events")
                    batch, size = [], 0
            if batch:
                expect(client.request("POST", "/events", headers=auth, body=batch), 201, what="POST /events")
            session = _open_session(server.api_port, auth)
            mcp_headers = {**auth, "Accept": ACCEPT, "Mcp-Session-Id": session, "MCP-Protocol-Version": "2025-11-25"}
            queries = corpus.queries()
            out: dict[str, list[float]] = {"mcp": [], "rest": []}
            for block in range(-1, samples // BLOCK):  # block -1 warms both sides up
                order = ("mcp", "rest") if block % 2 == 0 else ("rest", "mcp")
                for side in order:
                    for i in range(BLOCK):
                        q = queries[(block * BLOCK + i) % len(queries)]
                        if side == "mcp":
                            body = {"jsonrpc": "2.0", "id": i, "method": "tools/call",
                                    "params": {"name": "search", "arguments": {"q": q, "limit": 10}}}
                            r = expect(client.request("POST", "/mcp", headers=mcp_headers, body=body), 200, what="MCP search")
                            if r.json()["result"]["isError"]:
                                raise AssertionError(f"MCP search {q!r}: {r.json()['result']['content'][0]['text']}")
                        else:
                            path = "/search?" + urllib.parse.urlencode({"q": q, "limit": 10})
                            r = expect(client.request("GET", path, headers=auth), 200, what="GET /search")
                        if block >= 0:
                            out[side].append(r.elapsed)
        return McpBench(out["mcp"], out["rest"], events, len(queries))
    finally:
        server.close()


def _open_session(port: int, auth: dict[str, str]) -> str:
    """initialize over a connection of its own (the kept-alive client reads no headers): the session id."""
    body = {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "bench", "version": "0"}}}
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/mcp", data=json.dumps(body).encode(), method="POST",
        headers={**auth, "Accept": ACCEPT, "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - loopback, our own server
        return str(response.headers["Mcp-Session-Id"])


def figure(result: McpBench) -> Figure:
    """The figure: MCP's p50 against GET /search's in the same run."""
    fig = latency_figure(KEY, LABEL.format(events=f"{result.events:,}"), result.mcp)
    rest_p50 = percentile([t * 1000 for t in result.rest], 50)
    fig.baseline = rest_p50
    fig.baseline_label = "GET /search, same query, same connection, alternating blocks of 50"
    fig.extra["p50 above REST ms"] = round(fig.value - rest_p50, 4) if fig.value is not None else None
    fig.note = f"{result.queries} queries cycled (bench/search.py's mix), 10 results with highlights"
    return fig


def main(argv: list[str] | None = None) -> int:
    """Run alone: `python -m bench.mcp [--quick] [--events N]`."""
    parser = argparse.ArgumentParser(prog="python -m bench.mcp", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2,000 events, 400 samples a side")
    parser.add_argument("--events", type=int, help="store size (default 20,000; 2,000 with --quick)")
    args = parser.parse_args(argv)
    events = args.events or (2_000 if args.quick else 20_000)
    samples = 400 if args.quick else 2000
    workdir = Path(tempfile.mkdtemp(prefix="brain-bench-mcp-"))
    try:
        result = measure(workdir, events=events, samples=samples)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    fig = figure(result)
    print(render_table([fig], TARGETS))
    print("\n".join(summary_lines({fig.key: fig}, TARGETS)))
    print(f"p50 MCP {fig.value:.3f} ms, GET /search {fig.baseline:.3f} ms, "
          f"difference {fig.extra['p50 above REST ms']:.3f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

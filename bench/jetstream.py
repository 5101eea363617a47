"""JetStream: time from an event's commit to the event being stored in the stream.

One user posts events one at a time, paced so the figure is latency rather than queueing. Each
event carries a marker in its `data`; an ordered JetStream consumer on the server's NATS (the
embedded server's URL from `/health?detail=1`, with the credential in `data/nats/credentials`)
picks them up. Latency = the stream's own timestamp of the message
minus the event's `created_at` from the 201 response (brain's clock as the write transaction
starts, just before its commit); both clocks are this machine's. The time until the harness's subscriber had it is kept as a second figure.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
from dataclasses import dataclass
from typing import Any

from bench.client import KeepAliveClient, expect
from bench.users import User, event_body


@dataclass(frozen=True)
class StreamTimings:
    """Seconds per event: commit -> stored in the stream, and commit -> delivered to us."""

    stored: list[float]
    delivered: list[float]
    lost: int  # posted but never seen within the wait


def _find_marker(value: Any, marker: str) -> int | None:
    """The `n` of the benchmark event with this marker anywhere inside a decoded message."""
    if isinstance(value, dict):
        if value.get("bench_marker") == marker and isinstance(value.get("n"), int):
            return value["n"]
        for v in value.values():
            found = _find_marker(v, marker)
            if found is not None:
                return found
    elif isinstance(value, list):
        for v in value:
            found = _find_marker(v, marker)
            if found is not None:
                return found
    return None


def _epoch(text: str) -> float:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


async def measure(
    *, nats_url: str, stream: str, subject_prefix: str, api_port: int, user: User, marker: str,
    count: int, interval: float = 0.01, wait: float = 15.0,
) -> StreamTimings:
    """Post `count` marked events and time each one into the stream."""
    import nats
    from nats.js.api import DeliverPolicy

    seen: dict[int, tuple[float, float]] = {}

    async def on_message(msg: Any) -> None:
        received = time.time()
        try:
            n = _find_marker(json.loads(msg.data), marker)
        except ValueError:
            return
        if n is not None and n not in seen:
            seen[n] = (msg.metadata.timestamp.timestamp(), received)

    nc = await nats.connect(nats_url, connect_timeout=5, max_reconnect_attempts=2)
    try:
        js = nc.jetstream()
        sub = await js.subscribe(
            f"{subject_prefix}.{user.id}.>", stream=stream, cb=on_message,
            ordered_consumer=True, deliver_policy=DeliverPolicy.NEW,
        )
        committed: dict[int, float] = {}
        loop = asyncio.get_running_loop()
        headers = {"Authorization": user.authorization}
        with KeepAliveClient(api_port) as client:
            for n in range(count):
                raw = client.encode("POST", "/events", headers=headers, body=event_body(n, kind="bench.stream", marker=marker))
                response = await loop.run_in_executor(None, client.send, raw)
                committed[n] = _epoch(expect(response, 201, what="POST /events").json()["created_at"])
                await asyncio.sleep(interval)
        deadline = time.monotonic() + wait
        while len(seen) < count and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await sub.unsubscribe()
    finally:
        await nc.close()
    stored = [seen[n][0] - committed[n] for n in committed if n in seen]
    delivered = [seen[n][1] - committed[n] for n in committed if n in seen]
    return StreamTimings(stored=stored, delivered=delivered, lost=count - len(stored))


def subject_count(*, nats_url: str, stream: str, subject: str) -> int:
    """How many messages of ``subject`` the stream holds now."""
    import nats

    async def count() -> int:
        nc = await nats.connect(nats_url, connect_timeout=5, allow_reconnect=False)
        try:
            info = await nc.jetstream().stream_info(stream, subjects_filter=subject)
            return int((info.state.subjects or {}).get(subject, 0))
        finally:
            await nc.close()

    return asyncio.run(count())

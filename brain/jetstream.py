"""The two things every NATS user in brain does the same way: connect until it works, and make
sure a JetStream stream exists (the EventBus's event stream, the deletion relay's control stream)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any

import nats
import nats.js.errors
from nats.js.api import StreamConfig

from brain.redact import redact_text, redact_url

__all__ = ["connect", "ensure_stream"]


async def connect(
    options: Mapping[str, Any], *, stopping: Callable[[], bool], note: Callable[[str], None], retry_seconds: float,
    **extra: Any,
) -> Any:
    """A nats-py client connected with `options` (`brain.nats_auth.connect_options`: the servers,
    credentials, TLS), retried every retry_seconds; None once stopping() is true.

    `note` hears of each failed attempt, credentials masked; `extra` goes to `nats.connect` too
    (name, callbacks, ...).
    """
    shown = redact_url(",".join(options.get("servers", ())))
    if "error_cb" not in extra:
        # nats-py's own logs a whole traceback at ERROR for what a reconnect then mends (a
        # connection reset while the server starts, under load): one line through `note` instead.
        async def error_cb(exc: Exception) -> None:
            note(f"connection to {shown}: {redact_text(repr(exc))}")

        extra["error_cb"] = error_cb
    while not stopping():
        try:
            return await nats.connect(**options, **extra)
        except Exception as exc:  # noqa: BLE001 - NATS not up yet, refused, timed out: retried
            note(f"connect to {shown}: {redact_text(repr(exc))}")
            await asyncio.sleep(retry_seconds)
    return None


async def connect_kept(
    options: Mapping[str, Any], *, name: str, stopping: Callable[[], bool], note: Callable[[str], None], **extra: Any,
) -> Any:
    """`connect` as the server's own actors use it (the cluster node, mail ownership and its
    directory, the deletion relay): tried every second, then reconnecting for as long as it runs."""
    return await connect(
        options, stopping=stopping, note=note, retry_seconds=1.0, name=name, allow_reconnect=True,
        max_reconnect_attempts=-1, reconnect_time_wait=1, connect_timeout=2, **extra,
    )


async def ensure_stream(js: Any, config: StreamConfig) -> bool:
    """Create the stream if it is missing; True if it was created."""
    try:
        await js.stream_info(config.name)
        return False
    except nats.js.errors.NotFoundError:
        await js.add_stream(config)
        return True

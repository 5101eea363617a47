"""The two things every NATS user in brain does the same way: connect until it works, and make
sure a JetStream stream exists (the EventBus's event stream, the deletion relay's control stream)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import nats
import nats.js.errors
from nats.js.api import StreamConfig

__all__ = ["connect", "ensure_stream"]


async def connect(
    url: str, *, stopping: Callable[[], bool], note: Callable[[str], None], retry_seconds: float, **options: Any
) -> Any:
    """A nats-py client connected to url, retried every retry_seconds; None once stopping() is true.

    `note` hears of each failed attempt; `options` go to `nats.connect` (name, callbacks, ...).
    """
    while not stopping():
        try:
            return await nats.connect(url, **options)
        except Exception as exc:  # noqa: BLE001 - NATS not up yet, refused, timed out: retried
            note(f"connect to {url}: {exc!r}")
            await asyncio.sleep(retry_seconds)
    return None


async def ensure_stream(js: Any, config: StreamConfig) -> bool:
    """Create the stream if it is missing; True if it was created."""
    try:
        await js.stream_info(config.name)
        return False
    except nats.js.errors.NotFoundError:
        await js.add_stream(config)
        return True

"""What every NATS user in brain does the same way: connect until it works, make sure a JetStream
stream exists (the EventBus's event stream, the deletion relay's control stream), open what
JetStream may not be ready to give yet, check on something at a steady pace, and close without
waiting long."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import nats
import nats.js.errors
from nats.js.api import KeyValueConfig, StorageType, StreamConfig

from brain.redact import redact_text, redact_url

__all__ = ["close_quietly", "connect", "connect_kept", "ensure_stream", "every", "open_bucket", "retried"]

T = TypeVar("T")


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


async def retried(
    attempt: Callable[[], Awaitable[T]], *, what: str, stopping: Callable[[], bool], note: Callable[[str], None],
    retry_seconds: float = 1.0,
) -> T | None:
    """attempt()'s result, tried again every retry_seconds while it fails (JetStream without a
    meta leader yet, a bucket not created yet); None once stopping() is true. `note` hears
    "<what>: <error>" for each failure, credentials masked."""
    while not stopping():
        try:
            return await attempt()
        except Exception as exc:  # noqa: BLE001 - not ready yet: retried
            note(f"{what}: {redact_text(repr(exc))}")
            await asyncio.sleep(retry_seconds)
    return None


async def every(
    seconds: Callable[[], float], check: Callable[[], Awaitable[object]], *, what: str,
    stopping: Callable[[], bool], note: Callable[[str], None],
) -> None:
    """check() every seconds() from the start of one to the start of the next, until stopping();
    a failed check (NATS away, a database busy) is noted as "<what>: <error>" and the next one
    comes on time."""
    while not stopping():
        started = time.monotonic()
        try:
            await check()
        except Exception as exc:  # noqa: BLE001 - the next check
            note(f"{what}: {redact_text(repr(exc))}")
        await asyncio.sleep(max(0.0, seconds() - (time.monotonic() - started)))


async def close_quietly(nc: Any, timeout: float = 2.0) -> None:
    """Close a nats-py client (draining what it buffered) within `timeout`; whatever goes wrong,
    the caller is stopping anyway."""
    if nc is None or nc.is_closed:
        return
    try:
        await asyncio.wait_for(nc.close(), timeout=timeout)
    except Exception:  # noqa: BLE001 - closing anyway
        pass


async def ensure_stream(js: Any, config: StreamConfig) -> bool:
    """Create the stream if it is missing; True if it was created."""
    try:
        await js.stream_info(config.name)
        return False
    except nats.js.errors.NotFoundError:
        await js.add_stream(config)
        return True


async def open_bucket(js: Any, bucket: str, *, replicas: int, **config: Any) -> Any:
    """The KV bucket, created (file storage, history 1 unless `config` says otherwise) if it is
    missing; when another process creates it at the same moment, theirs."""
    try:
        return await js.key_value(bucket)
    except nats.js.errors.BucketNotFoundError:
        try:
            return await js.create_key_value(config=KeyValueConfig(
                bucket=bucket, storage=StorageType.FILE, replicas=replicas, **{"history": 1, **config},
            ))
        except nats.js.errors.BadRequestError:
            return await js.key_value(bucket)

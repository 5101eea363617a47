"""WebhookSender: makes the delivery attempts, over HTTP from the serving event loop.

It asks the DeliveryQueue for what is due whenever deliveries were queued, an attempt ended,
or an endpoint's wait is over, keeps at most `webhooks.concurrency` attempts in flight (at
most a few per endpoint), signs each attempt (`brain.webhooks.signing`) and tells the queue
how it went. A 2xx is delivered; anything else — another status (redirects are not
followed), a timeout, a refused or unreachable address — is a failure.

Targets are held to the outbound address policy (`brain.outbound`) at every attempt, not only
when the user registers them: the connector's resolver refuses a name that now resolves to a
private address, and the connection goes to the address that was checked. A URL naming an IP
address skips resolution, so that address is checked first.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import time
from collections import Counter
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pykka
from aiohttp.abc import AbstractResolver, ResolveResult

import brain
from brain.actors import bridge
from brain.actors.base import Link
from brain.actors.loop import LoopActor
from brain.clock import steady_time
from brain.errors import AddressRefused, ServiceUnavailable, StorageFault
from brain.outbound import Network, refusal
from brain.webhooks import signing
from brain.webhooks.queue import PER_ENDPOINT, Delivery, Result
from brain.webhooks.state import Webhooks

log = logging.getLogger("brain.webhooks")

# Look for due deliveries at least this often (the queue wakes the sender sooner when it can).
POLL_SECONDS = 5.0
USER_AGENT = f"brain-webhooks/{brain.__version__}"


class PolicyResolver(AbstractResolver):
    """aiohttp's threaded resolver, refusing every name with an address the policy does not allow."""

    def __init__(self, allowed: tuple[Network, ...]) -> None:
        self._inner = aiohttp.ThreadedResolver()
        self._allowed = allowed

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        """The addresses of host, all of them allowed; AddressRefused otherwise."""
        found = await self._inner.resolve(host, port, family)
        for result in found:
            why = refusal(result["host"], self._allowed)
            if why is not None:
                raise AddressRefused(host, why)
        return found

    async def close(self) -> None:
        """Release the inner resolver."""
        await self._inner.close()


def check_literal(url: str, allowed: tuple[Network, ...]) -> None:
    """AddressRefused if the URL names an IP address the policy does not allow (names go to the resolver)."""
    host = urlsplit(url).hostname or ""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return
    why = refusal(host, allowed)
    if why is not None:
        raise AddressRefused(host, why)


class WebhookSender(LoopActor):
    """The supervised sender (see the module docstring)."""

    def __init__(self, *, link: Link | None = None, hub: Webhooks, loop: asyncio.AbstractEventLoop | None) -> None:
        super().__init__(link=link, loop=loop, own_loop=True)
        self.hub = hub
        self.settings = hub.settings
        self.session: aiohttp.ClientSession | None = None
        self._wake: asyncio.Event | None = None
        self._in_flight: dict[int, str] = {}  # delivery id -> endpoint id
        self._tasks: set[asyncio.Task[None]] = set()

    async def main(self) -> None:
        """Ask for due deliveries, attempt them, repeat."""
        wake = self._wake = asyncio.Event()
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(resolver=PolicyResolver(self.hub.allowed), limit=self.settings.concurrency),
            timeout=aiohttp.ClientTimeout(total=self.settings.timeout_seconds),
            trust_env=False,  # a proxy from the environment would connect where the policy cannot see
        )
        self.hub.attach_sender(asyncio.get_running_loop(), wake.set)
        while True:
            wake.clear()
            next_retry = await self._start_due()
            wait = POLL_SECONDS if next_retry is None else min(POLL_SECONDS, max(0.01, next_retry - steady_time()))
            try:
                await asyncio.wait_for(wake.wait(), wait)
            except TimeoutError:
                pass

    async def _start_due(self) -> float | None:
        free = self.settings.concurrency - len(self._in_flight)
        if free <= 0:
            return None
        room = {endpoint: PER_ENDPOINT - n for endpoint, n in Counter(self._in_flight.values()).items()}
        try:
            due, next_retry = await bridge.ask(self.hub.queue().due(free, list(self._in_flight), room))
        except (ServiceUnavailable, StorageFault, pykka.ActorDeadError):
            return None  # the queue is restarting, or webhooks.db failed: it wakes us when it is back
        for delivery in due:
            self._in_flight[delivery.id] = delivery.endpoint_id
            task = asyncio.create_task(self._attempt(delivery))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        self.hub.in_flight = len(self._in_flight)
        return next_retry

    async def _attempt(self, delivery: Delivery) -> None:
        assert self.session is not None
        at = time.time()
        started = time.perf_counter()
        status: int | None = None
        error: str | None = None
        retry_after: float | None = None
        headers = {
            **signing.headers(delivery.key, delivery.msg_id, int(at), delivery.body),
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
        }
        try:
            check_literal(delivery.url, self.hub.allowed)
            async with self.session.post(delivery.url, data=delivery.body, headers=headers, allow_redirects=False) as r:
                status = r.status
                retry_after = _seconds(r.headers.get("Retry-After"))
        except AddressRefused as exc:
            error = f"refused: {exc.message}"
        except TimeoutError:
            error = f"no answer within {self.settings.timeout_seconds:g}s"
        except aiohttp.ClientError as exc:
            error = f"{type(exc).__name__}: {exc}"[:300]
        except Exception as exc:  # noqa: BLE001 - whatever it is, it is this attempt's failure
            log.exception("webhooks: attempt of %s failed unexpectedly", delivery.msg_id)
            error = f"{type(exc).__name__}"
        finally:
            del self._in_flight[delivery.id]
            self.hub.in_flight = len(self._in_flight)
        result = Result(delivery.id, delivery.endpoint_id, at, status, error,
                        (time.perf_counter() - started) * 1000, retry_after)
        try:
            self.hub.tell_queue(result)
        except (ServiceUnavailable, pykka.ActorDeadError):
            pass  # not recorded: the delivery is still pending and is attempted again
        if self._wake is not None:
            self._wake.set()

    async def close(self) -> None:
        """Cancel the attempts in flight (they stay pending) and close the HTTP client."""
        for task in list(self._tasks):
            task.cancel()
        if self.session is not None:
            await self.session.close()


def _seconds(value: str | None) -> float | None:
    """A Retry-After given in seconds (an HTTP date is ignored)."""
    if value is None or not value.strip().isdigit():
        return None
    return float(value.strip())

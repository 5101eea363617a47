"""Local fake mail providers for offline tests.

Each fake is an aiohttp application served from a background thread with its own event
loop, bound to 127.0.0.1 on a port the OS picks. Tests start it, point the real client
libraries (or a separately running brain process) at ``fake.base_url`` and change the
mailbox directly from Python; every state change is guarded by the fake's lock.

The pieces shared by the Gmail and Microsoft fakes live here: the server base class, the
fault-injection plan (``fail_next``, ``delay``, ``truncate_next``), the request log, the
loopback guard used by the tests, and the command-line runner for benchmarks.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import ipaddress
import json
import secrets
import signal
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple, Self

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, MultiDict

__all__ = [
    "FakeServer",
    "FaultPlan",
    "RecordedRequest",
    "loopback_only",
    "pkce_challenge",
    "pkce_pair",
    "pkce_refusal",
    "run_main",
]

LOOPBACK = "127.0.0.1"
# Paths under this prefix drive a fake from another process (benchmarks); they are
# neither logged nor subject to fault injection.
CONTROL_PREFIX = "/_fake/"


class _RequestFields(NamedTuple):
    method: str
    path: str
    query: MultiDict[str]


class RecordedRequest(_RequestFields):
    """One request the fake received: a ``(method, path, query)`` tuple with extras.

    ``at`` is the ``time.monotonic()`` of arrival, ``status`` the status sent back (None
    while in flight), ``via_batch`` is True for a part of a batch request.
    """

    at: float
    status: int | None
    via_batch: bool
    headers: CIMultiDict[str]


def _record(
    method: str, path: str, query: MultiDict[str], *, via_batch: bool = False, headers: Any = None
) -> RecordedRequest:
    entry = RecordedRequest(method, path, MultiDict(query))
    entry.at = time.monotonic()
    entry.status = None
    entry.via_batch = via_batch
    entry.headers = CIMultiDict(headers or {})
    return entry


@dataclass
class _Fault:
    kind: str  # "fail", "delay" or "truncate"
    remaining: int | None  # None: every matching request until cleared
    path_prefix: str
    method: str | None
    status: int = 0
    retry_after: float | None = None
    seconds: float = 0.0

    def matches(self, method: str, path: str) -> bool:
        if self.method is not None and self.method.upper() != method.upper():
            return False
        return path.startswith(self.path_prefix)


class FaultPlan:
    """Scripted failures, consumed in the order they were added; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: list[_Fault] = []

    def fail_next(
        self,
        n: int = 1,
        *,
        status: int = 429,
        retry_after: float | None = None,
        path_prefix: str = "",
        method: str | None = None,
    ) -> None:
        """Answer the next ``n`` matching requests with ``status`` (and ``Retry-After``)."""
        self._add(_Fault("fail", n, path_prefix, method, status=status, retry_after=retry_after))

    def delay(self, seconds: float, *, n: int | None = None, path_prefix: str = "", method: str | None = None) -> None:
        """Hold matching requests ``seconds`` before answering (the next ``n``, or all)."""
        self._add(_Fault("delay", n, path_prefix, method, seconds=seconds))

    def truncate_next(self, n: int = 1, *, path_prefix: str = "", method: str | None = None) -> None:
        """Send half of the next ``n`` matching responses, then drop the connection."""
        self._add(_Fault("truncate", n, path_prefix, method))

    def clear(self) -> None:
        """Forget every scripted fault."""
        with self._lock:
            self._faults.clear()

    def pending(self) -> int:
        """How many scripted faults still wait for a request."""
        with self._lock:
            return len(self._faults)

    def take(self, kind: str, method: str, path: str) -> _Fault | None:
        """Consume and return the first fault of ``kind`` matching this request."""
        with self._lock:
            for fault in self._faults:
                if fault.kind == kind and fault.matches(method, path):
                    if fault.remaining is not None:
                        fault.remaining -= 1
                        if fault.remaining <= 0:
                            self._faults.remove(fault)
                    return fault
        return None

    def _add(self, fault: _Fault) -> None:
        if fault.remaining is not None and fault.remaining < 1:
            raise ValueError("n must be at least 1")
        with self._lock:
            self._faults.append(fault)


def pkce_challenge(verifier: str) -> str:
    """The S256 ``code_challenge`` of a PKCE ``code_verifier`` (RFC 7636)."""
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()


def pkce_pair() -> tuple[str, str]:
    """A fresh ``(code_verifier, code_challenge)`` for a test that plays the client."""
    verifier = secrets.token_urlsafe(48)
    return verifier, pkce_challenge(verifier)


def pkce_refusal(challenge: str | None, method: str | None, verifier: str | None) -> str | None:
    """Why a token request's ``code_verifier`` does not redeem a code (None: it does).

    A code issued without a challenge needs no verifier; one issued with a challenge needs
    the verifier that made it, as Google and the Microsoft identity platform check.
    """
    if challenge is None:
        return None
    if not verifier:
        return "Missing code verifier."
    computed = pkce_challenge(verifier) if method == "S256" else verifier
    if not secrets.compare_digest(computed, challenge):
        return "The code_verifier does not match the code_challenge supplied in the authorization request."
    return None


class FakeServer:
    """An aiohttp app on 127.0.0.1 in a background thread: ``start()``, ``stop()``, ``base_url``.

    Subclasses implement ``add_routes(app)`` and ``error_body(status, message)`` (the
    provider's error JSON) and keep their state under ``self.lock``.
    """

    #: methods a separate process may call through ``POST /_fake/call`` (see ``run_main``).
    control_methods: frozenset[str] = frozenset(
        {"fail_next", "delay", "truncate_next", "clear_faults", "request_count"}
    )

    def __init__(self, *, port: int = 0, ssl_context: ssl.SSLContext | None = None) -> None:
        self.lock = threading.RLock()
        self.faults = FaultPlan()
        self._requested_port = port
        self._ssl_context = ssl_context
        self._requests: list[RecordedRequest] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self.port: int | None = None
        #: Webhooks the fake sent: (url, status; 0 when unreachable), oldest first.
        self.deliveries: list[tuple[str, int]] = []

    # -- lifecycle -----------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """``http(s)://127.0.0.1:<port>`` once started."""
        if self.port is None:
            raise RuntimeError("the fake server is not started")
        scheme = "https" if self._ssl_context is not None else "http"
        return f"{scheme}://{LOOPBACK}:{self.port}"

    def start(self) -> Self:
        """Bind to 127.0.0.1 and serve from a background thread; returns self."""
        if self._thread is not None:
            raise RuntimeError("already started")
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(target=loop.run_forever, name=f"{type(self).__name__}-loop", daemon=True)
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(self._serve(), loop)
        try:
            future.result(timeout=10)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Close the listener and the loop thread; safe to call twice."""
        loop, thread, runner = self._loop, self._thread, self._runner
        if loop is None or thread is None:
            return
        if runner is not None:
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()
        self._loop = self._thread = self._runner = None
        self.port = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @classmethod
    def running(cls, *args: Any, **kwargs: Any) -> Iterator[Any]:
        """Generator for a pytest fixture: ``yield from FakeGmail.running()``."""
        fake = cls(*args, **kwargs)
        fake.start()
        try:
            yield fake
        finally:
            fake.stop()

    async def _serve(self) -> None:
        app = web.Application(middlewares=[self._middleware], client_max_size=64 * 1024**2)
        app.router.add_post(CONTROL_PREFIX + "call", self._control)
        self.add_routes(app)
        # A short shutdown_timeout: stop() must not wait long for a request held by delay().
        runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=0.5)
        await runner.setup()
        site = web.TCPSite(runner, LOOPBACK, self._requested_port, ssl_context=self._ssl_context)
        await site.start()
        self._runner = runner
        server = site._server  # aiohttp keeps the listening sockets here
        assert server is not None and server.sockets
        self.port = server.sockets[0].getsockname()[1]

    # -- what subclasses provide -----------------------------------------------------

    def add_routes(self, app: web.Application) -> None:
        """Register the provider's routes on ``app``."""
        raise NotImplementedError

    def error_body(self, status: int, message: str, path: str = "") -> dict[str, Any]:
        """The provider's JSON error document for ``status`` on ``path``."""
        return {"error": {"code": status, "message": message}}

    # -- fault injection and request log ------------------------------------------

    def fail_next(
        self,
        n: int = 1,
        *,
        status: int = 429,
        retry_after: float | None = None,
        path_prefix: str = "",
        method: str | None = None,
    ) -> None:
        """Answer the next ``n`` requests under ``path_prefix`` with ``status``."""
        self.faults.fail_next(n, status=status, retry_after=retry_after, path_prefix=path_prefix, method=method)

    def delay(self, seconds: float, *, n: int | None = None, path_prefix: str = "", method: str | None = None) -> None:
        """Hold requests under ``path_prefix`` for ``seconds`` (the next ``n``, or all)."""
        self.faults.delay(seconds, n=n, path_prefix=path_prefix, method=method)

    def truncate_next(self, n: int = 1, *, path_prefix: str = "", method: str | None = None) -> None:
        """Cut the next ``n`` responses under ``path_prefix`` in half and drop the connection."""
        self.faults.truncate_next(n, path_prefix=path_prefix, method=method)

    def clear_faults(self) -> None:
        """Forget every scripted fault."""
        self.faults.clear()

    @property
    def requests(self) -> list[RecordedRequest]:
        """A snapshot of the request log, oldest first."""
        with self.lock:
            return list(self._requests)

    def clear_requests(self) -> None:
        """Empty the request log."""
        with self.lock:
            self._requests.clear()

    def request_count(self, path_prefix: str = "", method: str | None = None) -> int:
        """How many logged requests match ``path_prefix`` (and ``method``)."""
        return sum(
            1
            for r in self.requests
            if r.path.startswith(path_prefix) and (method is None or r.method == method.upper())
        )

    def log_request(
        self, method: str, path: str, query: MultiDict[str], *, via_batch: bool = False, headers: Any = None
    ) -> RecordedRequest:
        """Append a request to the log (the batch endpoint logs its parts this way)."""
        entry = _record(method, path, query, via_batch=via_batch, headers=headers)
        with self.lock:
            self._requests.append(entry)
        return entry

    # -- webhooks: what the fake sends ---------------------------------------------------

    def post_later(self, url: str, body: bytes, *, headers: dict[str, str] | None = None) -> None:
        """POST ``body`` to ``url`` from the fake's loop, without waiting (a push notification);
        the outcome lands in ``deliveries``."""
        loop = self._loop
        if loop is None:
            return
        asyncio.run_coroutine_threadsafe(self._deliver(url, body, headers or {}), loop)

    async def post_now(self, url: str, body: bytes, headers: dict[str, str], *, timeout: float = 10.0) -> tuple[int, bytes, str]:
        """POST from inside a handler and wait: (status, body, content type); status 0 if unreachable."""
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session:
                async with session.post(url, data=body, headers=headers) as resp:
                    answer = resp.status, await resp.read(), resp.content_type
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
            answer = 0, b"", ""
        with self.lock:
            self.deliveries.append((url, answer[0]))
        return answer

    async def _deliver(self, url: str, body: bytes, headers: dict[str, str]) -> None:
        await self.post_now(url, body, headers)

    def fault_response(self, fault: _Fault, path: str = "") -> tuple[int, dict[str, str], dict[str, Any]]:
        """Status, headers and JSON body for an injected failure on ``path``."""
        headers = {}
        if fault.retry_after is not None:
            headers["Retry-After"] = _retry_after_value(fault.retry_after)
        return fault.status, headers, self.error_body(fault.status, _reason(fault.status), path)

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Callable[..., Any]) -> web.StreamResponse:
        if request.path.startswith(CONTROL_PREFIX):
            return await handler(request)
        method, path = request.method, request.path
        entry = self.log_request(method, path, MultiDict(request.query), headers=request.headers)
        delay = self.faults.take("delay", method, path)
        if delay is not None:
            await asyncio.sleep(delay.seconds)
        failure = self.faults.take("fail", method, path)
        if failure is not None:
            status, headers, body = self.fault_response(failure, path)
            response: web.StreamResponse = web.json_response(body, status=status, headers=headers)
        else:
            response = await handler(request)
        entry.status = response.status
        if failure is None and self.faults.take("truncate", method, path) is not None:
            await _truncate(request, response)
        return response

    async def _control(self, request: web.Request) -> web.Response:
        call = await request.json()
        name = call.get("method")
        if name not in self.control_methods:
            return web.json_response({"error": f"not a control method: {name!r}"}, status=400)
        result = getattr(self, name)(*call.get("args", []), **call.get("kwargs", {}))
        return web.json_response({"result": result})


async def _truncate(request: web.Request, response: web.StreamResponse) -> None:
    """Announce the full length, send half of the body, then drop the connection."""
    body = response.body if isinstance(response, web.Response) else b""
    if not isinstance(body, bytes):
        body = b""
    partial = web.StreamResponse(status=response.status, headers=response.headers)
    partial.content_length = max(len(body), 2)
    await partial.prepare(request)
    await partial.write(body[: len(body) // 2])
    transport = request.transport
    if transport is not None:
        transport.close()
    # The connection is gone: stop aiohttp from finishing the response.
    raise asyncio.CancelledError


def _retry_after_value(seconds: float) -> str:
    return str(int(seconds)) if float(seconds).is_integer() else str(seconds)


_REASONS = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    410: "Gone",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


def _reason(status: int) -> str:
    return _REASONS.get(status, "Error")


# -- loopback guard ----------------------------------------------------------------


def _is_loopback(address: Any) -> bool:
    if not isinstance(address, tuple):
        return True  # AF_UNIX and friends never leave the machine
    host = address[0]
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@contextlib.contextmanager
def loopback_only() -> Iterator[list[Any]]:
    """Refuse every outgoing connection that is not to a loopback address.

    Yields the list of refused addresses. Patches ``socket.socket.connect`` and
    ``connect_ex`` process-wide for the duration, so it covers httplib2, requests and
    asyncio alike.
    """
    refused: list[Any] = []
    original_connect = socket.socket.connect
    original_connect_ex = socket.socket.connect_ex

    def connect(sock: socket.socket, address: Any) -> Any:
        if not _is_loopback(address):
            refused.append(address)
            raise PermissionError(f"test network guard: refused connection to {address!r}")
        return original_connect(sock, address)

    def connect_ex(sock: socket.socket, address: Any) -> Any:
        if not _is_loopback(address):
            refused.append(address)
            raise PermissionError(f"test network guard: refused connection to {address!r}")
        return original_connect_ex(sock, address)

    socket.socket.connect = connect  # type: ignore[method-assign]
    socket.socket.connect_ex = connect_ex  # type: ignore[method-assign]
    try:
        yield refused
    finally:
        socket.socket.connect = original_connect  # type: ignore[method-assign]
        socket.socket.connect_ex = original_connect_ex  # type: ignore[method-assign]


# -- running a fake as its own process -----------------------------------------------


def run_main(
    build: Callable[[argparse.Namespace], FakeServer],
    describe: Callable[[FakeServer], list[str]],
    argv: list[str] | None = None,
    *,
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None,
    prog: str | None = None,
) -> None:
    """Serve a fake until SIGINT/SIGTERM; print its URL first, then ``describe`` lines."""
    parser = argparse.ArgumentParser(prog=prog)
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: any free port)")
    if add_arguments is not None:
        add_arguments(parser)
    args = parser.parse_args(argv)
    fake = build(args)
    fake.start()
    stopped = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stopped.set())
    print(fake.base_url, flush=True)
    for line in describe(fake):
        print(line, flush=True)
    try:
        stopped.wait()
    finally:
        fake.stop()


def control_call(
    base_url: str, method: str, *args: Any, ssl_context: ssl.SSLContext | None = None, **kwargs: Any
) -> Any:
    """Call a whitelisted method of a fake running in another process."""
    import urllib.request

    data = json.dumps({"method": method, "args": list(args), "kwargs": kwargs}).encode()
    req = urllib.request.Request(
        base_url + CONTROL_PREFIX + "call", data=data, headers={"Content-Type": "application/json"}
    )
    # No proxy handler: the fake is on loopback and a proxy from the environment must not see it.
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=ssl_context)
    )
    with opener.open(req, timeout=30) as resp:
        return json.loads(resp.read())["result"]

"""A lean single-connection HTTP/1.1 client for latency figures.

One blocking keep-alive socket with TCP_NODELAY, requests pre-encoded by the caller's choice of
headers, responses parsed just enough (status, Content-Length or chunked body). It is much
cheaper per request than aiohttp's or requests' clients, and what it still costs is measured
against the bare baseline server in the same run (see `bench.suite`), so a figure can be read
both raw and net of client + minimal-server overhead.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any


class HTTPStatusError(RuntimeError):
    """A response whose status was not the one the measurement expects."""


@dataclass(frozen=True)
class Response:
    """What a request returned."""

    status: int
    body: bytes
    elapsed: float  # seconds, from the first byte sent to the last byte read

    def json(self) -> Any:
        """The body parsed as JSON."""
        return json.loads(self.body)


class KeepAliveClient:
    """One persistent connection to 127.0.0.1:port."""

    def __init__(self, port: int, *, host: str = "127.0.0.1", timeout: float = 30.0) -> None:
        self.host = host
        self.port = port
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._buf = b""
        self._started = 0.0

    def _connect(self) -> socket.socket:
        sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock, self._buf = sock, b""
        return sock

    def close(self) -> None:
        """Close the connection."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> KeepAliveClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def encode(self, method: str, path: str, *, headers: Mapping[str, str] | None = None, body: Any = None) -> bytes:
        """The request bytes (JSON-encodes a non-bytes body)."""
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self.host}:{self.port}"]
        payload = b""
        if body is not None:
            payload = body if isinstance(body, bytes) else json.dumps(body, separators=(",", ":")).encode()
            lines += ["Content-Type: application/json", f"Content-Length: {len(payload)}"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + payload

    def send(self, raw: bytes) -> Response:
        """Send pre-encoded request bytes and read the response (reconnects once if the peer closed)."""
        for attempt in (0, 1):
            sock = self._sock or self._connect()
            start = time.perf_counter()
            try:
                sock.sendall(raw)
                status, body, keep = self._read_response(sock)
            except (ConnectionError, _PeerClosed):
                self.close()
                if attempt:
                    raise
                continue
            elapsed = time.perf_counter() - start
            if not keep:
                self.close()
            return Response(status, body, elapsed)
        raise AssertionError("unreachable")

    def send_only(self, raw: bytes) -> None:
        """Send pre-encoded request bytes; `receive` reads the response later (no reconnect)."""
        sock = self._sock or self._connect()
        self._started = time.perf_counter()
        sock.sendall(raw)

    def receive(self) -> Response:
        """The response to the request `send_only` sent."""
        assert self._sock is not None
        status, body, keep = self._read_response(self._sock)
        elapsed = time.perf_counter() - self._started
        if not keep:
            self.close()
        return Response(status, body, elapsed)

    def request(self, method: str, path: str, *, headers: Mapping[str, str] | None = None, body: Any = None) -> Response:
        """One request over the kept-alive connection."""
        return self.send(self.encode(method, path, headers=headers, body=body))

    # -- response parsing ------------------------------------------------------------

    def _fill(self, sock: socket.socket) -> None:
        chunk = sock.recv(262144)
        if not chunk:
            raise _PeerClosed()
        self._buf += chunk

    def _read_response(self, sock: socket.socket) -> tuple[int, bytes, bool]:
        while (end := self._buf.find(b"\r\n\r\n")) < 0:
            self._fill(sock)
        head, self._buf = self._buf[:end].decode("latin-1"), self._buf[end + 4:]
        status_line, *header_lines = head.split("\r\n")
        status = int(status_line.split(" ", 2)[1])
        headers = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        keep = headers.get("connection", "").lower() != "close"
        if headers.get("transfer-encoding", "").lower() == "chunked":
            return status, self._read_chunked(sock), keep
        length = int(headers.get("content-length", "0"))
        while len(self._buf) < length:
            self._fill(sock)
        body, self._buf = self._buf[:length], self._buf[length:]
        return status, body, keep

    def _read_chunked(self, sock: socket.socket) -> bytes:
        parts: list[bytes] = []
        while True:
            while (eol := self._buf.find(b"\r\n")) < 0:
                self._fill(sock)
            size = int(self._buf[:eol].split(b";")[0], 16)
            self._buf = self._buf[eol + 2:]
            while len(self._buf) < size + 2:
                self._fill(sock)
            parts.append(self._buf[:size])
            self._buf = self._buf[size + 2:]
            if size == 0:
                return b"".join(parts)


class _PeerClosed(Exception):
    pass


def expect(response: Response, *statuses: int, what: str) -> Response:
    """The response if its status is one of statuses; HTTPStatusError naming what failed otherwise."""
    if response.status not in statuses:
        raise HTTPStatusError(f"{what}: HTTP {response.status}: {response.body[:200].decode(errors='replace')}")
    return response


@dataclass(frozen=True)
class Shadow:
    """A bare-baseline request sent in blocks alternating with the measured ones, so both see the same noise."""

    client: KeepAliveClient
    raw: bytes
    status: int
    times: list[float]


# With a shadow, measured and bare requests alternate in blocks of this many: noise over the
# run falls on both alike, while each server answers back-to-back requests as a single client
# would see them. Strict one-for-one alternation measured something else: every request found
# its server's process asleep and its caches cold after the other one had run (bare POST p50
# 0.39 ms back to back, 0.75 ms alternated one for one, same machine, same minute).
SHADOW_BLOCK = 50


def sample_latencies(
    client: KeepAliveClient,
    make_request: Callable[[int], bytes],
    *,
    count: int,
    warmup: int,
    statuses: tuple[int, ...],
    what: str,
    on_response: Callable[[int, Response], None] | None = None,
    shadow: Shadow | None = None,
) -> list[float]:
    """Send warmup + count requests one at a time; the latencies (seconds) of the last count.

    With a shadow, as many bare requests are sent too, in alternating blocks (SHADOW_BLOCK).
    """
    out: list[float] = []
    for i in range(warmup + count):
        if shadow is not None and (i - warmup) % SHADOW_BLOCK == 0:
            for _ in range(min(SHADOW_BLOCK, warmup + count - i) if i >= warmup else 0):
                bare = expect(shadow.client.send(shadow.raw), shadow.status, what="bare baseline")
                shadow.times.append(bare.elapsed)
        response = expect(client.send(make_request(i)), *statuses, what=what)
        if on_response is not None:
            on_response(i, response)
        if i >= warmup:
            out.append(response.elapsed)
    return out

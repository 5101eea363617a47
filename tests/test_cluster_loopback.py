"""The lean client a cluster node replays forwarded requests with (brain.api.loopback), against a
real aiohttp server in the test's loop: every way aiohttp frames an answer comes back whole, as
bytes, and a connection the server closed while idle is replaced without the caller noticing.
Each test runs twice: over a socket, and with the connection held in memory (`MemoryTransport`,
what a node does while its listener serves)."""

from __future__ import annotations

import asyncio
import json
import gzip
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web

from brain.api.loopback import LoopbackClient, LoopbackError

RELEASE: web.AppKey[asyncio.Event] = web.AppKey("release", asyncio.Event)


async def streamed(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/plain"})
    response.enable_chunked_encoding()
    await response.prepare(request)
    for i in range(3):
        await response.write(f"part {i};".encode())
    await response.write_eof()
    return response


async def live(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    await response.write(b"data: 1\n\n")
    await request.app[RELEASE].wait()  # the client must have the first part before this one
    await response.write(b"data: 2\n\n")
    await response.write_eof()
    return response


WROTE: web.AppKey[list[int]] = web.AppKey("wrote", list)
BIG_PART = 1 << 16
FLOOD = 16 << 20  # beyond what the kernel buffers for a socket nobody reads (~4 MiB here)


async def flood(request: web.Request) -> web.StreamResponse:
    """FLOOD bytes as fast as the connection takes them, counting what was written."""
    response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    response.enable_chunked_encoding()
    await response.prepare(request)
    for _ in range(FLOOD // BIG_PART):
        await response.write(b"x" * BIG_PART)
        request.app[WROTE].append(BIG_PART)
    await response.write_eof()
    return response


async def echo(request: web.Request) -> web.Response:
    body = await request.read()
    seen = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}
    return web.json_response({"method": request.method, "path": request.path_qs, "body": body.decode(),
                              "headers": seen})


async def cookies(_request: web.Request) -> web.Response:
    response = web.Response(status=201, body=gzip.compress(b"zipped"), headers={"Content-Encoding": "gzip"})
    response.headers.add("Set-Cookie", "a=1")
    response.headers.add("Set-Cookie", "b=2")
    return response


async def empty(_request: web.Request) -> web.Response:
    return web.Response(status=204)


@pytest.fixture(params=[False, True], ids=["socket", "memory"])
def memory(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


def serving(test: Callable[[LoopbackClient, web.AppRunner], Awaitable[Any]], memory: bool, *,
            keepalive: float = 75.0) -> Any:
    async def run() -> Any:
        app = web.Application()
        app[RELEASE] = asyncio.Event()
        app[WROTE] = []
        app.router.add_get("/flood", flood)
        app.router.add_get("/live", live)
        app.router.add_route("*", "/echo", echo)
        app.router.add_get("/streamed", streamed)
        app.router.add_get("/cookies", cookies)
        app.router.add_get("/empty", empty)
        runner = web.AppRunner(app, access_log=None, keepalive_timeout=keepalive)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        client = LoopbackClient(f"http://127.0.0.1:{port}", (lambda: runner.server) if memory else None)
        try:
            return await test(client, runner)
        finally:
            client.close()
            await runner.cleanup()

    return asyncio.run(run())


def test_answers_come_back_whole_however_framed(memory: bool) -> None:
    async def test(client: LoopbackClient, _runner: web.AppRunner) -> None:
        status, headers, body = await client.request(
            "POST", "/echo?x=%C3%A9&y=1", [("Content-Type", "application/json"), ("X-Name", "caf\u00e9")], b'{"a": 1}')
        assert status == 200 and ("Content-Type", "application/json; charset=utf-8") in headers
        sent = json.loads(body)
        assert sent["method"] == "POST" and sent["path"] == "/echo?x=%C3%A9&y=1" and sent["body"] == '{"a": 1}'
        assert sent["headers"]["X-Name"] == "caf\u00e9"
        # Chunked: the chunks joined, the framing header passed on for the caller to drop.
        status, headers, body = await client.request("GET", "/streamed", [], b"")
        assert status == 200 and body == b"part 0;part 1;part 2;"
        # Repeated headers stay repeated; an encoded body stays encoded.
        status, headers, body = await client.request("GET", "/cookies", [], b"")
        assert status == 201 and [v for k, v in headers if k == "Set-Cookie"] == ["a=1", "b=2"]
        assert gzip.decompress(body) == b"zipped"
        # No body to read: a 204, and any answer to HEAD (its Content-Length is the GET's).
        assert (await client.request("GET", "/empty", [], b""))[::2] == (204, b"")
        status, headers, body = await client.request("HEAD", "/echo", [], b"")
        assert status == 200 and body == b"" and any(k == "Content-Length" and v != "0" for k, v in headers)
        # Everything above went over one kept connection, and it still serves.
        assert (await client.request("GET", "/empty", [], b""))[0] == 204
        assert len(client._idle) == 1

    serving(test, memory)


def test_a_line_break_in_a_header_or_target_is_refused_before_anything_is_sent(memory: bool) -> None:
    async def test(client: LoopbackClient, _runner: web.AppRunner) -> None:
        for target, headers in (("/echo", [("X-A", "1\r\nX-Injected: 1")]), ("/echo HTTP/1.1\r\nX: y", []),
                                ("/echo", [("X-A\nB", "1")]), ("/echo", [("X-A", "nul\0")])):
            with pytest.raises(LoopbackError):
                await client.request("GET", target, headers, b"")
        assert not client._idle

    serving(test, memory)


def test_a_connection_the_server_closed_while_idle_is_replaced(memory: bool) -> None:
    async def test(client: LoopbackClient, _runner: web.AppRunner) -> None:
        assert (await client.request("POST", "/echo", [], b"one"))[0] == 200
        await asyncio.sleep(0.5)  # beyond the server's keep-alive: it closed the connection
        status, _headers, body = await client.request("POST", "/echo", [], b"two")
        assert status == 200 and b'"two"' in body

    serving(test, memory, keepalive=0.1)


def test_concurrent_requests_each_get_their_own_answer(memory: bool) -> None:
    async def test(client: LoopbackClient, _runner: web.AppRunner) -> None:
        answers = await asyncio.gather(*(client.request("POST", f"/echo?n={i}", [], str(i).encode())
                                         for i in range(20)))
        assert [json.loads(body)["body"] for _s, _h, body in answers] == [str(i) for i in range(20)]

    serving(test, memory)


def test_an_answer_that_goes_on_is_read_part_by_part_as_it_comes(memory: bool) -> None:
    async def test(client: LoopbackClient, runner: web.AppRunner) -> None:
        answer = await client.open("GET", "/live", [], b"")
        assert answer.status == 200 and answer.chunked
        parts = answer.chunks()
        assert await asyncio.wait_for(parts.__anext__(), 5) == b"data: 1\n\n"
        runner.app[RELEASE].set()
        assert [part async for part in parts] == [b"data: 2\n\n"]
        answer.close()
        # An answer that is not a stream is read whole the same way.
        answer = await client.open("POST", "/echo", [], b"x")
        assert not answer.chunked and json.loads(await answer.read())["body"] == "x"
        answer.close()

    serving(test, memory)


def test_a_reader_that_does_not_read_holds_the_servers_writes_back(memory: bool) -> None:
    async def test(client: LoopbackClient, runner: web.AppRunner) -> None:
        answer = await client.open("GET", "/flood", [], b"")
        await asyncio.sleep(0.5)  # nothing read meanwhile
        held = sum(runner.app[WROTE])
        assert 0 < held < FLOOD // 2  # the server waits, as on a full socket
        assert sum([len(part) async for part in answer.chunks()]) == FLOOD == sum(runner.app[WROTE])
        answer.close()

    serving(test, memory)

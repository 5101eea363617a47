"""Two cluster nodes' forwarders (brain.api.forwarding) on one nats-server, in the test's loop:
node b forwards what it receives to node a, which replays it on its own aiohttp listener handed
the request in memory. What a client sees is what a itself answers: status, repeated headers,
bodies with line breaks and bytes that are not UTF-8; a refusal naming where the user moved
comes back as NotThere; a node nobody answers for is 503 at once (not a timeout). With two
servers, b's forwards go straight to the server a answers from once b knows it."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats
import pytest
from aiohttp import web

from brain.api.forwarding import MOVED_HEADER, Forwarder, NotThere
from brain.testing.nats_cluster import NatsCluster
from brain.web import MAX_BODY_KEY

MARKER = "m" * 64
PEERS: web.AppKey[list[Any]] = web.AppKey("peers", list)


@pytest.fixture(scope="module")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsCluster]:
    with NatsCluster(Path(tmp_path_factory.mktemp("nats")), size=1) as server:
        yield server


@pytest.fixture(scope="module")
def two_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsCluster]:
    with NatsCluster(Path(tmp_path_factory.mktemp("nats2")), size=2) as cluster:
        yield cluster


async def owner_echo(request: web.Request) -> web.Response:
    """Node a's own route: what reached it (the replay), with a repeated header in the answer."""
    request.app[PEERS].append(request.transport.get_extra_info("peername") if request.transport else None)
    body = await request.read()
    seen = [[k, v] for k, v in request.headers.items() if k.lower() not in ("host", "content-length")]
    answer = web.Response(status=202, body=json.dumps({"method": request.method, "path": request.path_qs,
                                                        "headers": seen, "body": body.hex()}).encode(),
                          content_type="application/json")
    answer.headers.add("Set-Cookie", "a=1")
    answer.headers.add("Set-Cookie", "b=2")
    return answer


async def owner_moved(_request: web.Request) -> web.Response:
    return web.json_response({"message": "moved"}, status=503, headers={MOVED_HEADER: "c"})


def run(nats_server: NatsCluster, test: Any, *, apart: bool = False) -> Any:
    """`test(port, owner_app, a, b)` with b's front listener on `port`; `apart`: a on the first
    server, b on the second with one more connection, to a's server, for its forwards."""

    async def main() -> Any:
        owner_app = web.Application()
        owner_app[PEERS] = []
        owner_app.router.add_route("*", "/echo", owner_echo)
        owner_app.router.add_get("/moved", owner_moved)
        runner = web.AppRunner(owner_app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        urls = [nats_server.server_url(0), nats_server.server_url(1), nats_server.server_url(0)] if apart else \
            [nats_server.url] * 2
        ncs = [await nats.connect(url, **nats_server.credentials) for url in urls]
        a = Forwarder("a", local_url=f"http://127.0.0.1:{port}", marker=MARKER, timeout=5,
                      listener=lambda: runner.server)
        b = Forwarder("b", local_url="http://127.0.0.1:9", marker=MARKER, timeout=5)
        await a.start(ncs[0])
        await b.start(ncs[1])
        if apart:
            await b.reach_through(ncs[2])
        for nc in ncs:
            await nc.flush()  # the server has both nodes' subscriptions before anything is forwarded

        async def forwarding(request: web.Request) -> web.StreamResponse:
            node = request.query.get("node", "a")
            return await b.forward(request, node, await b.body(request, node))

        front = web.Application()
        front[MAX_BODY_KEY] = 1 << 20
        front.router.add_route("*", "/{tail:.*}", forwarding)
        front_runner = web.AppRunner(front, access_log=None)
        await front_runner.setup()
        front_site = web.TCPSite(front_runner, "127.0.0.1", 0)
        await front_site.start()
        try:
            return await test(front_runner.addresses[0][1], owner_app, a, b)
        finally:
            await b.close()
            await a.close()
            for nc in ncs:
                await nc.close()
            await front_runner.cleanup()
            await runner.cleanup()

    return asyncio.run(main())


async def raw_request(port: int, raw: bytes) -> tuple[bytes, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
    body = await reader.readexactly(length)
    writer.close()
    return head, body


def test_a_forwarded_request_and_its_answer_pass_whole_through_nats(nats_server: NatsCluster) -> None:
    async def test(port: int, owner_app: web.Application, a: Forwarder, b: Forwarder) -> None:
        body = b"line one\nline two\r\n\xff\x00 not utf-8"
        raw = (b"POST /echo?x=%%C3%%A9&y=1 HTTP/1.1\r\nHost: front\r\nX-Name: caf\xc3\xa9\r\nX-Rep: 1\r\nX-Rep: 2\r\n"
               b"Content-Type: application/octet-stream\r\nContent-Length: %d\r\n\r\n" % len(body)) + body
        head, answer = await raw_request(port, raw)
        assert head.startswith(b"HTTP/1.1 202 ")
        assert head.count(b"Set-Cookie: ") == 2 and b"Set-Cookie: a=1" in head and b"Set-Cookie: b=2" in head
        seen = json.loads(answer)
        assert seen["method"] == "POST" and seen["path"] == "/echo?x=%C3%A9&y=1"
        assert bytes.fromhex(seen["body"]) == body
        headers = [tuple(pair) for pair in seen["headers"]]
        assert ("X-Name", "caf\u00e9") in headers and ("X-Rep", "1") in headers and ("X-Rep", "2") in headers
        assert ("x-brain-forwarded", MARKER) in headers  # the owner's replay, marked
        # Handed to a's listener in memory (a socket's peer would have a port).
        assert owner_app[PEERS] == [("127.0.0.1", 0)]
        assert b.stats()["forwarded"] == 1 and a.stats()["served_for_others"] == 1

    run(nats_server, test)


def test_a_refusal_naming_the_users_new_node_is_not_there_and_an_absent_node_is_503_at_once(
        nats_server: NatsCluster) -> None:
    async def test(port: int, _owner_app: web.Application, a: Forwarder, b: Forwarder) -> None:
        class Asked:  # what forward() reads of a request
            method = "GET"
            raw_path = "/moved"
            headers: dict[str, str] = {}

        with pytest.raises(NotThere) as refused:
            await b.forward(Asked(), "a", b"")  # type: ignore[arg-type]
        assert refused.value.moved_to == "c" and isinstance(refused.value.answer, web.Response)
        assert refused.value.answer.status == 503
        started = time.monotonic()
        with pytest.raises(NotThere) as absent:
            await b.forward(Asked(), "nobody", b"")  # type: ignore[arg-type]
        assert absent.value.moved_to is None and time.monotonic() - started < 2
        # The answers' inbox holds nothing once the requests are answered.
        assert not b._replies

    run(nats_server, test)


def test_forwards_go_straight_to_the_server_the_owner_answers_from_once_known(two_servers: NatsCluster) -> None:
    async def test(port: int, _owner_app: web.Application, a: Forwarder, b: Forwarder) -> None:
        raw = b"GET /echo HTTP/1.1\r\nHost: front\r\n\r\n"
        own = b.nc  # b's own connection, on the other server
        await raw_request(port, raw)  # where a answers from is not known yet: through b's own server
        assert b.stats()["forwarded"] == 1 and b.stats()["forwarded_direct"] == 0
        published = own.stats["out_msgs"]
        head, _ = await raw_request(port, raw)
        assert head.startswith(b"HTTP/1.1 202 ")
        assert b.stats()["forwarded_direct"] == 1 and own.stats["out_msgs"] == published  # not through b's server
        direct = b._direct[0][0]
        await direct.close()  # that server out of reach: through b's own again, answered all the same
        head, _ = await raw_request(port, raw)
        assert head.startswith(b"HTTP/1.1 202 ")
        assert b.stats()["forwarded"] == 3 and b.stats()["forwarded_direct"] == 1
        assert a.stats()["served_for_others"] == 3

    run(two_servers, test, apart=True)

"""A request for a user placed on another cluster node, answered by that node over NATS.

Clients may reach any node (behind any load balancer). The node that receives a request checks
the caller's credentials and its rate limits as for any request; if the user's store is on
another node (brain.api.placement) it sends the request to that node's subject
`brain.cluster.fwd.<node_id>` (NATS request/reply: method, path with query, headers and body
pass through) and relays the answer. The owner replays the request on its own API listener —
handed to the listener's aiohttp server in memory while it serves (over loopback before and
after: brain.api.loopback) — so that a forwarded request meets exactly the routes, checks and
errors of a direct one. The replay carries `x-brain-forwarded` with a value only this node's
processes know (derived from the server secret): it is served where it lands, never forwarded
again, and not counted twice against the rate limits. The owner checks the credentials again (one signature check from
its cached keys): a NATS message alone never makes anybody a user.

On the wire, a request is one NATS message without NATS headers: a line of JSON (method, target,
header pairs, the stream's inbox or "") and the body after it; the answer likewise (status,
header pairs, the node the user moved to or "", whether a stream follows). One line of JSON
costs nats-py far less than NATS headers to write and to parse, on each of the four messages of
a forward. Both ends' messages are handed over on nats-py's reading task (`_Handoff`), without
the queue and task of a subscription callback, and the asking node matches answers to requests
on an inbox subscription of its own. Nodes of one cluster run one brain version: a node of
another forwarding format subscribes no `brain.cluster.fwd.<node>` subject, so what is
forwarded to it is answered 503 "not answering" at once.

A forward goes straight to the NATS server its owner is connected to when this node has a
connection there (`reach_through`: the cluster node keeps one to each of the cluster's other
servers): each answer names the server the owner answered from, and the next request to that
node is published there, so neither leg crosses a route between servers (two fewer hops, each a
process to wake). Without such a connection (the first request to a node, a server away) it
goes through this node's own connection and the cluster routes it.

A request or answer larger than NATS's `max_payload` is refused with a JSON error naming the
limit. The live event stream (an answer that never ends) travels differently: the forwarding
node subscribes an inbox of its own and names it in the request; the owner answers the head
(status, headers) as usual, then publishes the stream's bytes to that inbox as they come, and
asks the inbox every few seconds whether anybody still reads it — nobody (the client left, the
node died): it ends the replay. The forwarding node ends the client's stream when the owner
says it ended, when it has heard nothing from the owner for STREAM_SILENCE_SECONDS, when the
client reads too slowly, or when it stops itself (the client resumes with Last-Event-ID,
wherever it lands).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import re
from collections.abc import Callable
from typing import Any, cast

import nats.errors
from aiohttp import web
from multidict import CIMultiDict

from brain.api.loopback import LoopbackAnswer, LoopbackClient, LoopbackError
from brain.api.live import SHUTTING_DOWN, TOO_SLOW
from brain.api.stream import closing, resume_point
from brain.errors import HTTPError, PayloadTooLarge, ServiceUnavailable
from brain.web import read_body

__all__ = ["FORWARDED_HEADER", "MOVED_HEADER", "SUBJECT_PREFIX", "Forwarder", "NotThere", "forward_marker", "server_name"]

log = logging.getLogger("brain.cluster")

SUBJECT_PREFIX = "brain.cluster.fwd"
FORWARDED_HEADER = "x-brain-forwarded"
# On the owner's answer to its own replay: the user is placed on this node now, not here (the
# node that forwarded it asks there). Carried back in the answer's head, never to a client.
MOVED_HEADER = "x-brain-moved"
# What a hop does not pass on: connection management, lengths the next hop computes again, and
# the marker (only ever set by the owner on its own replay).
_NOT_PASSED = frozenset({
    "connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade",
    "content-length", "host", FORWARDED_HEADER, MOVED_HEADER,
    # The body travels whole: the replay has nothing to wait for before sending it.
    "expect",
})
_END = "Brain-End"  # the stream ended on the owner (a NATS header on the stream's inbox)
# What the NATS server answers a request nobody subscribes to (with headers on, as nats-py connects).
_NO_RESPONDERS = "503"
# How often the owner of a forwarded stream asks whether its inbox is still read; a relaying node
# that hears nothing from the owner for STREAM_SILENCE_SECONDS (neither bytes nor a question) takes
# it for dead and ends the client's stream (the client resumes with Last-Event-ID, elsewhere).
STREAM_CHECK_SECONDS = 5.0
STREAM_SILENCE_SECONDS = 2 * STREAM_CHECK_SECONDS + 2.0
# An event's id line in a stream's bytes (the owner writes each event whole).
_EVENT_ID = re.compile(rb"(?:^|\n)id: (\d+)\n")


def forward_marker(secret: bytes) -> str:
    """The value of `x-brain-forwarded` on this node's replays (the same in each of its workers)."""
    return hmac.new(secret, b"brain.cluster.forwarded", hashlib.sha256).hexdigest()


def _passed(headers: Any) -> list[list[str]]:
    return [[k, v] for k, v in headers if k.lower() not in _NOT_PASSED]


def _envelope(head: list[Any], body: bytes) -> bytes:
    # JSON escapes line breaks: the first one ends the head.
    return json.dumps(head, separators=(",", ":")).encode() + b"\n" + body


def _opened(data: bytes) -> tuple[list[Any], bytes]:
    """The head and body of an envelope (ValueError if it is not one)."""
    head, sep, body = data.partition(b"\n")
    parsed = json.loads(head) if sep else None
    if not isinstance(parsed, list):
        raise ValueError("not a forwarded message")
    return parsed, body


class _Handoff:
    """Hands each message of a subscription to `deliver` on nats-py's reading task.

    Given as a subscription's `future`, it gets each message through `set_result` (nats-py's
    path for the single answer of an old-style request, taken for every message while the
    subscription has no message limit): no queue, and no task per subscription between the
    reading task and the handler. `deliver` must be quick (a handler that awaits starts a
    task) and never raises here: an exception would stop nats-py's reading task.
    """

    __slots__ = ("deliver",)

    def __init__(self, deliver: Callable[[Any], None]) -> None:
        self.deliver = deliver

    def cancelled(self) -> bool:
        return False

    def set_result(self, msg: Any) -> None:
        try:
            self.deliver(msg)
        except Exception:  # noqa: BLE001 - never into nats-py's reading task
            log.exception("forwarding: handling a NATS message")


class _Reply:
    """A forwarded request's answer as it came: status, header pairs, body, where the user moved,
    whether a stream's bytes follow, the NATS server the owner answered from."""

    __slots__ = ("status", "headers", "body", "moved_to", "streaming", "server")

    def __init__(self, data: bytes) -> None:
        head, self.body = _opened(data)
        self.status, self.headers, self.moved_to, self.streaming = int(head[0]), head[1], head[2], bool(head[3])
        self.server = str(head[4]) if len(head) > 4 else ""


class NotThere(Exception):
    """The node asked does not hold the user (any more): nothing was served there.

    `moved_to`: where that node says the user is now (None: it did not answer at all);
    `answer`: what to relay if the request is not sent on.
    """

    def __init__(self, node: str, moved_to: str | None, answer: Exception | web.Response) -> None:
        super().__init__(node, moved_to)
        self.node = node
        self.moved_to = moved_to
        self.answer = answer


class Forwarder:
    """Sends requests to their user's node, and answers those sent to this node."""

    def __init__(self, node_id: str, *, local_url: str, marker: str, timeout: float,
                 stream_buffer: int = 1 << 20, listener: Callable[[], web.Server | None] | None = None) -> None:
        """`listener`: the API listener's aiohttp server while it serves (replays go to it in memory)."""
        self.node_id = node_id
        self.listener = listener
        # A relayed stream whose client lets more than this pile up is ended as too slow.
        self.stream_buffer = stream_buffer
        self.local_url = local_url.rstrip("/")
        self.marker = marker
        self._marker = marker.encode()
        self.timeout = timeout
        self.nc: Any = None
        self._loopback: LoopbackClient | None = None
        self._replies: dict[str, asyncio.Future[Any]] = {}  # inbox -> the forwarded request's answer
        self._reply_prefix = ""
        # Connections to other NATS servers of the cluster, each with its answers' inbox prefix.
        self._direct: list[tuple[Any, str]] = []
        self._homes: dict[str, str] = {}  # node -> the NATS server its last answer came from
        self._asked = 0
        self._serving: set[asyncio.Task[None]] = set()
        self._relayed: set[LoopbackAnswer] = set()  # streams this node serves for others, open now
        self._relaying: set[asyncio.Queue[bytes | None]] = set()  # other nodes' streams relayed to clients here
        self.shutting_down = False
        self.sent = 0
        self.sent_direct = 0  # of those, through a connection to the owner's server
        self.served = 0

    async def start(self, nc: Any) -> None:
        """Answer this node's subject (a queue group: one worker of the node takes each request)."""
        self._loopback = LoopbackClient(self.local_url, self.listener)
        self._reply_prefix = nc.new_inbox() + "."
        await nc.subscribe(self._reply_prefix + "*", future=cast(Any, _Handoff(self._answered)))
        self.nc = nc  # forwarding starts once the answers' inbox is subscribed
        await nc.subscribe(f"{SUBJECT_PREFIX}.{self.node_id}", queue=f"brain-node-{self.node_id}",
                           future=cast(Any, _Handoff(self._received)))

    async def reach_through(self, nc: Any) -> None:
        """Send requests for nodes answering from `nc`'s server through `nc` (another connection
        of this process, to another server of the cluster; its owner closes it after `close`)."""
        prefix = nc.new_inbox() + "."
        await nc.subscribe(prefix + "*", future=cast(Any, _Handoff(self._answered)))
        self._direct.append((nc, prefix))

    def _connection_to(self, node: str) -> tuple[Any, str]:
        """The connection to ask `node` through, and its answers' inbox prefix."""
        home = self._homes.get(node)
        if home and self._direct and home != server_name(self.nc):
            for nc, prefix in self._direct:
                if nc.is_connected and server_name(nc) == home:
                    return nc, prefix
        return self.nc, self._reply_prefix

    def end_streams(self) -> None:
        """The process is stopping: end the streams relayed to clients here, saying why."""
        self.shutting_down = True
        for chunks in self._relaying:
            chunks.put_nowait(None)

    async def close(self) -> None:
        """Stop answering; wait briefly for replays in flight."""
        for answer in self._relayed:
            answer.close()
        if self._serving:
            await asyncio.wait(self._serving, timeout=self.timeout)
        if self._loopback is not None:
            self._loopback.close()

    def is_forwarded(self, request: web.Request) -> bool:
        """Whether the request is this node's replay of one forwarded to it."""
        given = request.headers.get(FORWARDED_HEADER)
        # As bytes: compare_digest refuses str that is not ASCII, and a client may send anything.
        return given is not None and hmac.compare_digest(given.encode(errors="replace"), self._marker)

    async def body(self, request: web.Request, node: str) -> bytes:
        """The request's body, read once for every node it may be sent to (or as the handler that
        forwards it read it: brain.web.read_body gives the same bytes again)."""
        body = await read_body(request)
        if self.nc is not None and len(body) > self.nc.max_payload:
            raise PayloadTooLarge(f"request body too large to forward to node {node} "
                                  f"(NATS max_payload {self.nc.max_payload} bytes)")
        return body

    async def forward(self, request: web.Request, node: str, body: bytes) -> web.Response:
        """The answer of `node` to this request; NotThere if `node` served nothing because it does
        not hold the user (it gave the user up, or nobody answers its subject)."""
        reply = await self._ask(request, node, body)
        return self._whole(node, reply)

    async def _ask(self, request: web.Request, node: str, body: bytes, stream: str = "") -> _Reply:
        """Send the request to `node`; its reply (the answer, or a stream's head)."""
        if self.nc is None or not self.nc.is_connected:
            raise ServiceUnavailable(f"not connected to NATS: cannot reach node {node}, which holds this user's data")
        nc, prefix = self._connection_to(node)
        message = _envelope([request.method, request.raw_path, _passed(request.headers.items()), stream], body)
        if len(message) > nc.max_payload:
            raise PayloadTooLarge(f"request too large to forward to node {node} "
                                  f"(NATS max_payload {nc.max_payload} bytes)")
        self._asked += 1
        inbox = f"{prefix}{self._asked}"
        answer: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._replies[inbox] = answer
        try:
            await nc.publish(f"{SUBJECT_PREFIX}.{node}", message, reply=inbox)
            async with asyncio.timeout(self.timeout):
                msg = await answer
        except TimeoutError:
            # Perhaps served before the node went away: not sent anywhere else.
            raise HTTPError(f"node {node} did not answer within {self.timeout}s", status=504,
                            code="GATEWAY_TIMEOUT") from None
        finally:
            self._replies.pop(inbox, None)
        if not msg.data and msg.headers and msg.headers.get("Status") == _NO_RESPONDERS:
            raise NotThere(node, None, ServiceUnavailable(
                f"node {node}, which holds this user's data, is not answering"))
        try:
            reply = _Reply(msg.data)
        except (ValueError, TypeError, IndexError):
            raise HTTPError(f"node {node} answered in a format this node does not read", status=502,
                            code="BAD_GATEWAY") from None
        if reply.server:
            self._homes[node] = reply.server
        self.sent += 1
        if nc is not self.nc:
            self.sent_direct += 1
        return reply

    def _answered(self, msg: Any) -> None:
        answer = self._replies.pop(msg.subject, None)
        if answer is not None and not answer.done():
            answer.set_result(msg)

    @staticmethod
    def _whole(node: str, reply: _Reply) -> web.Response:
        answer = web.Response(status=reply.status, body=reply.body, headers=CIMultiDict(reply.headers))
        if reply.moved_to:
            raise NotThere(node, reply.moved_to, answer)
        return answer

    async def stream(self, request: web.Request, node: str, body: bytes) -> web.StreamResponse:
        """`node`'s live stream for this request, relayed to the client until it ends (or its answer,
        if it is not a stream); NotThere as for `forward`."""
        if self.nc is None or not self.nc.is_connected:
            raise ServiceUnavailable(f"not connected to NATS: cannot reach node {node}, which holds this user's data")
        chunks: asyncio.Queue[bytes | None] = asyncio.Queue()
        pending = [0]  # bytes received and not yet written to the client
        loop = asyncio.get_running_loop()
        heard = [loop.time()]  # when the owner last sent anything

        async def received(msg: Any) -> None:
            heard[0] = loop.time()
            if msg.reply:  # the owner asks whether this stream is still read
                transport = request.transport
                if transport is None or transport.is_closing():  # the client left
                    chunks.put_nowait(None)
                    await self.nc.publish(msg.reply, b"", headers={_END: "1"})
                else:
                    await self.nc.publish(msg.reply, b"")
            elif msg.headers and _END in msg.headers:
                chunks.put_nowait(None)
            elif pending[0] <= self.stream_buffer:
                pending[0] += len(msg.data)
                chunks.put_nowait(msg.data)

        inbox = self.nc.new_inbox()
        sub = await self.nc.subscribe(inbox, cb=received)
        self._relaying.add(chunks)
        try:
            reply = await self._ask(request, node, body, stream=inbox)
            if not reply.streaming:
                return self._whole(node, reply)
            response = web.StreamResponse(status=reply.status, headers=CIMultiDict(reply.headers))
            await response.prepare(request)
            last = resume_point(request) or 0  # the owner accepted it: well formed
            try:
                while True:
                    try:
                        async with asyncio.timeout(STREAM_CHECK_SECONDS):
                            chunk = await chunks.get()
                    except TimeoutError:
                        if loop.time() - heard[0] > STREAM_SILENCE_SECONDS:
                            break  # the owner is gone: the client reconnects with Last-Event-ID
                        continue
                    if chunk is None:
                        if self.shutting_down:
                            await response.write(closing(SHUTTING_DOWN, last))
                        break
                    if pending[0] > self.stream_buffer:
                        await response.write(closing(TOO_SLOW, last))
                        break
                    pending[0] -= len(chunk)
                    ids = _EVENT_ID.findall(chunk)
                    if ids:
                        last = int(ids[-1])
                    await response.write(chunk)
                await response.write_eof()
            except (ConnectionError, TimeoutError):
                pass  # the client left: the owner learns it at its next check
            return response
        finally:
            self._relaying.discard(chunks)
            try:
                await sub.unsubscribe()
            except nats.errors.Error:
                pass  # the connection is gone: so is the subscription

    def _received(self, msg: Any) -> None:
        task = asyncio.ensure_future(self._answer(msg))
        self._serving.add(task)
        task.add_done_callback(self._serving.discard)

    async def _answer(self, msg: Any) -> None:
        if not msg.reply:
            return  # nobody to answer: not a forwarded request
        moved_to = ""
        streaming: LoopbackAnswer | None = None
        inbox = ""
        try:
            head, data = _opened(msg.data)
            method, target, asked, inbox = head
            headers = self._replayed_headers(target, asked)
            if headers is None:
                status, passed, body = 400, _json_headers(), _error("forwarded request: bad target")
            elif inbox:
                status, passed, body, moved_to, streaming = await self._replay_stream(method, target, headers, data)
            else:
                status, passed, body, moved_to = await self._replay(method, target, headers, data)
        except Exception as exc:  # noqa: BLE001 - the asking node gets a JSON error, not a timeout
            log.warning("forwarded request: %r", exc)
            status, passed, body = 502, _json_headers(), _error(f"node {self.node_id} could not serve it: {exc!r}")
        message = _envelope([status, passed, moved_to, streaming is not None, server_name(self.nc)], body)
        if len(message) > self.nc.max_payload:
            message = _envelope([502, _json_headers(), "", False], _error(
                f"response too large to forward from node {self.node_id} "
                f"(NATS max_payload {self.nc.max_payload} bytes): ask for less (limit)"))
            if streaming is not None:
                streaming.close()
                streaming = None
        try:
            await self.nc.publish(msg.reply, message)
        except Exception as exc:  # noqa: BLE001 - the asker times out and says so
            log.warning("forwarded request: could not reply: %r", exc)
            if streaming is not None:
                streaming.close()
                return
        if streaming is not None:
            await self._relay(streaming, inbox)

    async def _relay(self, answer: LoopbackAnswer, inbox: str) -> None:
        """Publish a stream's bytes to the asking node's inbox until it ends or nobody reads it."""
        self._relayed.add(answer)
        checking = asyncio.ensure_future(self._check_read(answer, inbox))
        try:
            async for chunk in answer.chunks():
                for start in range(0, len(chunk), self.nc.max_payload):
                    await self.nc.publish(inbox, chunk[start:start + self.nc.max_payload])
        except (LoopbackError, asyncio.IncompleteReadError, ConnectionError, ValueError):
            pass  # closed: by the check below, or by this node's listener
        finally:
            checking.cancel()
            answer.close()
            self._relayed.discard(answer)
            try:
                await self.nc.publish(inbox, b"", headers={_END: "1"})
            except Exception as exc:  # noqa: BLE001 - the asker ends it when it hears nothing
                log.debug("forwarded stream: could not say it ended: %r", exc)

    async def _check_read(self, answer: LoopbackAnswer, inbox: str) -> None:
        while True:
            await asyncio.sleep(STREAM_CHECK_SECONDS)
            try:
                reply = await self.nc.request(inbox, b"", timeout=self.timeout)
            except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
                answer.close()  # the stream ended there, or its node is gone
                return
            except nats.errors.Error:
                continue  # NATS away a moment: asked again
            if reply.headers and _END in reply.headers:
                answer.close()  # the client left
                return

    async def _replay(self, method: str, target: str, headers: list[tuple[str, str]],
                      data: bytes) -> tuple[int, list[list[str]], bytes, str]:
        """Status, header pairs, body and where the user moved to ("" unless refused for that)."""
        assert self._loopback is not None
        async with asyncio.timeout(self.timeout):
            status, answer, body = await self._loopback.request(method, target, headers, data)
        return status, _passed(answer), body, self._moved(answer)

    async def _replay_stream(self, method: str, target: str, headers: list[tuple[str, str]],
                             data: bytes) -> tuple[int, list[list[str]], bytes, str, LoopbackAnswer | None]:
        """As _replay, for a stream: the answer still open if it is one (chunked 200)."""
        assert self._loopback is not None
        async with asyncio.timeout(self.timeout):
            answer = await self._loopback.open(method, target, headers, data)
        if answer.status == 200 and answer.chunked:
            self.served += 1
            return answer.status, _passed(answer.headers), b"", "", answer
        try:
            async with asyncio.timeout(self.timeout):
                body = await answer.read()
        finally:
            answer.close()
        return answer.status, _passed(answer.headers), body, self._moved(answer.headers), None

    def _replayed_headers(self, target: str, asked: list[list[str]]) -> list[tuple[str, str]] | None:
        """The replay's headers (None: the target is not a path on this listener)."""
        if not target.startswith("/") or target.startswith("//"):
            return None
        headers = [(k, v) for k, v in asked if k.lower() not in _NOT_PASSED]
        headers.append((FORWARDED_HEADER, self.marker))
        return headers

    def _moved(self, headers: list[tuple[str, str]]) -> str:
        moved_to = next((v for k, v in headers if k.lower() == MOVED_HEADER), "")
        if not moved_to:
            self.served += 1
        return moved_to

    def stats(self) -> dict[str, int]:
        """Requests sent to other nodes (and how many straight to their server), and served for them;
        streams served for them open now."""
        return {"forwarded": self.sent, "forwarded_direct": self.sent_direct, "served_for_others": self.served,
                "streams_for_others": len(self._relayed)}


def server_name(nc: Any) -> str:
    """The name of the NATS server `nc` is connected to now ("" when not connected).

    From the server's INFO, which nats-py keeps (renewed on every reconnect) but offers no
    property for; every nats-server has a name (its id unless configured).
    """
    info = getattr(nc, "_server_info", None)
    if not isinstance(info, dict) or not nc.is_connected:
        return ""
    return str(info.get("server_name") or "")


def _json_headers() -> list[list[str]]:
    return [["Content-Type", "application/json"]]


def _error(message: str) -> bytes:
    return json.dumps({"message": message, "code": "BAD_GATEWAY"}).encode()

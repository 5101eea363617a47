"""A request for a user placed on another cluster node, answered by that node over NATS.

Clients may reach any node (behind any load balancer). The node that receives a request checks
the caller's credentials and its rate limits as for any request; if the user's store is on
another node (brain.api.placement) it sends the request to that node's subject
`brain.cluster.http.<node_id>` (NATS request/reply: method, path with query, headers and body
pass through) and relays the answer. The owner replays the request on its own API listener over
loopback, so that a forwarded request meets exactly the routes, checks and errors of a direct
one. The replay carries `x-brain-forwarded` with a value only this node's processes know (derived
from the server secret): it is served where it lands, never forwarded again, and not counted
twice against the rate limits. The owner checks the credentials again (one signature check from
its cached keys): a NATS message alone never makes anybody a user.

Only whole answers travel: a response or body larger than NATS's `max_payload` is refused with
a JSON error naming the limit, and the live event stream (an answer that never ends) is not
forwarded (docs/cluster.md).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
from typing import Any

import nats.errors
from aiohttp import web
from multidict import CIMultiDict

from brain.api.loopback import LoopbackClient
from brain.errors import HTTPError, PayloadTooLarge, ServiceUnavailable
from brain.web import read_body

__all__ = ["FORWARDED_HEADER", "MOVED_HEADER", "SUBJECT_PREFIX", "Forwarder", "NotThere", "forward_marker"]

log = logging.getLogger("brain.cluster")

SUBJECT_PREFIX = "brain.cluster.http"
FORWARDED_HEADER = "x-brain-forwarded"
# On the owner's answer to its own replay: the user is placed on this node now, not here (the
# node that forwarded it asks there). Carried back as a NATS header, never to a client.
MOVED_HEADER = "x-brain-moved"
# What a hop does not pass on: connection management, lengths the next hop computes again, and
# the marker (only ever set by the owner on its own replay).
_NOT_PASSED = frozenset({
    "connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade",
    "content-length", "host", FORWARDED_HEADER, MOVED_HEADER,
    # The body travels whole: the replay has nothing to wait for before sending it.
    "expect",
})
_METHOD = "Brain-Method"
_TARGET = "Brain-Target"
_HEADERS = "Brain-Headers"
_STATUS = "Brain-Status"
_MOVED = "Brain-Moved"


def forward_marker(secret: bytes) -> str:
    """The value of `x-brain-forwarded` on this node's replays (the same in each of its workers)."""
    return hmac.new(secret, b"brain.cluster.forwarded", hashlib.sha256).hexdigest()


def _passed(headers: Any) -> str:
    return json.dumps([[k, v] for k, v in headers if k.lower() not in _NOT_PASSED])


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

    def __init__(self, node_id: str, *, local_url: str, marker: str, timeout: float) -> None:
        self.node_id = node_id
        self.local_url = local_url.rstrip("/")
        self.marker = marker
        self._marker = marker.encode()
        self.timeout = timeout
        self.nc: Any = None
        self._loopback: LoopbackClient | None = None
        self._serving: set[asyncio.Task[None]] = set()
        self.sent = 0
        self.served = 0

    async def start(self, nc: Any) -> None:
        """Answer this node's subject (a queue group: one worker of the node takes each request)."""
        self.nc = nc
        self._loopback = LoopbackClient(self.local_url)
        await nc.subscribe(f"{SUBJECT_PREFIX}.{self.node_id}", queue=f"brain-node-{self.node_id}", cb=self._received)

    async def close(self) -> None:
        """Stop answering; wait briefly for replays in flight."""
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
        """The request's body, read once for every node it may be sent to."""
        body = await read_body(request) if request.can_read_body else b""
        if self.nc is not None and len(body) > self.nc.max_payload:
            raise PayloadTooLarge(f"request body too large to forward to node {node} "
                                  f"(NATS max_payload {self.nc.max_payload} bytes)")
        return body

    async def forward(self, request: web.Request, node: str, body: bytes) -> web.Response:
        """The answer of `node` to this request; NotThere if `node` served nothing because it does
        not hold the user (it gave the user up, or nobody answers its subject)."""
        if self.nc is None or not self.nc.is_connected:
            raise ServiceUnavailable(f"not connected to NATS: cannot reach node {node}, which holds this user's data")
        headers = {_METHOD: request.method, _TARGET: request.raw_path, _HEADERS: _passed(request.headers.items())}
        try:
            reply = await self.nc.request(f"{SUBJECT_PREFIX}.{node}", body, timeout=self.timeout, headers=headers)
        except nats.errors.NoRespondersError:
            raise NotThere(node, None, ServiceUnavailable(
                f"node {node}, which holds this user's data, is not answering")) from None
        except nats.errors.TimeoutError:
            # Perhaps served before the node went away: not sent anywhere else.
            raise HTTPError(f"node {node} did not answer within {self.timeout}s", status=504,
                            code="GATEWAY_TIMEOUT") from None
        self.sent += 1
        status = int(reply.headers[_STATUS])
        answer = web.Response(status=status, body=reply.data, headers=CIMultiDict(json.loads(reply.headers[_HEADERS])))
        moved_to = reply.headers.get(_MOVED)
        if moved_to:
            raise NotThere(node, moved_to, answer)
        return answer

    async def _received(self, msg: Any) -> None:
        # nats-py runs a subscription's callbacks one after another: each replay gets a task.
        task = asyncio.ensure_future(self._answer(msg))
        self._serving.add(task)
        task.add_done_callback(self._serving.discard)

    async def _answer(self, msg: Any) -> None:
        moved_to = ""
        try:
            status, headers, body, moved_to = await self._replay(msg)
        except Exception as exc:  # noqa: BLE001 - the asking node gets a JSON error, not a timeout
            log.warning("forwarded request: %r", exc)
            status, headers, body = 502, _json_headers(), _error(f"node {self.node_id} could not serve it: {exc!r}")
        if len(body) > self.nc.max_payload:
            status, headers = 502, _json_headers()
            body = _error(f"response too large to forward from node {self.node_id} "
                          f"(NATS max_payload {self.nc.max_payload} bytes): ask for less (limit)")
        try:
            reply = {_STATUS: str(status), _HEADERS: headers}
            if moved_to:
                reply[_MOVED] = moved_to
            await self.nc.publish(msg.reply, body, headers=reply)
        except Exception as exc:  # noqa: BLE001 - the asker times out and says so
            log.warning("forwarded request: could not reply: %r", exc)

    async def _replay(self, msg: Any) -> tuple[int, str, bytes, str]:
        """Status, headers (JSON), body and where the user moved to ("" unless refused for that)."""
        assert self._loopback is not None
        target = msg.headers[_TARGET]
        if not target.startswith("/") or target.startswith("//"):
            return 400, _json_headers(), _error("forwarded request: bad target"), ""
        headers = [(k, v) for k, v in json.loads(msg.headers[_HEADERS]) if k.lower() not in _NOT_PASSED]
        headers.append((FORWARDED_HEADER, self.marker))
        async with asyncio.timeout(self.timeout):
            status, answer, body = await self._loopback.request(msg.headers[_METHOD], target, headers, msg.data)
        moved_to = next((v for k, v in answer if k.lower() == MOVED_HEADER), "")
        if not moved_to:
            self.served += 1
        return status, _passed(answer), body, moved_to

    def stats(self) -> dict[str, int]:
        """Requests sent to other nodes, and served for them."""
        return {"forwarded": self.sent, "served_for_others": self.served}


def _json_headers() -> str:
    return json.dumps([["Content-Type", "application/json"]])


def _error(message: str) -> bytes:
    return json.dumps({"message": message, "code": "BAD_GATEWAY"}).encode()

"""MCP's Streamable HTTP transport on aiohttp, written for brain (after the specification and
the official Python SDK, which serves ASGI and so does not fit an aiohttp listener).

- `POST /mcp` carries one JSON-RPC 2.0 message. A request is answered with one JSON response
  (`application/json`); a notification or a response from the client with 202 and no body.
- `initialize` negotiates the protocol version (the client's when this server speaks it, else
  the newest it speaks) and opens a session: its id comes back in `Mcp-Session-Id`, and every
  later request must carry it (400 without, 404 once it is unknown, ended or expired: the client
  then initializes again) and, when it sends `MCP-Protocol-Version`, the negotiated version.
- A session id is signed, not stored: it names the user and the version, and is good until
  `mcp.session_seconds` after `initialize` in any process of the deployment. It is bound to
  the user who opened it; another user's token with it gets 404. `DELETE /mcp` ends it in this
  process.
- Tools (brain.agents.tools) and resources (brain.agents.resources) act as the caller, within
  its scopes.
- `GET /mcp` is 405: this server sends no messages of its own, so it offers no stream (the
  specification's answer for that case).

Protocol errors are JSON-RPC errors (-32700 unreadable JSON, -32600 not a request, -32601 no
such method, -32602 bad parameters); what goes wrong inside a tool is a tool result with
`isError` (brain.agents.tools). Credentials are the API listener's guard's business: a request
without a valid JWT or API key never gets here.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any, NamedTuple

from aiohttp import hdrs, web

from brain.agents.resources import TEMPLATES, ResourceError, read_resource
from brain.agents.tools import Toolbox, ToolCall, UnknownTool
from brain.contracts import Caller, EventAccess, MailAccounts
from brain.errors import HTTPError
from brain.web import read_json

log = logging.getLogger("brain.agents")

__all__ = ["McpEndpoint", "PROTOCOL_VERSIONS", "SessionIds"]

# Newest first. Without an MCP-Protocol-Version header a server is to assume 2025-03-26.
PROTOCOL_VERSIONS = ("2025-11-25", "2025-06-18", "2025-03-26")
ASSUMED_VERSION = "2025-03-26"
SESSION_HEADER = "Mcp-Session-Id"
VERSION_HEADER = "MCP-Protocol-Version"
SERVER_INFO = {"name": "brain", "title": "brain: a person's events, notes and mail", "version": "1"}
INSTRUCTIONS = (
    "This is one person's brain: their notes, the events their apps record and their synced mail. "
    "search finds them (ranked, with snippets and ids); get_event reads one; get_mail_thread reads a "
    "whole mail conversation; list_events lists them newest first (type and time filters); add_note "
    "writes a note and add_event an event of another type; mail_accounts shows their mail accounts. "
    "Events are also resources: brain://events/{id} and brain://mail/threads/{thread_id}."
)
PARSE_ERROR, INVALID_REQUEST, METHOD_NOT_FOUND, INVALID_PARAMS = -32700, -32600, -32601, -32602
# Sessions ended with DELETE that this process remembers until they would have expired anyway.
MAX_ENDED = 100_000
_JSON_HEADERS = {"Cache-Control": "no-store"}


class RpcError(Exception):
    """A JSON-RPC error answer: code, message, and the HTTP status it travels with."""

    def __init__(self, code: int, message: str, status: int = 200) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status


class Session(NamedTuple):
    """What a session id says: whose it is, the negotiated version, when it expires (epoch s)."""

    user_id: str
    version: str
    expires_at: float


class SessionIds:
    """Signs session ids and reads them back; remembers those ended here."""

    def __init__(self, secret: bytes, lifetime: float) -> None:
        self._key = hmac.new(secret, b"brain.agents.session", hashlib.sha256).digest()
        self.lifetime = lifetime
        self._ended: OrderedDict[str, float] = OrderedDict()

    def issue(self, user_id: str, version: str, now: float) -> str:
        """A new session id for this user and version (visible ASCII, as the transport requires)."""
        body = _b64(json.dumps([user_id, version, round(now + self.lifetime, 3)], separators=(",", ":")).encode())
        return f"{body}.{self._mac(body)}"

    def read(self, session_id: str, user_id: str, now: float) -> Session | None:
        """The session, if the id is ours, the user's, not ended and not expired."""
        body, dot, mac = session_id.partition(".")
        if not dot or len(session_id) > 400 or not session_id.isascii() or not hmac.compare_digest(mac, self._mac(body)):
            return None
        try:
            owner, version, expires_at = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
        except (ValueError, TypeError, binascii.Error):
            return None
        if owner != user_id or version not in PROTOCOL_VERSIONS or not isinstance(expires_at, (int, float)):
            return None
        if expires_at <= now or session_id in self._ended:
            return None
        return Session(owner, version, expires_at)

    def end(self, session_id: str, session: Session, now: float) -> None:
        """Refuse this session id from now on (in this process)."""
        self._ended[session_id] = session.expires_at
        while self._ended and (len(self._ended) > MAX_ENDED or next(iter(self._ended.values())) <= now):
            self._ended.popitem(last=False)

    def _mac(self, body: str) -> str:
        return _b64(hmac.new(self._key, body.encode(), hashlib.sha256).digest()[:18])


class McpEndpoint:
    """The handlers of /mcp."""

    def __init__(
        self, *, sessions: SessionIds, toolbox: Toolbox, events: EventAccess | None, mail: MailAccounts | None,
        max_result_chars: int, allowed_origins: frozenset[str],
    ) -> None:
        self.sessions = sessions
        self.toolbox = toolbox
        self.events = events
        self.mail = mail
        self.max_result_chars = max_result_chars
        self.allowed_origins = allowed_origins

    async def post(self, request: web.Request, caller: Caller) -> web.Response:
        """One JSON-RPC message from the client."""
        message: dict[str, Any] | None = None
        try:
            self._check_origin(request)
            message = await self._read(request)
            if "method" not in message:
                # A response to a request of ours: this server sends none, so there is nothing to match.
                _message_id(message)
                return web.Response(status=202)
            method = message["method"]
            if not isinstance(method, str):
                raise RpcError(INVALID_REQUEST, "method: must be a string", 400)
            is_request = "id" in message
            request_id = _message_id(message) if is_request else None
            params = message.get("params", {})
            if not isinstance(params, dict):
                raise RpcError(INVALID_PARAMS, "params: must be an object", 400)
            now = time.time()
            if method == "initialize":
                if not is_request:
                    raise RpcError(INVALID_REQUEST, "initialize is a request: give it an id", 400)
                version = _negotiate(params.get("protocolVersion"))
                session_id = self.sessions.issue(caller.id, version, now)
                result = {
                    "protocolVersion": version,
                    "capabilities": {"tools": {"listChanged": False}, "resources": {"listChanged": False}},
                    "serverInfo": SERVER_INFO,
                    "instructions": INSTRUCTIONS,
                }
                return _answer(request_id, result, {SESSION_HEADER: session_id})
            self._session(request, caller, now)
            if not is_request:
                return web.Response(status=202)
            return _answer(request_id, await self._dispatch(caller, method, params))
        except RpcError as exc:
            return _error(_id_of(message), exc)

    async def delete(self, request: web.Request, caller: Caller) -> web.Response:
        """End the session named in Mcp-Session-Id."""
        try:
            self._check_origin(request)
            now = time.time()
            session = self._session(request, caller, now)
        except RpcError as exc:
            return _error(None, exc)
        self.sessions.end(request.headers[SESSION_HEADER], session, now)
        return web.Response(status=204)

    def _check_origin(self, request: web.Request) -> None:
        # A browser page on another origin must not drive a user's session (DNS rebinding).
        origin = request.headers.get(hdrs.ORIGIN)
        if origin is not None and origin not in self.allowed_origins:
            raise RpcError(INVALID_REQUEST, f"Origin {origin[:100]!r} is not allowed to use /mcp", 403)

    async def _read(self, request: web.Request) -> dict[str, Any]:
        accept = request.headers.get(hdrs.ACCEPT, "*/*")
        if not any(kind in accept for kind in ("application/json", "*/*", "application/*")):
            raise RpcError(INVALID_REQUEST, "Accept: must include application/json", 406)
        try:
            message = await read_json(request)
        except HTTPError as exc:
            raise RpcError(PARSE_ERROR if exc.status == 400 else INVALID_REQUEST, exc.message, exc.status) from None
        if isinstance(message, list):
            raise RpcError(INVALID_REQUEST, "batches are not supported: send one JSON-RPC message per POST", 400)
        if not isinstance(message, dict) or message.get("jsonrpc") != "2.0":
            raise RpcError(INVALID_REQUEST, 'not a JSON-RPC 2.0 message (an object with "jsonrpc": "2.0")', 400)
        return message

    def _session(self, request: web.Request, caller: Caller, now: float) -> Session:
        session_id = request.headers.get(SESSION_HEADER)
        if session_id is None:
            raise RpcError(INVALID_REQUEST, f"{SESSION_HEADER}: required; send initialize first", 400)
        session = self.sessions.read(session_id, caller.id, now)
        if session is None:
            raise RpcError(INVALID_REQUEST, "session not found (ended or expired): initialize again", 404)
        version = request.headers.get(VERSION_HEADER)
        if version is not None and version != session.version:
            raise RpcError(
                INVALID_REQUEST, f"{VERSION_HEADER}: {version[:40]!r} is not this session's version {session.version}", 400
            )
        return session

    async def _dispatch(self, caller: Caller, method: str, params: dict[str, Any]) -> dict[str, Any]:
        if method == "ping":
            return {}
        if method == "tools/list":
            return {"tools": self.toolbox.describe(caller)}
        if method == "tools/call":
            doors = ToolCall(caller.id, self.events, self.mail, self.max_result_chars)
            try:
                return await self.toolbox.call(caller, params.get("name"), params.get("arguments"), doors)
            except UnknownTool as exc:
                raise RpcError(INVALID_PARAMS, str(exc)) from None
        if method == "resources/templates/list":
            return {"resourceTemplates": TEMPLATES}
        if method == "resources/list":
            return {"resources": []}
        if method == "resources/read":
            doors = ToolCall(caller.id, self.events, self.mail, self.max_result_chars)
            try:
                return await read_resource(caller, params.get("uri"), doors)
            except ResourceError as exc:
                raise RpcError(exc.code, exc.message) from None
        raise RpcError(METHOD_NOT_FOUND, f"method {method[:80]!r} is not offered by this server")


def _negotiate(offered: Any) -> str:
    if offered in PROTOCOL_VERSIONS:
        return str(offered)
    if offered is None or isinstance(offered, str):
        return PROTOCOL_VERSIONS[0]
    raise RpcError(INVALID_PARAMS, "protocolVersion: must be a string", 400)


def _message_id(message: Mapping[str, Any]) -> str | int:
    request_id = message.get("id")
    if isinstance(request_id, bool) or not isinstance(request_id, (str, int)):
        raise RpcError(INVALID_REQUEST, "id: must be a string or an integer", 400)
    return request_id


def _id_of(message: Any) -> str | int | None:
    if isinstance(message, dict):
        request_id = message.get("id")
        if isinstance(request_id, (str, int)) and not isinstance(request_id, bool):
            return request_id
    return None


def _answer(request_id: str | int | None, result: dict[str, Any], headers: dict[str, str] | None = None) -> web.Response:
    body = {"jsonrpc": "2.0", "id": request_id, "result": result}
    return _json(body, 200, {**_JSON_HEADERS, **(headers or {})})


def _error(request_id: str | int | None, exc: RpcError) -> web.Response:
    body = {"jsonrpc": "2.0", "id": request_id, "error": {"code": exc.code, "message": exc.message}}
    return _json(body, exc.status, _JSON_HEADERS)


def _json(body: dict[str, Any], status: int, headers: dict[str, str]) -> web.Response:
    # ASCII: a lone surrogate from the client's JSON, echoed in a message, cannot break the encoding.
    text = json.dumps(body, separators=(",", ":"))
    return web.Response(text=text, status=status, content_type="application/json", headers=headers)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

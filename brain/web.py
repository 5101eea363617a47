"""HTTP plumbing shared by both roles: errors as JSON, body parsing, client addresses."""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from aiohttp import hdrs, web

from brain.errors import BadRequest, HTTPError, PayloadTooLarge, Unauthorized
from brain.logs import redact_path
from brain.stash import StashKey

log = logging.getLogger("brain.web")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def json_response(data: Any, *, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """A compact JSON response."""
    return web.Response(
        body=json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode(),
        status=status,
        headers=headers,
        content_type="application/json",
    )


def error_response(exc: HTTPError) -> web.Response:
    """The one place a typed error becomes an HTTP response."""
    return json_response(exc.body(), status=exc.status, headers=exc.headers)


_AIOHTTP_CODES = {
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    413: "PAYLOAD_TOO_LARGE",
    400: "BAD_REQUEST",
}


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every failure into a JSON error; client mistakes are 4xx, never 500."""
    try:
        return await handler(request)
    except Exception as exc:  # noqa: BLE001 - sorted out (or re-raised) by failure_response
        return failure_response(request, exc)


# The aiohttp server (a protocol factory) of each listener this process serves, by name, from the
# moment it accepts until its stop begins: a request can be handed to it in memory
# (brain.api.loopback.MemoryTransport) and meets what one over the socket meets.
SERVING: StashKey[dict[str, web.Server]] = StashKey("brain.web.serving")


# An app whose routes are guarded one by one instead of by a middleware (the API role: see
# brain.api.guard) keeps its guard here; `add_route` applies it to every route added.
GUARD_KEY: web.AppKey[Callable[[Handler, bool], Handler]] = web.AppKey("brain.guard", object)  # type: ignore[arg-type]
GUARDED_ATTR = "brain_guarded"
# Marks the handler of a catch-all route that only answers 404/405 (metrics count it as unmatched).
UNMATCHED_ATTR = "brain_unmatched"


def add_route(app: web.Application, method: str, path: str, handler: Handler, *, public: bool = False) -> None:
    """Register a route (GET also answers HEAD), through the app's guard if it has one."""
    guard = app.get(GUARD_KEY)
    if guard is not None:
        handler = guard(handler, public)
    if method == "GET":
        app.router.add_get(path, handler)
    else:
        app.router.add_route(method, path, handler)


class FaultSink(Protocol):
    """What the app knows of storage faults (`brain.storage.StorageFaults`)."""

    def typed(self, exc: BaseException) -> HTTPError | None:
        """The typed storage fault behind an exception (counted), or None if it is not one."""


# The process's storage faults: a fault that reaches failure_response untyped is answered as one.
FAULTS_KEY: web.AppKey[FaultSink] = web.AppKey("brain.storage_faults", object)  # type: ignore[arg-type]


def failure_response(request: web.Request, exc: Exception) -> web.StreamResponse:
    """The JSON error for a failure; re-raises what is not an error (redirects)."""
    try:
        raise exc
    except HTTPError as exc:
        return error_response(exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        if exc.status == 413:
            message = f"request body too large (limit {request.app.get(MAX_BODY_KEY, 0)} bytes)"
        else:
            message = exc.reason
        headers = {k: v for k, v in exc.headers.items() if k.lower() in ("allow", "retry-after", "www-authenticate")}
        return json_response(
            {"message": message, "code": _AIOHTTP_CODES.get(exc.status, "HTTP_ERROR")},
            status=exc.status,
            headers=headers,
        )
    except (ConnectionResetError, web.RequestPayloadError) as exc:  # client went away mid-body
        raise web.HTTPBadRequest(reason=str(exc)) from None
    except Exception:
        sink = request.app.get(FAULTS_KEY)
        found = sink.typed(exc) if sink is not None else None
        if found is not None:
            return error_response(found)
        log.exception("unhandled error in %s %s", request.method, redact_path(request.path))
        return json_response({"message": "internal server error", "code": "INTERNAL_SERVER_ERROR"}, status=500)


def not_modified(request: web.Request, etag: str) -> bool:
    """Whether the request's If-None-Match names `etag` (weak comparison, as RFC 9110 says for GET)."""
    header = request.headers.get(hdrs.IF_NONE_MATCH)
    if header is None:
        return False
    if header.strip() == "*":
        return True
    opaque = etag.removeprefix("W/")
    return any(tag.strip().removeprefix("W/") == opaque for tag in header.split(","))


MAX_BODY_KEY = web.AppKey("max_body_bytes", int)
BODY_TIMEOUT_KEY = web.AppKey("body_timeout_seconds", float)
# Where `read_body` leaves what it read on the request, so that a second read (a handler that
# read the body, then hands the request on to another node) gets the same bytes.
BODY_READ = web.RequestKey("body_read", bytes)

HSTS = "max-age=31536000; includeSubDomains"


async def add_hsts(_request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: tell browsers to use https only (production over TLS)."""
    response.headers["Strict-Transport-Security"] = HSTS


async def read_body(request: web.Request, *, limit: int | None = None) -> bytes:
    """The whole request body, at most ``limit`` bytes (413 beyond; 408 if it trickles too slowly)."""
    limit = limit or request.app[MAX_BODY_KEY]
    raw = request.get(BODY_READ)
    if raw is not None:
        # Read before (a handler that hands the request on, to another node): the same bytes,
        # under this call's limit.
        if len(raw) > limit:
            raise PayloadTooLarge(f"request body too large ({len(raw)} bytes, limit {limit})")
        return raw
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"request body too large ({request.content_length} bytes, limit {limit})")
    if request.content.is_eof():
        # The whole body arrived with the head (the usual small request): nothing to wait for.
        raw = await request.read()
        if len(raw) > limit:  # chunked, so not refused above by its Content-Length
            raise PayloadTooLarge(f"request body too large (limit {limit} bytes)")
    else:
        # A client trickling its body must not hold the connection (and a handler) for ever.
        try:
            async with asyncio.timeout(request.app.get(BODY_TIMEOUT_KEY, 30.0)):
                raw = await _read_body(request, limit)
        except TimeoutError:
            raise HTTPError("request body not received in time", status=408, code="REQUEST_TIMEOUT") from None
    request[BODY_READ] = raw
    return raw


async def read_json(request: web.Request, *, limit: int | None = None) -> Any:
    """Parse the request body as JSON, refusing oversized and malformed bodies with a 4xx."""
    raw = await read_body(request, limit=limit)
    if not raw.strip():
        raise BadRequest("request body is empty; expected JSON")
    ctype = request.content_type
    if ctype not in ("application/json", "application/octet-stream", "text/plain", "") and not ctype.endswith("+json"):
        raise BadRequest(f"unsupported content type {ctype!r}; send application/json", status=415, code="UNSUPPORTED_MEDIA_TYPE")
    try:
        # json.loads(raw, parse_constant=...) would build a decoder per call.
        return _DECODER.decode(raw.decode(json.detect_encoding(raw), "surrogatepass"))
    except UnicodeDecodeError:
        raise BadRequest("request body is not valid UTF-8") from None
    except ValueError as exc:
        raise BadRequest(f"malformed JSON: {exc}") from None
    except RecursionError:
        raise BadRequest("JSON nested too deeply") from None


async def _read_body(request: web.Request, limit: int) -> bytes:
    if request.content_length is not None:
        # Announced and within the limit: aiohttp reads exactly that much (and no more).
        return await request.read()
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(65536):
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body too large (limit {limit} bytes)")
        chunks.append(chunk)
    return b"".join(chunks)


def _reject_constant(name: str) -> Any:
    # NaN and Infinity are not JSON; Python would accept them silently.
    raise ValueError(f"{name} is not valid JSON")


_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


def require_bearer(request: web.Request, token: bytes, *, realm: str) -> None:
    """Raise Unauthorized unless the request carries `Authorization: Bearer <token>` (constant time)."""
    given = request.headers.get(hdrs.AUTHORIZATION, "")
    if not hmac.compare_digest(given.encode(errors="replace"), b"Bearer " + token):
        raise Unauthorized(
            f"{realm}: send the {realm} token as Authorization: Bearer <token>",
            headers={"WWW-Authenticate": f'Bearer realm="{realm}"'},
        )


def client_ip(request: web.Request, trusted_proxies: frozenset[str]) -> str:
    """The client's address, believing X-Forwarded-For only from trusted proxies."""
    peer = request.remote or ""
    if peer in trusted_proxies:
        forwarded = request.headers.get("X-Forwarded-For", "")
        # Walk from the right: the first address not a trusted proxy is the client.
        for hop in reversed([h.strip() for h in forwarded.split(",") if h.strip()]):
            if hop not in trusted_proxies:
                return hop
    return peer

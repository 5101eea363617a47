"""The webhook routes on the API listener (behind its bearer-token guard; API keys need `events:read`).

| route | does |
|-------|------|
| `POST /webhooks` `{url, types?, secret?}` | a new endpoint of the caller: 201 with its `secret` (shown this once) |
| `GET /webhooks` | the caller's endpoints |
| `GET /webhooks/{id}` | one endpoint: its state, since when it fails, why it was disabled |
| `DELETE /webhooks/{id}` | 204; its pending deliveries go with it |
| `GET /webhooks/{id}/deliveries?status=&limit=` | its newest deliveries, each with its last attempts |

A URL is checked when it is registered as it is at every attempt: http(s) without userinfo,
https unless `webhooks.allow_http`, and a host that resolves only to addresses the outbound
policy allows (`brain.outbound`; `webhooks.allowed_networks`).
"""

from __future__ import annotations

import asyncio
import ipaddress
import secrets
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from brain.actors import bridge
from brain.apikeys import scope
from brain.errors import AddressRefused, BadRequest
from brain.event_types import TypeFilter
from brain.outbound import checked_addresses
from brain.process import Process
from brain.routes import Components, Route, current_user
from brain.web import json_response, read_json
from brain.webhooks import openapi, signing
from brain.webhooks.db import DELIVERED, FAILED, PENDING
from brain.webhooks.state import Webhooks, webhooks

MAX_URL_LENGTH = 2048
BODY_FIELDS = frozenset({"url", "types", "secret"})
MAX_DELIVERIES_LISTED = 100
_NO_STORE = {"Cache-Control": "no-store"}


def routes(rt: Process) -> list[Route | Components]:
    """The five webhook routes, each with its OpenAPI operation, and the description of a delivery."""
    hub = webhooks(rt)

    @scope("events:read")
    async def create(request: web.Request) -> web.Response:
        user = current_user(request)
        body = await read_json(request)
        if not isinstance(body, dict):
            raise BadRequest("body: must be a JSON object {url, types?, secret?}")
        unknown = sorted(set(body) - BODY_FIELDS)
        if unknown:
            raise BadRequest(f"{str(unknown[0])[:40]}: unknown field (allowed: url, types, secret)")
        url = await checked_url(hub, body.get("url"))
        types = _types(body.get("types"))
        secret = body.get("secret")
        if secret is None:
            secret = signing.new_secret()
        try:
            key = signing.secret_key(secret)
        except ValueError as exc:
            raise BadRequest(f"secret: {exc}") from None
        endpoint_id = f"wh_{secrets.token_urlsafe(12)}"
        sealed = hub.box.seal(key, bound_to=endpoint_id)
        endpoint = await bridge.ask(hub.queue().create(user.id, url, types, sealed, endpoint_id))
        if hub.announce is not None:
            await hub.announce()  # every worker's commits of this user now poke the queue
        return json_response({**endpoint, "secret": secret}, status=201, headers=_NO_STORE)

    @scope("events:read")
    async def list_all(request: web.Request) -> web.Response:
        found = await bridge.ask(hub.queue().endpoints_of(current_user(request).id))
        return json_response({"webhooks": found}, headers=_NO_STORE)

    @scope("events:read")
    async def get_one(request: web.Request) -> web.Response:
        found = await bridge.ask(hub.queue().get(current_user(request).id, request.match_info["id"]))
        return json_response(found, headers=_NO_STORE)

    @scope("events:read")
    async def delete(request: web.Request) -> web.Response:
        await bridge.ask(hub.queue().delete(current_user(request).id, request.match_info["id"]))
        if hub.announce is not None:
            await hub.announce()
        return web.Response(status=204)

    @scope("events:read")
    async def deliveries(request: web.Request) -> web.Response:
        params = request.query
        status = params.get("status")
        if status is not None and status not in (PENDING, DELIVERED, FAILED):
            raise BadRequest(f"status: one of {PENDING}, {DELIVERED}, {FAILED}")
        limit_text = params.get("limit", "20")
        if not limit_text.isdigit() or not 1 <= int(limit_text) <= MAX_DELIVERIES_LISTED:
            raise BadRequest(f"limit: an integer from 1 to {MAX_DELIVERIES_LISTED}")
        found = await bridge.ask(hub.queue().deliveries(
            current_user(request).id, request.match_info["id"], int(limit_text), status
        ))
        return json_response({"deliveries": found}, headers=_NO_STORE)

    paths = openapi.PATHS
    components = {"schemas": openapi.SCHEMAS}
    return [
        Components({}, webhooks=openapi.WEBHOOKS),
        Route("POST", "/webhooks", create, paths["/webhooks"]["post"], components=components),
        Route("GET", "/webhooks", list_all, paths["/webhooks"]["get"]),
        Route("GET", "/webhooks/{id}", get_one, paths["/webhooks/{id}"]["get"]),
        Route("DELETE", "/webhooks/{id}", delete, paths["/webhooks/{id}"]["delete"]),
        Route("GET", "/webhooks/{id}/deliveries", deliveries, paths["/webhooks/{id}/deliveries"]["get"]),
    ]


async def checked_url(hub: Webhooks, value: Any) -> str:
    """The URL to deliver to, after the checks in the module docstring; BadRequest naming what is wrong."""
    if not isinstance(value, str) or not value:
        raise BadRequest("url: required, the http(s) URL to deliver to")
    if len(value) > MAX_URL_LENGTH or not value.isascii() or not value.isprintable() or " " in value:
        raise BadRequest(f"url: printable ASCII of at most {MAX_URL_LENGTH} characters (percent-encode the rest)")
    try:
        parts = urlsplit(value)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise BadRequest("url: not a URL") from None
    schemes = ("https", "http") if hub.settings.allow_http else ("https",)
    if parts.scheme not in schemes:
        raise BadRequest(f"url: must be {' or '.join(schemes)}" + ("" if hub.settings.allow_http else " (webhooks.allow_http)"))
    if not parts.hostname or parts.username is not None or parts.password is not None or parts.fragment:
        raise BadRequest("url: needs a host, and no user:password@ or #fragment")
    host = parts.hostname
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if host.endswith(".") or ".." in host:
            raise BadRequest("url: not a host name") from None
    try:
        await asyncio.get_running_loop().run_in_executor(None, checked_addresses, host, port, hub.allowed)
    except AddressRefused as exc:
        raise BadRequest(
            f"url: {exc.message}: webhooks go only to public addresses unless the operator allows the network "
            "([webhooks] allowed_networks)", code="ADDRESS_REFUSED",
        ) from None
    except OSError:
        raise BadRequest(f"url: the host {host[:100]} does not resolve") from None
    return value


def _types(value: Any) -> list[str]:
    """The event types wanted: a list of exact names or `prefix.*` (missing, [] or ["*"]: every type)."""
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise BadRequest("types: a list of event types such as ['note.created', 'mail.*']")
    parsed = TypeFilter.parse(value, "types")
    if parsed is None:
        return []
    return sorted(parsed.exact) + [f"{prefix}*" for prefix in parsed.prefixes]

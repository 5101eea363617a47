"""The API role: cached-JWKS token checks, per-user event stores, events and mail routes."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from aiohttp import web

import brain
from brain import mail
from brain.actors import supervisor
from brain.web import json_response

if TYPE_CHECKING:
    from brain.actors.supervisor import ChildSpec
    from brain.runtime import Runtime


def auth_child_specs(rt: Runtime) -> list[ChildSpec]:
    """The API role's actors under auth_sup (the JwksCache)."""
    if "api" not in rt.roles:
        return []
    return []


def data_child_specs(rt: Runtime) -> list[ChildSpec]:
    """The API role's actors under data_sup that come before the stores (the EventBus)."""
    return []


def setup_routes(app: web.Application, rt: Runtime) -> None:
    """Register the API role's routes."""

    async def health(_request: web.Request) -> web.Response:
        body = {
            "status": "ok",
            "version": brain.__version__,
            "uptime_seconds": round(time.time() - rt.started_at, 3),
            "supervisor": {"restarts": supervisor.total_restarts()},
        }
        for name, source in rt.health_sources.items():
            body[name] = source()
        return json_response(body)

    app.router.add_get("/health", health)
    mail.setup_routes(app, rt)  # /mail/connect, /mail/oauth/callback, /mail/status, /mail/disconnect

"""The auth role: Better Auth-compatible sign-up/sign-in, sessions, JWT minting, JWKS."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from brain.web import json_response

if TYPE_CHECKING:
    from brain.actors.supervisor import ChildSpec
    from brain.runtime import Runtime


def child_specs(rt: Runtime) -> list[ChildSpec]:
    """The auth role's actors under auth_sup (the AuthIssuer)."""
    if "auth" not in rt.roles:
        return []
    return []


def setup_routes(app: web.Application, rt: Runtime) -> None:
    """Register the auth role's routes."""

    async def ok(_request: web.Request) -> web.Response:
        return json_response({"ok": True})

    app.router.add_get("/api/auth/ok", ok)

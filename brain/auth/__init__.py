"""The auth role: Better Auth-compatible sign-up/sign-in, sessions, JWT minting, JWKS.

Layout: `db` (auth.db models), `keys` (sealed RSA key ring and its snapshot), `issuer` (the
AuthIssuer actor, sole writer), `passwords` (argon2id on a worker pool), `validation`,
`cookies`, `origins` (CORS and origin checks), `ratelimit`, `tokens` (JWT minting), `routes`
(the endpoints) and `cli` (`brain keys`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from brain.actors.supervisor import ChildSpec
    from brain.runtime import Runtime


def child_specs(rt: Runtime) -> list[ChildSpec]:
    """The auth role's actors under auth_sup (the AuthIssuer)."""
    if "auth" not in rt.roles:
        return []
    from brain.actors.supervisor import ChildSpec
    from brain.auth.context import context_for
    from brain.auth.issuer import AuthIssuer

    ctx = context_for(rt)
    return [
        ChildSpec(
            id="auth_issuer",
            start=lambda link: AuthIssuer.start(
                link=link, settings=rt.settings.auth, aead=ctx.aead, publish=ctx.publish_ring
            ),
        )
    ]


def setup_routes(app: web.Application, rt: Runtime) -> None:
    """Register the auth role's routes and its origin/CORS middleware."""
    from brain.auth.context import context_for
    from brain.auth.origins import TrustedOrigins, make_origin_middleware
    from brain.auth.routes import AuthRoutes

    ctx = context_for(rt)
    trusted = TrustedOrigins(rt.settings.auth_public_url, rt.settings.auth.trusted_origins)
    app.middlewares.append(make_origin_middleware(trusted))
    AuthRoutes(ctx, trusted).add_to(app)

    async def close(_app: web.Application) -> None:
        ctx.close()

    app.on_cleanup.append(close)

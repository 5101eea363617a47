"""The auth role: Better Auth-compatible sign-up/sign-in, sessions, JWT minting, JWKS.

Layout: `db` (auth.db models), `keys` (sealed RSA key ring and its snapshot), `issuer` (the
AuthIssuer actor, sole writer), `passwords` (argon2id on a worker pool), `validation`,
`cookies`, `origins` (CORS and origin checks), `ratelimit`, `tokens` (JWT minting), `routes`
(the endpoints), `accounts` + `emails` + `smtp` + `account_routes` (email verification,
password reset, deletion), `session_routes` (listing and revoking sessions), `profile_routes` +
`email_change` (update-user, change-password, change-email), `two_factor` + `two_factor_routes`
(TOTP and backup codes), `api_keys` + `api_key_routes` (API keys), `openapi` +
`openapi_account` (their descriptions), `deletion` (revoking and purging deleted users on the API
side, over JetStream), `control` (the data-dir lock and control socket), `social` +
`social_routes` + `flows` (sign-in with Google, Microsoft, GitHub, OpenID Connect; linked
accounts), `passkeys` + `passkey_routes` + `passkey_openapi` (WebAuthn passkeys), `importer`
(`brain import better-auth`) and `cli` (`brain keys`, `brain users`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from brain.actors.supervisor import ChildSpec
    from brain.runtime import Runtime


def deletion_child_specs(rt: Runtime) -> list[ChildSpec]:
    """Account deletion's JetStream relay (a root child after data_sup; both roles, see brain.auth.deletion)."""
    from brain.auth import deletion

    return deletion.child_specs(rt)


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

    from brain.auth.account_routes import AccountRoutes
    from brain.auth.api_key_routes import ApiKeyRoutes
    from brain.auth.control import ControlServer
    from brain.auth.deletion import Deletions, lifecycle_for
    from brain.auth.passkey_routes import PasskeyRoutes
    from brain.auth.profile_routes import ProfileRoutes
    from brain.auth.session_routes import SessionRoutes
    from brain.auth.social_routes import SocialRoutes
    from brain.auth.two_factor_routes import TwoFactorRoutes

    ctx = context_for(rt)
    trusted = TrustedOrigins(rt.settings.auth_public_url, rt.settings.auth.trusted_origins)
    app.middlewares.append(make_origin_middleware(trusted))
    routes = AuthRoutes(ctx, trusted)
    deletions = Deletions(ctx, lifecycle_for(rt))
    routes.accounts = AccountRoutes(routes, routes.mail, deletions)
    routes.two_factor = TwoFactorRoutes(routes)  # sign-in hands users with two-factor to it
    routes.accounts.profile = ProfileRoutes(routes)  # verify-email follows change links
    routes.add_to(app)
    for endpoints in (routes.accounts, routes.accounts.profile, SessionRoutes(routes), routes.two_factor,
                      ApiKeyRoutes(routes), SocialRoutes(routes), PasskeyRoutes(routes)):
        endpoints.add_to(app)
    # `brain users delete` reaches this server through data/control.sock (brain.auth.control).
    control = ControlServer(rt, deletions)
    app.on_startup.append(control.start)

    async def close(_app: web.Application) -> None:
        await control.stop()
        ctx.close()

    app.on_cleanup.append(close)

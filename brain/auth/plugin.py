"""Everything the auth role adds to a process, through the core's hooks.

Its listener (`auth`), its actor (the AuthIssuer in `auth_sup`), its routes with their
OpenAPI, the origin checks and the control socket of its app, and what it offers the core
(the deletions waiting to be published).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web

from brain.actors.supervisor import ChildSpec
from brain.actors.tree import Child, Group
from brain.auth import api_keys, examples
from brain.auth.account_routes import AccountRoutes
from brain.auth.api_key_routes import ApiKeyRoutes
from brain.auth.context import context_for
from brain.auth.control import ControlServer
from brain.auth.deletion import account_deletions
from brain.auth.issuer import AuthIssuer
from brain.auth.openapi import with_plumbing_errors
from brain.auth.origins import make_origin_middleware, with_origin_check
from brain.auth.passkey_routes import PasskeyRoutes
from brain.auth.profile_routes import ProfileRoutes
from brain.auth.routes import AuthRoutes
from brain.auth.session_routes import SessionRoutes
from brain.auth.settings import jwt_issuer
from brain.auth.social_routes import SocialRoutes
from brain.auth.two_factor_routes import TwoFactorRoutes
from brain.backup import BackupFile
from brain.apikeys import api_key_hub
from brain.contracts import DELETION_SOURCE
from brain.nats_embedded import CHILD_ID as NATS
from brain.origins import TrustedOrigins
from brain.plugins import hookimpl
from brain.process import Process
from brain.routes import Listener, Route
from brain.stash import StashKey

LISTENER = "auth"
AUTH_SUP = "auth_sup"  # the keys-and-tokens tier, shared with the API role's JwksCache


def _trusted(rt: Process) -> TrustedOrigins:
    # The API role's origin is brain's own too: the console it serves signs in here.
    return TrustedOrigins(rt.settings.auth_public_url, (rt.settings.api_public_url, *rt.settings.auth.trusted_origins))


_HANDLERS: StashKey[tuple[AuthRoutes, SocialRoutes]] = StashKey("brain.auth.handlers")


def _handlers(rt: Process) -> tuple[AuthRoutes, SocialRoutes]:
    """The role's route handlers, once per process (built without side effects)."""

    def build() -> tuple[AuthRoutes, SocialRoutes]:
        routes = AuthRoutes(rt, _trusted(rt))
        routes.accounts = AccountRoutes(routes, account_deletions(rt))
        routes.two_factor = TwoFactorRoutes(routes)  # sign-in hands users with two-factor to it
        routes.accounts.profile = ProfileRoutes(routes)  # verify-email follows change links
        return routes, SocialRoutes(routes)

    return rt.stash.setdefault(_HANDLERS, build)


@hookimpl
def register_listeners(settings: Any, register: Callable[[Listener], None]) -> None:
    """The `auth` listener (Better Auth's paths; errors as JSON through the error middleware)."""
    register(Listener(
        name=LISTENER, host=settings.server.host, port=settings.server.auth_port,
        served=LISTENER in settings.server.roles, public_url=settings.auth_public_url, rank=1,
        port_setting="server.auth_port",
    ))


@hookimpl
def setup_process(rt: Process) -> None:
    """Offer the deletions auth.db records to the core's relay; to this process's API role, the
    API-key directory and the signature of its revocation messages."""
    rt.stash.set(DELETION_SOURCE, account_deletions(rt))
    hub = api_key_hub(rt)
    hub.directory = api_keys.LocalDirectory()
    hub.sign = api_keys.control_signer(lambda claims: context_for(rt).current_ring().sign(claims),
                                       jwt_issuer(rt.settings))


@hookimpl
def register_children(rt: Process, register: Callable[[Child | Group], None]) -> None:
    """The AuthIssuer, auth.db's one writer and the key ring's owner."""
    ctx = context_for(rt)
    register(Group(AUTH_SUP, after=(NATS,)))
    register(Child(
        ChildSpec(id="auth_issuer", start=lambda link: AuthIssuer.start(
            link=link, settings=rt.settings.auth, aead=ctx.aead, publish=ctx.publish_ring,
            upkeep=rt.worker.primary,
        )),
        parent=AUTH_SUP,
    ))


@hookimpl
def register_backup(register: Callable[[BackupFile], None]) -> None:
    """auth.db: users, sessions, the sealed signing keys."""
    register(BackupFile("auth.db", "auth"))


@hookimpl
def register_routes(rt: Process, listener: str, register: Callable[[Route], None]) -> None:
    """Sign-up, sign-in, sessions, keys; verification, reset, profile changes and deletion;
    session management, two-factor, API keys; social sign-in; passkeys; in dev mode, the example app."""
    if listener != LISTENER:
        return
    routes, social = _handlers(rt)
    assert routes.accounts is not None and routes.accounts.profile is not None and routes.two_factor is not None
    for endpoints in (routes, routes.accounts, routes.accounts.profile, SessionRoutes(routes), routes.two_factor,
                      ApiKeyRoutes(routes), social, PasskeyRoutes(routes)):
        for route in endpoints.routes():
            register(with_origin_check(with_plumbing_errors(route)))
    for route in examples.routes(rt):
        register(with_origin_check(route))


@hookimpl
def setup_app(rt: Process, listener: str, app: web.Application) -> None:
    """Origin checks and CORS; the control socket for `brain users delete` while the app runs."""
    if listener != LISTENER:
        return
    app.middlewares.append(make_origin_middleware(_trusted(rt)))
    # One control socket per server: the primary worker's (brain.workers).
    control = ControlServer(rt, account_deletions(rt)) if rt.worker.primary else None
    if control is not None:
        app.on_startup.append(control.start)
    _, social = _handlers(rt)

    async def close(_app: web.Application) -> None:
        if control is not None:
            await control.stop()
        await social.close()
        context_for(rt).close()

    app.on_cleanup.append(close)

"""The API role: cached-JWKS token checks, per-user event stores, events and mail routes.

Layout: `jwks` (the JwksCache actor and its key snapshots), `tokens` (the strict JWT check and
its token cache), `api_keys` (API keys: their cache, lookups and revocations), `events` (event
validation, rendering, signed cursors), `store` (the UserStore actor, one SQLite file per user),
`stores` (StoreManager: virtual-actor activation, LRU, the async and thread APIs), `bus` (the
EventBus: outbox -> JetStream), `routes` (the token guard and handlers) and `openapi` (the
description of both roles).

What other parts of brain use: `rt.stores` (a `StoreManager`: `append`, `append_from_thread`,
`query`, `query_from_thread`), `brain.web.add_route` to add a route to the API app (behind the
token guard; a route added otherwise stops the app from starting), `@public` or `@scope(...)`
(API keys welcome) and `brain.api.routes.current_user(request)` in its handler, and `brain.api.openapi.add_paths` to
describe it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from brain.actors.supervisor import ChildSpec
    from brain.api.api_keys import ApiKeyVerifier
    from brain.api.bus import Doorbell
    from brain.api.jwks import JwksState
    from brain.api.stores import StoreManager
    from brain.api.tokens import TokenVerifier
    from brain.runtime import Runtime


def jwks_state(rt: Runtime) -> JwksState:
    """The process's JwksState (created on first use; shared by every JwksCache generation)."""
    from brain.api.jwks import JwksState

    if rt.jwks is None:
        api = rt.settings.api
        rt.jwks = JwksState(
            url=rt.settings.jwks_url,
            refetch_min_interval=api.jwks_refetch_min_interval,
            max_staleness=api.jwks_max_staleness_seconds,
        )
    return rt.jwks


def token_verifier(rt: Runtime) -> TokenVerifier:
    """The process's TokenVerifier (one token cache for the API app)."""
    from brain.api.tokens import TokenVerifier

    if rt.token_verifier is None:
        api = rt.settings.api
        rt.token_verifier = TokenVerifier(
            jwks_state(rt),
            issuer=rt.settings.expected_issuer,
            audience=api.audience,
            algorithms=api.algorithms,
            leeway=api.leeway_seconds,
            cache_size=api.token_cache_size,
            max_token_bytes=api.max_token_bytes,
        )
    return rt.token_verifier


def api_key_verifier(rt: Runtime) -> ApiKeyVerifier:
    """The process's ApiKeyVerifier: the key cache, listening to the hub for revocations."""
    from brain.api.api_keys import ApiKeyVerifier, HttpDirectory, control_checker
    from brain.api.jwks import jwks_opener

    hub = rt.api_keys
    if not isinstance(hub.listener, ApiKeyVerifier):
        settings, api = rt.settings, rt.settings.api
        tokens = token_verifier(rt)
        # Without the auth role in this process, keys are looked up where the JWKS comes from.
        remote = HttpDirectory(settings.jwks_url.removesuffix("/jwks") + "/api-key/verify", jwks_opener(settings),
                               api.jwks_fetch_timeout)
        hub.listener = ApiKeyVerifier(
            lambda: hub.directory or remote, tokens,
            cache_size=api.api_key_cache_size, cache_seconds=api.api_key_cache_seconds,
            bearer_prefix=settings.auth.api_key_prefix,
        )
        hub.check = control_checker(jwks_state(rt), settings.expected_issuer, api.algorithms)
    return hub.listener


def store_manager(rt: Runtime) -> StoreManager:
    """The process's StoreManager and outbox doorbell (created on first use)."""
    from brain.api.bus import Doorbell, event_stored_notifier
    from brain.api.stores import StoreManager

    if rt.event_bus is None:
        rt.event_bus = Doorbell(event_stored_notifier(rt.pm))
    if rt.stores is None:
        rt.stores = StoreManager(rt, rt.event_bus)
    return rt.stores


def auth_child_specs(rt: Runtime) -> list[ChildSpec]:
    """The API role's actors under auth_sup (the JwksCache)."""
    if "api" not in rt.roles:
        return []
    from brain.actors.supervisor import ChildSpec
    from brain.api.jwks import JwksCache, jwks_opener

    state = jwks_state(rt)
    api = rt.settings.api
    opener = jwks_opener(rt.settings)
    return [
        ChildSpec(
            id="jwks_cache",
            start=lambda link: JwksCache.start(
                link=link,
                state=state,
                refresh_seconds=api.jwks_refresh_seconds,
                fetch_timeout=api.jwks_fetch_timeout,
                opener=opener,
            ),
        )
    ]


def data_child_specs(rt: Runtime) -> list[ChildSpec]:
    """The API role's actors under data_sup that come before the stores (the EventBus)."""
    from brain.actors.supervisor import ChildSpec
    from brain.api.bus import EventBus

    stores = store_manager(rt)
    doorbell: Doorbell = rt.event_bus  # type: ignore[assignment] - set by store_manager
    settings = rt.settings
    rt.health_sources["nats"] = lambda: {"url": rt.nats_shown_url, "embedded": not settings.nats.url, **doorbell.stats()}
    rt.health_sources["stores"] = stores.stats
    return [
        ChildSpec(
            id="event_bus",
            start=lambda link: EventBus.start(
                link=link,
                doorbell=doorbell,
                stores=stores,
                url=rt.nats_url,
                connect=rt.nats_connect_options(),
                settings=settings.nats,
                data_path=settings.data_path,
                loop=rt.loop,
            ),
        )
    ]


def finish_routes(app: web.Application) -> None:
    """After every route of the API app is added: the JSON 404/405 catch-all; unguarded routes refused."""
    from brain.api import routes

    routes.finish_routes(app)


def setup_routes(app: web.Application, rt: Runtime) -> None:
    """Register the API role's routes (each behind the token guard; `finish_routes` comes last)."""
    from brain import mail
    from brain.api.openapi import build_spec
    from brain.api.routes import add_routes, guard, public
    from brain.web import GUARD_KEY, add_route, json_response

    verifier = token_verifier(rt)
    keys = api_key_verifier(rt)
    stores = store_manager(rt)
    state = jwks_state(rt)
    rt.health_sources["jwks"] = lambda: {**state.stats(), "token_cache": verifier.stats()}
    rt.health_sources["api_keys"] = keys.stats
    rt.health_sources.setdefault("stores", stores.stats)
    # Every route is guarded as it is added (token or key check and JSON errors in one wrapper,
    # see brain.api.routes); `finish_routes` refuses any that is not.
    app[GUARD_KEY] = guard(verifier, keys)
    add_routes(app, rt, verifier, stores)
    mail.setup_routes(app, rt)  # /mail/connect, /mail/oauth/callback, /mail/status, /mail/disconnect

    @public
    async def openapi(_request: web.Request) -> web.Response:
        return json_response(build_spec(rt.settings))

    add_route(app, "GET", "/openapi.json", openapi)

    async def stop_activating(_app: web.Application) -> None:
        # Shutdown: the tree is about to stop the stores. Let them delete what JetStream has
        # acknowledged first, and let nothing reopen a store from now on.
        if rt.event_bus is not None:
            rt.event_bus.flush()
        stores.closing = True

    app.on_shutdown.append(stop_activating)

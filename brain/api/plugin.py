"""Everything the API role adds to a process, through the core's hooks.

Its listener (`api`, every route behind the bearer-token guard), its actors (the JwksCache in
`auth_sup`; the EventBus and the `stores` supervisor in `data_sup`), its routes, /health and
/metrics figures, and the services it offers other plugins (`brain.contracts`).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from brain.actors.supervisor import ChildSpec, Supervisor
from brain.actors.tree import Child, Group
from brain.api import deletion, metrics, openapi, retrieval, retrieval_openapi, routes
from brain.api.access import StoreAccess
from brain.api.bus import EventBus
from brain.api.cluster import cluster_node, cluster_sink, confirmed_append
from brain.api.commit_log import CommitLog
from brain.api.events import TOMBSTONE_TYPE, ReservedTypes
from brain.api.jwks import JwksCache, jwks_opener
from brain.api.live import REVOKED
from brain.api.quarantine import pending, quarantined_users
from brain.api.state import (
    api_key_verifier, api_limits, auto_repair, cors, dispatcher, doorbell, event_stream, jwks_state, store_manager,
    token_verifier, write_rate,
)
from brain.api.user_store import check_outbox, marker_path, store_path
from brain.backup import BackupFile
from brain.check import OK, CheckRow
from brain.contracts import AUTHENTICATOR, COMMIT_LOG, EVENT_ACCESS, EVENT_SINK, USER_HOME
from brain.deletions import CHILD_ID as DELETIONS
from brain.nats_auth import process_connect_options
from brain.nats_embedded import CHILD_ID as NATS
from brain.plugins import hookimpl
from brain.process import Process
from brain.redact import redact_url
from brain.routes import Components, Listener, Route
from brain.web import add_route

LISTENER = routes.LISTENER
# The backup (and check) kind of the users' stores.
STORE_KIND = "user"
# The tiers of the tree this role shares: keys and tokens; data (rest_for_one: a crashed
# EventBus restarts the stores and what writes to them).
AUTH_SUP = "auth_sup"
DATA_SUP = "data_sup"


@hookimpl
def register_listeners(settings: Any, register: Callable[[Listener], None]) -> None:
    """The `api` listener: the main one where it is served, each route behind the token guard."""
    register(Listener(
        name=LISTENER, host=settings.server.host, port=settings.server.api_port,
        served=LISTENER in settings.server.roles, public_url=settings.api_public_url, rank=0,
        port_setting="server.api_port", guard=routes.guard, finish=routes.finish_routes,
        describe_guard=openapi.describe_guard,
        security=({"bearerAuth": []},), ready=keys_loaded,
    ))


def keys_loaded(rt: Process) -> bool:
    """Whether the API can check tokens: it has the issuer's signing keys."""
    return jwks_state(rt).current(time.time()) is not None


@hookimpl
def setup_process(rt: Process) -> None:
    """Offer the stores as the event sink, as event access for other doors and as the commit log,
    and the JWT check (refusing deleted users) as the authenticator; on a cluster node, tell the
    event bus which users' events it may publish, and offer where each user is (USER_HOME)."""
    # A cluster node's writers off the HTTP path write only where the user is, confirmed (NodeSink).
    rt.stash.set(EVENT_SINK, cluster_sink(rt) or store_manager(rt))
    rt.stash.set(EVENT_ACCESS, StoreAccess(store_manager(rt), ReservedTypes.from_plugins(rt.pm), write_rate(rt), rt.settings,
                                           append=confirmed_append(rt)))
    rt.stash.set(COMMIT_LOG, CommitLog(store_manager(rt), doorbell(rt)))
    deletion.revoked_users(rt)
    rt.stash.set(AUTHENTICATOR, token_verifier(rt))
    node = cluster_node(rt)
    if node is not None:  # the bus publishes only the events of users placed on this node
        doorbell(rt).may_publish = node.may_publish
        rt.stash.set(USER_HOME, node)  # mail sync follows its users from node to node


@hookimpl
def register_children(rt: Process, register: Callable[[Child | Group], None]) -> None:
    """The JwksCache (auth_sup); the EventBus, then the user stores' supervisor (data_sup)."""
    api = rt.settings.api
    state = jwks_state(rt)
    opener = jwks_opener(rt.settings)
    stores = store_manager(rt)
    bell = doorbell(rt)
    register(Group(AUTH_SUP, after=(NATS,)))
    register(Child(
        ChildSpec(id="jwks_cache", start=lambda link: JwksCache.start(
            link=link, state=state, refresh_seconds=api.jwks_refresh_seconds,
            fetch_timeout=api.jwks_fetch_timeout, opener=opener,
        )),
        parent=AUTH_SUP, after=("auth_issuer",),
    ))
    # Account deletions purge the stores: the relay starts after them and stops before them.
    register(Group(DATA_SUP, strategy="rest_for_one", after=(NATS, AUTH_SUP), before=(DELETIONS,)))
    register(Child(
        ChildSpec(id="event_bus", start=lambda link: EventBus.start(
            link=link, doorbell=bell, stores=stores, connect=process_connect_options(rt), settings=rt.settings.nats,
            data_path=rt.settings.data_path, loop=rt.loop,
        )),
        parent=DATA_SUP,
    ))
    register(Child(
        ChildSpec(
            id="stores",
            # A supervisor waits for its children, each bounded by its own timeout (OTP).
            shutdown_timeout=math.inf,
            start=lambda link: Supervisor.start(
                link=link, name="stores", strategy="one_for_one", max_restarts=50, max_seconds=10,
                stop_together=True,  # independent stores: their databases close concurrently
            ),
        ),
        parent=DATA_SUP, after=("event_bus",),
    ))


@hookimpl
def register_backup(register: Callable[[BackupFile], None]) -> None:
    """Every user's events.db; the revoked set, without which a restore would let a deleted
    user's still-valid JWT in again."""
    register(BackupFile("users/*/events.db", STORE_KIND))
    register(BackupFile(deletion.REVOKED_FILE, "state", database=False))


@hookimpl
def register_routes(rt: Process, listener: str, register: Callable[[Route | Components], None]) -> None:
    """/health, /openapi.json, /asyncapi.json, /me, /events and retrieval (/search, /events/..., /me/stats) on `api`."""
    if listener == LISTENER:
        for route in routes.routes(rt):
            register(route)
        register(Components({"schemas": retrieval_openapi.SCHEMAS}))
        for route in retrieval.routes(rt, store_manager(rt), write_rate(rt)):
            register(route)


@hookimpl
def reserve_event_types(reserve: Callable[[str], None]) -> None:
    """event.deleted: only a store writes tombstones."""
    reserve(TOMBSTONE_TYPE)


@hookimpl
def setup_app(rt: Process, listener: str, app: web.Application) -> None:
    """CORS on every route; the live dispatcher (and on a cluster node, placement and forwarding)
    runs with the app; on shutdown, before the tree stops the stores: end the streams, flush
    acknowledgements, reopen no store."""
    if listener != LISTENER:
        return
    stores = store_manager(rt)
    bell = doorbell(rt)
    live = dispatcher(rt)
    feed = event_stream(rt).feed
    policy = cors(rt)
    app.on_response_prepare.append(policy.add_headers)
    add_route(app, "OPTIONS", "/{tail:.*}", policy.preflight_handler(app), public=True)
    # Quarantined stores are rebuilt from the stream once the bus is connected.
    repairs = auto_repair(rt) if rt.settings.api.auto_repair else None

    async def start_dispatching(_app: web.Application) -> None:
        live.start(asyncio.get_running_loop())

    async def stop_activating(_app: web.Application) -> None:
        live.stop()
        if repairs is not None:
            repairs.stop()
        bell.flush()
        stores.closing = True
        if feed is not None:
            await feed.close()

    app.on_startup.append(start_dispatching)
    app.on_shutdown.append(stop_activating)
    node = cluster_node(rt)
    if node is not None:
        app.on_startup.append(node.start)
        app.on_shutdown.append(node.shutting_down)
        app.on_cleanup.append(node.close)


@hookimpl
def check_data(data_dir: Path, rows: list[CheckRow]) -> None:
    """`brain check`: each store's outbox (rows naming no event, unpublished rows the bus cannot find),
    and a row for each store in quarantine."""
    for row in rows:
        if row.kind == STORE_KIND and row.checks.get("integrity") == OK:
            user_id = Path(row.path).parent.name
            verdict, problem = check_outbox(data_dir / row.path, marker_path(data_dir, user_id))
            row.note("outbox", verdict, problem=problem)
    for user_id in quarantined_users(data_dir):
        entry = pending(store_path(data_dir, user_id)) or {}
        row = CheckRow(f"users/{user_id}/events.db", STORE_KIND, 0)
        row.note("integrity", f"quarantined ({entry.get('reason')}): run `brain repair --user {user_id}`", problem=True)
        rows.append(row)


@hookimpl
def user_revoked(rt: Process, user_id: str, tokens_valid_until: int) -> None:
    """Refuse the deleted user's tokens at once, and end their event streams."""
    deletion.revoke(rt, user_id, tokens_valid_until)
    dispatcher(rt).end_user(user_id, REVOKED)


@hookimpl
def user_purge(rt: Process, user_id: str) -> None:
    """Close and delete the deleted user's store, and their events in JetStream; on a cluster
    node, the user's placement entry too (brain.api.cluster)."""
    deletion.purge(rt, user_id)
    node = cluster_node(rt)
    if node is not None:
        node.forget_deleted(user_id)


@hookimpl
def register_health(rt: Process, register: Callable[..., None]) -> None:
    """JWKS and token cache, API keys, the event bus (under `nats`), the stores; degraded without keys or NATS,
    or with a store in quarantine."""
    state = jwks_state(rt)
    verifier = token_verifier(rt)
    bell = doorbell(rt)

    def problems() -> list[str]:
        found: list[str] = []
        if state.current(time.time()) is None:
            why = f" (last error: {state.last_error})" if state.last_error else ""
            found.append(f"jwks: no usable signing keys from {state.shown_url}{why}")
        if not bell.stats().get("connected"):
            found.append(f"nats: the event bus is not connected to {redact_url(rt.nats_url)}; events wait in the outboxes")
        return found

    register("nats", figures=bell.stats)
    register("jwks", figures=lambda: {**state.stats(), "token_cache": verifier.stats()}, problems=problems)
    register("api_keys", figures=api_key_verifier(rt).stats)
    stores = store_manager(rt)
    register("stores", figures=stores.stats, problems=stores.quarantine_problems)
    register("streams", figures=lambda: {**dispatcher(rt).stats(), "tickets": event_stream(rt).tickets.stats()})
    register("rate_limits", figures=api_limits(rt).stats)
    register("search", figures=stores.search_stats)
    if rt.settings.api.auto_repair:
        register("stores", figures=lambda: {"auto_repair": auto_repair(rt).stats()})
    node = cluster_node(rt)
    if node is not None:
        register("cluster", figures=node.stats, problems=node.problems)


@hookimpl
def register_metrics(rt: Process, register: Callable[..., None]) -> None:
    """Health, JWKS cache, token cache, stores and event bus figures."""
    for name, collect in metrics.sources(rt):
        register(name, collect)

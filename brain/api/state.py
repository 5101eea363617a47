"""What one process of the API role owns and shares, kept in the process's stash.

Each is created on first use and lives as long as the process, across restarts of the actors
that work with it: the JWKS state (the JwksCache actor publishes key snapshots on it), the
token verifier, the outbox doorbell (the EventBus attaches to it), the store manager, the live
dispatcher and stream tickets of the event streams, the rate limits, the per-user write quota
and the CORS policy.
"""

from __future__ import annotations

from pathlib import Path

from brain.api.api_keys import ApiKeyVerifier, HttpDirectory, control_checker
from brain.api.cors import Cors
from brain.api.jwks import JwksState, jwks_opener
from brain.api.limits import ApiLimits, BucketsFactory, local_buckets
from brain.api.live import Dispatcher
from brain.api.live_feed import LiveFeed
from brain.api.outbox import Confirmations, Doorbell, event_stored_notifier
from brain.api.quotas import WriteRate
from brain.api.repair import AutoRepair
from brain.api.settings import expected_issuer, jwks_url
from brain.api.store_manager import StoreManager
from brain.api.stream import EventStream
from brain.api.tickets import StreamTickets
from brain.api.verifier import TokenVerifier
from brain.apikeys import api_key_hub
from brain.process import Process
from brain.stash import StashKey
from brain.workers.shared_buckets import SharedTokenBuckets

__all__ = [
    "LISTENER", "api_key_verifier", "api_limits", "auto_repair", "cors", "dispatcher", "doorbell", "event_stream", "jwks_state",
    "store_manager", "token_verifier", "write_rate",
]

# The role's HTTP listener (brain.routes.Listener.name).
LISTENER = "api"

_JWKS: StashKey[JwksState] = StashKey("brain.api.jwks")
_VERIFIER: StashKey[TokenVerifier] = StashKey("brain.api.token_verifier")
_DOORBELL: StashKey[Doorbell] = StashKey("brain.api.doorbell")
_STORES: StashKey[StoreManager] = StashKey("brain.api.store_manager")
_DISPATCHER: StashKey[Dispatcher] = StashKey("brain.api.dispatcher")
_STREAM: StashKey[EventStream] = StashKey("brain.api.event_stream")
_LIMITS: StashKey[ApiLimits] = StashKey("brain.api.limits")
_CORS: StashKey[Cors] = StashKey("brain.api.cors")
_AUTO_REPAIR: StashKey[AutoRepair] = StashKey("brain.api.auto_repair")
_WRITE_RATE: StashKey[WriteRate] = StashKey("brain.api.write_rate")


def jwks_state(rt: Process) -> JwksState:
    """The process's JwksState (shared by every JwksCache generation)."""

    def create() -> JwksState:
        api = rt.settings.api
        return JwksState(
            url=jwks_url(rt.settings),
            refetch_min_interval=api.jwks_refetch_min_interval,
            max_staleness=api.jwks_max_staleness_seconds,
        )

    return rt.stash.setdefault(_JWKS, create)


def token_verifier(rt: Process) -> TokenVerifier:
    """The process's TokenVerifier (one token cache for the API app)."""

    def create() -> TokenVerifier:
        api = rt.settings.api
        return TokenVerifier(
            jwks_state(rt),
            issuer=expected_issuer(rt.settings),
            audience=api.audience,
            algorithms=api.algorithms,
            leeway=api.leeway_seconds,
            cache_size=api.token_cache_size,
            max_token_bytes=api.max_token_bytes,
        )

    return rt.stash.setdefault(_VERIFIER, create)


def api_key_verifier(rt: Process) -> ApiKeyVerifier:
    """The process's ApiKeyVerifier: the key cache, listening to the API-key hub for revocations."""
    hub = api_key_hub(rt)
    if not isinstance(hub.listener, ApiKeyVerifier):
        settings, api = rt.settings, rt.settings.api
        tokens = token_verifier(rt)
        # Without the auth role in this process, keys are looked up where the JWKS comes from.
        remote = HttpDirectory(jwks_url(settings).removesuffix("/jwks") + "/api-key/verify", jwks_opener(settings),
                               api.jwks_fetch_timeout)
        hub.listener = ApiKeyVerifier(
            lambda: hub.directory or remote, tokens,
            cache_size=api.api_key_cache_size, cache_seconds=api.api_key_cache_seconds,
            bearer_prefix=settings.auth.api_key_prefix,
        )
        hub.check = control_checker(jwks_state(rt), expected_issuer(settings), api.algorithms)
    return hub.listener


def doorbell(rt: Process) -> Doorbell:
    """Where the stores hand committed events to the EventBus (stable across its restarts)."""

    def create() -> Doorbell:
        live = dispatcher(rt)
        bell = Doorbell((live.post, event_stored_notifier(rt.pm)), confirmations=live.confirmations)
        if live.confirmations is not None:
            bell.on_confirmed(live.confirmed)
        return bell

    return rt.stash.setdefault(_DOORBELL, create)


def store_manager(rt: Process) -> StoreManager:
    """The process's StoreManager: every user store is reached through it."""
    return rt.stash.setdefault(_STORES, lambda: StoreManager(rt, doorbell(rt)))


def dispatcher(rt: Process) -> Dispatcher:
    """The process's live dispatcher: committed events to the open event streams."""
    api, cluster = rt.settings.api, rt.settings.cluster
    # A cluster node that answers writes once the replicated stream holds them streams only those.
    confirming = bool(cluster.node_id) and cluster.confirm_writes
    return rt.stash.setdefault(
        _DISPATCHER,
        lambda: Dispatcher(max_streams=api.stream_max, max_per_user=api.stream_max_per_user, pokes_only=rt.worker.several,
                           confirmations=Confirmations() if confirming else None),
    )


def event_stream(rt: Process) -> EventStream:
    """GET /events/stream's state: stores, dispatcher, tickets (refused for deleted users)."""

    def create() -> EventStream:
        verifier = token_verifier(rt)
        tickets = StreamTickets(
            rt.secret, ttl=rt.settings.api.stream_ticket_seconds, is_revoked=lambda user_id: user_id in verifier.revoked
        )
        feed = LiveFeed(rt, dispatcher(rt)) if rt.worker.several else None
        return EventStream(rt.settings, store_manager(rt), dispatcher(rt), tickets, feed)

    return rt.stash.setdefault(_STREAM, create)


def _buckets(rt: Process) -> BucketsFactory:
    """Token buckets for a limit of the server: in memory its workers share, or this process's."""

    def shared_buckets(name: str, rate: float, burst: int) -> SharedTokenBuckets:
        return SharedTokenBuckets(Path(rt.worker.shared_dir) / f"api-limits-{name}", rate, burst)

    return shared_buckets if rt.worker.several else local_buckets


def api_limits(rt: Process) -> ApiLimits:
    """The server's request rate limits (per user, per client address), shared by its workers."""
    return rt.stash.setdefault(
        _LIMITS, lambda: ApiLimits(rt.settings.api, rt.settings.server.trusted_proxies, _buckets(rt))
    )


def cors(rt: Process) -> Cors:
    """The API listener's CORS policy."""
    return rt.stash.setdefault(_CORS, lambda: Cors.from_settings(rt.settings))


def auto_repair(rt: Process) -> AutoRepair:
    """The process's automatic repair of quarantined stores (api.auto_repair), wired to the stores."""

    def create() -> AutoRepair:
        stores = store_manager(rt)
        repairs = AutoRepair(rt.settings.data_path, doorbell(rt).read_stream, stores.note_repaired)
        stores.on_quarantined = repairs.request
        stores.repair_retry_after = repairs.RETRY_SECONDS
        for user_id in sorted(stores.quarantined):
            repairs.request(user_id)
        return repairs

    return rt.stash.setdefault(_AUTO_REPAIR, create)


def write_rate(rt: Process) -> WriteRate:
    """The server's per-user write quota (api.max_events_per_minute), shared by its workers."""
    return rt.stash.setdefault(
        _WRITE_RATE, lambda: WriteRate(rt.settings.api.max_events_per_minute, buckets=_buckets(rt))
    )

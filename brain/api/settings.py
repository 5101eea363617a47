"""The API role's settings: [api] and [search] (declared through `register_settings`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from brain.config import Section, Settings
from brain.errors import ConfigError
from brain.origins import origin_of
from brain.plugins import hookimpl
from brain.sections import require_positive


@dataclass(frozen=True)
class ApiSettings:
    """The API role: token checks, event stores, limits."""

    # Where the JWKS is fetched from. Empty: the local auth role's address.
    auth_server_url: str = ""
    # Expected `iss`. Empty: the auth role's issuer (public URL).
    issuer: str = ""
    audience: str = "brain"
    algorithms: tuple[str, ...] = ("RS256",)
    jwks_refresh_seconds: float = 300.0
    # Unknown-kid refetches are at least this far apart, however many bad kids arrive.
    jwks_refetch_min_interval: float = 30.0
    # Keys older than this (issuer unreachable meanwhile) are dropped: the API answers 503.
    jwks_max_staleness_seconds: float = 7 * 24 * 3600.0
    jwks_fetch_timeout: float = 5.0
    # PEM bundle of the CAs trusted for an https JWKS fetch. Empty: the system CAs (or, when
    # this process runs the auth role too and auth_server_url is empty, its own certificate).
    jwks_ca_file: str = ""
    leeway_seconds: int = 30
    token_cache_size: int = 10_000
    max_token_bytes: int = 8192
    max_event_bytes: int = 65_536
    max_batch: int = 1000
    events_page_max: int = 1000
    events_page_default: int = 100
    store_idle_seconds: float = 300.0
    max_open_stores: int = 256
    # How much of a store's file SQLite reads through a memory map (PRAGMA mmap_size), in MiB; 0:
    # none, every page read with a read() into a small per-connection cache. Searching a large
    # store looks up one row of its index's document sizes and times per match, spread over
    # megabytes: through the map they cost no system call and are shared by every worker's
    # connection (the OS page cache) instead of copied into each. Address space, not memory.
    store_mmap_mib: int = 1024
    # Rebuild a store found damaged (quarantined) from the event stream at once, in the server;
    # false: it waits for `brain repair --user ID`.
    auto_repair: bool = False
    # Verified API keys kept in memory (revocation drops an entry at once), and how long an entry
    # may serve before the key is looked up again (the bound if a revocation message is lost).
    api_key_cache_size: int = 10_000
    api_key_cache_seconds: float = 300.0
    # GET /events/stream (brain.api.stream): a comment line after this long without an event,
    # so proxies and clients see a live connection.
    stream_heartbeat_seconds: float = 15.0
    # Events committed but not yet written to one stream, in bytes of event data; past it a live
    # stream's client is too slow and is cut off (it resumes with Last-Event-ID).
    stream_buffer_bytes: int = 1_048_576
    # A client that accepts no bytes of a write for this long is disconnected.
    stream_write_timeout_seconds: float = 30.0
    stream_max_per_user: int = 16
    stream_max: int = 10_000
    # How long a ticket from POST /events/stream/ticket may wait to be used (once).
    stream_ticket_seconds: float = 60.0
    # CORS for browser apps (brain.api.cors): the origins allowed to call the API. Empty: the
    # auth role's (its public URL and auth.trusted_origins). "*": any origin, without credentials.
    cors: bool = True
    cors_origins: tuple[str, ...] = ()
    # Requests per second (sustained, and the burst above it) per user and per client address;
    # 0 turns a limit off. Over a limit: 429 with Retry-After.
    rate_limit_user_per_second: float = 200.0
    rate_limit_user_burst: int = 1000
    rate_limit_ip_per_second: float = 1000.0
    rate_limit_ip_burst: int = 2000
    # Per-user quotas (0: none). Bytes: the pages a user's events.db uses, index included; past
    # it, writes are refused with 507 until the user deletes events. Events: written through
    # the HTTP API in any minute (a burst of this many, refilled evenly), else 429.
    max_user_bytes: int = 10 * 1024**3
    max_events_per_minute: int = 60_000


@dataclass(frozen=True)
class SearchSettings:
    """[search]: the full-text index in every user's store and GET /search."""

    # False: events are not indexed (GET /search answers 503). Turned on again, a store
    # rebuilds its index in the background when it next opens.
    index: bool = True
    # score = BM25 x (1 + recency_weight x 0.5 ^ (age in days / recency_half_life_days)).
    recency_weight: float = 0.2
    recency_half_life_days: float = 30.0
    # A query is ranked over at most this many matches at a time, the newest first: the next
    # pages go on to the older ones. Bounds the cost of a word that half the events contain.
    rank_window: int = 1000
    page_default: int = 10
    page_max: int = 100
    max_query_chars: int = 1000
    # How long a search's ranked order is kept for its next pages (the cursor's snapshot).
    cursor_seconds: float = 600.0
    # Stores indexing their existing events at the same time, per process.
    backfill_concurrency: int = 2
    # A write does not wait for the index: its event is indexed this long after, with the others
    # written meanwhile (at once once 256 are waiting, and always before a search reads the index).
    index_delay_seconds: float = 1.0


def expected_issuer(settings: Settings) -> str:
    """`iss` the API role requires: configured, or what the auth role of this config mints."""
    auth = settings.sections.get("auth")
    return str(settings.api.issuer or (auth.issuer if auth is not None else "") or settings.auth_public_url)


def jwks_url(settings: Settings) -> str:
    """Where the API role fetches the issuer's keys: `auth_server_url`, or the local auth role."""
    base = (settings.api.auth_server_url or settings.local_url(settings.server.auth_port)).rstrip("/")
    return f"{base}/api/auth/jwks"


def validate(s: Settings) -> None:
    """Cross-field and range checks of [api]; each error names the key."""
    require_positive(
        {
            "api.api_key_cache_size": s.api.api_key_cache_size,
            "api.api_key_cache_seconds": s.api.api_key_cache_seconds,
            "api.token_cache_size": s.api.token_cache_size,
            "api.max_token_bytes": s.api.max_token_bytes,
            "api.max_event_bytes": s.api.max_event_bytes,
            "api.max_batch": s.api.max_batch,
            "api.events_page_max": s.api.events_page_max,
            "api.events_page_default": s.api.events_page_default,
            "api.max_open_stores": s.api.max_open_stores,
            "api.store_idle_seconds": s.api.store_idle_seconds,
            "api.jwks_refresh_seconds": s.api.jwks_refresh_seconds,
            "api.jwks_refetch_min_interval": s.api.jwks_refetch_min_interval,
            "api.jwks_max_staleness_seconds": s.api.jwks_max_staleness_seconds,
            "api.jwks_fetch_timeout": s.api.jwks_fetch_timeout,
            "api.stream_heartbeat_seconds": s.api.stream_heartbeat_seconds,
            "api.stream_buffer_bytes": s.api.stream_buffer_bytes,
            "api.stream_write_timeout_seconds": s.api.stream_write_timeout_seconds,
            "api.stream_max_per_user": s.api.stream_max_per_user,
            "api.stream_max": s.api.stream_max,
            "api.stream_ticket_seconds": s.api.stream_ticket_seconds,
        }
    )
    for key in ("rate_limit_user_per_second", "rate_limit_user_burst", "rate_limit_ip_per_second", "rate_limit_ip_burst"):
        if getattr(s.api, key) < 0:
            raise ConfigError(f"api.{key}: must be 0 (off) or positive")
    for kind in ("user", "ip"):
        if getattr(s.api, f"rate_limit_{kind}_per_second") > 0 and getattr(s.api, f"rate_limit_{kind}_burst") < 1:
            raise ConfigError(f"api.rate_limit_{kind}_burst: must be at least 1 when the limit is on")
    for origin in s.api.cors_origins:
        if origin != "*" and "*" not in origin and origin_of(origin) is None:
            raise ConfigError(f"api.cors_origins: {origin[:80]!r} is not an origin such as https://app.example.com")
    if not 0 <= s.api.store_mmap_mib <= 2047:  # SQLite's own ceiling is just under 2 GiB
        raise ConfigError("api.store_mmap_mib: 0 (no memory map) to 2047")
    if s.api.max_user_bytes < 0 or s.api.max_events_per_minute < 0:
        raise ConfigError("api.max_user_bytes and api.max_events_per_minute: 0 (no quota) or more")
    if s.api.events_page_default > s.api.events_page_max:
        raise ConfigError("api.events_page_default: must not exceed api.events_page_max")
    for alg in s.api.algorithms:
        if alg not in ("RS256", "ES256", "EdDSA"):
            raise ConfigError(f"api.algorithms: {alg!r} is not allowed (RS256, ES256, EdDSA)")
    if not s.api.algorithms:
        raise ConfigError("api.algorithms: must name at least one algorithm")


def validate_search(s: Settings) -> None:
    """Range checks of [search]; each error names the key."""
    search = s.search
    require_positive(
        {
            "search.recency_half_life_days": search.recency_half_life_days,
            "search.rank_window": search.rank_window,
            "search.page_default": search.page_default,
            "search.page_max": search.page_max,
            "search.max_query_chars": search.max_query_chars,
            "search.cursor_seconds": search.cursor_seconds,
            "search.backfill_concurrency": search.backfill_concurrency,
            "search.index_delay_seconds": search.index_delay_seconds,
        }
    )
    if search.recency_weight < 0:
        raise ConfigError("search.recency_weight: must not be negative")
    if search.page_default > search.page_max:
        raise ConfigError("search.page_default: must not exceed search.page_max")


@hookimpl
def register_settings(register: Callable[[Section], None]) -> None:
    """[api] (the original system's AUTH_SERVER_URL names its auth_server_url) and [search]."""
    register(Section("api", ApiSettings, env={"AUTH_SERVER_URL": "auth_server_url"}, validate=validate))
    register(Section("search", SearchSettings, validate=validate_search))

"""The API role's settings: [api] (declared through `register_settings`)."""

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
    if s.api.events_page_default > s.api.events_page_max:
        raise ConfigError("api.events_page_default: must not exceed api.events_page_max")
    for alg in s.api.algorithms:
        if alg not in ("RS256", "ES256", "EdDSA"):
            raise ConfigError(f"api.algorithms: {alg!r} is not allowed (RS256, ES256, EdDSA)")
    if not s.api.algorithms:
        raise ConfigError("api.algorithms: must name at least one algorithm")


@hookimpl
def register_settings(register: Callable[[Section], None]) -> None:
    """[api]; the original system's AUTH_SERVER_URL names its auth_server_url."""
    register(Section("api", ApiSettings, env={"AUTH_SERVER_URL": "auth_server_url"}, validate=validate))

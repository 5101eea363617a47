"""Mail sync's settings: [mail] (declared through `register_settings`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from brain.config import Section, Settings
from brain.errors import ConfigError
from brain.plugins import hookimpl
from brain.sections import require_positive


@dataclass(frozen=True)
class MailSettings:
    """Mail sync."""

    # Polling is adaptive: right after a sync that found something the next one comes after
    # sync_interval_min_seconds; every quiet sync doubles the wait, up to sync_interval_seconds.
    # (A sync also runs at once on connect, on POST /mail/accounts/{id}/sync and on push.)
    sync_interval_seconds: float = 300.0
    sync_interval_min_seconds: float = 30.0
    # With push notifications on (public_url set), polls only this often, as a safety net.
    push_poll_seconds: float = 1800.0
    # Backoff after transient errors: retry_base_seconds * 2^n with jitter, capped here.
    max_backoff_seconds: float = 3600.0
    retry_base_seconds: float = 2.0
    # Messages per page when the provider's own table does not say.
    page_size: int = 100
    # Access tokens are refreshed this long before they expire.
    refresh_skew_seconds: float = 300.0
    # How long an OAuth flow (its signed `state`) stays usable, consent at the provider included.
    oauth_state_ttl_seconds: float = 600.0
    # The connect link POST /mail/connect answers must be opened within this long: the first
    # browser to open it is the one the flow is bound to.
    oauth_start_ttl_seconds: float = 120.0
    # Where providers send the browser back. Empty: {api_public_url}/mail/oauth/callback.
    redirect_uri: str = ""
    # Where the callback sends the browser when it is done (?status=connected|error&code=...).
    # Empty: brain's own result page, {api_public_url}/mail/oauth/result.
    app_redirect_url: str = ""
    # Threads for connect-time provider calls (code exchange, first login, first refresh): a
    # provider that hangs occupies these, never the threads the rest of the server needs.
    connect_workers: int = 4
    # Connects (and OAuth callbacks) of one user in progress at once; more are 429.
    connects_per_user: int = 2
    # Worker processes that convert pages of messages into the message model (CPU-bound: one
    # account's sync would otherwise convert on one core). 0: convert in the sync's own thread;
    # -1: one per core (none on a single core, where they could only take turns with the server).
    convert_workers: int = -1
    # Keep each message's HTML (body_html) beside its text; an account may choose otherwise.
    keep_html: bool = False
    # Each text field of a message (body_text, body_text_clean, body_html) is cut at this many
    # UTF-8 bytes (the event then says truncated, with the original sizes).
    max_text_bytes: int = 262_144
    # A mail event is cut to fit this many bytes of JSON; keep it below the NATS server's
    # max_payload (1 MiB by default), which every event must pass through.
    max_event_bytes: int = 1_000_000
    # Where providers can reach this API role from the internet (https, for Gmail's Pub/Sub push
    # and Graph subscriptions: {public_url}/mail/push/{provider}). Empty: no push, polling only.
    public_url: str = ""
    # GET /mail/messages/{id}/attachments/{id} refuses attachments larger than this.
    max_attachment_bytes: int = 26_214_400
    # Keep downloaded attachments in the user's directory (data/users/{id}/attachments/, by
    # content hash, counted in /mail/status) so a second download does not ask the provider.
    cache_attachments: bool = False
    # Each user's attachment cache holds at most this many bytes (the user's quota for it): a
    # download that would take it past this is served as usual but not kept.
    attachment_cache_bytes: int = 1_073_741_824
    # With several workers, each account is synced by the one holding its lease (JetStream KV,
    # brain.mail.ownership): a dead owner's accounts resume elsewhere within this long (plus a
    # few seconds of checks).
    lease_ttl_seconds: float = 15.0


def validate(s: Settings) -> None:
    """[mail]'s checks; each error names the key."""
    require_positive(
        {
            "mail.sync_interval_seconds": s.mail.sync_interval_seconds,
            "mail.max_backoff_seconds": s.mail.max_backoff_seconds,
            "mail.retry_base_seconds": s.mail.retry_base_seconds,
            "mail.page_size": s.mail.page_size,
            "mail.oauth_state_ttl_seconds": s.mail.oauth_state_ttl_seconds,
            "mail.oauth_start_ttl_seconds": s.mail.oauth_start_ttl_seconds,
            "mail.connect_workers": s.mail.connect_workers,
            "mail.connects_per_user": s.mail.connects_per_user,
            "mail.max_event_bytes": s.mail.max_event_bytes,
            "mail.sync_interval_min_seconds": s.mail.sync_interval_min_seconds,
            "mail.push_poll_seconds": s.mail.push_poll_seconds,
            "mail.max_attachment_bytes": s.mail.max_attachment_bytes,
            "mail.attachment_cache_bytes": s.mail.attachment_cache_bytes,
            "mail.lease_ttl_seconds": s.mail.lease_ttl_seconds,
        }
    )
    for key in ("redirect_uri", "app_redirect_url", "public_url"):
        url = urlsplit(getattr(s.mail, key))
        if url.geturl() and (url.scheme not in ("http", "https") or not url.netloc):
            raise ConfigError(f"mail.{key}: must be an absolute http or https URL, got {url.geturl()[:80]!r}")
    if s.mail.convert_workers < -1:
        raise ConfigError(f"mail.convert_workers: must be -1 (by the cores), 0 or more, got {s.mail.convert_workers}")
    if s.mail.max_text_bytes < 1024:
        raise ConfigError(f"mail.max_text_bytes: must be at least 1024, got {s.mail.max_text_bytes}")
    if s.mail.max_event_bytes < 65_536:
        raise ConfigError(f"mail.max_event_bytes: must be at least 65536, got {s.mail.max_event_bytes}")


@hookimpl
def register_settings(register: Callable[[Section], None]) -> None:
    """[mail]."""
    register(Section("mail", MailSettings, validate=validate))

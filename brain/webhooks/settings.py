"""Webhooks' settings: [webhooks] (declared through `register_settings`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from brain.config import Section, Settings
from brain.errors import ConfigError
from brain.outbound import allowed_networks
from brain.plugins import hookimpl
from brain.sections import require_positive


@dataclass(frozen=True)
class WebhookSettings:
    """Webhook endpoints and their deliveries."""

    max_per_user: int = 10
    # Targets must resolve to public addresses, except in these networks (CIDRs, e.g.
    # "10.0.0.0/8" for receivers inside the company network; "127.0.0.0/8" for tests).
    allowed_networks: tuple[str, ...] = ()
    # Deliveries carry users' events: https only, unless this allows plain http.
    allow_http: bool = False
    # One delivery attempt, connect to last byte of the answer.
    timeout_seconds: float = 10.0
    # After a failed attempt the endpoint waits retry_base_seconds * 2^(failures-1), with
    # jitter, at most retry_max_seconds, before the next one.
    retry_base_seconds: float = 5.0
    retry_max_seconds: float = 3600.0
    # An endpoint that has failed for this long without a success is disabled, and the user
    # gets a `webhook.disabled` event.
    disable_after_days: float = 5.0
    # Deliveries in flight at once, in this process.
    concurrency: int = 32
    # Finished deliveries (delivered, or given up) are listed this long, then forgotten.
    keep_days: float = 7.0


def validate(s: Settings) -> None:
    """[webhooks]'s checks; each error names the key."""
    w = s.webhooks
    require_positive({
        "webhooks.max_per_user": w.max_per_user,
        "webhooks.timeout_seconds": w.timeout_seconds,
        "webhooks.retry_base_seconds": w.retry_base_seconds,
        "webhooks.retry_max_seconds": w.retry_max_seconds,
        "webhooks.disable_after_days": w.disable_after_days,
        "webhooks.concurrency": w.concurrency,
        "webhooks.keep_days": w.keep_days,
    })
    if w.retry_max_seconds < w.retry_base_seconds:
        raise ConfigError("webhooks.retry_max_seconds: must be at least webhooks.retry_base_seconds")
    try:
        allowed_networks(w.allowed_networks, field="webhooks.allowed_networks")
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


@hookimpl
def register_settings(register: Callable[[Section], None]) -> None:
    """[webhooks]."""
    register(Section("webhooks", WebhookSettings, validate=validate))

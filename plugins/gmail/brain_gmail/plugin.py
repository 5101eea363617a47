"""The Gmail plugin's hooks: its settings table and its mail provider."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from brain.config import Section, check_plugin_table
from brain.errors import ConfigError
from brain.plugins import hookimpl

# Keys of the [plugins.gmail] table; GOOGLE_CLIENT_ID / GOOGLE_CLIENT_SECRET fill the first two.
SETTINGS_KEYS = frozenset(
    {"client_id", "client_secret", "api_endpoint", "token_uri", "auth_uri", "batch_uri", "revoke_uri",
     "pubsub_topic", "push_token",
     "message_format", "page_size", "batch_size", "quota_units_per_second", "timeout"}
)


@hookimpl
def register_settings(register: Callable[[Section], None]) -> None:
    """The original system's environment names for [plugins.gmail]."""
    register(Section("gmail", env={"GOOGLE_CLIENT_ID": "client_id", "GOOGLE_CLIENT_SECRET": "client_secret"}))


@hookimpl
def brain_startup(settings: Any, plugin_settings: Mapping[str, Mapping[str, Any]]) -> None:
    """Refuse unknown keys in [plugins.gmail] at start-up."""
    table = plugin_settings.get("gmail", {})
    check_plugin_table("gmail", table, SETTINGS_KEYS)
    if table.get("message_format", "full") not in ("full", "raw"):
        raise ConfigError(
            "plugins.gmail.message_format: must be 'full' or 'raw' (every message is synced with its content; "
            "an account that wants no bodies says so with sync.bodies = false)"
        )


@hookimpl
def register_mail_providers(register: Callable[[type], None]) -> None:
    """Offer the Gmail provider."""
    from brain_gmail.provider import GmailProvider

    register(GmailProvider)

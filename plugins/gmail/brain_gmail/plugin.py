"""The Gmail plugin's hooks."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from brain.config import check_plugin_table
from brain.plugins import hookimpl

# Keys of the [plugins.gmail] table; GOOGLE_CLIENT_ID / GOOGLE_CLIENT_SECRET fill the first two.
SETTINGS_KEYS = frozenset(
    {"client_id", "client_secret", "api_endpoint", "token_uri", "auth_uri", "batch_uri",
     "message_format", "page_size", "batch_size", "quota_units_per_second"}
)


@hookimpl
def brain_startup(settings: Any, plugin_settings: Mapping[str, Mapping[str, Any]]) -> None:
    """Refuse unknown keys in [plugins.gmail] at start-up."""
    check_plugin_table("gmail", plugin_settings.get("gmail", {}), SETTINGS_KEYS)

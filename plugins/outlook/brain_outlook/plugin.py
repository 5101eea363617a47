"""The Outlook plugin's hooks."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from brain.config import check_plugin_table
from brain.plugins import hookimpl

# Keys of the [plugins.outlook] table; MICROSOFT_CLIENT_ID/_SECRET/_TENANT fill the first three.
SETTINGS_KEYS = frozenset(
    {"client_id", "client_secret", "tenant", "authority_host", "graph_base_url", "page_size", "ca_bundle"}
)


@hookimpl
def brain_startup(settings: Any, plugin_settings: Mapping[str, Mapping[str, Any]]) -> None:
    """Refuse unknown keys in [plugins.outlook] at start-up."""
    check_plugin_table("outlook", plugin_settings.get("outlook", {}), SETTINGS_KEYS)

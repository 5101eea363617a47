"""The Outlook plugin's hooks: its settings table and its mail provider."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from brain.config import Section, check_plugin_table
from brain.errors import ConfigError
from brain.plugins import hookimpl

# Keys of the [plugins.outlook] table; MICROSOFT_CLIENT_ID/_SECRET/_TENANT fill the first three.
SETTINGS_KEYS = frozenset(
    {"client_id", "client_secret", "tenant", "authority_host", "graph_base_url", "page_size", "ca_bundle",
     "timeout", "quota_units_per_second"}
)


@hookimpl
def register_settings(register: Callable[[Section], None]) -> None:
    """The original system's environment names for [plugins.outlook]."""
    register(Section("outlook", env={"MICROSOFT_CLIENT_ID": "client_id", "MICROSOFT_CLIENT_SECRET": "client_secret", "MICROSOFT_TENANT": "tenant"}))


@hookimpl
def brain_startup(settings: Any, plugin_settings: Mapping[str, Mapping[str, Any]]) -> None:
    """Refuse unknown keys in [plugins.outlook] at start-up."""
    table = plugin_settings.get("outlook", {})
    if "folder" in table:
        raise ConfigError(
            "plugins.outlook.folder: every folder is synced now (but Junk Email and Deleted Items); "
            "an account chooses its own with sync.folders"
        )
    check_plugin_table("outlook", table, SETTINGS_KEYS)
    ca_bundle = table.get("ca_bundle")
    if ca_bundle and not Path(str(ca_bundle)).is_file():
        raise ConfigError(f"plugins.outlook.ca_bundle: no such file: {ca_bundle}")


@hookimpl
def register_mail_providers(register: Callable[[type], None]) -> None:
    """Offer the Outlook provider."""
    from brain_outlook.provider import OutlookProvider

    register(OutlookProvider)

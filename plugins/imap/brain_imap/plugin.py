"""The IMAP plugin's hooks: check `[plugins.imap]` at start-up, register the provider."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from brain.config import check_plugin_table
from brain.errors import ConfigError
from brain.mail.provider import ConnectRejected
from brain.plugins import hookimpl
from brain_imap.hosts import allowed_networks
from brain_imap.provider import SETTINGS_KEYS, ImapProvider, folder_list


@hookimpl
def brain_startup(settings: Any, plugin_settings: Mapping[str, Mapping[str, Any]]) -> None:
    """Refuse unknown keys and bad values in [plugins.imap] at start-up, naming the key."""
    table = plugin_settings.get("imap", {})
    check_plugin_table("imap", table, SETTINGS_KEYS)
    for key, kind in (("timeout", float), ("idle_refresh_seconds", float), ("page_size", int), ("max_message_bytes", int)):
        if key in table:
            try:
                ok = kind(table[key]) > 0
            except (TypeError, ValueError):
                ok = False
            if not ok:
                raise ConfigError(f"plugins.imap.{key}: must be a positive number, got {table[key]!r}")
    if table.get("folders"):  # empty: every folder
        try:
            folder_list(table["folders"], field="plugins.imap.folders")
        except ConnectRejected as exc:
            raise ConfigError(str(exc)) from None
    if "allowed_networks" in table:
        try:
            allowed_networks(table["allowed_networks"])
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    ca_file = table.get("ca_file")
    if ca_file and not os.path.isfile(str(ca_file)):
        raise ConfigError(f"plugins.imap.ca_file: no such file: {ca_file}")


@hookimpl
def register_mail_providers(register: Any) -> None:
    """Offer the IMAP provider (connect with `"provider": "imap"`)."""
    register(ImapProvider)

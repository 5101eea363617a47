"""Mail sync's own hooks (added by its manifest; documented in docs/plugins.md)."""

from __future__ import annotations

from typing import Any

from brain.plugins import hookspec


@hookspec
def register_mail_providers(register: Any) -> None:
    """Register mail providers: call `register(provider_class)` once for each."""

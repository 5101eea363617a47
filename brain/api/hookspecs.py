"""The API role's own hooks (added by its manifest; documented in docs/plugins.md)."""

from __future__ import annotations

from typing import Any

from brain.plugins import hookspec


@hookspec
def event_stored(user_id: str, event: dict[str, Any]) -> None:
    """Be told that an event was committed to a user's store (called off the request path)."""


@hookspec
def reserve_event_types(reserve: Any) -> None:
    """Reserve event type namespaces only the server writes: call `reserve(namespace)` for each."""

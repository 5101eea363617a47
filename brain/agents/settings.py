"""The MCP door's settings: [mcp] (declared through `register_settings`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from brain.config import Section, Settings
from brain.errors import ConfigError
from brain.plugins import hookimpl
from brain.sections import require_positive


@dataclass(frozen=True)
class McpSettings:
    """The MCP door (/mcp)."""

    # Serve /mcp and its protected-resource document.
    enabled: bool = True
    # A session id is good for this long after `initialize`; then the client initializes again.
    session_seconds: float = 86_400.0
    # A tool's result stops before its JSON passes this many characters (at least one item is
    # always returned); a cursor continues where it stopped.
    max_result_chars: int = 262_144


def validate(s: Settings) -> None:
    """[mcp]'s checks; each error names the key."""
    require_positive({"mcp.session_seconds": s.mcp.session_seconds, "mcp.max_result_chars": s.mcp.max_result_chars})
    if s.mcp.max_result_chars < 1024:
        raise ConfigError(f"mcp.max_result_chars: must be at least 1024, got {s.mcp.max_result_chars}")


@hookimpl
def register_settings(register: Callable[[Section], None]) -> None:
    """[mcp]."""
    register(Section("mcp", McpSettings, validate=validate))

"""Plugin system: pluggy hooks, entry-point loading (group `brain`)."""

from brain.plugins.hookspecs import hookimpl, hookspec

__all__ = ["hookimpl", "hookspec"]

"""What /health shows, as the plugins contribute it (`register_health`).

A contribution is a named section of figures (a callable returning a JSON-able dict, called on
every /health request; several contributions under one name are merged in registration order)
and, optionally, a callable naming what is wrong right now (an empty list: nothing). The
process is `degraded` while any of those names a problem.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from brain.stash import StashKey

__all__ = ["HEALTH", "Health"]

Figures = Callable[[], Mapping[str, Any]]
Problems = Callable[[], list[str]]


class Health:
    """The process's health contributions."""

    def __init__(self) -> None:
        self._sections: dict[str, list[Figures]] = {}
        self._problems: list[Problems] = []

    def register(self, name: str, figures: Figures | None = None, problems: Problems | None = None) -> None:
        """Add a section of figures and/or a source of problems (the `register_health` callback)."""
        if figures is not None:
            self._sections.setdefault(name, []).append(figures)
        if problems is not None:
            self._problems.append(problems)

    def problems(self) -> list[str]:
        """Why the process is degraded right now (empty: it is not)."""
        return [problem for source in self._problems for problem in source()]

    def sections(self) -> dict[str, dict[str, Any]]:
        """Every section's current figures."""
        out: dict[str, dict[str, Any]] = {}
        for name, sources in self._sections.items():
            merged: dict[str, Any] = {}
            for source in sources:
                merged.update(source())
            out[name] = merged
        return out


HEALTH: StashKey[Health] = StashKey("brain.health")

"""What /health shows, as the plugins contribute it (`register_health`).

A contribution is a named section of figures (a callable returning a JSON-able dict, called on
every /health request; several contributions under one name are merged in registration order)
and, optionally, a callable naming what is wrong right now as "name: reason" strings (an empty
list: nothing). The process is `degraded` while any of those names a problem.

The public document is what a load balancer needs and nothing more (status, version, the
problems' names): the detail (URLs, key ids, error texts, counts) helps an attacker map the
deployment, so it is for the metrics token's bearer only (brain.api.routes, brain.metrics).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import brain
from brain.actors import supervisor
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

    def document(self, *, started_at: float, detail: bool) -> dict[str, Any]:
        """The /health document: status, version and problems by name; with detail, every figure
        and the problems' full texts."""
        problems = self.problems()
        body: dict[str, Any] = {
            "status": "degraded" if problems else "ok",
            "problems": [problem.partition(":")[0] for problem in problems],
            "version": brain.__version__,
        }
        if not detail:
            return body
        body["problems"] = problems
        body["uptime_seconds"] = round(time.time() - started_at, 3)
        body["supervisor"] = {"restarts": supervisor.total_restarts(), "escalations": supervisor.total_escalations()}
        body.update(self.sections())
        return body


HEALTH: StashKey[Health] = StashKey("brain.health")

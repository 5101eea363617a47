"""What /health shows, as the plugins contribute it (`register_health`).

A contribution is a named section of figures (a callable returning a JSON-able dict, called on
every /health request; several contributions under one name are merged in registration order)
and, optionally, a callable naming what is wrong right now as "name: reason" strings (an empty
list: nothing). The process is `degraded` while any of those names a problem.

The public document is what a load balancer needs and nothing more (status, version, the
problems' names): the detail (URLs, key ids, error texts, counts) helps an attacker map the
deployment, so it is for the metrics token's bearer only (brain.api.routes, brain.metrics).

With several workers (brain.workers), /health answers for the whole server whichever worker
takes the request (`server_health`): every worker's document is gathered; the status is
degraded if any worker's is, or a worker is not serving (being restarted); the detail keeps
each worker's figures under `workers` and, at the top, the figures that add up (integers are
summed, values every worker agrees on are kept, the rest is only per worker).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from typing import Any

import brain
from brain.actors import supervisor
from brain.process import Process
from brain.stash import StashKey
from brain.workers.peers import peers_for

__all__ = ["HEALTH", "Health", "answer_health", "server_health"]

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


def answer_health(rt: Process) -> None:
    """Let the server's /health (on whichever worker) read this process's detail."""
    health = rt.stash[HEALTH]

    async def own(_data: object) -> dict[str, Any]:
        return {**health.document(started_at=rt.started_at, detail=True), "pid": os.getpid()}

    peers_for(rt).answer("health", own)


async def server_health(rt: Process, *, detail: bool) -> dict[str, Any]:
    """The /health document of the whole server (of this process, when it is the only one)."""
    if not rt.worker.several:
        return rt.stash[HEALTH].document(started_at=rt.started_at, detail=detail)
    found = await peers_for(rt).gather("health")
    master = found.pop("master", {})
    docs: dict[str, dict[str, Any]] = {}
    problems: list[str] = []
    for index in (str(i) for i in range(1, rt.worker.count + 1)):
        doc = found.get(index)
        if isinstance(doc, dict) and "status" in doc:
            docs[index] = doc
            problems += [f"{problem} (worker {index})" for problem in doc["problems"]]
        else:
            why = doc.get("error") if isinstance(doc, dict) else "not serving"
            problems.append(f"workers: worker {index} is not answering ({why or 'not serving'})")
    body: dict[str, Any] = {
        "status": "degraded" if problems else "ok",
        "problems": sorted({p.partition(":")[0] for p in problems}),
        "version": brain.__version__,
    }
    if not detail:
        return body
    body["problems"] = problems
    body["uptime_seconds"] = master.get("uptime_seconds")
    sections = [{k: v for k, v in doc.items() if isinstance(v, dict)} for doc in docs.values()]
    body.update(_added_up(sections))
    body["workers"] = {**{k: v for k, v in master.items() if k != "uptime_seconds"}, **docs}
    return body


def _added_up(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """What the workers' figures say together: integers summed, agreed values kept (recursively)."""
    out: dict[str, Any] = {}
    keys = {key for doc in docs for key in doc}
    for key in sorted(keys):
        values = [doc[key] for doc in docs if key in doc]
        if len(values) != len(docs):
            continue
        if all(isinstance(v, dict) for v in values):
            merged = _added_up(values)
            if merged:
                out[key] = merged
        elif all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            out[key] = sum(values)
        elif all(v == values[0] for v in values):
            out[key] = values[0]
    return out

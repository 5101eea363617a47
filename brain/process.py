"""What a plugin sees of the running process: the `Process` protocol every hook receives as `rt`.

`brain.runtime.Runtime` implements it; plugins (the built-in roles included) type their `rt`
with this protocol and never import the runtime, so the runtime is free to change and a plugin
cannot reach past the doors it is meant to use. Per-process objects live in `rt.stash`
(see `brain.stash`); hooks are called through `rt.pm.hook`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any, Protocol

import pluggy
import pykka

from brain.config import Settings
from brain.routes import Components, Listener, Route
from brain.stash import Stash
from brain.workers import WorkerSlot

__all__ = ["Process"]


class Process(Protocol):
    """One `brain serve` process (or a command that works like one, e.g. `brain users delete`)."""

    settings: Settings
    # The server secret (bytes): encrypts keys and tokens at rest, signs cursors and OAuth state.
    secret: bytes
    pm: pluggy.PluginManager
    # `pm.hook` minus the plugins that are not active here (they serve a listener this process
    # does not): how the core's wiring hooks are called.
    hook: Any
    stash: Stash
    # The serving event loop once `serve` runs; None before that and in commands.
    loop: asyncio.AbstractEventLoop | None
    # Where NATS is: configured, or the embedded server's address once the tree is built.
    nats_url: str
    started_at: float
    # Every listener the plugins declare, served here or not, by name.
    listeners: Mapping[str, Listener]
    # Which of the server's worker processes this is (worker 1 of 1 without a master).
    worker: WorkerSlot

    @property
    def roles(self) -> frozenset[str]:
        """The HTTP listeners this process serves (`server.roles`)."""

    @property
    def main_listener(self) -> str | None:
        """The served, documented listener with the lowest rank (None: no HTTP role here)."""

    def serves(self, listener: str) -> bool:
        """Whether this process serves the named HTTP listener ("auth", "api", "metrics", ...)."""

    def routes(self, listener: str) -> list[Route | Components]:
        """What the plugins register for a listener (the list its app and /openapi.json are built from)."""

    def lookup(self, path: str) -> pykka.ActorRef[Any] | None:
        """The actor at a path under the root, e.g. "data_sup/stores" (blocking; None if absent)."""

    async def alookup(self, path: str) -> pykka.ActorRef[Any] | None:
        """`lookup` for coroutines (each hop awaited through the actor bridge)."""

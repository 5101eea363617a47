"""An OTP-style supervisor for brain's actors (pykka has none).

Semantics follow Erlang/OTP's ``supervisor``: strategies one_for_one and rest_for_one, dynamic
children, permanent/transient/temporary restart types, restart intensity (more than
``max_restarts`` restarts within ``max_seconds`` -> stop every child and escalate to the parent),
start in order and stop in reverse order.

Rules for code that lives under a supervisor:

- Children must be ``BrainActor``s whose factory passes the ``Link`` to the constructor.
- Never keep an ``ActorRef`` across a restart; look children up with ``get_child``.
- A child must not block on an ask to its own supervisor: the supervisor may be blocked
  starting or stopping that very child (it would wait out the start/shutdown timeout).
- A child that is itself a supervisor should get a ``shutdown_timeout`` long enough to stop its
  own children (``math.inf`` waits for ever, like OTP's ``infinity`` for supervisors).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import pykka

from brain.actors.base import BrainActor, ChildExited, ExitReason, Link, _LinkState

__all__ = [
    "ChildAlreadyStarted",
    "ChildSpec",
    "ChildStartError",
    "Supervisor",
    "SupervisorGaveUp",
    "total_escalations",
    "total_restarts",
]

logger = logging.getLogger("brain.supervisor")

RestartType = Literal["permanent", "transient", "temporary"]
Strategy = Literal["one_for_one", "rest_for_one"]


@dataclass(frozen=True)
class ChildSpec:
    """How to start one child and when to restart it."""

    id: str
    start: Callable[[Link], pykka.ActorRef[Any]]
    restart: RestartType = "permanent"
    shutdown_timeout: float = 5.0
    # Addition to the OTP-like spec: a child whose on_start hangs must not hang the whole tree.
    start_timeout: float = 30.0

    def __post_init__(self) -> None:
        if self.restart not in ("permanent", "transient", "temporary"):
            raise ValueError(f"child {self.id!r}: unknown restart type {self.restart!r}")


class ChildStartError(RuntimeError):
    """A child could not be started (its factory or on_start raised, or it timed out)."""

    def __init__(self, child_id: str, cause: BaseException) -> None:
        super().__init__(f"child {child_id!r} failed to start: {cause!r}")
        self.child_id = child_id
        self.cause = cause


class ChildAlreadyStarted(ValueError):
    """start_child() was given an id that is already running; ``ref`` is the running child."""

    def __init__(self, child_id: str, ref: pykka.ActorRef[Any] | None) -> None:
        super().__init__(f"child {child_id!r} is already started")
        self.child_id = child_id
        self.ref = ref


class SupervisorGaveUp(RuntimeError):
    """A supervisor exceeded its restart intensity (or could not start) and stopped."""


class _Counter:
    """Restart/escalation counts for one supervisor, added into every ancestor's too."""

    _lock = threading.Lock()  # restarts are rare; one lock for the whole tree is plenty

    def __init__(self, parent: _Counter | None) -> None:
        self.parent = parent
        self.restarts = 0
        self.escalations = 0

    def add(self, *, restarts: int = 0, escalations: int = 0) -> None:
        with self._lock:
            node: _Counter | None = self
            while node is not None:
                node.restarts += restarts
                node.escalations += escalations
                node = node.parent

    def snapshot(self) -> tuple[int, int]:
        with self._lock:
            return self.restarts, self.escalations


# Process-wide totals for /health; every supervisor's counter chain ends here.
_GLOBAL = _Counter(None)


def total_restarts() -> int:
    """Restarts performed by every supervisor in this process."""
    return _GLOBAL.snapshot()[0]


def total_escalations() -> int:
    """Escalations (supervisors giving up) in this process."""
    return _GLOBAL.snapshot()[1]


class _Child:
    """A supervisor's record of one child across its generations."""

    __slots__ = ("spec", "dynamic", "ref", "link", "generation", "restarts", "running")

    def __init__(self, spec: ChildSpec, *, dynamic: bool) -> None:
        self.spec = spec
        self.dynamic = dynamic
        self.ref: pykka.ActorRef[Any] | None = None
        self.link: Link | None = None
        self.generation = 0
        self.restarts = 0
        self.running = False


def _timeout(seconds: float) -> float | None:
    # pykka passes the timeout to Condition.wait, which rejects infinity.
    return None if math.isinf(seconds) else seconds


class Supervisor(BrainActor):
    """Starts, watches and restarts child actors with OTP semantics.

    ``on_give_up(reason)`` is for the root only (no ``link``): it runs in the supervisor's
    thread after every child has been stopped, so it should just ask the server to exit.

    ``stop_together=True`` is for children that do not depend on each other (OTP's
    simple_one_for_one, e.g. one store per user): on shutdown they are all told to stop at
    once and then awaited, each within its own shutdown_timeout, instead of one after another.
    """

    def __init__(
        self,
        *,
        name: str,
        strategy: Strategy = "one_for_one",
        children: Sequence[ChildSpec] = (),
        max_restarts: int = 3,
        max_seconds: float = 5.0,
        link: Link | None = None,
        on_give_up: Callable[[str], None] | None = None,
        stop_together: bool = False,
    ) -> None:
        super().__init__(link=link)
        if strategy not in ("one_for_one", "rest_for_one"):
            raise ValueError(f"unknown strategy {strategy!r}")
        ids = [spec.id for spec in children]
        if len(ids) != len(set(ids)):
            raise ValueError(f"duplicate child ids in {ids}")
        self.name = name
        self.strategy = strategy
        self.max_restarts = max_restarts
        self.max_seconds = max_seconds
        self._static_specs = tuple(children)
        self._on_give_up = on_give_up
        self._stop_together = stop_together
        self._children: list[_Child] = []  # in start order; dynamic children at the end
        self._restart_times: deque[float] = deque()
        self._generations = 0
        self._stopping = False
        parent_counter = link._state.parent_counter if link is not None else None
        self._counter = _Counter(parent_counter if parent_counter is not None else _GLOBAL)

    def __str__(self) -> str:
        return f"Supervisor {self.name!r}"

    # --- lifecycle ---

    def on_start(self) -> None:
        """Start the static children in order; escalate if one cannot be started."""
        for spec in self._static_specs:
            child = _Child(spec, dynamic=False)
            self._children.append(child)
            # Raises SupervisorGaveUp (after stopping the children started so far) when the
            # child keeps failing; a failed on_start makes our own Link report "error".
            self._start_with_retries(child)

    def on_stop(self) -> None:
        """Stop every child in reverse start order."""
        self._stopping = True
        self._shutdown_all()

    def _on_exit(self, reason: ExitReason, error: BaseException | None) -> None:
        # Whatever ended this supervisor, its children must not outlive it: a restarted
        # supervisor would otherwise start a second copy of each.
        self._stopping = True
        self._shutdown_all()

    def on_receive(self, message: Any) -> Any:
        """Handle exit notifications from children."""
        if isinstance(message, ChildExited):
            self._child_exited(message)
            return None
        return super().on_receive(message)

    # --- public API, called through supervisor_ref.proxy() ---

    def start_child(self, spec: ChildSpec) -> pykka.ActorRef[Any]:
        """Add and start a dynamic child; raises ChildStartError or ChildAlreadyStarted."""
        existing = self._find(spec.id)
        if existing is not None:
            raise ChildAlreadyStarted(spec.id, existing.ref)
        child = _Child(spec, dynamic=True)
        # A dynamic child that cannot start is the caller's error (as OTP returns {error, _}),
        # not a crash that counts against the restart intensity.
        self._spawn(child)
        self._children.append(child)
        assert child.ref is not None
        return child.ref

    def terminate_child(self, child_id: str) -> None:
        """Stop a child and forget its spec (no restart); a no-op for an unknown id."""
        child = self._find(child_id)
        if child is None:
            # It may have stopped by itself a moment ago (idle store): nothing left to do.
            logger.debug("%s: terminate_child(%r): no such child", self, child_id)
            return
        self._children.remove(child)
        self._shutdown(child)

    def get_child(self, child_id: str) -> pykka.ActorRef[Any] | None:
        """The current ref of a running child, or None."""
        child = self._find(child_id)
        return child.ref if child is not None and child.running else None

    def which_children(self) -> list[dict[str, Any]]:
        """One dict per child in start order: id, alive, restart, restarts, dynamic."""
        return [
            {
                "id": c.spec.id,
                "alive": c.ref is not None and c.ref.is_alive(),
                "restart": c.spec.restart,
                "restarts": c.restarts,
                "dynamic": c.dynamic,
            }
            for c in self._children
        ]

    def count_children(self) -> int:
        """How many children this supervisor has."""
        return len(self._children)

    def stats(self) -> dict[str, Any]:
        """Counters for /health: restarts and escalations in this subtree, children count."""
        restarts, escalations = self._counter.snapshot()
        return {
            "name": self.name,
            "restarts": restarts,
            "escalations": escalations,
            "children": len(self._children),
        }

    # --- starting ---

    def _spawn(self, child: _Child) -> None:
        """Start one generation of ``child`` and wait for its on_start; raises ChildStartError."""
        spec = child.spec
        self._generations += 1
        link = Link(self.actor_ref, spec.id, self._generations, _LinkState(self._counter))
        child.generation, child.link, child.ref, child.running = link.generation, link, None, False
        try:
            ref = spec.start(link)
        except Exception as exc:
            raise ChildStartError(spec.id, exc) from exc
        state = link._state
        if not state.claimed.is_set():
            # Without the link the child's exits would never reach us: refuse it outright.
            link.mark_shutdown()
            ref.stop(block=False)
            raise ChildStartError(spec.id, TypeError("factory did not pass the Link to a BrainActor"))
        # Waiting keeps start order meaningful: child i is up before child i+1 starts.
        if not state.started.wait(_timeout(spec.start_timeout)):
            link.mark_shutdown()
            ref.stop(block=False)
            raise ChildStartError(spec.id, TimeoutError(f"on_start took over {spec.start_timeout}s"))
        if state.start_error is not None:
            raise ChildStartError(spec.id, state.start_error)
        child.ref, child.running = ref, True

    def _start_with_retries(self, child: _Child) -> bool:
        """Start ``child``, retrying failed starts within the restart intensity.

        Returns False when a temporary child failed (it is dropped); raises SupervisorGaveUp
        (after stopping every child) when the intensity is exceeded.
        """
        while True:
            try:
                self._spawn(child)
                return True
            except ChildStartError as exc:
                logger.warning("%s: child %r failed to start: %r", self, child.spec.id, exc.cause)
                if child.spec.restart == "temporary":
                    self._children.remove(child)
                    return False
                self._count_restart(child, f"child {child.spec.id!r} could not be started: {exc.cause!r}")

    # --- exits and restarts ---

    def _child_exited(self, msg: ChildExited) -> None:
        child = self._find(msg.child_id)
        if self._stopping or child is None or child.generation != msg.generation or not child.running:
            # A stale generation, or a child we are stopping ourselves: never a restart.
            logger.debug("%s: ignoring %r", self, msg)
            return
        child.running, child.ref = False, None
        if not self._should_restart(child.spec.restart, msg.reason):
            logger.info("%s: child %r exited (%s), not restarted", self, msg.child_id, msg.reason)
            self._children.remove(child)
            return
        logger.warning(
            "%s: restarting child %r after %s exit: %r", self, msg.child_id, msg.reason, msg.error
        )
        self._count_restart(child, f"child {msg.child_id!r} exited ({msg.reason}): {msg.error!r}")
        if self.strategy == "rest_for_one" and not child.dynamic:
            index = self._children.index(child)
            rest = self._children[index + 1 :]
            for later in reversed(rest):
                self._shutdown(later)
            for later in rest:
                if later.spec.restart == "temporary":
                    self._children.remove(later)  # OTP: temporary siblings are not restarted
            to_start = self._children[index:]
        else:
            to_start = [child]
        for c in to_start:
            self._start_with_retries(c)

    @staticmethod
    def _should_restart(restart: RestartType, reason: ExitReason) -> bool:
        if restart == "permanent":
            return True
        if restart == "transient":
            return reason == "error"
        return False

    def _count_restart(self, child: _Child, why: str) -> None:
        """Count one restart; give up (raise SupervisorGaveUp) if the intensity is exceeded."""
        now = time.monotonic()
        self._restart_times.append(now)
        while self._restart_times and self._restart_times[0] < now - self.max_seconds:
            self._restart_times.popleft()
        if len(self._restart_times) > self.max_restarts:
            self._give_up(
                f"supervisor {self.name!r}: more than {self.max_restarts} restarts in "
                f"{self.max_seconds}s; last: {why}"
            )
        child.restarts += 1
        self._counter.add(restarts=1)

    def _give_up(self, reason: str) -> None:
        """Stop every child, then escalate to the parent (or call on_give_up at the root)."""
        self._counter.add(escalations=1)
        logger.error("%s: giving up: %s", self, reason)
        self._stopping = True
        self._shutdown_all()
        if self.link is None and self._on_give_up is not None:
            try:
                self._on_give_up(reason)
            except Exception:
                logger.exception("%s: on_give_up callback failed", self)
        # Raising ends this actor as a crash, so its Link reports "error" to the parent.
        raise SupervisorGaveUp(reason)

    # --- stopping ---

    def _shutdown_all(self) -> None:
        if self._stop_together:
            # Every stop is sent before any is awaited: closing hundreds of stores (a WAL
            # checkpoint each) overlaps instead of adding up.
            stopping = [(child, self._send_stop(child)) for child in reversed(self._children)]
            started = time.monotonic()
            for child, stop in stopping:
                if stop is not None:
                    timeout = child.spec.shutdown_timeout
                    self._await_stop(child, stop, timeout - (time.monotonic() - started))
        else:
            for child in reversed(self._children):
                self._shutdown(child)
        self._children.clear()

    def _shutdown(self, child: _Child) -> None:
        """Stop one child within its shutdown_timeout; abandon it (daemon thread) if it hangs."""
        stop = self._send_stop(child)
        if stop is not None:
            self._await_stop(child, stop, child.spec.shutdown_timeout)

    def _send_stop(self, child: _Child) -> tuple[pykka.ActorRef[Any], pykka.Future[bool]] | None:
        ref, link = child.ref, child.link
        child.running, child.ref = False, None
        if ref is None or link is None:
            return None
        link.mark_shutdown()
        return ref, ref.stop(block=False)

    def _await_stop(self, child: _Child, stop: tuple[pykka.ActorRef[Any], pykka.Future[bool]], timeout: float) -> None:
        ref, future = stop
        try:
            future.get(timeout=_timeout(max(timeout, 0.0)))
        except pykka.Timeout:
            if ref.is_alive():
                logger.warning(
                    "%s: child %r did not stop within %ss; abandoned",
                    self,
                    child.spec.id,
                    child.spec.shutdown_timeout,
                )

    def _find(self, child_id: str) -> _Child | None:
        for child in self._children:
            if child.spec.id == child_id:
                return child
        return None

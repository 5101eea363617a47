"""The actor base class every brain actor extends, and the link that ties it to its supervisor.

Pykka has no supervision, so `BrainActor` turns each way an actor can end into exactly one
`ChildExited` message to its supervisor:

- ``on_start`` raises                -> "error"    (pykka stops the actor; on_stop/on_failure do not run)
- a *tell* handler raises            -> "error"    (pykka runs ``on_failure``, not on_stop)
- ``on_failure`` or ``on_stop`` raises -> "error"
- ``stop()`` / ``ActorRef.stop()``   -> "normal"   (on_stop runs)
- its supervisor stops it            -> "shutdown" (on_stop runs)

An exception raised while answering an *ask* goes back to the caller and the actor lives on;
that is not an exit.

Subclasses override the ordinary pykka hooks (``on_start``, ``on_receive``, ``on_stop``,
``on_failure``) and need not call ``super()`` in them: the bookkeeping lives in pykka's internal
``_actor_loop``/``_actor_loop_setup``/``_handle_failure``/``_handle_receive``, which subclasses
must leave alone. Clean-up that must run on every exit belongs in both ``on_stop`` and
``on_failure`` (and, for partial set-up, in ``on_start``'s own ``try``).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import pykka
from pykka import ActorDeadError

from brain.errors import StorageFault

if TYPE_CHECKING:
    from types import TracebackType

__all__ = [
    "BrainActor",
    "CallbackFuture",
    "ChildExited",
    "ExitReason",
    "Link",
    "ScheduledCall",
]

logger = logging.getLogger("brain.actors")

ExitReason = Literal["normal", "error", "shutdown"]

# After an actor's thread ends, its inbox is drained once more this much later: pykka's ask()
# checks is_alive() and then enqueues, so an ask racing the actor's death can land in an inbox
# nobody reads and leave its caller (an HTTP handler awaiting the bridge) waiting forever.
_LATE_DRAIN_DELAY_S = 0.5


@dataclass(frozen=True)
class ChildExited:
    """Tell sent to a supervisor when one generation of a child has ended."""

    child_id: str
    generation: int
    reason: ExitReason
    error: BaseException | None


class _LinkState:
    """Coordination shared by a supervisor and one generation of a child (thread-safe)."""

    __slots__ = ("claimed", "started", "start_error", "shutdown", "parent_counter")

    def __init__(self, parent_counter: Any = None) -> None:
        self.claimed = threading.Event()  # the actor's constructor received this link
        self.started = threading.Event()  # on_start has returned or raised
        self.start_error: BaseException | None = None
        self.shutdown = threading.Event()  # the supervisor is stopping this child
        self.parent_counter = parent_counter  # lets a child supervisor count into its parent


@dataclass(frozen=True)
class Link:
    """Frozen handle a supervisor gives one generation of a child, to report its exit."""

    supervisor_ref: pykka.ActorRef[Any]
    child_id: str
    generation: int
    _state: _LinkState = field(default_factory=_LinkState, compare=False, repr=False)

    def notify_exit(self, reason: ExitReason, error: BaseException | None) -> None:
        """Tell the supervisor this child has ended (a no-op if the supervisor is gone)."""
        try:
            self.supervisor_ref.tell(ChildExited(self.child_id, self.generation, reason, error))
        except ActorDeadError:
            # A supervisor that is gone is stopping its children anyway; nobody to tell.
            pass

    def mark_shutdown(self) -> None:
        """Record that the supervisor, not the child, is ending this child (reason "shutdown")."""
        self._state.shutdown.set()


class CallbackFuture(pykka.ThreadingFuture[Any]):
    """A pykka future that can call back on completion, so asyncio can await it without a thread."""

    def __init__(self) -> None:
        super().__init__()
        # None once the callbacks have been run: later ones run at once in the adding thread.
        self._callbacks: list[Callable[[CallbackFuture], None]] | None = []

    @property
    def is_lazy(self) -> bool:
        """True for futures computed on get() (map/join/filter/reduce, ActorRef.stop)."""
        return self._get_hook is not None

    def add_done_callback(self, fn: Callable[[CallbackFuture], None]) -> None:
        """Call ``fn(self)`` once a value or exception is set; at once if it already is."""
        with self._condition:
            if self._get_hook is not None:
                raise TypeError("a lazy future has no completion event; call get() in a thread")
            if self._callbacks is not None:
                self._callbacks.append(fn)
                return
        fn(self)

    def set(self, value: Any | None = None) -> None:
        """Set the value, then run the callbacks in the setting thread."""
        super().set(value)
        self._run_callbacks()

    def set_exception(self, exc_info: Any = None) -> None:
        """Set an exception, then run the callbacks in the setting thread."""
        # sys.exc_info() still names the exception being handled inside this call.
        super().set_exception(exc_info)
        self._run_callbacks()

    def _run_callbacks(self) -> None:
        # Run outside the condition so a callback may call get() or add further callbacks.
        with self._condition:
            callbacks, self._callbacks = self._callbacks, None
        for fn in callbacks or ():
            try:
                fn(self)
            except Exception:
                logger.exception("future callback %r failed", fn)


class ScheduledCall:
    """Handle for one delayed delivery; ``cancel()`` stops it if it has not fired."""

    __slots__ = ("deadline", "owner", "action", "cancelled")

    def __init__(self, deadline: float, owner: str | None, action: Callable[[], None]) -> None:
        self.deadline = deadline
        self.owner = owner
        self.action: Callable[[], None] | None = action
        self.cancelled = False

    def cancel(self) -> None:
        """Drop the delivery; harmless if it already fired or was cancelled."""
        _scheduler.cancel(self)


class _Scheduler:
    """One daemon thread that fires every actor's delayed messages (not a timer per actor)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, ScheduledCall]] = []
        self._seq = itertools.count()
        self._by_owner: dict[str, set[ScheduledCall]] = {}
        self._cancelled_in_heap = 0
        self._thread: threading.Thread | None = None

    def call_later(self, delay_s: float, action: Callable[[], None], owner: str | None) -> ScheduledCall:
        call = ScheduledCall(time.monotonic() + max(0.0, delay_s), owner, action)
        with self._cond:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="brain-scheduler", daemon=True)
                self._thread.start()
            heapq.heappush(self._heap, (call.deadline, next(self._seq), call))
            if owner is not None:
                self._by_owner.setdefault(owner, set()).add(call)
            # Wake the thread only if this call is now the earliest one.
            if self._heap[0][2] is call:
                self._cond.notify()
        return call

    def cancel(self, call: ScheduledCall) -> None:
        with self._cond:
            self._cancel_locked(call)

    def cancel_owner(self, owner: str) -> None:
        with self._cond:
            for call in self._by_owner.pop(owner, ()):
                self._cancel_locked(call)

    def _cancel_locked(self, call: ScheduledCall) -> None:
        if call.cancelled or call.action is None:
            return
        call.cancelled = True
        call.action = None  # drop the actor ref and message now; the heap entry goes lazily
        self._cancelled_in_heap += 1
        if call.owner is not None:
            calls = self._by_owner.get(call.owner)
            if calls is not None:
                calls.discard(call)
                if not calls:
                    del self._by_owner[call.owner]
        # Periodic timers of stopped actors must not pile up in the heap until their deadline.
        if self._cancelled_in_heap > 64 and self._cancelled_in_heap > len(self._heap) // 2:
            self._heap = [entry for entry in self._heap if not entry[2].cancelled]
            heapq.heapify(self._heap)
            self._cancelled_in_heap = 0

    def _run(self) -> None:
        while True:
            due: list[Callable[[], None]] = []
            with self._cond:
                while not due:
                    now = time.monotonic()
                    while self._heap and self._heap[0][0] <= now:
                        _, _, call = heapq.heappop(self._heap)
                        if call.cancelled:
                            self._cancelled_in_heap -= 1
                            continue
                        if call.action is not None:
                            due.append(call.action)
                            call.action = None
                        if call.owner is not None:
                            calls = self._by_owner.get(call.owner)
                            if calls is not None:
                                calls.discard(call)
                                if not calls:
                                    del self._by_owner[call.owner]
                    if not due:
                        self._cond.wait(self._heap[0][0] - now if self._heap else None)
            for action in due:
                try:
                    action()
                except Exception:
                    logger.exception("scheduled action failed")


_scheduler = _Scheduler()


def _tell_quietly(ref: pykka.ActorRef[Any], message: object) -> None:
    try:
        ref.tell(message)
    except ActorDeadError:
        pass  # the actor stopped after the timer was armed: the delivery is simply dropped


def _drain_dead_inbox(actor: pykka.Actor) -> None:
    """Answer asks that raced the actor's death with ActorDeadError instead of silence."""
    actor._actor_loop_teardown()  # noqa: SLF001 - pykka's own drain, run once more


class BrainActor(pykka.ThreadingActor):
    """Base for every brain actor: reports its exit to its supervisor and runs periodic work."""

    # A hung actor must never keep the process alive at shutdown.
    use_daemon_thread = True

    def __init__(self, *, link: Link | None = None) -> None:
        super().__init__()
        self._link = link
        self._exit_error: BaseException | None = None
        if link is not None:
            link._state.claimed.set()

    @property
    def link(self) -> Link | None:
        """The link to this actor's supervisor, if it has one."""
        return self._link

    @staticmethod
    def _create_actor_inbox() -> queue.SimpleQueue[Any]:
        # pykka uses only put/get/empty; the C SimpleQueue costs a fraction of queue.Queue's
        # Python-level locking per message.
        return queue.SimpleQueue()

    @staticmethod
    def _create_future() -> pykka.Future[Any]:
        # Asks to a BrainActor get futures that brain.actors.bridge can resolve without a thread.
        return CallbackFuture()

    def schedule(self, delay_s: float, message: object) -> ScheduledCall:
        """Tell ``message`` to this actor after ``delay_s`` seconds; dropped once it has stopped."""
        ref = self.actor_ref
        return _scheduler.call_later(delay_s, lambda: _tell_quietly(ref, message), self.actor_urn)

    # --- pykka internals: the exit bookkeeping lives here so subclass hooks need no super() ---

    def _actor_loop_setup(self) -> None:
        super()._actor_loop_setup()
        if self._link is not None:
            self._link._state.start_error = self._exit_error
            self._link._state.started.set()

    def _handle_receive(self, message: Any) -> Any:
        try:
            return super()._handle_receive(message)
        except Exception:
            raise
        except BaseException as exc:
            # pykka stops this actor (and all others) without calling _handle_failure.
            if self._exit_error is None:
                self._exit_error = exc
            raise

    def _handle_failure(
        self,
        exception_type: type[BaseException] | None,
        exception_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        # pykka calls this for on_start, tell-handler, on_failure and on_stop errors; the
        # first one is the cause worth reporting.
        if self._exit_error is None:
            self._exit_error = exception_value or (exception_type() if exception_type else None)
        if isinstance(exception_value, StorageFault):
            # Counted and logged, with what to do, where it was met (brain.storage): no traceback.
            pykka.ActorRegistry.unregister(self.actor_ref)
            self.actor_stopped.set()
            return
        super()._handle_failure(exception_type, exception_value, traceback)

    def _actor_loop(self) -> None:
        try:
            super()._actor_loop()
        finally:
            self._finish()

    def _finish(self) -> None:
        """Run once in the actor's thread after its last hook: cancel timers, report the exit."""
        _scheduler.cancel_owner(self.actor_urn)
        reason, error = self._exit_reason()
        try:
            self._on_exit(reason, error)
        except Exception:
            logger.exception("%s: exit clean-up failed", self)
        if self._link is not None:
            self._link.notify_exit(reason, error)
        _scheduler.call_later(_LATE_DRAIN_DELAY_S, lambda: _drain_dead_inbox(self), None)

    def _exit_reason(self) -> tuple[ExitReason, BaseException | None]:
        if self._exit_error is not None:
            return "error", self._exit_error
        if self._link is not None and self._link._state.shutdown.is_set():
            return "shutdown", None
        return "normal", None

    def _on_exit(self, reason: ExitReason, error: BaseException | None) -> None:
        """Internal hook for brain's own subclasses (Supervisor): runs on every exit."""

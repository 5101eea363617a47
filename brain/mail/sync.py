"""The `MailSync` actor: one per connected account, under the mail supervisor.

All periodic work is a tell the actor sends itself (`BrainActor.schedule`), one page per
message, so the actor stays responsive between pages (a stop request waits for at most one
page) and never runs two syncs of its account at once: a sync requested while one runs is
remembered and started when it ends.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from brain.actors.base import BrainActor, Link, ScheduledCall
from brain.mail.engine import AccountSync, Outcome

if TYPE_CHECKING:
    from brain.mail.service import MailService

__all__ = ["MailSync", "SyncNow"]

log = logging.getLogger("brain.mail")

# After an unexpected failure of the actor's own code, try again this much later.
_RECOVER_SECONDS = 30.0


@dataclass(frozen=True)
class SyncNow:
    """Start a sync at once (or right after the running one); ``reconnect`` reloads credentials."""

    reason: str = ""
    reconnect: bool = False


@dataclass(frozen=True)
class _Step:
    run: int


class MailSync(BrainActor):
    """Syncs one mail account: initial, then incremental on an interval."""

    def __init__(self, *, service: MailService, account_id: str, link: Link | None = None) -> None:
        super().__init__(link=link)
        self.service = service
        self.account_id = account_id
        self._engine: AccountSync | None = None
        self._run = 0
        self._running = False
        self._again = False
        self._timer: ScheduledCall | None = None
        self._retry: ScheduledCall | None = None

    def __str__(self) -> str:
        return f"MailSync {self.account_id}"

    def on_start(self) -> None:
        """Sync as soon as the actor is up (connect, or resuming after a restart)."""
        self.actor_ref.tell(SyncNow("start"))

    def on_receive(self, message: Any) -> Any:
        """Handle SyncNow and the actor's own step messages."""
        try:
            if isinstance(message, SyncNow):
                self._sync_now(message)
            elif isinstance(message, _Step):
                if message.run == self._run and self._running:
                    self._retry = None
                    self._step()
            else:
                return super().on_receive(message)
        except Exception:
            # A crash would be restarted at once and crash again; one account in a loop like
            # that would exhaust the mail supervisor's restart intensity for every account.
            log.exception("mail account %s: unexpected failure; retrying later", self.account_id)
            self._close()
            self._running = False
            self._retry = None
            self._timer = self.schedule(_RECOVER_SECONDS, SyncNow("recover"))
        return None

    def on_stop(self) -> None:
        """Release the provider's clients."""
        self._close()

    def on_failure(self, *_exc: Any) -> None:
        """Release the provider's clients after a crash too."""
        self._close()

    # ---------------------------------------------------------------------------------

    def _sync_now(self, message: SyncNow) -> None:
        if message.reconnect:
            self._close()  # the next step builds a fresh engine from the stored credentials
        if self._running:
            if self._retry is not None and message.reconnect:
                # New credentials make the backoff moot; anything else (an interval, a push
                # wake-up) must not cut a Retry-After short, so it just queues a run.
                self._retry.cancel()
                self._retry = None
                self.actor_ref.tell(_Step(self._run))
            else:
                self._again = True
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        engine = self._get_engine()
        delay = engine.begin_run() if engine is not None else None
        if delay is None:
            self.stop()
            return
        self._running = True
        self._run += 1
        if delay > 0:
            self._retry = self.schedule(delay, _Step(self._run))
        else:
            self.actor_ref.tell(_Step(self._run))

    def _step(self) -> None:
        engine = self._get_engine()
        if engine is None:
            self.stop()
            return
        outcome: Outcome = engine.step()
        if outcome.kind == "more":
            self.actor_ref.tell(_Step(self._run))
        elif outcome.kind == "retry":
            self._retry = self.schedule(outcome.delay, _Step(self._run))
        elif outcome.kind == "done":
            self._running = False
            if self._again:
                self._again = False
                self._sync_now(SyncNow("queued"))
            else:
                push, started = engine.maintain_push(self.service.push_url(engine.provider.name))
                if started:
                    self._timer = self.schedule(0, SyncNow("push started"))  # what changed meanwhile
                else:
                    self._timer = self.schedule(engine.next_poll(push=push), SyncNow("poll"))
        else:
            log.info("mail account %s: sync stopped (%s)", self.account_id, outcome.reason)
            self.stop()

    def _get_engine(self) -> AccountSync | None:
        if self._engine is None:
            self._engine = self.service.engine_for(self.account_id)  # None: nothing to sync
            if self._engine is not None:
                self._engine.ctx.wake = _waker(self.actor_ref)
        return self._engine

    def _close(self) -> None:
        engine, self._engine = self._engine, None
        if engine is not None:
            try:
                engine.close()
            except Exception:
                log.exception("mail account %s: closing the provider failed", self.account_id)


def _waker(ref: Any) -> Callable[[str], None]:
    """``SyncContext.wake`` for one actor: a tell, so any thread may call it."""

    def wake(reason: str) -> None:
        ref.tell(SyncNow(f"push: {reason}"))  # ActorDeadError once the actor has stopped

    return wake

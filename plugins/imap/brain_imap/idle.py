"""IDLE on INBOX: a thread with its own connection that asks the core for a sync whenever the
server reports a change, so new mail shows up within seconds instead of at the next poll.

The watcher never syncs itself: it only calls ``wake(reason)``, which tells the account's
actor to run (or queue) an incremental sync; the actor keeps its one-sync-at-a-time rule.
It wakes the actor once after every (re)connect too, because changes may have happened while
it was not listening. Connection loss (a server restart) is retried with backoff until
``stop()``.
"""

from __future__ import annotations

import contextlib
import logging
import random
import socket
import threading
import time
from collections.abc import Callable

from brain.mail.provider import AuthFailed, ProviderError
from brain_imap.session import Session

__all__ = ["IdleWatcher"]

log = logging.getLogger("brain.mail.imap")

# How long one idle_check waits: also how quickly stop() is noticed.
_CHECK_SECONDS = 0.5


class IdleWatcher:
    """One IDLE connection on one folder, in a daemon thread."""

    def __init__(
        self,
        open_session: Callable[[], Session],
        wake: Callable[[str], None],
        *,
        folder: str = "INBOX",
        refresh_seconds: float = 1500.0,
        max_backoff_seconds: float = 60.0,
        name: str = "imap-idle",
    ) -> None:
        self._open = open_session
        self._wake = wake
        self.folder = folder
        # RFC 2177: re-issue IDLE at least every 29 minutes or the server may drop us.
        self.refresh_seconds = refresh_seconds
        self.max_backoff_seconds = max_backoff_seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._session: Session | None = None
        self.connects = 0
        self.wakes = 0

    def start(self) -> IdleWatcher:
        """Start the thread."""
        self._thread.start()
        return self

    @property
    def alive(self) -> bool:
        """Whether the thread is still running."""
        return self._thread.is_alive()

    def stop(self, timeout: float = 5.0) -> None:
        """End the thread (waits up to ``timeout``): its connection is cut, not logged out."""
        self._stop.set()
        session = self._session
        if session is not None and session.client is not None:
            # Wakes the thread's poll at once: a server with hundreds of IDLE accounts must not
            # hold up shutdown by half a second each. The server just sees the connection close.
            with contextlib.suppress(OSError):
                session.client.socket().shutdown(socket.SHUT_RDWR)
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    # ---------------------------------------------------------------------------------

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                self._session = self._open()
                self._session.select(self.folder)
                self.connects += 1
                failures = 0
                if not self._notify("idle-connected"):
                    break
                self._idle_loop(self._session)
            except AuthFailed as exc:
                # The sync will find out too and stop the account (needs_reauth), stopping us.
                log.info("IDLE on %s: login refused: %s", self.folder, exc)
                self._notify("idle-auth-failed")
                failures += 1
            except (ProviderError, Exception) as exc:  # noqa: BLE001 - the watcher must outlive any error
                failures += 1
                log.info("IDLE on %s lost its connection (%s); reconnecting", self.folder, exc)
            finally:
                session, self._session = self._session, None
                if session is not None:
                    session.close()
            if failures and not self._stop.is_set():
                ceiling = min(self.max_backoff_seconds, 0.5 * 2 ** min(failures - 1, 10))
                self._stop.wait(ceiling / 2 + random.uniform(0, ceiling / 2))

    def _idle_loop(self, session: Session) -> None:
        """IDLE until stopped or the connection breaks (which raises)."""
        while not self._stop.is_set():
            session.run("IDLE", lambda c: c.idle())
            started = time.monotonic()
            changed = False
            while not self._stop.is_set() and time.monotonic() - started < self.refresh_seconds:
                before = time.monotonic()
                responses = session.run("IDLE check", lambda c: c.idle_check(timeout=_CHECK_SECONDS))
                if any(_is_change(r) for r in responses):
                    changed = True
                    break
                if not responses and time.monotonic() - before < _CHECK_SECONDS / 2:
                    # Readable but nothing parsed: imapclient swallows EOF there. DONE tells.
                    break
            # DONE on a dead connection raises, which ends this session and reconnects.
            session.run("IDLE done", lambda c: c.idle_done())
            if changed and not self._notify("idle"):
                return

    def _notify(self, reason: str) -> bool:
        """Tell the core to sync; False (and stop) once nobody listens any more."""
        try:
            self._wake(reason)
        except Exception as exc:  # noqa: BLE001 - the actor is gone: so is our purpose
            log.info("IDLE on %s: nobody to wake (%s); stopping", self.folder, exc)
            self._stop.set()
            return False
        self.wakes += 1
        return True


def _is_change(response: object) -> bool:
    """EXISTS, EXPUNGE, FETCH (flags) or VANISHED; not the server's "still here" OKs."""
    if not isinstance(response, tuple) or not response:
        return False
    if response[0] in (b"OK", b"NO", b"BAD"):
        return False
    return True

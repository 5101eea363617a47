"""What the auth role's handlers share: settings, the key-ring snapshot, the hash pool, limits,
and the way to reach the AuthIssuer actor."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pykka

from brain.actors import bridge
from brain.auth import keys
from brain.auth.db import open_db
from brain.auth.passwords import Passwords
from brain.ratelimit import shared_limit
from brain.errors import ServiceUnavailable
from brain.process import Process
from brain.stash import StashKey
from brain.storage import storage_faults

log = logging.getLogger("brain.auth")

ISSUER_PATH = "auth_sup/auth_issuer"
# An ask that takes longer than this means the issuer is wedged: tell the client to retry.
ASK_TIMEOUT_S = 10.0


class AuthContext:
    """Per-process state of the auth role (one per process, in its stash)."""

    def __init__(self, rt: Process) -> None:
        self.rt = rt
        self.settings = rt.settings
        self.auth = rt.settings.auth
        self.secret = rt.secret
        self.aead = keys.sealing_key(rt.secret)
        self.db = open_db(rt.settings.data_path / "auth.db")
        self.db.watch(storage_faults(rt))
        self.passwords = Passwords(self.auth)
        max_keys = self.auth.rate_limit_max_keys
        # Keyed by client_block(ip): an IPv6 client is limited per /64.
        self.ip_limiter = shared_limit(rt, "auth.ip", self.auth.rate_limit_ip_per_minute, 60.0, max_keys=max_keys)
        self.account_failures = shared_limit(
            rt, "auth.account_failures", self.auth.rate_limit_account_failures,
            float(self.auth.rate_limit_account_window_seconds), max_keys=max_keys,
        )
        # Swapped in whole by the AuthIssuer (one reference assignment); never mutated.
        self.ring: keys.KeyRing | None = None
        self._issuer: tuple[pykka.ActorRef[Any], Any] | None = None
        self._background: set[asyncio.Future[Any]] = set()

    def publish_ring(self, ring: keys.KeyRing) -> None:
        """Called from the actor's thread with a new snapshot."""
        self.ring = ring
        log.info("key ring published: %s (signing: %s)", ", ".join(sorted(ring.published)), ring.signer().kid)

    def current_ring(self) -> keys.KeyRing:
        """The key ring snapshot, or 503 while the issuer has not published one."""
        ring = self.ring
        if ring is None:
            raise ServiceUnavailable("the auth issuer is starting")
        return ring

    async def issuer(self, method: str, **kwargs: Any) -> Any:
        """Ask the AuthIssuer (looked up once per actor generation) and await its reply."""
        for attempt in range(2):
            try:
                cached = self._issuer
                if cached is None or not cached[0].is_alive():
                    ref = await self.rt.alookup(ISSUER_PATH)
                    if ref is None:
                        raise ServiceUnavailable("the auth issuer is not running")
                    cached = self._issuer = (ref, ref.proxy())  # proxy() too raises if it died just now
                return await bridge.ask(lambda: getattr(cached[1], method)(**kwargs), timeout=ASK_TIMEOUT_S)
            except pykka.ActorDeadError:
                # It died between lookup and ask (a restart): look up its successor once.
                self._issuer = None
                if attempt:
                    raise ServiceUnavailable("the auth issuer is restarting") from None
            except TimeoutError:
                raise ServiceUnavailable("the auth issuer did not answer in time") from None
        raise AssertionError("unreachable")  # pragma: no cover

    def in_background(self, fut: asyncio.Future[Any], what: str) -> None:
        """Keep a fire-and-forget future alive and log its failure."""
        self._background.add(fut)

        def done(f: asyncio.Future[Any]) -> None:
            self._background.discard(f)
            if not f.cancelled() and f.exception() is not None:
                log.error("%s failed", what, exc_info=f.exception())

        fut.add_done_callback(done)

    def close(self) -> None:
        """Stop the hash pool."""
        self.passwords.close()


_CONTEXT: StashKey[AuthContext] = StashKey("brain.auth.context")


def context_for(rt: Process) -> AuthContext:
    """The process's AuthContext, created on first use (it opens auth.db)."""
    return rt.stash.setdefault(_CONTEXT, lambda: AuthContext(rt))

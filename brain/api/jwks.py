"""The API role's copy of the issuer's public keys.

The `JwksCache` actor fetches the issuer's JWKS over HTTP from its own thread (even when both
roles share a process, so a split deployment behaves the same) and publishes each good result
as an immutable `KeySnapshot` on the shared `JwksState`. Request handling only ever reads
`state.snapshot` (one attribute load): it never waits for a fetch and never asks the actor.

Schedule: at start-up, fetch with backoff until the first success (the API answers 503 until
then); afterwards every `jwks_refresh_seconds` with +-10% jitter; after a failed refresh, retry
with backoff while keeping the last good keys, until they are older than
`jwks_max_staleness_seconds`. An unknown `kid` asks for one shared refetch, at most one per
`jwks_refetch_min_interval` however many unknown kids arrive (`JwksState.request_refetch`).
"""

from __future__ import annotations

import email.utils
import functools
import hashlib
import http.client
import json
import logging
import random
import ssl
import threading
import time
import types
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pykka
from cryptography import x509
from cryptography.hazmat.primitives import serialization

import brain
from brain.redact import redact_text, redact_url
from brain.actors.base import BrainActor, Link, ScheduledCall
from brain.jwk import VerifyKey, parse_jwks
from brain.errors import ConfigError

if TYPE_CHECKING:
    from brain.config import Settings

log = logging.getLogger("brain.api.jwks")

MAX_JWKS_BYTES = 1_048_576

@dataclass(frozen=True)
class KeySnapshot:
    """The keys of one successful fetch; never changed after it is published."""

    keys: Mapping[str, VerifyKey]
    fetched_at: float  # time.time() of the fetch


class IssuerClock:
    """The issuer's clock as this process last saw it, carried forward on the monotonic clock.

    Each JWKS fetch brings the issuer's `Date` header; from then on its time is that plus the
    monotonic time since, which no step of this machine's wall clock moves. Tokens are judged
    by it as well as by the local clock (brain.api.verifier): so a fresh token is not "issued
    in the future" because this machine's clock stepped back or runs behind the issuer's.
    """

    def __init__(self) -> None:
        self._seen: tuple[float, float] | None = None  # (issuer epoch seconds, monotonic then)

    def observe(self, issuer_time: float) -> None:
        """The issuer said it is `issuer_time` (epoch seconds) just now."""
        self._seen = (issuer_time, time.monotonic())

    def now(self) -> float | None:
        """The issuer's time now, as far as it can be told (None: never seen)."""
        seen = self._seen
        return None if seen is None else seen[0] + (time.monotonic() - seen[1])


def date_header(value: str | None) -> float | None:
    """An HTTP `Date` header as epoch seconds (the middle of its second), or None."""
    if not value:
        return None
    try:
        return email.utils.parsedate_to_datetime(value).timestamp() + 0.5
    except (TypeError, ValueError, IndexError):
        return None


@dataclass
class JwksState:
    """What the JwksCache actor shares with request handling; outlives actor restarts."""

    url: str
    refetch_min_interval: float
    max_staleness: float
    snapshot: KeySnapshot | None = None
    # Counters for /health. Written by one thread each (the actor, or the event loop);
    # a torn read of an int is impossible in CPython, so no lock is needed to read them.
    fetches: int = 0
    failures: int = 0
    consecutive_failures: int = 0
    refetches: int = 0
    hits: int = 0
    misses: int = 0
    skipped_keys: list[str] = field(default_factory=list)
    last_error: str | None = None
    last_attempt_at: float | None = None
    actor_ref: pykka.ActorRef[Any] | None = None
    issuer_clock: IssuerClock = field(default_factory=IssuerClock)
    _last_refetch: float = float("-inf")
    _refetch_lock: threading.Lock = field(default_factory=threading.Lock)

    def current(self, now: float) -> KeySnapshot | None:
        """The keys to verify with, or None when there are none or they are too stale."""
        snap = self.snapshot
        if snap is None or now - snap.fetched_at > self.max_staleness:
            return None
        return snap

    @property
    def shown_url(self) -> str:
        """The JWKS URL as logs and /health show it (credentials masked)."""
        return redact_url(self.url)

    def request_refetch(self) -> bool:
        """Ask for one refetch (an unknown kid arrived); rate-limited, never blocks."""
        now = time.monotonic()
        with self._refetch_lock:
            if now - self._last_refetch < self.refetch_min_interval:
                return False
            self._last_refetch = now
            self.refetches += 1
        ref = self.actor_ref
        if ref is not None:
            try:
                ref.tell(_Fetch("unknown kid"))
            except pykka.ActorDeadError:
                pass  # a restarting cache fetches on start anyway
        return True

    def stats(self) -> dict[str, Any]:
        """JSON-able figures for /health."""
        snap = self.snapshot
        now = time.time()
        age = None if snap is None else round(now - snap.fetched_at, 3)
        return {
            "url": self.shown_url,
            "loaded": snap is not None,
            "keys": 0 if snap is None else len(snap.keys),
            "kids": [] if snap is None else sorted(snap.keys),
            "last_refresh": None if snap is None else _iso(snap.fetched_at),
            "age_seconds": age,
            "stale": snap is not None and self.consecutive_failures > 0,
            "expired": snap is not None and age is not None and age > self.max_staleness,
            "hits": self.hits,
            "misses": self.misses,
            "fetches": self.fetches,
            "refetches": self.refetches,
            "failures": self.failures,
            "skipped_keys": list(self.skipped_keys),
            "last_error": self.last_error,
        }


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


@dataclass(frozen=True)
class _Fetch:
    reason: str


# TLS trust of the fetch ---------------------------------------------------------------------


def jwks_opener(settings: Settings) -> urllib.request.OpenerDirector:
    """The opener for JWKS fetches: no proxy; TLS trust as `api.jwks_ca_file` or the local cert says.

    With `api.jwks_ca_file`, that bundle (and the URL's host name) is checked. When this process
    runs both roles with TLS and fetches from its own auth role (no `api.auth_server_url`),
    exactly the certificate it serves (`server.tls_cert`) is accepted: it may be self-signed, or
    name a public host rather than the loopback address the fetch goes to. Otherwise: system CAs.
    """
    # No proxy from the environment: the issuer is a service next to us, not the web.
    handlers: list[urllib.request.BaseHandler] = [urllib.request.ProxyHandler({})]
    if settings.api.jwks_ca_file:
        try:
            context = ssl.create_default_context(cafile=settings.api.jwks_ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"api.jwks_ca_file: cannot load {settings.api.jwks_ca_file!r}: {exc}") from None
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        handlers.append(urllib.request.HTTPSHandler(context=context))
    elif settings.tls and {"auth", "api"} <= set(settings.server.roles) and not settings.api.auth_server_url:
        handlers.append(_PinnedHTTPSHandler(_leaf_digest(settings.server.tls_cert)))
    return urllib.request.build_opener(*handlers)


def _leaf_digest(cert_file: str) -> bytes:
    """SHA-256 of the first (leaf) certificate in a PEM file, in DER form."""
    try:
        with open(cert_file, "rb") as fh:
            leaf = x509.load_pem_x509_certificates(fh.read())[0]
    except (OSError, ValueError, IndexError) as exc:
        raise ConfigError(f"server.tls_cert: cannot read a certificate from {cert_file!r}: {exc}") from None
    return hashlib.sha256(leaf.public_bytes(serialization.Encoding.DER)).digest()


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """An https connection that accepts only the certificate whose DER digest it was given."""

    def __init__(self, *args: Any, pin: bytes, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._pin = pin

    def connect(self) -> None:
        super().connect()
        der = self.sock.getpeercert(binary_form=True)  # type: ignore[union-attr]
        if der is None or hashlib.sha256(der).digest() != self._pin:
            self.close()
            raise ssl.SSLCertVerificationError("the auth role presented a certificate other than server.tls_cert")


class _PinnedHTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, pin: bytes) -> None:
        # The pin replaces chain and host-name checks; TLS itself stays modern.
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        super().__init__(context=context)
        self._pin = pin

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(functools.partial(_PinnedHTTPSConnection, pin=self._pin), req, context=self._context)  # type: ignore[attr-defined,return-value]


class JwksCache(BrainActor):
    """Fetches and refreshes the issuer's JWKS; publishes snapshots on its JwksState."""

    def __init__(
        self,
        *,
        link: Link | None = None,
        state: JwksState,
        refresh_seconds: float,
        fetch_timeout: float,
        opener: urllib.request.OpenerDirector | None = None,
    ) -> None:
        super().__init__(link=link)
        self.state = state
        self.refresh_seconds = refresh_seconds
        self.fetch_timeout = fetch_timeout
        self._timer: ScheduledCall | None = None
        self._backoff = 0.0
        self._started = time.monotonic()
        self._warned = False
        # `jwks_opener(settings)` in a server; tests may hand in none (plain, no proxy).
        self._opener = opener or urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def on_start(self) -> None:
        self.state.actor_ref = self.actor_ref
        # The first fetch runs as a message, not here: a local auth role starts serving only
        # after the whole tree is up, and the supervisor must not wait for the issuer.
        self.actor_ref.tell(_Fetch("start"))

    def on_stop(self) -> None:
        self._detach()

    def on_failure(self, *exc_info: object) -> None:
        self._detach()

    def _detach(self) -> None:
        if self.state.actor_ref is self.actor_ref:
            self.state.actor_ref = None
        if self._timer is not None:
            self._timer.cancel()

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, _Fetch):
            self._fetch(message.reason)
            return None
        return super().on_receive(message)

    def _fetch(self, reason: str) -> bool:
        state = self.state
        state.last_attempt_at = time.time()
        try:
            doc = self._get_json()
            keys, skipped = parse_jwks(doc)
            if not keys:
                raise ValueError("the JWKS has no usable key" + (f" ({'; '.join(skipped)})" if skipped else ""))
        except Exception as exc:  # noqa: BLE001 - any failure keeps the last good keys
            state.failures += 1
            state.consecutive_failures += 1
            state.last_error = redact_text(f"{type(exc).__name__}: {exc}")[:300]
            first = self._backoff == 0.0
            # Without keys the API cannot answer: retry at least every second. (A local auth
            # role only starts serving after the tree is up, so the first tries always fail.)
            ceiling = 1.0 if state.snapshot is None else 30.0
            self._backoff = 0.2 if first else min(self._backoff * 2, ceiling)
            waiting = time.monotonic() - self._started
            if state.snapshot is None and waiting < 10:
                level = logging.DEBUG
            elif state.snapshot is None and not self._warned:
                self._warned = True  # once: still no keys after 10 s
                level = logging.WARNING
            elif state.consecutive_failures in (1, 10) or state.consecutive_failures % 100 == 0:
                level = logging.WARNING
            else:
                level = logging.DEBUG
            log.log(level, "JWKS fetch from %s failed (%s): %s; retry in %.1fs", state.shown_url, reason, state.last_error,
                    self._backoff)
            self._arm(min(self._backoff, self.refresh_seconds))
            return False
        previous = state.snapshot
        state.snapshot = KeySnapshot(keys=types.MappingProxyType(keys), fetched_at=time.time())
        state.fetches += 1
        state.consecutive_failures = 0
        state.last_error = None
        state.skipped_keys = skipped
        self._backoff = 0.0
        if skipped:
            log.warning("JWKS from %s: skipped %d malformed key(s): %s", state.shown_url, len(skipped), "; ".join(skipped))
        if previous is None or set(previous.keys) != set(keys):
            log.info("JWKS from %s (%s): %d key(s): %s", state.shown_url, reason, len(keys), ", ".join(sorted(keys)))
        self._arm(self.refresh_seconds * random.uniform(0.9, 1.1))
        return True

    def _arm(self, delay: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self.schedule(delay, _Fetch("refresh"))

    def _get_json(self) -> Any:
        request = urllib.request.Request(
            self.state.url, headers={"Accept": "application/json", "User-Agent": f"brain/{brain.__version__}"}
        )
        try:
            with self._opener.open(request, timeout=self.fetch_timeout) as resp:
                body = resp.read(MAX_JWKS_BYTES + 1)
                issuer_time = date_header(resp.headers.get("Date"))
        except urllib.error.HTTPError as exc:
            raise ValueError(f"HTTP {exc.code} from the issuer") from None
        if len(body) > MAX_JWKS_BYTES:
            raise ValueError(f"JWKS larger than {MAX_JWKS_BYTES} bytes")
        doc = json.loads(body)
        if issuer_time is not None:
            self.state.issuer_clock.observe(issuer_time)
        return doc

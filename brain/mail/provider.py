"""The mail provider contract: the abstract base class a plugin fills in, and the typed errors
the core maps to account states.

A provider is registered through the `register_mail_providers(register)` hook and knows only
how to talk to one mail service: connect (an OAuth authorize URL and code exchange, or
credentials handed over directly), refresh credentials, and page through a mailbox — a
resumable initial sync and an incremental sync from a cursor. Everything else (the per-account
actor, checkpoints, backoff, quota pacing, account states, turning messages into events,
idempotency, reconciling deletions after a full resync) belongs to the core.

One provider instance serves one thread: the core creates an instance per account actor (and
a short-lived one per connect request), so a client library that is not thread-safe (httplib2)
is safe as long as the instance keeps its clients to itself.

The message model (`brain.mail.message`) and its converters (`brain.mail.convert`) are
re-exported here: a provider builds a `MessageRecord` with ``message_from_mime`` (raw RFC 5322
bytes), ``message_from_gmail`` (a ``format=full`` resource) or ``message_from_graph`` (Graph
message JSON), so every provider's messages are normalised the same way.

Errors a provider raises (everything else counts as an unexpected error, logged and retried):

===================  ==============================================================
``AuthFailed``       credentials refused for good (``invalid_grant``, revoked consent):
                     the account becomes ``needs_reauth`` and stops syncing
``RateLimited``      throttled: the core waits ``retry_after`` (or backs off) first
``Transient``        5xx, network trouble: retried with exponential backoff + jitter
``CursorExpired``    the incremental cursor is gone (Gmail 404, Graph 410): full resync,
                     reconciling deletions, never a gap
``ConnectRejected``  bad input to ``connect``: the client gets a 400 with the message
===================  ==============================================================
"""

from __future__ import annotations

import dataclasses
import datetime
import email.utils
import json
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from brain.errors import BrainError
from brain.mail.convert import (
    gmail_context,
    graph_context,
    message_from_gmail,
    message_from_graph,
    message_from_mime,
)
from brain.mail.message import (
    Address,
    Attachment,
    ConvertOptions,
    Direction,
    Flags,
    MessageContext,
    MessageRecord,
    event_schemas,
    iso_utc,
)

__all__ = [
    "Address",
    "Attachment",
    "AuthFailed",
    "ConnectRejected",
    "ConvertOptions",
    "Credentials",
    "CursorExpired",
    "Direction",
    "Flags",
    "MailMessage",
    "MailProvider",
    "MessageContext",
    "MessageRecord",
    "ProviderError",
    "QuotaBudget",
    "RateLimited",
    "SyncContext",
    "SyncPage",
    "TokenSource",
    "Transient",
    "event_schemas",
    "gmail_context",
    "graph_context",
    "iso_utc",
    "message_from_gmail",
    "message_from_graph",
    "message_from_mime",
    "parse_retry_after",
]


# Errors ------------------------------------------------------------------------------------


class ProviderError(BrainError):
    """Base class of the errors a mail provider raises on purpose."""


class AuthFailed(ProviderError):
    """The provider refused the credentials for good: the user must authorise again."""


class RateLimited(ProviderError):
    """The provider throttled us; ``retry_after`` (seconds) is what it asked for, if it said."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Transient(ProviderError):
    """A failure worth retrying later (5xx, network); ``retry_after`` if the provider said."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class CursorExpired(ProviderError):
    """The incremental cursor is no longer valid: the core runs a full resync."""


class ConnectRejected(ProviderError):
    """Input to connect is missing or wrong; the message names the field (sent as a 400)."""


# Data --------------------------------------------------------------------------------------


@dataclass
class Credentials:
    """What a provider needs to call the mail service; stored encrypted in mail.db."""

    access_token: str | None = None
    expires_at: float | None = None  # epoch seconds; None: unknown (treated as expired)
    refresh_token: str | None = None
    # Provider-specific state that must survive restarts (an MSAL token cache, a password).
    extra: dict[str, Any] = field(default_factory=dict)
    obtained_at: float | None = None  # when the access token was issued (epoch seconds)

    def expires_within(self, seconds: float, *, now: float | None = None) -> bool:
        """True when there is no access token or it expires within ``seconds``.

        A token that lives shorter than ``seconds`` counts as expiring at half its lifetime,
        so short-lived tokens are not refreshed before every single call.
        """
        if not self.access_token or self.expires_at is None:
            return True
        if self.obtained_at is not None:
            seconds = min(seconds, max(0.0, (self.expires_at - self.obtained_at) / 2))
        return self.expires_at - (time.time() if now is None else now) <= seconds

    def to_json(self) -> bytes:
        """Serialised form (encrypted by the core before it is stored)."""
        return json.dumps(dataclasses.asdict(self), separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> Credentials:
        """Inverse of ``to_json``."""
        data = json.loads(raw)
        return cls(
            access_token=data.get("access_token"),
            expires_at=data.get("expires_at"),
            refresh_token=data.get("refresh_token"),
            extra=dict(data.get("extra") or {}),
            obtained_at=data.get("obtained_at"),
        )


@dataclass(frozen=True)
class MailMessage:
    """One message as the core stores it, whatever the provider.

    ``labels`` carries the mutable state the core watches for changes: provider labels or
    folders plus normalised flags (``UNREAD``, ``STARRED``/``FLAGGED``, categories).
    """

    id: str
    thread_id: str | None = None
    internet_message_id: str | None = None
    subject: str = ""
    sender: str = ""
    to: tuple[str, ...] = ()
    cc: tuple[str, ...] = ()
    date: str | None = None  # ISO 8601, UTC
    snippet: str = ""
    labels: tuple[str, ...] = ()
    size: int | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    # Optional extras a provider was configured to fetch (a text body, ...); JSON values.
    extra: Mapping[str, Any] = field(default_factory=dict)

    def state(self) -> dict[str, Any]:
        """The part whose change is a `mail.message.updated` event."""
        return {"labels": sorted(set(self.labels))}

    def as_event_data(self) -> dict[str, Any]:
        """The message part of a `mail.message.received` event.

        Free-text fields are clipped: one pathological message (a megabyte subject, ten
        thousand recipients) must not make its page too big for the store forever.
        """
        data: dict[str, Any] = {
            "message_id": self.id,
            "thread_id": self.thread_id,
            "internet_message_id": _clip(self.internet_message_id),
            "subject": _clip(self.subject),
            "from": _clip(self.sender),
            "to": [_clip(a) for a in self.to[:_MAX_RECIPIENTS]],
            "cc": [_clip(a) for a in self.cc[:_MAX_RECIPIENTS]],
            "date": self.date,
            "snippet": _clip(self.snippet),
            "labels": sorted(set(self.labels))[:_MAX_RECIPIENTS],
            "size": self.size,
            "headers": {k[:100]: _clip(v) for k, v in list(self.headers.items())[:20]},
        }
        data.update(self.extra)
        return data


_MAX_TEXT = 1000
_MAX_RECIPIENTS = 100


def _clip(value: str | None) -> str | None:
    return value[:_MAX_TEXT] if value is not None else None


@dataclass
class SyncPage:
    """One page of a sync run.

    ``next`` is not None while the run has more pages: the core checkpoints it and passes it
    back to the same method. On the last page ``next`` is None and ``cursor`` is where
    incremental sync starts from now on. Both are small JSON objects only the provider reads.
    """

    messages: list[MailMessage] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    next: dict[str, Any] | None = None
    cursor: dict[str, Any] | None = None
    # Initial sync only: the provider's estimate of the mailbox size (for progress).
    estimated_total: int | None = None


def parse_retry_after(value: str | None) -> float | None:
    """A ``Retry-After`` header (seconds or an HTTP date) as seconds from now; None if absent."""
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.timezone.utc)
    return max(0.0, moment.timestamp() - time.time())


# What the core hands a provider ---------------------------------------------------------


class TokenSource(Protocol):
    """The core's token provider for one account: refreshes ahead of expiry, under a lock."""

    def credentials(self) -> Credentials:
        """Current credentials with an access token valid for a while (refreshing if needed)."""

    def access_token(self) -> str:
        """``credentials().access_token``."""

    def invalidate(self, access_token: str | None) -> None:
        """The service refused this access token (401): refresh before the next use."""


class QuotaBudget(Protocol):
    """Per-account pacing: ``spend(units)`` waits until the budget allows the call."""

    def spend(self, units: float) -> None:
        """Account for ``units`` of provider quota, waiting first if the budget is used up."""


@dataclass
class SyncContext:
    """What a provider's sync methods get: tokens, pacing and the page size."""

    tokens: TokenSource
    budget: QuotaBudget
    page_size: int
    account_id: str = ""
    # Ask the core to sync this account now (or right after the run in progress); callable
    # from any thread. Push-style providers (IMAP IDLE, webhooks) call it when the service
    # reports a change; it raises once the account's actor is gone. None: nothing to wake.
    wake: Callable[[str], None] | None = None


# The contract --------------------------------------------------------------------------


class MailProvider(ABC):
    """Base class of every mail provider; one instance per thread that uses it.

    Subclasses set ``name`` (the value clients send as ``provider``) and implement the
    abstract methods. ``settings`` is the plugin's ``[plugins.NAME]`` table; ``page_size`` the
    core's default page size.
    """

    name: ClassVar[str]
    #: Human-readable name for status and errors.
    title: ClassVar[str] = ""
    #: Whether `POST /mail/connect` may start an OAuth authorization-code flow.
    oauth: ClassVar[bool] = True
    #: Field names a client may send to connect directly (documented in errors).
    direct_fields: ClassVar[Sequence[str]] = ("refresh_token",)

    def __init__(self, settings: Mapping[str, Any], *, page_size: int = 100) -> None:
        self.settings = settings
        self.page_size = int(settings.get("page_size", page_size))
        #: Provider quota units one account may spend per second (0: no pacing); the core
        #: paces `ctx.budget.spend(units)` calls to it.
        self.quota_units_per_second = float(settings.get("quota_units_per_second", 0) or 0)

    # Connecting ---------------------------------------------------------------------

    def authorize_url(self, *, state: str, redirect_uri: str, code_challenge: str) -> str:
        """The URL that sends the user to the provider's consent screen.

        It must carry ``code_challenge`` with ``code_challenge_method=S256`` (PKCE): the core
        makes the challenge and sends its verifier to ``exchange_code``.
        """
        raise ConnectRejected(f"{self.name} does not support OAuth; send {', '.join(self.direct_fields)}")

    def exchange_code(self, *, code: str, redirect_uri: str, code_verifier: str) -> Credentials:
        """Trade an authorization code and its PKCE ``code_verifier`` for credentials (``AuthFailed`` if refused)."""
        raise ConnectRejected(f"{self.name} does not support OAuth")

    def direct_credentials(self, fields: Mapping[str, Any]) -> Credentials | None:
        """Credentials from a connect request that carries them, or None to start OAuth.

        The default takes ``refresh_token``; raise ``ConnectRejected`` naming a bad field.
        """
        token = fields.get("refresh_token")
        if token is None:
            return None
        if not isinstance(token, str) or not token.strip():
            raise ConnectRejected("refresh_token must be a non-empty string")
        return Credentials(refresh_token=token.strip())

    @abstractmethod
    def refresh(self, credentials: Credentials) -> Credentials:
        """Fresh credentials (new access token); ``AuthFailed`` when the grant is dead.

        Returning no refresh token keeps the stored one (the core merges).
        """

    @abstractmethod
    def account_address(self, ctx: SyncContext) -> str:
        """The mailbox's address (asked once at connect time)."""

    # Syncing ------------------------------------------------------------------------

    @abstractmethod
    def initial_sync(self, ctx: SyncContext, checkpoint: dict[str, Any] | None) -> SyncPage:
        """One page of a full sync, starting at ``checkpoint`` (None: the beginning).

        Record the incremental cursor's starting point before listing anything, so changes
        made while the initial sync runs are picked up afterwards.
        """

    @abstractmethod
    def incremental_sync(self, ctx: SyncContext, cursor: dict[str, Any]) -> SyncPage:
        """One page of changes since ``cursor``; ``CursorExpired`` if it is too old."""

    def close(self) -> None:
        """Release clients and connections (the account's actor is stopping)."""

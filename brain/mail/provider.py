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
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from brain.errors import BrainError
from brain.mail.convert import (
    gmail_context,
    gmail_part_filename,
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
from brain.mail.parts import MimePart, mime_part

__all__ = [
    "Address",
    "Attachment",
    "AttachmentContent",
    "AuthFailed",
    "ConnectRejected",
    "ConvertOptions",
    "Credentials",
    "CursorExpired",
    "Direction",
    "Flags",
    "MailProvider",
    "MessageContext",
    "MessageGone",
    "MessageRecord",
    "MimePart",
    "ProviderError",
    "PushChannel",
    "PushReply",
    "PushRequest",
    "QuotaBudget",
    "RateLimited",
    "Revocation",
    "SyncContext",
    "SyncOptions",
    "SyncPage",
    "TokenSource",
    "Transient",
    "convert_inline",
    "event_schemas",
    "gmail_context",
    "gmail_part_filename",
    "graph_context",
    "iso_utc",
    "message_from_gmail",
    "message_from_graph",
    "message_from_mime",
    "mime_part",
    "parse_retry_after",
    "without_body",
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


class MessageGone(ProviderError):
    """The message or attachment asked for is not at the provider (any more)."""


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


@dataclass
class SyncPage:
    """One page of a sync run.

    ``messages`` are the messages the page found new or changed, each converted whole (the
    core compares them with what the user's store holds and emits only real changes);
    ``deleted`` the ids of messages that are gone or left what the account syncs (moved to
    spam, out of the chosen folders). ``next`` is not None while the run has more pages: the
    core checkpoints it and passes it back to the same method. On the last page ``next`` is
    None and ``cursor`` is where incremental sync starts from now on. Both are small JSON
    objects only the provider reads.
    """

    messages: list[MessageRecord] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    next: dict[str, Any] | None = None
    cursor: dict[str, Any] | None = None
    # Initial sync only: the provider's estimate of the mailbox size (for progress).
    estimated_total: int | None = None


@dataclass
class AttachmentContent:
    """An attachment's content as a provider hands it over: its type, name, size if known,
    and the content in chunks (read once, in order, one at a time, possibly each on another
    thread of the core's download pool).

    ``exact``: ``size`` is the length of the chunks to the byte (the client is told it as
    Content-Length); False when it is only what the provider states (Graph's attachment size
    is the attachment's in the store, not necessarily the bytes handed out), which the core
    uses for its cap alone.
    """

    mime_type: str
    filename: str
    size: int | None
    chunks: Iterator[bytes]
    exact: bool = True


@dataclass(frozen=True)
class Revocation:
    """What disconnecting did at the provider: ``revoked`` True (the grant is gone there), False
    (it could not be revoked: ``detail`` says why and what the user can do), or None (there
    was no grant, e.g. a password, which brain deletes)."""

    revoked: bool | None
    detail: str


@dataclass
class PushChannel:
    """A provider's push notifications for one account (Gmail watch, a Graph subscription).

    ``key`` is what this account's notifications carry (Gmail: the mailbox address; Graph: the
    subscription id); ``expires_at`` (epoch seconds) is when the provider stops sending unless
    renewed; ``state`` is the provider's own (JSON values).
    """

    key: str
    expires_at: float
    state: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PushRequest:
    """A notification as it reached ``POST /mail/push/{provider}``."""

    query: Mapping[str, str]
    headers: Mapping[str, str]
    body: bytes


@dataclass
class PushReply:
    """What a provider makes of a notification: what to answer, and which accounts to sync —
    ``targets`` as (channel key, the secret the notification carried or None)."""

    status: int = 202
    content_type: str = "text/plain"
    body: bytes = b""
    targets: list[tuple[str, str | None]] = field(default_factory=list)


def without_body(record: MessageRecord) -> MessageRecord:
    """``record`` with its text left out, for an account that syncs no bodies (the snippet,
    headers, flags and attachments stay)."""
    return dataclasses.replace(
        record, body_text="", body_text_clean="", body_html=None, truncated=False, original_sizes={}
    )


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


@dataclass(frozen=True)
class SyncOptions:
    """What the user chose to sync for one account, and how much of each message to keep.

    ``folders`` names what to sync, in the provider's terms (Gmail label names or ids, Outlook
    folder names or well-known names such as ``sentitems``, IMAP folder names or special-use
    flags such as ``\\Sent``); None means the provider's whole mailbox. ``exclude_spam_trash``
    leaves spam/junk and trash out (a message moved there is reported as deleted). ``since``
    (epoch seconds) limits listings to messages received after it. Without ``bodies`` a
    provider fetches no body text (headers, flags and attachment metadata still come).
    """

    folders: tuple[str, ...] | None = None
    exclude_spam_trash: bool = True
    since: float | None = None
    bodies: bool = True
    convert: ConvertOptions = field(default_factory=ConvertOptions)


def convert_inline(fn: Callable[..., Any], *iterables: Any) -> list[Any]:
    """``list(map(fn, *iterables))``: `SyncContext.convert` when the core has no worker processes."""
    return list(map(fn, *iterables))


@dataclass
class SyncContext:
    """What a provider's sync methods get: tokens, pacing, the page size and the user's choices.

    ``address`` is the account's own address (what makes a message ``sent`` when the provider
    has no word for it); pass ``own_addresses`` to the converters.
    """

    tokens: TokenSource
    budget: QuotaBudget
    page_size: int
    account_id: str = ""
    address: str = ""
    options: SyncOptions = field(default_factory=SyncOptions)
    # Converts a page of messages, ``list(map(fn, *iterables))``, on every core the core gives it
    # ([mail] convert_workers): pass a converter that pickles (a module-level function, or a
    # functools.partial of one) and one iterable per argument.
    convert: Callable[..., list[Any]] = convert_inline
    # Ask the core to sync this account now (or right after the run in progress); callable
    # from any thread. Push-style providers (IMAP IDLE, webhooks) call it when the service
    # reports a change; it raises once the account's actor is gone. None: nothing to wake.
    wake: Callable[[str], None] | None = None

    @property
    def own_addresses(self) -> tuple[str, ...]:
        """The account's own addresses, for the converters' ``own_addresses``."""
        return (self.address,) if self.address else ()


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
    #: The kind of message ids it reports. When a new version changes it, the core asks
    #: `translate_ids` for the new ids of the messages it knows, once per account.
    id_scheme: ClassVar[str] = ""

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

    def translate_ids(self, ctx: SyncContext, ids: Sequence[str]) -> dict[str, str]:
        """The ids of ``id_scheme`` for message ids an older scheme gave (at most 1000 at a
        time); ids it cannot translate (gone) are left out. Called once per account when
        `id_scheme` changed, before anything is synced, so stored messages keep their history."""
        return {}

    # Attachments and disconnecting ------------------------------------------------------

    def fetch_attachment(self, ctx: SyncContext, message_id: str, attachment_id: str) -> AttachmentContent:
        """The content of one attachment the model listed (``Attachment.id``) of one message.

        ``MessageGone`` when the message or the attachment is not there. The core caps the size
        and streams the chunks to the client as they come: one whose stated ``size`` is over the
        cap is refused before any chunk is read, so a provider that knows the size up front
        should state it and fetch the content only when the chunks are read (its errors then
        reach the client as they would from here).
        """
        raise ProviderError(f"{self.title or self.name} cannot download attachments")

    def revoke(self, credentials: Credentials) -> Revocation:
        """Withdraw brain's grant at the provider (the user disconnects); never raises.

        The default says nothing was revoked; a provider that can revoke does so here.
        """
        return Revocation(False, f"{self.title or self.name} offers no way for brain to revoke its access")

    # Push notifications -----------------------------------------------------------------

    def open_push(
        self, ctx: SyncContext, *, notify_url: str, secret: str, channel: PushChannel | None
    ) -> PushChannel | None:
        """Ask the provider to notify ``notify_url`` of changes to the account, or renew
        ``channel``; None when this provider (or its configuration) has no push.

        ``secret`` is the account's own: a provider whose notifications can carry it (Graph's
        ``clientState``) sends it along so the core can tell a forged notification.
        """
        return None

    def close_push(self, ctx: SyncContext, channel: PushChannel) -> None:
        """Stop the provider's notifications (best effort: the account is going)."""

    @classmethod
    def read_push(cls, settings: Mapping[str, Any], request: PushRequest) -> PushReply:
        """Read a notification sent to ``POST /mail/push/{name}``: which accounts it names and
        what to answer (a validation handshake, an acknowledgement, a refusal)."""
        return PushReply(status=404, body=b"no push notifications for this provider")

    def close(self) -> None:
        """Release clients and connections (the account's actor is stopping)."""

"""What one role offers another: small protocols, found through the process's stash.

Roles never import each other. When one needs a service another provides, the provider puts an
object satisfying one of these protocols into `rt.stash` under the key declared here, and the
user looks it up there; which role (or third-party plugin) provides it is nobody's business
but the provider's. A key that is not set means no plugin offers the service in this process
(e.g. mail sync in a process that does not run the API role's stores).

| key | protocol | offered by | used by |
|-----|----------|------------|---------|
| `EVENT_SINK` | `EventSink` | the API role (its user stores) | mail sync, plugins that write events |
| `AUTHENTICATOR` | `BearerAuthenticator` | the API role (its JWT check) | mail's OAuth callback |
| `DELETION_SOURCE` | `DeletionSource` | the auth role (auth.db) | the core's deletion relay |
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from brain.stash import StashKey

__all__ = [
    "AUTHENTICATOR",
    "DELETION_SOURCE",
    "EVENT_SINK",
    "BearerAuthenticator",
    "Caller",
    "DeletionSource",
    "EventSink",
    "UserDeleted",
]


class Caller(Protocol):
    """Who a request speaks for, once its credentials are checked."""

    @property
    def id(self) -> str:
        """The user id (a valid `brain.ids` user id)."""

    @property
    def claims(self) -> Mapping[str, Any]:
        """What the credentials say about the user (a JWT's claims)."""


class BearerAuthenticator(Protocol):
    """Checks an `Authorization` header as the API role does for its own routes."""

    def authenticate(self, authorization: str | None) -> Caller:
        """The caller of a header value; raises `brain.errors.InvalidToken` (401) or 503."""


class EventSink(Protocol):
    """Appends events to a user's own store, atomically, from a worker or actor thread."""

    def append_from_thread(
        self, user_id: str, events: Sequence[Mapping[str, Any]], timeout: float = 30, *,
        max_event_bytes: int | None = None, with_data: bool = True,
    ) -> list[dict[str, Any]]:
        """Store `{type, data, created_at?, key?}` events all or none; the stored events (blocking).

        `max_event_bytes`: a writer's own limit on an event's size, instead of the sink's.
        Without `with_data` the stored events come back without their data (not parsed back).
        """


@dataclass(frozen=True)
class UserDeleted:
    """An account deletion: who, when (epoch ms), and until when their tokens could verify (ms)."""

    user_id: str
    deleted_at: int
    tokens_valid_until: int


class DeletionSource(Protocol):
    """Where account deletions wait to be told to every process (through JetStream)."""

    async def pending(self) -> list[UserDeleted]:
        """Deletions not yet published, oldest first."""

    async def mark_published(self, user_ids: list[str]) -> None:
        """Record that these deletions reached JetStream."""


EVENT_SINK: StashKey[EventSink] = StashKey("brain.contracts.event_sink")
AUTHENTICATOR: StashKey[BearerAuthenticator] = StashKey("brain.contracts.authenticator")
DELETION_SOURCE: StashKey[DeletionSource] = StashKey("brain.contracts.deletion_source")

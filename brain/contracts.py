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
| `EVENT_ACCESS` | `EventAccess` | the API role (its user stores) | the MCP door (brain.agents) |
| `MAIL_ACCOUNTS` | `MailAccounts` | mail sync (mail.db) | the MCP door (brain.agents) |
| `COMMIT_LOG` | `CommitLog` | the API role (its stores' commit order) | webhooks |
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from brain.stash import StashKey

__all__ = [
    "AUTHENTICATOR",
    "COMMIT_LOG",
    "DELETION_SOURCE",
    "EVENT_ACCESS",
    "EVENT_SINK",
    "MAIL_ACCOUNTS",
    "BearerAuthenticator",
    "Caller",
    "CommitLog",
    "DeletionSource",
    "EventAccess",
    "EventPage",
    "EventSink",
    "MailAccounts",
    "SearchResults",
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

    def allows(self, scope: str) -> bool:
        """Whether the credentials grant `scope` (`brain.apikeys.SCOPES`): a JWT all, an API key its own."""


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


class EventPage(NamedTuple):
    """One page of a user's events, newest first, and the cursor of the next (None: the last)."""

    events: list[dict[str, Any]]
    next_cursor: str | None


class SearchResults(NamedTuple):
    """One page of search results, best first (`{id, type, created_at, score, highlights}` each), the cursor of
    the next (None: the last), and whether the index was still being built (older events may be missing)."""

    results: list[dict[str, Any]]
    next_cursor: str | None
    partial: bool


class EventAccess(Protocol):
    """A user's own events for another door than the REST routes, with the REST routes' rules.

    Called on the event loop. Bad input raises `brain.errors.HTTPError`s whose messages name the
    argument (as the REST routes' 4xx do); events come back in the public shape
    `{id, type, data, created_at}`.
    """

    async def list_events(
        self, user_id: str, *, types: str | None = None, since: Any = None, until: Any = None,
        limit: int | None = None, cursor: str | None = None, max_chars: int | None = None,
    ) -> EventPage:
        """Events newest first: `types` as GET /events takes `type`, times RFC 3339 or epoch seconds.

        `max_chars`: the page stops before its events' JSON passes this many characters (it
        holds at least one), and its cursor continues from there."""

    async def add_events(
        self, user_id: str, events: Sequence[Mapping[str, Any]], *, key: str | None = None
    ) -> tuple[list[dict[str, Any]], bool]:
        """Store `{type, data, created_at?}` events all or none, as POST /events does (reserved
        types refused); with an idempotency `key` a retry returns the first write. The stored
        events, and whether they were a replay."""

    async def get_event(self, user_id: str, event_id: int) -> dict[str, Any] | None:
        """One event by id; None when the user has no such event."""

    async def search(
        self, user_id: str, q: str, *, since: Any = None, until: Any = None, limit: int | None = None,
        cursor: str | None = None,
    ) -> SearchResults:
        """GET /search: `q` in its query language, ranked; times RFC 3339 or epoch seconds."""

    async def match_field(
        self, user_id: str, *, types: str, field: str, value: str, limit: int
    ) -> list[dict[str, Any]]:
        """Events of `types` (as `list_events` takes them) whose data's top-level `field` equals
        `value`, in commit order, at most `limit` (e.g. the mail events of one thread)."""


class MailAccounts(Protocol):
    """A user's connected mail accounts."""

    def status(self, user_id: str) -> list[dict[str, Any]]:
        """Every account of the user as GET /mail/status shows it (blocking: call from a worker thread)."""


class UserHome(Protocol):
    """Cluster mode: which node holds each user's data (the API role's placement, brain.api.cluster)."""

    node_id: str

    def ready(self) -> bool:
        """Whether the placement map is loaded (before: nothing is known)."""

    def node_of_user(self, user_id: str) -> str | None:
        """The node the user is placed on; None if not placed (or not known yet)."""

    def settled(self, user_id: str) -> bool:
        """Whether the user's store here is complete (not being rebuilt from the stream)."""

    def deleted(self, user_id: str) -> bool:
        """Whether this node has heard that the user's account was deleted (their data must not
        follow them anywhere: brain.directory)."""

    async def at_home(self, request: Any, user_id: str) -> Any:
        """The answer of the user's node to this request (an `aiohttp.web.Request`, sent there as an
        authenticated request is) if the user is placed elsewhere; None: serve it here (also for a
        request another node already forwarded here). For the public routes that name their user
        in a signed value (an OAuth flow's state), or whose user the node finds otherwise (a mail
        push notification, through the accounts' bucket); a body the route already read is sent
        as read (brain.web.read_body)."""


class CommitLog(Protocol):
    """Each user's events in commit order, and a word after every commit.

    Events are dicts as the API returns them plus `seq`, their place in the user's commit order
    (what `after` counts in): it only grows, so a reader that remembers the last `seq` it
    handled never misses an event and never needs one twice.
    """

    def listen(self, listener: Callable[[str, int], None]) -> None:
        """Call `listener(user_id, last_seq)` after every commit in this process, from the committing
        thread: it must neither block nor raise. Register in `setup_process`. (On a cluster node that
        confirms writes: once the replicated stream holds the events, on the serving loop.)"""

    def changes_from_thread(self, user_id: str, after: int, limit: int, timeout: float = 30) -> list[dict[str, Any]]:
        """At most `limit` events of the user with `seq` above `after`, oldest first (blocking)."""

    def head_from_thread(self, user_id: str, timeout: float = 30) -> int:
        """The `seq` of the user's last event, 0 if none (blocking)."""


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
EVENT_ACCESS: StashKey[EventAccess] = StashKey("brain.contracts.event_access")
MAIL_ACCOUNTS: StashKey[MailAccounts] = StashKey("brain.contracts.mail_accounts")
COMMIT_LOG: StashKey[CommitLog] = StashKey("brain.contracts.commit_log")
USER_HOME: StashKey[UserHome] = StashKey("brain.contracts.user_home")

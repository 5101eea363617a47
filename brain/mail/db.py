"""`data/mail.db`: connected accounts, their encrypted credentials, the per-account message
index (what the user's store already holds, for idempotency and reconciliation) and the
single-use nonces of OAuth flows in progress.

Many threads use the database (one actor per account, route handlers in the executor); each
unit of work opens the thread's connection if it is closed and closes it afterwards, so idle
accounts do not hold file descriptors.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import peewee as pw
from playhouse.migrate import SqliteMigrator, migrate

from brain.ids import new_id
from brain.mail.crypto import CredentialBox
from brain.mail.provider import Credentials, iso_utc
from brain.mail.selection import SyncChoices
from brain.storage import WatchedDatabase

__all__ = ["Account", "CachedAttachment", "IndexEntry", "MailDb", "States"]

_proxy = pw.DatabaseProxy()


class States:
    """Account states shown by `GET /mail/status`."""

    SYNCING = "syncing"
    IDLE = "idle"
    BACKOFF = "backoff"
    NEEDS_REAUTH = "needs_reauth"
    ERROR = "error"
    DISCONNECTED = "disconnected"
    # Not started by the mail supervisor on boot.
    STOPPED = frozenset({NEEDS_REAUTH, DISCONNECTED})


class _Model(pw.Model):
    class Meta:
        database = _proxy


class Account(_Model):
    """One connected mailbox of one user."""

    id = pw.CharField(primary_key=True)
    user_id = pw.CharField(index=True)
    provider = pw.CharField()
    address = pw.CharField()
    state = pw.CharField(default=States.SYNCING)
    # "initial" (full sync, maybe a resync), "reconcile" (after a resync), "incremental".
    phase = pw.CharField(default="initial")
    position = pw.TextField(null=True)  # JSON: where the current run resumes
    cursor = pw.TextField(null=True)  # JSON: where incremental sync starts
    resync = pw.BooleanField(default=False)
    epoch = pw.IntegerField(default=0)
    progress_done = pw.IntegerField(default=0)
    progress_total = pw.IntegerField(null=True)
    messages_synced = pw.IntegerField(default=0)
    initial_done = pw.BooleanField(default=False)
    last_sync_at = pw.FloatField(null=True)
    last_error = pw.TextField(null=True)
    last_error_at = pw.FloatField(null=True)
    retry_at = pw.FloatField(null=True)
    failures = pw.IntegerField(default=0)
    created_at = pw.FloatField(default=time.time)
    updated_at = pw.FloatField(default=time.time)
    # JSON of the user's SyncChoices (None: the defaults).
    settings = pw.TextField(null=True)
    # What the stored events hold of each message (selection.content_key) as of the last full
    # pass; None: an account synced before messages had content. Another value than the
    # account's current key means a backfill is due.
    content = pw.CharField(null=True)
    backfill_done = pw.IntegerField(default=0)
    backfill_total = pw.IntegerField(null=True)
    # Seconds until the next poll, as adaptive polling last set it.
    poll_interval = pw.FloatField(null=True)
    # JSON of the provider's push channel (Gmail watch, Graph subscription) and the account's
    # push secret, if push is on; push_key is what the provider's notifications name.
    push = pw.TextField(null=True)
    push_key = pw.CharField(null=True, index=True)
    # The provider's id_scheme the index's message ids are in (None: before schemes existed).
    id_scheme = pw.CharField(null=True)

    class Meta:
        table_name = "accounts"
        indexes = ((("user_id", "provider", "address"), True),)

    def backfill_due(self, content_key: str | None) -> bool:
        """Whether messages synced earlier must be sent again with ``content_key``'s content."""
        return bool(self.initial_done) and content_key is not None and self.content != content_key

    def status(self, content_key: str | None = None) -> dict[str, Any]:
        """The account as `GET /mail/status` shows it; ``content_key`` is what its events
        should hold (`selection.content_key`), to tell whether a backfill is due."""
        push = json.loads(self.push) if self.push else None
        return {
            "account": self.id,
            "provider": self.provider,
            "address": self.address,
            "state": self.state,
            "phase": self.phase,
            "last_sync_at": iso_utc(self.last_sync_at),
            "messages_synced": self.messages_synced,
            "initial_sync": {
                "complete": self.initial_done,
                "done": self.progress_done,
                "estimated_total": self.progress_total,
            },
            "backfill": {
                "complete": not self.backfill_due(content_key) and self.phase != "backfill",
                "running": self.phase == "backfill",
                "done": self.backfill_done,
                "estimated_total": self.backfill_total,
            },
            "sync": SyncChoices.from_json(self.settings).as_dict(),
            "poll_interval_seconds": self.poll_interval,
            "push": {"active": True, "expires_at": iso_utc(push.get("expires_at"))} if push else {"active": False},
            "last_error": self.last_error,
            "last_error_at": iso_utc(self.last_error_at),
            "retry_at": iso_utc(self.retry_at) if self.state in (States.BACKOFF, States.ERROR) else None,
            "connected_at": iso_utc(self.created_at),
        }


class Credential(_Model):
    """An account's credentials, sealed with a key derived from the server secret."""

    account_id = pw.CharField(primary_key=True)
    blob = pw.BlobField()
    updated_at = pw.FloatField(default=time.time)

    class Meta:
        table_name = "credentials"


class Message(_Model):
    """What the user's store holds about one message: its revision and watched state."""

    account_id = pw.CharField()
    message_id = pw.CharField()
    rev = pw.IntegerField()  # events emitted for this message so far (keys use it)
    state = pw.TextField()  # JSON of MailMessage.state()
    thread_id = pw.CharField(null=True)
    deleted = pw.BooleanField(default=False)
    epoch = pw.IntegerField()  # the account's sync epoch that last saw it

    class Meta:
        table_name = "messages"
        primary_key = pw.CompositeKey("account_id", "message_id")
        indexes = ((("account_id", "deleted", "epoch"), False),)


class OAuthState(_Model):
    """An OAuth flow in progress; the row is deleted when its callback uses it (single use)."""

    nonce = pw.CharField(primary_key=True)
    user_id = pw.CharField()
    provider = pw.CharField()
    expires_at = pw.FloatField()
    authorize_url = pw.TextField()  # the provider's consent page, state and PKCE challenge in it
    start_by = pw.FloatField()  # the connect link must be opened by then
    # SHA-256 of the flow cookie of the browser that opened the connect link (None: not yet).
    browser = pw.CharField(null=True)
    # The sync choices of the connect request (JSON), for the account the callback connects.
    settings = pw.TextField(null=True)

    class Meta:
        table_name = "oauth_states"


class CachedAttachment(_Model):
    """An attachment downloaded once and kept in the user's directory, by content hash."""

    account_id = pw.CharField()
    message_id = pw.CharField()
    attachment_id = pw.CharField()
    user_id = pw.CharField(index=True)
    sha256 = pw.CharField()
    size = pw.IntegerField()
    mime_type = pw.CharField()
    filename = pw.TextField()
    created_at = pw.FloatField(default=time.time)

    class Meta:
        table_name = "attachment_cache"
        primary_key = pw.CompositeKey("account_id", "message_id", "attachment_id")


MODELS: list[type[pw.Model]] = [Account, Credential, Message, OAuthState, CachedAttachment]


@dataclass(frozen=True)
class IndexEntry:
    """One row of the message index, as the sync engine reads it."""

    message_id: str
    rev: int
    state: dict[str, Any]
    thread_id: str | None
    deleted: bool
    epoch: int


class MailDb:
    """mail.db: opened once per process; safe to use from any thread."""

    def __init__(self, path: Path, secret: bytes) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = WatchedDatabase(
            self.path, label="mail.db",
            pragmas={"journal_mode": "wal", "busy_timeout": 15000, "synchronous": "normal", "foreign_keys": 1},
        )
        _proxy.initialize(self.db)
        self._box = CredentialBox(secret)
        self._local = threading.local()
        with self.unit():
            if self.db.table_exists("oauth_states") and "browser" not in {
                column.name for column in self.db.get_columns("oauth_states")
            }:
                # Flows started before they were bound to a browser could never finish now.
                self.db.drop_tables([OAuthState])
            self.db.create_tables(MODELS, safe=True)
            self._add_new_columns(Account)
            self._add_new_columns(OAuthState)
        # Units open and close their thread's connection; the last connection to close a WAL
        # database checkpoints it (with an fsync). This one stays open, so closing a unit is cheap.
        self._anchor: sqlite3.Connection | None = sqlite3.connect(str(self.path), check_same_thread=False)
        # One read maps the WAL index (-shm) and keeps it mapped: a unit's connection is then never
        # the first, which truncates and regrows the -shm and so fails on a full disk, reads too.
        self._anchor.execute("SELECT count(*) FROM sqlite_master").fetchone()

    def _add_new_columns(self, model: type[pw.Model]) -> None:
        """Columns a newer brain added to ``model``, added to a mail.db an older one made."""
        present = {column.name for column in self.db.get_columns(model._meta.table_name)}
        migrator = SqliteMigrator(self.db)
        missing = [f for f in model._meta.sorted_fields if f.column_name not in present]
        if missing:
            migrate(*(migrator.add_column(model._meta.table_name, f.column_name, f) for f in missing))

    @contextlib.contextmanager
    def unit(self) -> Iterator[None]:
        """Open this thread's connection for a unit of work (nested units share it)."""
        depth = getattr(self._local, "depth", 0)
        if depth == 0 and self.db.is_closed():
            self.db.connect()
        self._local.depth = depth + 1
        try:
            yield
        finally:
            self._local.depth = depth
            if depth == 0 and not getattr(self._local, "keep", False) and not self.db.is_closed():
                self.db.close()

    def keep_open(self, keep: bool) -> None:
        """Keep this thread's connection open between units (an actor during a sync run)."""
        self._local.keep = keep
        if not keep and getattr(self._local, "depth", 0) == 0 and not self.db.is_closed():
            self.db.close()

    def close(self) -> None:
        """Close this thread's connection and the anchor (others close at the end of their unit)."""
        if not self.db.is_closed():
            self.db.close()
        anchor, self._anchor = self._anchor, None
        if anchor is not None:
            anchor.close()

    # Accounts -------------------------------------------------------------------------

    def upsert_account(self, *, user_id: str, provider: str, address: str, id_scheme: str = "") -> tuple[Account, bool]:
        """The account of (user, provider, address), created if new; (account, created).

        A returning account (disconnected or needs_reauth before) keeps its cursor and index,
        so reconnecting resumes instead of syncing everything again.
        """
        # IMMEDIATE: a deferred transaction that reads first cannot upgrade to a write once
        # another connection has committed (SQLITE_BUSY at once, busy_timeout or not).
        with self.unit(), self.db.atomic("IMMEDIATE"):
            account = Account.get_or_none(
                (Account.user_id == user_id) & (Account.provider == provider) & (Account.address == address)
            )
            if account is not None:
                Account.update(
                    state=States.SYNCING, last_error=None, last_error_at=None, retry_at=None,
                    failures=0, updated_at=time.time(),
                ).where(Account.id == account.id).execute()
                return Account.get_by_id(account.id), False
            account = Account.create(
                id=new_id(20), user_id=user_id, provider=provider, address=address, id_scheme=id_scheme
            )
            return account, True

    def account(self, account_id: str) -> Account | None:
        """One account by id."""
        with self.unit():
            return Account.get_or_none(Account.id == account_id)

    def user_account(self, user_id: str, account_id: str) -> Account | None:
        """The account only if it belongs to ``user_id``."""
        with self.unit():
            return Account.get_or_none((Account.id == account_id) & (Account.user_id == user_id))

    def accounts_for_user(self, user_id: str) -> list[Account]:
        """Every account of a user, oldest first."""
        with self.unit():
            return list(Account.select().where(Account.user_id == user_id).order_by(Account.created_at, Account.id))

    def accounts_by_push_key(self, provider: str, key: str) -> list[Account]:
        """The accounts whose push channel at ``provider`` is named ``key``."""
        with self.unit():
            return list(Account.select().where((Account.provider == provider) & (Account.push_key == key)))

    def accounts_to_resume(self) -> list[Account]:
        """Accounts that should be syncing: connected, with credentials, not needing reauth."""
        with self.unit():
            query = (
                Account.select()
                .join(Credential, on=(Credential.account_id == Account.id))
                .where(Account.state.not_in(list(States.STOPPED)))
                .order_by(Account.created_at)
            )
            return list(query)

    def update_account(self, account_id: str, **fields: Any) -> None:
        """Set some columns of an account."""
        fields["updated_at"] = time.time()
        with self.unit():
            Account.update(**fields).where(Account.id == account_id).execute()

    def disconnect(self, account_id: str) -> None:
        """Delete the credentials and mark the account disconnected (its index stays)."""
        with self.unit(), self.db.atomic():
            Credential.delete().where(Credential.account_id == account_id).execute()
            Account.update(
                state=States.DISCONNECTED, retry_at=None, push=None, push_key=None, updated_at=time.time()
            ).where(Account.id == account_id).execute()

    # Credentials ----------------------------------------------------------------------

    def save_credentials(self, account_id: str, credentials: Credentials) -> None:
        """Store credentials, encrypted and bound to the account."""
        blob = self._box.seal(credentials.to_json(), account_id=account_id)
        with self.unit():
            Credential.insert(account_id=account_id, blob=blob, updated_at=time.time()).on_conflict(
                conflict_target=[Credential.account_id],
                update={Credential.blob: blob, Credential.updated_at: time.time()},
            ).execute()

    def load_credentials(self, account_id: str) -> Credentials | None:
        """The account's credentials, or None when it has none (disconnected)."""
        with self.unit():
            row = Credential.get_or_none(Credential.account_id == account_id)
        if row is None:
            return None
        return Credentials.from_json(self._box.open(bytes(row.blob), account_id=account_id))

    # Message index --------------------------------------------------------------------

    def index_entries(self, account_id: str, message_ids: Iterable[str]) -> dict[str, IndexEntry]:
        """Index rows of these messages (absent ids: never seen)."""
        ids = list(dict.fromkeys(message_ids))
        out: dict[str, IndexEntry] = {}
        with self.unit():
            for start in range(0, len(ids), 500):  # SQLite's bound-variable limit
                chunk = ids[start : start + 500]
                # Plain SQL: this runs for every page, and peewee's per-row cost dominated it.
                cursor = self.db.execute_sql(
                    f"SELECT {_INDEX_COLUMNS} FROM messages WHERE account_id = ? AND message_id IN "
                    f"({','.join('?' * len(chunk))})",
                    [account_id, *chunk],
                )
                for row in cursor:
                    entry = _entry_from_row(row)
                    out[entry.message_id] = entry
        return out

    def unseen_since(self, account_id: str, epoch: int, limit: int) -> list[IndexEntry]:
        """Live messages a full resync of ``epoch`` did not see (to reconcile as deleted)."""
        with self.unit():
            cursor = self.db.execute_sql(
                f"SELECT {_INDEX_COLUMNS} FROM messages WHERE account_id = ? AND deleted = 0 AND epoch < ? LIMIT ?",
                [account_id, epoch, limit],
            )
            return [_entry_from_row(row) for row in cursor]

    def commit_page(self, account_id: str, entries: Sequence[IndexEntry], account_fields: Mapping[str, Any]) -> None:
        """Write a page's index changes and the account's checkpoint in one transaction."""
        fields = dict(account_fields)
        fields["updated_at"] = time.time()
        rows = [
            (account_id, e.message_id, e.rev, json.dumps(e.state, separators=(",", ":")), e.thread_id, e.deleted, e.epoch)
            for e in entries
        ]
        with self.unit(), self.db.atomic():
            if rows:
                # executemany on the connection: a page is hundreds of rows, per-row ORM cost adds up.
                self.db.connection().executemany(
                    "INSERT OR REPLACE INTO messages (account_id, message_id, rev, state, thread_id, deleted, epoch)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)",
                    rows,
                )
            if fields:
                Account.update(**fields).where(Account.id == account_id).execute()

    # Deleted users ----------------------------------------------------------------------

    def purge_user(self, user_id: str) -> int:
        """Delete the user's accounts, credentials, message index, OAuth flows and attachment cache
        index; how many accounts."""
        # IMMEDIATE: every worker purges a deleted user (brain.workers), and a deferred transaction
        # that read the accounts cannot then write once another worker's purge has committed.
        with self.unit(), self.db.atomic("IMMEDIATE"):
            ids = [row.id for row in Account.select(Account.id).where(Account.user_id == user_id)]
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                Credential.delete().where(Credential.account_id.in_(chunk)).execute()
                Message.delete().where(Message.account_id.in_(chunk)).execute()
            Account.delete().where(Account.user_id == user_id).execute()
            OAuthState.delete().where(OAuthState.user_id == user_id).execute()
            CachedAttachment.delete().where(CachedAttachment.user_id == user_id).execute()
        return len(ids)

    def unmigrated_ids(self, account_id: str, limit: int) -> list[str]:
        """Message ids of an account not yet through an id-scheme migration, ``limit`` at most."""
        with self.unit():
            cursor = self.db.execute_sql(
                "SELECT message_id FROM messages WHERE account_id = ? AND json_type(state, '$.migrated') IS NULL "
                "ORDER BY message_id LIMIT ?",
                [account_id, limit],
            )
            return [row[0] for row in cursor]

    def migrate_messages(self, account_id: str, ids: Iterable[str], renames: Mapping[str, str]) -> None:
        """Mark index rows as through an id-scheme migration, giving the ``renames`` their new ids
        (each remembers its old one, for the next event to say it)."""
        with self.unit(), self.db.atomic():
            connection = self.db.connection()
            for old in ids:
                row = connection.execute(
                    "SELECT state FROM messages WHERE account_id = ? AND message_id = ?", (account_id, old)
                ).fetchone()
                if row is None:
                    continue
                state = {**json.loads(row[0]), "migrated": True}
                if old in renames:
                    state["was"] = old
                connection.execute(
                    "UPDATE OR REPLACE messages SET message_id = ?, state = ? WHERE account_id = ? AND message_id = ?",
                    (renames.get(old, old), json.dumps(state, separators=(",", ":")), account_id, old),
                )

    def message_accounts(self, user_id: str, message_id: str) -> list[Account]:
        """The user's accounts whose synced messages include ``message_id`` (not deleted)."""
        with self.unit():
            query = (
                Account.select()
                .join(Message, on=(Message.account_id == Account.id))
                .where((Account.user_id == user_id) & (Message.message_id == message_id) & (Message.deleted == False))  # noqa: E712
                .order_by(Account.created_at)
            )
            return list(query)

    # Attachment cache -------------------------------------------------------------------

    def cached_attachment(self, account_id: str, message_id: str, attachment_id: str) -> CachedAttachment | None:
        """The cache entry of one attachment, if it was downloaded before."""
        with self.unit():
            return CachedAttachment.get_or_none(
                (CachedAttachment.account_id == account_id)
                & (CachedAttachment.message_id == message_id)
                & (CachedAttachment.attachment_id == attachment_id)
            )

    def cache_attachment(self, **fields: Any) -> None:
        """Remember where an attachment's content is kept (replacing an older entry)."""
        with self.unit():
            CachedAttachment.insert(**fields).on_conflict_replace().execute()

    def forget_cached(self, account_id: str, message_id: str, attachment_id: str) -> None:
        """Drop a cache entry whose file is gone."""
        with self.unit():
            CachedAttachment.delete().where(
                (CachedAttachment.account_id == account_id)
                & (CachedAttachment.message_id == message_id)
                & (CachedAttachment.attachment_id == attachment_id)
            ).execute()

    def cache_usage(self, user_id: str) -> tuple[int, int]:
        """(distinct files, their bytes) the user's attachment cache holds."""
        with self.unit():
            rows = self.db.execute_sql(
                "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM (SELECT sha256, MAX(size) AS size FROM attachment_cache "
                "WHERE user_id = ? GROUP BY sha256)",
                [user_id],
            ).fetchone()
        return int(rows[0]), int(rows[1])

    # OAuth flows ------------------------------------------------------------------------

    def save_oauth_state(
        self, *, nonce: str, user_id: str, provider: str, expires_at: float, start_by: float, authorize_url: str,
        settings: str | None = None,
    ) -> None:
        """Remember a started OAuth flow (and forget long-expired ones)."""
        with self.unit(), self.db.atomic():
            OAuthState.delete().where(OAuthState.expires_at < time.time() - 3600).execute()
            OAuthState.create(
                nonce=nonce, user_id=user_id, provider=provider, expires_at=expires_at, start_by=start_by,
                authorize_url=authorize_url, settings=settings,
            )

    def oauth_state_settings(self, nonce: str) -> str | None:
        """The sync choices a flow was started with (JSON), if any."""
        with self.unit():
            row = OAuthState.get_or_none(OAuthState.nonce == nonce)
        return row.settings if row is not None else None

    def bind_oauth_state(self, *, nonce: str, browser: str) -> str | None:
        """Bind a flow to the first browser that opens its connect link, in time; its authorize URL.

        None when the flow is unknown, expired, past its `start_by`, or already bound.
        """
        now = time.time()
        with self.unit(), self.db.atomic():
            bound = (
                OAuthState.update(browser=browser)
                .where(
                    (OAuthState.nonce == nonce)
                    & OAuthState.browser.is_null()
                    & (OAuthState.start_by >= now)
                    & (OAuthState.expires_at >= now)
                )
                .execute()
            )
            if bound != 1:
                return None
            return str(OAuthState.get_by_id(nonce).authorize_url)

    def oauth_state_bound(self, nonce: str) -> bool:
        """Whether a live flow with this nonce is bound to a browser (its connect link was opened)."""
        with self.unit():
            return (
                OAuthState.select()
                .where((OAuthState.nonce == nonce) & OAuthState.browser.is_null(False) & (OAuthState.expires_at >= time.time()))
                .exists()
            )

    def oauth_state_pending(self, nonce: str) -> bool:
        """Whether a live flow with this nonce waits for its callback."""
        with self.unit():
            return OAuthState.select().where((OAuthState.nonce == nonce) & (OAuthState.expires_at >= time.time())).exists()

    def consume_oauth_state(self, *, nonce: str, user_id: str, provider: str, browser: str | None) -> bool:
        """Use a flow once: True the first time, False if unknown, used, expired or mismatched.

        ``browser`` is the hash of the flow cookie the callback's browser sent, and must be the
        one the flow was bound to; None only when the caller proved the flow's user itself
        (its bearer token), which any browser may then carry.
        """
        condition = (
            (OAuthState.nonce == nonce)
            & (OAuthState.user_id == user_id)
            & (OAuthState.provider == provider)
            & (OAuthState.expires_at >= time.time())
        )
        if browser is not None:
            condition &= OAuthState.browser == browser
        with self.unit():
            deleted = OAuthState.delete().where(condition).execute()
        return deleted == 1


_INDEX_COLUMNS = "message_id, rev, state, thread_id, deleted, epoch"


def _entry_from_row(row: Sequence[Any]) -> IndexEntry:
    message_id, rev, state, thread_id, deleted, epoch = row
    return IndexEntry(message_id, rev, json.loads(state), thread_id, bool(deleted), epoch)

"""Cluster mode: a user's mail accounts sync on whichever node holds the user (docs/cluster.md).

mail.db is per node. Each account's record — its mail.db row (the sync checkpoint among it) and
its credentials' blob exactly as mail.db stores it (sealed with a key derived from the server
secret, which every node shares) — is kept in the replicated KV bucket `brain_mail_accounts`,
keyed by account id. Every second (brain.directory) the `mail_directory` actor of a node:

- puts the record of each local account whose user is placed on this node, when it changed
  since its last put (read after the commits, so a put never goes backwards);
- adopts each account in the bucket whose user is placed here and that mail.db lacks, once the
  user's store is complete (a takeover rebuilds it from the stream first): the row and
  credentials go into mail.db, the message index is rebuilt from the user's own events, and the
  account's sync starts;
- drops each local account whose user is placed on another node (its sync stopped, its rows
  deleted): the other node adopts it from the bucket;
- deletes what no node may adopt any more: the record of an account deleted here, and every
  record of a deleted user (brain.directory's rule, shared with the webhooks).

It also answers, for the push route, whose accounts a push notification names (`push_users`):
a notification reaching a node that does not sync the account is sent on to the user's node.

With several workers on a node (`server.workers`), the primary worker alone runs the directory
and the accounts' leases (brain.mail.ownership) decide which worker syncs each: an adopted
account is not started here but taken up by the owners' next check, a dropped one is stopped at
the worker holding its lease (`LeasedOwnership.stop`), which gives the lease up once the rows are
gone. The lease bucket is the cluster's, so a node coming back cannot take the lease of an
account that another node syncs meanwhile.

Why a checkpoint that lags is safe: the node's event sink (brain.api.cluster.NodeSink) answers a
page's events only once JetStream holds them, and the checkpoint is committed after that, so
the record is at or behind the stream. Resuming from an older checkpoint reads pages again, and
stores nothing twice, because the index it compares them with is rebuilt from the events
themselves: per message the number of its events is its revision (each revision is one event,
keyed by it: brain.mail.engine.event_key), its last state (folders, labels, flags) and whether
its last event deleted it. Fields no event carries: `content` is the account's (a mismatch costs
one `updated` event, not a duplicate); an account adopted in the middle of a resync starts the
resync again (reconcile must not delete what it did not look for).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from typing import Any


from brain.actors.base import Link
from brain.contracts import COMMIT_LOG, USER_HOME
from brain.directory import BucketDirectory, digest
from brain.errors import ServiceUnavailable
from brain.mail.db import Account, Credential, IndexEntry, Message, States
from brain.mail.engine import DELETED, RECEIVED, UPDATED
from brain.mail.ownership import LeasedOwnership, deliver_here, ownership_for, stop_actor
from brain.mail.service import MailService, push_secret_matches
from brain.process import Process
from brain.stash import StashKey
from brain.workers.peers import peers_for

__all__ = ["BUCKET", "PUSH_USERS", "MailDirectory", "push_users"]

log = logging.getLogger("brain.mail.directory")

BUCKET = "brain_mail_accounts"
# The user's events are read this many at a time when an account's index is rebuilt.
READ_PAGE = 1000
_MAIL_EVENTS = (RECEIVED, UPDATED, DELETED)
# What a worker without the directory asks the node's others (the primary answers): whose
# accounts a push notification names (brain.workers.peers).
PUSH_USERS = "mail.push-users"
_DIRECTORY: StashKey[MailDirectory] = StashKey("brain.mail.directory")


class MailDirectory(BucketDirectory):
    """The `mail_directory` actor of a cluster node (see the module docstring)."""

    bucket = BUCKET
    what = "mail accounts"
    log = log

    def __init__(self, *, link: Link | None = None, rt: Process, service: MailService) -> None:
        super().__init__(link=link, rt=rt)
        self.service = service
        ownership = ownership_for(rt)
        # Several workers: the account's lease holder syncs it, not necessarily this process.
        self.leased = ownership if isinstance(ownership, LeasedOwnership) else None
        self.to_start: dict[str, Account] = {}  # adopted accounts whose sync did not start yet
        rt.stash.set(_DIRECTORY, self)  # push notifications ask it whose accounts they name

    async def check(self) -> None:
        """Put what changed, drop what moved away, adopt what moved here (see the module docstring)."""
        home = self.rt.stash.get(USER_HOME)
        if home is None or not home.ready() or self.kv is None:
            return
        loop = asyncio.get_running_loop()
        local: dict[str, dict[str, Any]] = await loop.run_in_executor(None, self._local_records)
        for account_id, record in local.items():
            user_id = record["account"]["user_id"]
            where = home.node_of_user(user_id)
            if where == home.node_id:
                if account_id not in self.published:
                    held = self.held(account_id)
                    if held is not None and held["account"]["updated_at"] > record["account"]["updated_at"]:
                        # A copy from before the user left and came back: the bucket's is newer.
                        await self._drop(record["account"])
                        continue
                await self.put(account_id, user_id, record)
            elif where is not None and (account_id in self.published or self.held(account_id) is not None):
                await self._drop(record["account"])
        for account in list(self.to_start.values()):
            if account.id in local and home.node_of_user(account.user_id) == home.node_id:
                await self._start(account)
            else:
                self.to_start.pop(account.id, None)
        await self.forget_gone(home, local)
        for account_id in self.keys() - set(local):
            record = self.held(account_id)
            if record is None:
                continue
            user_id = record["account"]["user_id"]
            if home.node_of_user(user_id) == home.node_id and home.settled(user_id) and not home.deleted(user_id):
                await self._adopt(record)

    def user_of(self, record: dict[str, Any]) -> str:
        """The account's user."""
        return str(record["account"]["user_id"])

    def _local_records(self) -> dict[str, dict[str, Any]]:
        db = self.service.db
        with db.unit():
            accounts = list(Account.select().dicts())
            blobs = {row.account_id: bytes(row.blob) for row in Credential.select()}
        return {
            row["id"]: {"account": row, "credentials": _b64(blobs.get(row["id"]))}
            for row in accounts
        }

    async def _drop(self, account: dict[str, Any]) -> None:
        """The account's user is on another node now: stop its sync here and forget it (the bucket has it)."""
        loop = asyncio.get_running_loop()
        if self.leased is None:
            await stop_actor(self.rt, account["id"], account["user_id"])
        else:
            # At the worker holding its lease (ServiceUnavailable: ownership is starting; the next check).
            row = await loop.run_in_executor(None, self.service.db.account, account["id"])
            if row is not None:
                await self.leased.stop(row)
        await loop.run_in_executor(None, self._delete_rows, account["id"])
        self.published.pop(account["id"], None)
        self.users.pop(account["id"], None)
        self.dropped += 1
        log.info("mail account %s: its user is on another node; stopped syncing it here", account["id"])

    def _delete_rows(self, account_id: str) -> None:
        db = self.service.db
        with db.unit(), db.db.atomic():
            Message.delete().where(Message.account_id == account_id).execute()
            Credential.delete().where(Credential.account_id == account_id).execute()
            Account.delete().where(Account.id == account_id).execute()

    async def _adopt(self, record: dict[str, Any]) -> None:
        loop = asyncio.get_running_loop()
        account = await loop.run_in_executor(None, self._adopt_blocking, record)
        self.published[account.id] = digest(record)
        self.users[account.id] = account.user_id
        self.adopted += 1
        log.warning("mail account %s: its user is on this node now; syncing it here from its checkpoint", account.id)
        if account.state not in States.STOPPED and self.leased is None:  # leased: the owners' checks start it
            self.to_start[account.id] = account
            await self._start(account)

    async def _start(self, account: Account) -> None:
        """Start an adopted account's sync (tried again at each check until it runs)."""
        try:
            await deliver_here(self.rt, self.service, account, None, start=True)
        except ServiceUnavailable as exc:
            self.note(f"mail account {account.id}: its sync did not start yet ({exc})")
            return
        self.to_start.pop(account.id, None)

    def _adopt_blocking(self, record: dict[str, Any]) -> Account:
        fields = dict(record["account"])
        account_id, user_id = fields["id"], fields["user_id"]
        rows_epoch = fields["epoch"]
        if fields["phase"] == "reconcile" or (fields["phase"] == "initial" and fields["resync"]):
            # The resync's own record of what it saw is this node's no more: look at everything again.
            fields.update(phase="initial", position=None, resync=True, epoch=rows_epoch + 1, progress_done=0,
                          progress_total=None)
        entries = self._index_from_events(account_id, user_id, fields.get("content"), rows_epoch)
        fields["updated_at"] = time.time()
        db = self.service.db
        with db.unit():
            with db.db.atomic():  # all of it or nothing: a half-adopted account would be taken for a whole one
                Account.insert(**fields).on_conflict_replace().execute()
                blob = record.get("credentials")
                if blob is not None:
                    Credential.insert(account_id=account_id, blob=base64.b64decode(blob), updated_at=time.time()
                                      ).on_conflict_replace().execute()
                Message.delete().where(Message.account_id == account_id).execute()
                db.db.connection().executemany(
                    "INSERT INTO messages (account_id, message_id, rev, state, thread_id, deleted, epoch)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [(account_id, e.message_id, e.rev, json.dumps(e.state, separators=(",", ":")), e.thread_id,
                      e.deleted, e.epoch) for e in entries],
                )
            return Account.get_by_id(account_id)

    def _index_from_events(
        self, account_id: str, user_id: str, content: str | None, epoch: int
    ) -> list[IndexEntry]:
        """The message index of an account as its events in the user's store say it."""
        commits = self.rt.stash[COMMIT_LOG]
        found: dict[str, IndexEntry] = {}
        after = 0
        while True:
            page = commits.changes_from_thread(user_id, after, READ_PAGE)
            for event in page:
                data = event.get("data")
                if event["type"] not in _MAIL_EVENTS or not isinstance(data, dict) or data.get("account") != account_id:
                    continue
                message_id = str(data["message_id"])
                entry = found.get(message_id)
                state = dict(entry.state) if entry is not None else {"folders": [], "labels": [], "flags": {}}
                for key in ("folders", "labels", "flags"):
                    if key in data:
                        state[key] = data[key]
                state["content"] = content
                if isinstance(data.get("previous_message_id"), str):
                    state["was"] = data["previous_message_id"]
                found[message_id] = IndexEntry(
                    message_id, (entry.rev if entry is not None else 0) + 1, state,
                    data.get("thread_id", entry.thread_id if entry is not None else None),
                    event["type"] == DELETED, epoch,
                )
            if len(page) < READ_PAGE:
                return list(found.values())
            after = page[-1]["seq"]

    def push_users(self, provider: str, targets: list[tuple[str, str | None]]) -> set[str]:
        """The users of the bucket's accounts that a push notification names: channel keys as
        `PushReply.targets`, each with the secret it carried (checked as mail.db's are)."""
        wanted: dict[str, list[str | None]] = {}
        for key, secret in targets:
            wanted.setdefault(key, []).append(secret)
        found = set()
        for record in self.records.values():
            account = record.get("account") or {}
            carried = wanted.get(account.get("push_key")) if account.get("provider") == provider else None
            if carried and any(push_secret_matches(account.get("push"), secret) for secret in carried):
                found.add(account["user_id"])
        return found

    def stats(self) -> dict[str, Any]:
        """Figures for /health."""
        return {"published": len(self.published), "adopted": self.adopted, "dropped": self.dropped,
                "last_error": self.last_error or None}


async def push_users(rt: Process, provider: str, targets: list[tuple[str, str | None]]) -> set[str]:
    """Cluster mode: the users whose accounts (synced on any node) a push notification names, as
    the bucket says — this process's directory, or the node's primary worker's."""
    directory = rt.stash.get(_DIRECTORY)
    if directory is not None:
        return directory.push_users(provider, targets)
    if not rt.worker.several:
        return set()
    answers = await peers_for(rt).gather(PUSH_USERS, {"provider": provider, "targets": targets})
    return {user for answer in answers.values() if isinstance(answer, list) for user in answer if isinstance(user, str)}


def answer_push_users(rt: Process) -> None:
    """Let the node's other workers ask this one's directory (if it runs one) whose accounts a push names."""
    async def answer(data: Any) -> list[str]:
        directory = rt.stash.get(_DIRECTORY)
        if directory is None or not isinstance(data, dict):
            return []
        targets = [(str(key), None if secret is None else str(secret)) for key, secret in data.get("targets") or ()]
        return sorted(directory.push_users(str(data.get("provider")), targets))

    peers_for(rt).answer(PUSH_USERS, answer)


def _b64(blob: bytes | None) -> str | None:
    return None if blob is None else base64.b64encode(blob).decode()



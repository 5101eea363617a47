"""What the cluster's directories share: a record per thing in a replicated KV bucket, checked
against this node's own copy every second (docs/cluster.md).

Per-node data that must follow its user from node to node — mail accounts
(brain.mail.directory), webhook endpoints (brain.webhooks.directory) — is kept in a bucket of
its own, keyed by the thing's id. A `BucketDirectory` is the actor that connects, opens its
bucket (created on first use, `nats.replicas`), keeps the whole bucket in memory through a KV
watcher (`held`, `keys`: no request to JetStream per record and check, however many records
the other nodes hold), then, once the watcher has delivered what the bucket held, calls
`check()` every `CHECK_SECONDS` until it stops; a failed check is logged once per distinct
error and the next one comes on time. Subclasses write `check()`: put what changed here, adopt
what moved here, drop what moved away. `published`/`users` remember what this node put (for
"deleted here, so from the bucket too"), `digest()` says whether a record changed since.

What leaves the bucket, one rule for every directory (`forget_gone`):

- a record this node put whose thing is gone from this node (its user deleted it, or it went
  with the user's account) while its user is placed here — or nowhere any more: a deleted
  user's placement entry is removed (brain.api.placement);
- every record of a user this node knows was deleted (`UserHome.deleted`), whoever put it: the
  user's node may have been down when the deletion came, restarted before it looked, or be
  gone for good, and a record left there would be adopted again (a deleted user's mail account
  syncing on, with their credentials) or never go. `put` and adoption skip such users too.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import Iterable
from typing import Any

from brain import jetstream
from brain.actors.base import Link
from brain.actors.loop import LoopActor
from brain.contracts import USER_HOME, UserHome
from brain.nats_auth import process_connect_options
from brain.process import Process

__all__ = ["CHECK_SECONDS", "BucketDirectory", "digest"]

CHECK_SECONDS = 1.0
_GONE = ("DEL", "PURGE")


class BucketDirectory(LoopActor):
    """A node's side of one replicated bucket (see the module docstring)."""

    bucket: str = ""
    what: str = ""  # "mail accounts", "webhooks": for the connection's name and the log
    log = logging.getLogger("brain.directory")

    def __init__(self, *, link: Link | None = None, rt: Process) -> None:
        super().__init__(link=link, loop=rt.loop)
        self.rt = rt
        self.nc: Any = None
        self.kv: Any = None
        self.records: dict[str, dict[str, Any]] = {}  # the bucket, as the watcher has delivered it
        self.loaded = False  # the watcher has delivered what the bucket held when it began
        self._watcher: Any = None
        self._watching: asyncio.Task[None] | None = None
        self.published: dict[str, str] = {}  # id -> digest of the record last put
        self.users: dict[str, str] = {}  # id -> user id, of the records put
        self.adopted = 0
        self.dropped = 0
        self.last_error = ""

    async def main(self) -> None:
        """Connect, open the bucket, then check every CHECK_SECONDS until stopped."""
        self.nc = await jetstream.connect_kept(
            process_connect_options(self.rt), name=f"brain-{self.what.replace(' ', '-')}-directory",
            stopping=lambda: self.stopping, note=self.note,
        )
        if self.nc is None:
            return
        js = self.nc.jetstream(timeout=5)
        replicas = self.rt.settings.nats.replicas
        self.kv = await jetstream.retried(lambda: jetstream.open_bucket(js, self.bucket, replicas=replicas),
                                          what=f"bucket {self.bucket}", stopping=lambda: self.stopping, note=self.note)
        if self.kv is None:
            return
        self._watcher = await jetstream.retried(self.kv.watchall, what=f"watching bucket {self.bucket}",
                                                stopping=lambda: self.stopping, note=self.note)
        if self._watcher is None:
            return
        self._watching = asyncio.ensure_future(self._watch())
        await jetstream.every(lambda: CHECK_SECONDS, self._check_loaded, what=f"{self.what} across nodes",
                              stopping=lambda: self.stopping, note=self.note)

    async def _check_loaded(self) -> None:
        if self.loaded:
            await self.check()

    async def _watch(self) -> None:
        async for entry in self._watcher:
            if entry is None:  # the end of what the bucket held when the watch began
                self.loaded = True
            elif entry.operation in _GONE or not entry.value:
                self.records.pop(entry.key, None)
            else:
                try:
                    self.records[entry.key] = json.loads(entry.value)
                except ValueError:
                    self.note(f"bucket {self.bucket}: {entry.key!r} holds no JSON; ignored")

    async def close(self) -> None:
        """Stop watching, close the connection."""
        if self._watcher is not None:
            try:
                await self._watcher.stop()
            except Exception:  # noqa: BLE001 - the connection is closing anyway
                pass
        if self._watching is not None:
            self._watching.cancel()
        await jetstream.close_quietly(self.nc)

    async def check(self) -> None:
        """One round (the subclass's)."""
        raise NotImplementedError

    async def forget_gone(self, home: UserHome, local: Iterable[str]) -> None:
        """Delete from the bucket what no node may adopt any more (the module docstring's rule);
        `local`: the keys of what this node holds now."""
        for key in set(self.published) - set(local):
            if home.node_of_user(self.users.get(key, "")) in (home.node_id, None):
                await self.kv.delete(key)
                self.log.info("%s directory: %s deleted here, so from the bucket too", self.what, key)
            self.published.pop(key, None)
            self.users.pop(key, None)
        for key, record in list(self.records.items()):
            if home.deleted(self.user_of(record)):
                await self.kv.delete(key)
                self.records.pop(key, None)  # as the watcher will say: not deleted again meanwhile
                self.log.info("%s directory: %s belonged to a deleted user; deleted from the bucket", self.what, key)

    def user_of(self, record: dict[str, Any]) -> str:
        """The user a record of the bucket belongs to (the subclass's)."""
        raise NotImplementedError

    async def put(self, key: str, user_id: str, record: dict[str, Any]) -> None:
        """Put the record under `key` unless this node put the same one last (or its user was deleted)."""
        home = self.rt.stash.get(USER_HOME)
        if home is not None and home.deleted(user_id):
            return
        fingerprint = digest(record)
        if self.published.get(key) != fingerprint:
            await self.kv.put(key, json.dumps(record, separators=(",", ":")).encode())
            self.published[key] = fingerprint
            self.users[key] = user_id

    def held(self, key: str) -> dict[str, Any] | None:
        """The record in the bucket under `key` (None: none), as the watcher last delivered it."""
        return self.records.get(key)

    def keys(self) -> set[str]:
        """Every key of the bucket, as the watcher has delivered them."""
        return set(self.records)

    def note(self, message: str) -> None:
        """Log a failure once per distinct message; /health shows the last."""
        if message != self.last_error:
            self.log.warning("%s directory: %s", self.what, message)
        self.last_error = message


def digest(record: dict[str, Any]) -> str:
    """A record's fingerprint: whether it changed since it was put."""
    return hashlib.sha256(json.dumps(record, sort_keys=True, separators=(",", ":")).encode()).hexdigest()

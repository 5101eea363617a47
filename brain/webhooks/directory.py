"""Cluster mode: a user's webhook endpoints deliver from whichever node holds the user (docs/cluster.md).

webhooks.db is per node, as mail.db is, and the same answer serves it (brain.mail.directory):
each endpoint's record — its webhooks.db row (the secret sealed with a key derived from the
server secret, which every node shares) and its user's *resume point* — is kept in the
replicated KV bucket `brain_webhooks`, keyed by endpoint id. Every second the
`webhook_directory` actor of a node (its primary worker; brain.directory):

- puts the record of each local endpoint whose user is placed on this node, when it changed;
- adopts the endpoints in the bucket whose user is placed here and that webhooks.db lacks, once
  the user's store is complete (a takeover rebuilds it from the stream first): the rows go into
  webhooks.db and the user's cursor is set back to the resume point, so the queue reads the
  user's commits from there again;
- drops the local endpoints of a user placed on another node once the bucket holds them (their
  deliveries and cursor with them): the other node adopts them;
- deletes what no node may adopt any more: the record of an endpoint deleted here, and every
  record of a deleted user (brain.directory's rule, shared with the mail accounts).

Why nothing is lost and repeats are harmless: the resume point is the user's cursor or, if
lower, just before the oldest delivery still pending, so everything after it is queued again by
the next node — including what the last node had sent, under the same `webhook-id`
(brain.webhooks.queue.message_id: the endpoint and the event's `seq`, which the rebuilt store
keeps), which receivers drop as a repeat. The record lags by up to a check; it never leads.
"""

from __future__ import annotations

import logging
from typing import Any

from brain.actors import bridge
from brain.actors.base import Link
from brain.contracts import USER_HOME
from brain.directory import BucketDirectory, digest
from brain.process import Process
from brain.webhooks.state import Webhooks

__all__ = ["BUCKET", "WebhookDirectory"]

log = logging.getLogger("brain.webhooks.directory")

BUCKET = "brain_webhooks"


class WebhookDirectory(BucketDirectory):
    """The `webhook_directory` actor of a cluster node (see the module docstring)."""

    bucket = BUCKET
    what = "webhooks"
    log = log

    def __init__(self, *, link: Link | None = None, rt: Process, hub: Webhooks) -> None:
        super().__init__(link=link, rt=rt)
        self.hub = hub

    async def check(self) -> None:
        """Put what changed, drop what moved away, adopt what moved here (see the module docstring)."""
        home = self.rt.stash.get(USER_HOME)
        if home is None or not home.ready() or self.kv is None:
            return
        local: dict[str, dict[str, Any]] = await bridge.ask(self.hub.queue().records())
        leaving: set[str] = set()
        for endpoint_id, record in local.items():
            user_id = record["endpoint"]["user_id"]
            where = home.node_of_user(user_id)
            if where == home.node_id:
                await self.put(endpoint_id, user_id, record)
            elif where is not None and (endpoint_id in self.published
                                        or self.held(endpoint_id) is not None):
                leaving.add(user_id)
        for user_id in leaving:
            await self._drop(user_id, [e for e, r in local.items() if r["endpoint"]["user_id"] == user_id])
        await self.forget_gone(home, local)
        arriving = []
        for endpoint_id in self.keys() - set(local):
            record = self.held(endpoint_id)
            if record is None:
                continue
            user_id = record["endpoint"]["user_id"]
            if home.node_of_user(user_id) == home.node_id and home.settled(user_id) and not home.deleted(user_id):
                arriving.append(record)
        if arriving:
            await self._adopt(arriving)

    def user_of(self, record: dict[str, Any]) -> str:
        """The endpoint's user."""
        return str(record["endpoint"]["user_id"])

    async def _drop(self, user_id: str, endpoint_ids: list[str]) -> None:
        """The user is on another node now: forget their endpoints here (the bucket has them)."""
        await bridge.ask(self.hub.queue().purge(user_id))
        await self._announce()
        for endpoint_id in endpoint_ids:
            self.published.pop(endpoint_id, None)
            self.users.pop(endpoint_id, None)
        self.dropped += len(endpoint_ids)
        log.info("webhooks of %s: the user is on another node; %d endpoint(s) deliver from there now",
                 user_id, len(endpoint_ids))

    async def _adopt(self, records: list[dict[str, Any]]) -> None:
        added = await bridge.ask(self.hub.queue().adopt(records))
        await self._announce()
        for record in records:
            endpoint_id = record["endpoint"]["id"]
            self.published[endpoint_id] = digest(record)
            self.users[endpoint_id] = record["endpoint"]["user_id"]
        self.adopted += added
        log.warning("webhooks: %d endpoint(s) of users now on this node deliver from here, from their resume points",
                    added)

    async def _announce(self) -> None:
        # The node's other workers re-read who has endpoints (brain.webhooks.state.link_workers).
        if self.hub.announce is not None:
            await self.hub.announce()

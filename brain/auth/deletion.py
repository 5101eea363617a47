"""Deleting an account, the auth role's side: auth.db first, then the core tells every plugin.

`AccountDeletions.delete` (behind `POST /api/auth/delete-user` and `brain users delete`) removes
the user, their sessions and tokens from auth.db in one transaction (the AuthIssuer records the
deletion as not yet published) and hands it to the process's `brain.deletions.Deletions`, which
revokes and purges in this process if any plugin here keeps user data, and publishes it for the
others. It is also the process's `DeletionSource`: the relay asks it for the deletions that
still wait to be published.
"""

from __future__ import annotations

import functools
from typing import Any

from brain.auth.context import AuthContext, context_for
from brain.auth.db import DeletedUser
from brain.contracts import UserDeleted
from brain.deletions import deletions_for
from brain.process import Process
from brain.stash import StashKey

__all__ = ["AccountDeletions", "account_deletions", "as_event"]


def as_event(row: DeletedUser) -> UserDeleted:
    """The core's record of a deletion row of auth.db."""
    return UserDeleted(row.user_id, row.deleted_at, row.tokens_valid_until)


class AccountDeletions:
    """Deletes accounts through the AuthIssuer; where the relay finds unpublished deletions."""

    def __init__(self, rt: Process) -> None:
        self.rt = rt

    @functools.cached_property
    def ctx(self) -> AuthContext:
        """The process's AuthContext."""
        return context_for(self.rt)

    async def delete(self, user_id: str) -> tuple[DeletedUser, dict[str, Any] | None] | None:
        """Delete the user; what this process purged (None: nothing here, other processes will)."""
        row = await self.ctx.issuer("delete_user", user_id=user_id)
        if row is None:
            return None
        return row, await deletions_for(self.rt).deleted(as_event(row))

    async def pending(self) -> list[UserDeleted]:
        """Deletions not yet published, oldest first."""
        return [as_event(row) for row in await self.ctx.issuer("unpublished_deletions")]

    async def mark_published(self, user_ids: list[str]) -> None:
        """Record that these deletions reached JetStream."""
        await self.ctx.issuer("mark_published", user_ids=user_ids)


_DELETIONS: StashKey[AccountDeletions] = StashKey("brain.auth.deletions")


def account_deletions(rt: Process) -> AccountDeletions:
    """The process's AccountDeletions."""
    return rt.stash.setdefault(_DELETIONS, lambda: AccountDeletions(rt))

"""The commit log the API role offers other plugins (`brain.contracts.COMMIT_LOG`).

Its stores' commit order, read through the StoreManager, and a word after every commit from the
Doorbell the stores ring; webhooks build their durable delivery queue on it.

On a cluster node that answers writes once the replicated stream holds them, the log ends
before the first event JetStream has not acknowledged yet, and the word comes when it has
(brain.api.outbox.Confirmations): a webhook never carries an event a failover would lose.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from brain.api.events import StoredEvent, commit_seq
from brain.api.outbox import Doorbell
from brain.api.store_manager import StoreManager


class CommitLog:
    """`brain.contracts.CommitLog` over this process's stores."""

    def __init__(self, stores: StoreManager, doorbell: Doorbell) -> None:
        self._stores = stores
        self._doorbell = doorbell

    def listen(self, listener: Callable[[str, int], None]) -> None:
        """`listener(user_id, last_seq)` after every commit, on the committing thread."""

        if self._doorbell.confirmations is not None:
            self._doorbell.on_confirmed(listener)
            return

        def committed(user_id: str, events: list[StoredEvent]) -> None:
            listener(user_id, commit_seq(events[-1]))

        self._doorbell.listen(committed)

    def changes_from_thread(self, user_id: str, after: int, limit: int, timeout: float = 30) -> list[dict[str, Any]]:
        """Events with `seq` above `after`, oldest first (blocking)."""
        rows = self._stores.changes_from_thread(user_id, after, limit, timeout)
        confirmations = self._doorbell.confirmations
        if confirmations is not None:
            rows, _ = confirmations.confirmed_part(user_id, rows, _seq)
        return rows

    def head_from_thread(self, user_id: str, timeout: float = 30) -> int:
        """The last event's `seq` (blocking)."""
        return self._stores.head_from_thread(user_id, timeout)


def _seq(row: dict[str, Any]) -> int:
    return int(row["seq"])

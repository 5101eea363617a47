"""A mail provider that answers instantly: the benchmark's measure of brain's own ingest path.

It makes up `messages` messages (its `[plugins.instant]` table) without any I/O, so the figure
is brain's pipeline alone — sync actor, checkpoints in mail.db, events in the user's store,
outbox to JetStream — with no client library or fake server in the way. The Gmail figure
(google-api-python-client against brain/testing/fakes/gmail.py) is measured beside it.
"""

from __future__ import annotations

import time
from typing import Any

from brain.mail.provider import Credentials, MailMessage, MailProvider, SyncContext, SyncPage, iso_utc
from brain.plugins import hookimpl


class InstantProvider(MailProvider):
    """Serves a synthetic mailbox of `messages` messages, page after page, with no waiting."""

    name = "instant"
    title = "Instant (benchmark)"
    oauth = False

    def refresh(self, credentials: Credentials) -> Credentials:
        return Credentials(access_token="instant", expires_at=time.time() + 3600, refresh_token=credentials.refresh_token)

    def account_address(self, ctx: SyncContext) -> str:
        return "instant@bench.invalid"

    def initial_sync(self, ctx: SyncContext, checkpoint: dict[str, Any] | None) -> SyncPage:
        total = int(self.settings.get("messages", 5000))
        start = int((checkpoint or {}).get("offset", 0))
        end = min(total, start + ctx.page_size)
        date = iso_utc(time.time())
        messages = [
            MailMessage(
                id=f"m{i:08d}",
                thread_id=f"t{i // 4:08d}",
                internet_message_id=f"<m{i}@bench.invalid>",
                subject=f"Benchmark message {i}",
                sender="Sender <sender@bench.invalid>",
                to=("instant@bench.invalid",),
                date=date,
                snippet="A short preview of the message body, as providers send it.",
                labels=("INBOX", "UNREAD"),
                size=4096,
            )
            for i in range(start, end)
        ]
        more = end < total
        return SyncPage(
            messages=messages,
            next={"offset": end} if more else None,
            cursor=None if more else {"position": total},
            estimated_total=total,
        )

    def incremental_sync(self, ctx: SyncContext, cursor: dict[str, Any]) -> SyncPage:
        return SyncPage(cursor=cursor)


@hookimpl
def register_mail_providers(register: Any) -> None:
    """Register the instant provider."""
    register(InstantProvider)

"""A mail provider that answers instantly: the benchmark's measure of brain's own ingest path.

It makes up `messages` messages (its `[plugins.instant]` table) without any I/O, so the figure
is brain's pipeline alone — the conversion into the message model, sync actor, checkpoints in
mail.db, events in the user's store, outbox to JetStream — with no client library or fake
server in the way. `instant` serves short plain-text messages; `instant_html` (same table)
serves bench.mail_convert's HTML-only messages, 20 KiB of HTML on average, converted to text
on the way in. The Gmail figure (google-api-python-client against brain/testing/fakes/gmail.py)
is measured beside it.
"""

from __future__ import annotations

import time
from functools import partial
from typing import Any

from bench.mail_convert import corpus
from brain.mail.provider import (
    Credentials,
    Flags,
    MailProvider,
    MessageContext,
    SyncContext,
    SyncPage,
    iso_utc,
    message_from_mime,
)
from brain.plugins import hookimpl

# Distinct messages to cycle through: enough variety for realistic conversion costs.
POOL = 60
PLAIN = (
    b"From: Sender <sender@bench.invalid>\r\nTo: instant@bench.invalid\r\nSubject: Benchmark message\r\n"
    b"Date: Tue, 04 Mar 2025 10:00:00 +0000\r\nMessage-ID: <plain@bench.invalid>\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n\r\nA short message body, as most mail is.\r\n"
)


class InstantProvider(MailProvider):
    """Serves a synthetic mailbox of `messages` messages, page after page, with no waiting."""

    name = "instant"
    title = "Instant (benchmark)"
    oauth = False

    #: Whether its messages are bench.mail_convert's HTML ones (else short plain text).
    html = False

    def __init__(self, settings: Any, *, page_size: int = 100) -> None:
        super().__init__(settings, page_size=page_size)
        self.total = int(settings.get("messages", 5000))
        self.pool = corpus(POOL)[0] if self.html else [PLAIN]

    def refresh(self, credentials: Credentials) -> Credentials:
        return Credentials(access_token="instant", expires_at=time.time() + 3600, refresh_token=credentials.refresh_token)

    def account_address(self, ctx: SyncContext) -> str:
        return "instant@bench.invalid"

    def initial_sync(self, ctx: SyncContext, checkpoint: dict[str, Any] | None) -> SyncPage:
        start = int((checkpoint or {}).get("offset", 0))
        end = min(self.total, start + ctx.page_size)
        date = iso_utc(time.time())
        raws = [self.pool[i % len(self.pool)] for i in range(start, end)]
        contexts = [
            MessageContext(
                message_id=f"m{i:08d}", thread_id=f"t{i // 4:08d}", labels=("INBOX",), flags=Flags(),
                own_addresses=ctx.own_addresses, date=date,
            )
            for i in range(start, end)
        ]
        messages = ctx.convert(partial(message_from_mime, options=ctx.options.convert), raws, contexts)
        more = end < self.total
        return SyncPage(
            messages=messages,
            next={"offset": end} if more else None,
            cursor=None if more else {"position": self.total},
            estimated_total=self.total,
        )

    def incremental_sync(self, ctx: SyncContext, cursor: dict[str, Any]) -> SyncPage:
        return SyncPage(cursor=cursor)


class InstantHtmlProvider(InstantProvider):
    """The same, every message an HTML one of 20 KiB on average (issue 15's ingest with bodies)."""

    name = "instant_html"
    title = "Instant, HTML bodies (benchmark)"
    html = True


@hookimpl
def register_mail_providers(register: Any) -> None:
    """Register the instant providers."""
    register(InstantProvider)
    register(InstantHtmlProvider)

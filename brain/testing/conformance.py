"""The conformance suite every mail provider passes: the contract of `brain.mail.provider.MailProvider`.

A provider distribution subclasses `ProviderConformance` in its own tests and gives it a
`mailbox` fixture: a `Mailbox` that drives the provider's fake (add and delete a message, make
the credentials stop working) and makes providers configured for it. The suite then checks, with
the provider called exactly as the core calls it (`brain.testing.sync_context`):

- the class registers (a name, nothing abstract left);
- it names the mailbox's address;
- a full sync pages through every message exactly once and ends with a cursor;
- every message is whole: it follows the JSON Schema of `mail.message.received` and carries
  its subject, sender and text;
- an incremental sync from that cursor reports a message added and one deleted since;
- credentials the provider refuses are `AuthFailed` (the account then needs the user), not a
  crash or a retry loop.

```python
class TestMyProvider(ProviderConformance):
    @pytest.fixture
    def mailbox(self, fake):
        return MyMailbox(fake)
```
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import jsonschema
import pytest

from brain.mail.provider import AuthFailed, Credentials, MailProvider, SyncPage, event_schemas
from brain.mail.registry import ProviderRegistry
from brain.testing import sync_context

__all__ = ["FakeMailbox", "Mailbox", "ProviderConformance"]

# A page size smaller than the mailbox, so that paging is exercised.
PAGE_SIZE = 2
MESSAGES = 5


class Mailbox(Protocol):
    """One test mailbox at a provider's fake, and providers configured to reach it."""

    def provider(self, *, page_size: int) -> MailProvider:
        """A fresh provider instance configured for the fake."""

    def credentials(self) -> Credentials:
        """Credentials the provider accepts for this mailbox (as connect would store them)."""

    def address(self) -> str:
        """The mailbox's address."""

    def add(self, subject: str) -> str:
        """Deliver a new message; its id as the provider reports it."""

    def delete(self, message_id: str) -> None:
        """Delete a message (as the user would: it is gone from the mailbox)."""

    def revoke(self) -> None:
        """Make the credentials stop working (the user revoked access, or changed the password)."""


class FakeMailbox:
    """A `Mailbox` of one user at an OAuth fake of brain.testing.fakes (FakeGmail, FakeMicrosoft)."""

    def __init__(self, fake: Any, user: str, make_provider: Callable[[int], MailProvider]) -> None:
        self.fake = fake
        self.user = user
        self.make_provider = make_provider
        self.refresh_token = fake.issue_refresh_token(user)

    def provider(self, *, page_size: int) -> MailProvider:
        return self.make_provider(page_size)

    def credentials(self) -> Credentials:
        return Credentials(refresh_token=self.refresh_token)

    def address(self) -> str:
        return self.user

    def add(self, subject: str) -> str:
        return str(self.fake.add_message(self.user, subject=subject))

    def delete(self, message_id: str) -> None:
        self.fake.delete_message(self.user, message_id)

    def revoke(self) -> None:
        self.fake.revoke(self.user)


def _drain(first: Any) -> tuple[list[SyncPage], dict[str, Any] | None]:
    """Call `first(position)` page after page; the pages and the final cursor."""
    pages: list[SyncPage] = []
    position: dict[str, Any] | None = None
    for _ in range(100):
        page = first(position)
        pages.append(page)
        if page.next is None:
            return pages, page.cursor
        position = page.next
    raise AssertionError("the sync did not end within 100 pages")


def _full_sync(mailbox: Mailbox) -> tuple[list[SyncPage], dict[str, Any] | None]:
    """Every page of a full sync of the mailbox by a fresh provider, and the final cursor."""
    provider = mailbox.provider(page_size=PAGE_SIZE)
    try:
        ctx = sync_context(provider, mailbox.credentials())
        return _drain(lambda position: provider.initial_sync(ctx, position))
    finally:
        provider.close()


class ProviderConformance:
    """Subclass with a `mailbox` fixture (see the module docstring)."""

    @pytest.fixture
    def mailbox(self) -> Mailbox:
        """The provider's own tests must give one."""
        raise NotImplementedError("define a `mailbox` fixture in the subclass")

    def test_the_provider_registers(self, mailbox: Mailbox) -> None:
        provider = mailbox.provider(page_size=PAGE_SIZE)
        try:
            registry = ProviderRegistry()
            registry.register(type(provider))
            assert registry.names() == [type(provider).name]
        finally:
            provider.close()

    def test_it_names_the_mailbox(self, mailbox: Mailbox) -> None:
        provider = mailbox.provider(page_size=PAGE_SIZE)
        try:
            address = provider.account_address(sync_context(provider, mailbox.credentials()))
            assert address.lower() == mailbox.address().lower()
        finally:
            provider.close()

    def test_a_full_sync_pages_through_every_message_once(self, mailbox: Mailbox) -> None:
        ids = {mailbox.add(f"message {i}") for i in range(MESSAGES)}
        pages, cursor = _full_sync(mailbox)
        seen = [message.message_id for page in pages for message in page.messages]
        assert len(pages) > 1, "a page size below the mailbox's size must give more than one page"
        assert sorted(seen) == sorted(ids), "every message exactly once"
        assert cursor is not None, "a finished full sync names where incremental sync starts"

    def test_every_message_is_whole_and_follows_the_event_schema(self, mailbox: Mailbox) -> None:
        added = mailbox.add("whole message")
        pages, _ = _full_sync(mailbox)
        records = [message for page in pages for message in page.messages]
        schema = event_schemas()["mail.message.received"]
        for record in records:
            jsonschema.Draft202012Validator(schema).validate(record.as_event_data())
        (mine,) = [r for r in records if r.message_id == added]
        assert mine.subject == "whole message", "the subject, decoded"
        assert mine.direction == "received" and mine.sender is not None
        assert mine.body_text.strip(), "the text of the message, not only its envelope"

    def test_an_incremental_sync_reports_what_changed(self, mailbox: Mailbox) -> None:
        kept = mailbox.add("kept")
        doomed = mailbox.add("doomed")
        provider = mailbox.provider(page_size=PAGE_SIZE)
        try:
            ctx = sync_context(provider, mailbox.credentials())
            _, cursor = _drain(lambda position: provider.initial_sync(ctx, position))
            assert cursor is not None
            added = mailbox.add("added later")
            mailbox.delete(doomed)
            pages, _ = _drain(lambda position: provider.incremental_sync(ctx, position or cursor))
        finally:
            provider.close()
        changed = {message.message_id for page in pages for message in page.messages}
        deleted = {message_id for page in pages for message_id in page.deleted}
        assert added in changed
        assert doomed in deleted
        assert kept not in deleted

    def test_refused_credentials_are_auth_failed(self, mailbox: Mailbox) -> None:
        credentials = mailbox.credentials()
        mailbox.revoke()
        provider = mailbox.provider(page_size=PAGE_SIZE)
        try:
            ctx = sync_context(provider, credentials)
            with pytest.raises(AuthFailed):
                provider.initial_sync(ctx, None)
        finally:
            provider.close()

"""Attachments on demand: `GET /mail/messages/{message_id}/attachments/{attachment_id}`.

Events carry attachment metadata only; the content is fetched from the provider when someone
asks, with the account's own credentials, and streamed as it comes. A message belongs to the
caller only if one of the caller's accounts synced it (mail.db's message index), so another
user's ids are a 404 like ids that never existed. Sizes are capped (`[mail]
max_attachment_bytes`): refused up front when the provider says how big, cut off if it lied.

With `[mail] cache_attachments` a downloaded attachment is kept in the user's directory,
`data/users/{user}/attachments/{sha256}` (one file per distinct content; the index in mail.db
says which attachment is which file), served from there the next time, counted against the
user's quota for it (`[mail] attachment_cache_bytes`: what would pass it is served, not kept),
shown in `/mail/status` and deleted with the user's directory.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from brain.errors import BadRequest, Conflict, HTTPError, NotFound, PayloadTooLarge, ServiceUnavailable
from brain.ids import is_valid_user_id
from brain.mail.db import Account
from brain.mail.provider import AuthFailed, MessageGone, ProviderError, RateLimited, Transient

if TYPE_CHECKING:
    from brain.mail.service import MailService

__all__ = ["Download", "Downloads", "content_disposition", "safe_mime_type"]

log = logging.getLogger("brain.mail")

_MAX_ID = 1024
_CHUNK = 64 * 1024
_MIME_TYPE = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]{0,126}/[a-z0-9][a-z0-9!#$&^_.+-]{0,126}")


@dataclass
class Download:
    """An attachment ready to stream: what to say about it, and its content in chunks."""

    mime_type: str
    filename: str
    size: int | None
    chunks: Iterator[bytes]
    cached: bool = False
    exact: bool = True  # size is the content's length to the byte (else only for the cap)

    def close(self) -> None:
        """Release what produces the chunks (a provider connection, a file) if not read to the end."""
        close = getattr(self.chunks, "close", None)
        if close is not None:
            close()


class Downloads:
    """Finds the caller's message, fetches its attachment (or the cached copy), caps and caches it."""

    def __init__(self, service: MailService) -> None:
        self.service = service
        self.settings = service.settings.mail
        self.users = (service.settings.data_path / "users").resolve()

    def open(self, user_id: str, message_id: Any, attachment_id: Any, account_id: Any = None) -> Download:
        """The attachment of the caller's message; 404 when the caller has no such message.

        Blocking: it talks to the provider (call it on a worker thread); the chunks too.
        """
        for name, value in (("message id", message_id), ("attachment id", attachment_id)):
            if not isinstance(value, str) or not value or len(value) > _MAX_ID:
                raise BadRequest(f"{name} must be 1 to {_MAX_ID} characters")
        account = self._account(user_id, message_id, account_id)
        if self.settings.cache_attachments:
            cached = self._cached(account, message_id, attachment_id)
            if cached is not None:
                return cached
        provider, ctx = self.service.provider_context(account)
        try:
            content = provider.fetch_attachment(ctx, message_id, attachment_id)
        except BaseException as exc:
            provider.close()
            raise _client_error(exc, account) from None
        cap = self.settings.max_attachment_bytes
        if content.size is not None and content.size > cap:
            provider.close()
            raise PayloadTooLarge(f"the attachment is {content.size} bytes, more than the {cap} this server hands out")
        chunks = _capped(content.chunks, cap, provider, account)
        if self.settings.cache_attachments:
            chunks = self._kept(chunks, account, message_id, attachment_id, content.mime_type, content.filename)
        return Download(safe_mime_type(content.mime_type), content.filename, content.size, chunks, exact=content.exact)

    def usage(self, user_id: str) -> dict[str, int]:
        """What the user's attachment cache holds: distinct files and their bytes."""
        files, size = self.service.db.cache_usage(user_id)
        return {"files": files, "bytes": size, "limit_bytes": self.settings.attachment_cache_bytes}

    # ---------------------------------------------------------------------------------------

    def _account(self, user_id: str, message_id: str, account_id: Any) -> Account:
        accounts = self.service.db.message_accounts(user_id, message_id)
        if account_id is not None:
            accounts = [a for a in accounts if a.id == account_id]
        if not accounts:
            raise NotFound("no such message in your synced mail", code="MESSAGE_NOT_FOUND")
        if len(accounts) > 1:
            ids = ", ".join(a.id for a in accounts)
            raise BadRequest(f"more than one of your accounts has this message id; say which with ?account= ({ids})")
        if accounts[0].state == "disconnected":
            raise NotFound("the account of this message is disconnected", code="ACCOUNT_DISCONNECTED")
        return accounts[0]

    def _room_for(self, user_id: str, size: int) -> bool:
        """Whether ``size`` more bytes fit in the user's attachment cache."""
        return self.service.db.cache_usage(user_id)[1] + size <= self.settings.attachment_cache_bytes

    def _directory(self, user_id: str) -> Path:
        if not is_valid_user_id(user_id):
            raise BadRequest("user id: not a valid user id")
        directory = (self.users / user_id / "attachments").resolve()
        if directory.parent.parent != self.users:
            raise BadRequest("user id: not a valid user id")
        return directory

    def _cached(self, account: Account, message_id: str, attachment_id: str) -> Download | None:
        entry = self.service.db.cached_attachment(account.id, message_id, attachment_id)
        if entry is None:
            return None
        path = self._directory(account.user_id) / entry.sha256
        try:
            handle = path.open("rb")
        except FileNotFoundError:
            self.service.db.forget_cached(account.id, message_id, attachment_id)
            return None

        def chunks() -> Iterator[bytes]:
            with handle:
                while block := handle.read(_CHUNK):
                    yield block

        return Download(safe_mime_type(entry.mime_type), entry.filename, entry.size, chunks(), cached=True)

    def _kept(
        self, chunks: Iterator[bytes], account: Account, message_id: str, attachment_id: str, mime_type: str, filename: str
    ) -> Iterator[bytes]:
        """``chunks`` passed on, and written to the cache as they go; kept only when complete."""
        directory = self._directory(account.user_id)
        directory.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        size = 0
        fd, temp = tempfile.mkstemp(dir=directory, prefix=".part-")
        complete = False
        try:
            with os.fdopen(fd, "wb") as out:
                for chunk in chunks:
                    out.write(chunk)
                    digest.update(chunk)
                    size += len(chunk)
                    yield chunk
            kept = directory / digest.hexdigest()
            # Checked once the content is known: the same bytes kept already cost nothing more.
            if not kept.exists() and not self._room_for(account.user_id, size):
                return
            os.replace(temp, kept)
            complete = True
            self.service.db.cache_attachment(
                account_id=account.id, message_id=message_id, attachment_id=attachment_id, user_id=account.user_id,
                sha256=digest.hexdigest(), size=size, mime_type=mime_type, filename=filename,
            )
        finally:
            if not complete:
                with contextlib.suppress(OSError):
                    os.unlink(temp)


def _capped(chunks: Iterator[bytes], cap: int, provider: Any, account: Account) -> Iterator[bytes]:
    """The chunks, the provider closed after the last; stops (raising) past ``cap`` bytes. A
    provider's failure while reading (content fetched only when read) is the client's error."""
    sent = 0
    try:
        while True:
            try:
                chunk = next(chunks, None)
            except ProviderError as exc:
                raise _client_error(exc, account) from None
            if chunk is None:
                break
            sent += len(chunk)
            if sent > cap:
                raise PayloadTooLarge(f"the attachment is larger than the {cap} bytes this server hands out")
            yield chunk
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()
        provider.close()


def _client_error(exc: BaseException, account: Account) -> BaseException:
    """A provider's failure to hand out an attachment, as the error the client gets."""
    if isinstance(exc, MessageGone):
        return NotFound(f"the provider no longer has it: {exc}", code="ATTACHMENT_GONE")
    if isinstance(exc, AuthFailed):
        return Conflict(
            f"the provider refused the account's credentials; connect {account.address} again",
            code="ACCOUNT_NEEDS_REAUTH",
        )
    if isinstance(exc, (RateLimited, Transient)):
        return ServiceUnavailable(f"the provider is not answering right now: {exc}", retry_after=exc.retry_after or 5.0)
    if isinstance(exc, ProviderError):
        return HTTPError(f"the provider could not hand out the attachment: {exc}", status=502, code="PROVIDER_ERROR")
    return exc


def safe_mime_type(value: str) -> str:
    """A well-formed ``type/subtype`` (lower case), else ``application/octet-stream``."""
    value = (value or "").strip().lower()
    return value if _MIME_TYPE.fullmatch(value) else "application/octet-stream"


def content_disposition(filename: str) -> str:
    """``attachment`` with the file name for every client (RFC 6266: an ASCII fallback and UTF-8)."""
    name = "".join(c for c in filename if c.isprintable() and c not in "\\/\r\n") or "attachment"
    fallback = "".join(c if c.isascii() and c not in '"%;' else "_" for c in name)
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"

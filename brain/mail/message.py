"""The one mail message model: what brain keeps of a message, whatever the provider.

A synced message is knowledge for an AI, not an envelope: parsed addresses, direction, folder
and label names, flags, the text of the body (converted from HTML when there is no plain
part), the same text without quoted replies and signatures, and what is attached. Providers
build a `MessageRecord` through `brain.mail.convert` (raw MIME, Gmail's ``format=full`` tree or
Graph's message JSON) so every provider's messages read the same; `event_schemas()` describes
the event payloads in JSON Schema for the OpenAPI document. docs/mail-model.md says where each
field comes from per provider.
"""

from __future__ import annotations

import copy
import datetime
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "DEFAULT_MAX_TEXT_BYTES",
    "Address",
    "Attachment",
    "ConvertOptions",
    "Direction",
    "Flags",
    "MessageContext",
    "MessageRecord",
    "event_schemas",
    "iso_utc",
]

Direction = Literal["received", "sent", "draft"]
DIRECTIONS: tuple[str, ...] = ("received", "sent", "draft")

#: The default cap on each text field of one message (UTF-8 bytes).
DEFAULT_MAX_TEXT_BYTES = 256 * 1024


@dataclass(frozen=True, slots=True)
class Address:
    """One mailbox: the display name (may be empty) and the address as written."""

    name: str
    address: str

    def as_json(self) -> dict[str, str]:
        """``{"name": ..., "address": ...}``."""
        return {"name": self.name, "address": self.address}


@dataclass(frozen=True, slots=True)
class Attachment:
    """What is known of one attachment without downloading it.

    ``id`` is the provider's handle for fetching the content later: the MIME part number for
    raw MIME (IMAP section numbering, ``"2"``, ``"1.2"``), Gmail's ``attachmentId`` (else its
    ``partId``), Graph's attachment id.
    """

    id: str
    filename: str
    mime_type: str
    size: int | None
    content_id: str | None = None  # without angle brackets, as ``cid:`` URLs name it
    inline: bool = False

    def as_json(self) -> dict[str, Any]:
        """The attachment as it appears in an event."""
        return {
            "id": self.id,
            "filename": self.filename,
            "mime_type": self.mime_type,
            "size": self.size,
            "content_id": self.content_id,
            "inline": self.inline,
        }


@dataclass(frozen=True, slots=True)
class Flags:
    """The per-message state a person sets: read, starred (flagged), important."""

    read: bool = False
    starred: bool = False
    important: bool = False

    def as_json(self) -> dict[str, bool]:
        """``{"read": ..., "starred": ..., "important": ...}``."""
        return {"read": self.read, "starred": self.starred, "important": self.important}


@dataclass(frozen=True)
class MessageContext:
    """What the provider knows about a message that its MIME does not say.

    ``direction`` is set when the provider knows it (Gmail's SENT/DRAFT labels, Graph's
    ``isDraft``, an IMAP ``\\Draft`` flag); otherwise a message whose From is one of
    ``own_addresses`` is ``sent`` and every other one ``received``. ``flags`` None means the
    provider said nothing: unread, not starred, important only if the headers say so.
    ``date`` (ISO 8601 UTC) and ``snippet`` are fallbacks for a message without a usable Date
    header or body; ``size`` defaults to the raw message's length.
    """

    message_id: str
    thread_id: str | None = None
    folders: Sequence[str] = ()
    labels: Sequence[str] = ()
    flags: Flags | None = None
    own_addresses: Collection[str] = ()
    direction: Direction | None = None
    date: str | None = None
    size: int | None = None
    snippet: str = ""


@dataclass(frozen=True)
class ConvertOptions:
    """How much of a message to keep.

    ``max_text_bytes`` caps each text field (``body_text``, ``body_text_clean``,
    ``body_html``) in UTF-8 bytes; a cut sets ``truncated`` and records the original sizes.
    ``reply_languages`` are the languages whose reply headers ("On ... wrote:", "Am ...
    schrieb ...") and sign-offs the clean text recognises (mail-parser-reply's codes).
    """

    keep_html: bool = False
    max_text_bytes: int = DEFAULT_MAX_TEXT_BYTES
    snippet_chars: int = 200
    reply_languages: tuple[str, ...] = ("en",)

    def __post_init__(self) -> None:
        if self.max_text_bytes < 1024:
            raise ValueError("max_text_bytes must be at least 1024")
        if self.snippet_chars < 0:
            raise ValueError("snippet_chars must not be negative")


@dataclass(frozen=True)
class MessageRecord:
    """One message as brain keeps it; `as_event_data()` is the payload of its events.

    ``message_id`` is the provider's id (what the sync cursor and attachment downloads use);
    ``internet_message_id`` the RFC 5322 Message-ID, which threads across providers.
    """

    message_id: str
    thread_id: str | None
    internet_message_id: str | None
    in_reply_to: str | None
    references: tuple[str, ...]
    sender: Address | None  # the From header; "from" in events
    to: tuple[Address, ...]
    cc: tuple[Address, ...]
    bcc: tuple[Address, ...]
    reply_to: tuple[Address, ...]
    subject: str
    date: str | None
    direction: Direction
    folders: tuple[str, ...]
    labels: tuple[str, ...]
    flags: Flags
    size: int | None
    snippet: str
    body_text: str
    body_text_clean: str
    body_html: str | None
    attachments: tuple[Attachment, ...]
    has_attachments: bool
    truncated: bool = False
    # Only when truncated: the field names that were cut and their full sizes in UTF-8 bytes.
    original_sizes: Mapping[str, int] = field(default_factory=dict)

    def as_event_data(self) -> dict[str, Any]:
        """The JSON payload of a ``mail.message.received`` event (see `event_schemas`)."""
        data: dict[str, Any] = {
            "message_id": self.message_id,
            "thread_id": self.thread_id,
            "internet_message_id": self.internet_message_id,
            "in_reply_to": self.in_reply_to,
            "references": list(self.references),
            "from": self.sender.as_json() if self.sender else None,
            "to": [a.as_json() for a in self.to],
            "cc": [a.as_json() for a in self.cc],
            "bcc": [a.as_json() for a in self.bcc],
            "reply_to": [a.as_json() for a in self.reply_to],
            "subject": self.subject,
            "date": self.date,
            "direction": self.direction,
            "folders": list(self.folders),
            "labels": list(self.labels),
            "flags": self.flags.as_json(),
            "size": self.size,
            "snippet": self.snippet,
            "body_text": self.body_text,
            "body_text_clean": self.body_text_clean,
            "attachments": [a.as_json() for a in self.attachments],
            "has_attachments": self.has_attachments,
            "truncated": self.truncated,
        }
        if self.body_html is not None:
            data["body_html"] = self.body_html
        if self.truncated:
            data["original_sizes"] = dict(self.original_sizes)
        return data


def iso_utc(value: datetime.datetime | float | None) -> str | None:
    """An aware datetime or epoch seconds as ISO 8601 UTC (``...Z``); None stays None.

    A naive datetime is taken as UTC (a Date header without a zone).
    """
    if value is None:
        return None
    if not isinstance(value, datetime.datetime):
        value = datetime.datetime.fromtimestamp(float(value), datetime.timezone.utc)
    if value.tzinfo is None:
        value = value.replace(tzinfo=datetime.timezone.utc)
    return value.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


# JSON Schema ---------------------------------------------------------------------------------

_NULLABLE_STRING = {"type": ["string", "null"]}
_ADDRESS = {
    "type": "object",
    "description": "A parsed mailbox; name is empty when the header gave none.",
    "required": ["name", "address"],
    "additionalProperties": False,
    "properties": {"name": {"type": "string"}, "address": {"type": "string"}},
}
_ADDRESSES = {"type": "array", "items": _ADDRESS}
_ATTACHMENT = {
    "type": "object",
    "required": ["id", "filename", "mime_type", "size", "content_id", "inline"],
    "additionalProperties": False,
    "properties": {
        "id": {"type": "string", "description": "The provider's handle for downloading the content"},
        "filename": {"type": "string"},
        "mime_type": {"type": "string"},
        "size": {"type": ["integer", "null"], "minimum": 0, "description": "Decoded size in bytes"},
        "content_id": {**_NULLABLE_STRING, "description": "Content-ID without angle brackets (cid: URLs)"},
        "inline": {"type": "boolean", "description": "Shown inside the body (an embedded image) rather than attached"},
    },
}
_FLAGS = {
    "type": "object",
    "required": ["read", "starred", "important"],
    "additionalProperties": False,
    "properties": {"read": {"type": "boolean"}, "starred": {"type": "boolean"}, "important": {"type": "boolean"}},
}
_TEXT_FIELDS = ("body_text", "body_text_clean", "body_html")
_MESSAGE_PROPERTIES: dict[str, Any] = {
    "message_id": {"type": "string", "description": "The provider's id of the message"},
    "thread_id": _NULLABLE_STRING,
    "internet_message_id": {**_NULLABLE_STRING, "description": "RFC 5322 Message-ID, with angle brackets"},
    "in_reply_to": _NULLABLE_STRING,
    "references": {"type": "array", "items": {"type": "string"}},
    "from": {"oneOf": [_ADDRESS, {"type": "null"}]},
    "to": _ADDRESSES,
    "cc": _ADDRESSES,
    "bcc": _ADDRESSES,
    "reply_to": _ADDRESSES,
    "subject": {"type": "string"},
    "date": {**_NULLABLE_STRING, "format": "date-time", "description": "ISO 8601, UTC"},
    "direction": {"enum": list(DIRECTIONS)},
    "folders": {"type": "array", "items": {"type": "string"}, "description": "Folder names (IMAP, Outlook)"},
    "labels": {"type": "array", "items": {"type": "string"}, "description": "Label or category names"},
    "flags": _FLAGS,
    "size": {"type": ["integer", "null"], "minimum": 0, "description": "The whole message in bytes"},
    "snippet": {"type": "string"},
    "body_text": {"type": "string", "description": "Plain text: text/plain parts, else converted from HTML"},
    "body_text_clean": {"type": "string", "description": "body_text without quoted replies and signatures"},
    "body_html": {"type": "string", "description": "Present only when [mail] keep_html is set"},
    "attachments": {"type": "array", "items": _ATTACHMENT},
    "has_attachments": {"type": "boolean"},
    "truncated": {"type": "boolean", "description": "A text field was cut at the configured cap"},
    "original_sizes": {
        "type": "object",
        "description": "When truncated: the cut fields' full sizes in UTF-8 bytes",
        "propertyNames": {"enum": list(_TEXT_FIELDS)},
        "additionalProperties": {"type": "integer", "minimum": 0},
    },
}
_MESSAGE_REQUIRED = [name for name in _MESSAGE_PROPERTIES if name not in ("body_html", "original_sizes")]
# What the sync engine adds to every mail event: the account it came from.
_ENVELOPE_PROPERTIES: dict[str, Any] = {
    "account": {"type": "string"},
    "provider": {"type": "string"},
    "address": {"type": "string", "description": "The account's own address"},
}


def event_schemas() -> dict[str, dict[str, Any]]:
    """JSON Schemas (draft 2020-12) of the ``data`` of each ``mail.message.*`` event type.

    ``received`` carries the whole message; ``updated`` the message's new state (the whole
    message after a content backfill, or only what changed: labels, folders, flags) beside
    the labels added and removed; ``deleted`` only the ids. A fresh copy on every call, so a
    caller may embed and edit it.
    """
    envelope = dict(_ENVELOPE_PROPERTIES)
    received = {
        "type": "object",
        "required": list(_MESSAGE_REQUIRED),
        "additionalProperties": False,
        "properties": {**envelope, **_MESSAGE_PROPERTIES},
        "allOf": [{"if": {"properties": {"truncated": {"const": True}}}, "then": {"required": ["original_sizes"]}}],
    }
    updated = {
        "type": "object",
        "required": ["message_id"],
        "additionalProperties": False,
        "properties": {
            **envelope,
            **_MESSAGE_PROPERTIES,
            "added_labels": {"type": "array", "items": {"type": "string"}},
            "removed_labels": {"type": "array", "items": {"type": "string"}},
            "previous_message_id": {
                "type": "string",
                "description": "The id the message had in earlier events, once, when the provider's ids changed",
            },
        },
    }
    deleted = {
        "type": "object",
        "required": ["message_id"],
        "additionalProperties": False,
        "properties": {
            **envelope,
            "message_id": _MESSAGE_PROPERTIES["message_id"],
            "thread_id": _NULLABLE_STRING,
            "reconciled": {"type": "boolean", "description": "Found missing by a full resync"},
            "previous_message_id": {"type": "string", "description": "The id it had in earlier events, if it changed"},
        },
    }
    schemas = {"mail.message.received": received, "mail.message.updated": updated, "mail.message.deleted": deleted}
    # Deep copies: the shared sub-schemas above must not be edited through a caller's copy.
    return copy.deepcopy(schemas)

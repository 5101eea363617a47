"""IMAP FETCH data -> the core's `MailMessage`, and IMAP flags -> the labels the core watches.

A message's id is ``{folder}:{UIDVALIDITY}:{UID}``: the only identity IMAP promises. When a
folder's UIDVALIDITY changes every id changes with it, and the core's resync reconciles: the
old ids are deleted, the renumbered messages received again (RFC 3501 gives no way to tell
which new UID is which old message).
"""

from __future__ import annotations

import datetime
import email.header
import email.policy
import email.utils
from collections.abc import Iterable, Mapping
from email.parser import BytesHeaderParser
from typing import Any

from brain.mail.provider import MailMessage, iso_utc

__all__ = ["FETCH_HEADERS", "fetch_items", "labels_for", "message_from_fetch", "message_id"]

FETCH_HEADERS = ("From", "To", "Cc", "Subject", "Date", "Message-ID", "In-Reply-To", "References")
SNIPPET_CHARS = 200

# System flags as the core's normalised labels (the names Gmail uses where it has one).
_FLAG_LABELS = {
    "\\FLAGGED": "FLAGGED",
    "\\ANSWERED": "ANSWERED",
    "\\DRAFT": "DRAFT",
    "\\DELETED": "DELETED",
}
# Session state, not message state.
_IGNORED = {"\\RECENT"}

# compat32 plus decode_header where needed: policy.default's header objects cost ~5x more,
# and header parsing was most of the time of an initial sync.
_parser = BytesHeaderParser(policy=email.policy.compat32)


def message_id(folder: str, uidvalidity: int, uid: int) -> str:
    """The core's id of one message."""
    return f"{folder}:{uidvalidity}:{uid}"


def fetch_items(*, preview: bool) -> list[str]:
    """What to FETCH for a full `MailMessage` (headers only; the body is never downloaded)."""
    fields = " ".join(FETCH_HEADERS).upper()
    items = ["UID", "FLAGS", "INTERNALDATE", "RFC822.SIZE", f"BODY.PEEK[HEADER.FIELDS ({fields})]"]
    if preview:
        items.append("PREVIEW")
    return items


def labels_for(folder: str, flags: Iterable[bytes | str]) -> tuple[str, ...]:
    """The folder, UNREAD unless \\Seen, the system flags by name, and keywords as they are."""
    labels = {folder}
    seen = False
    for raw in flags:
        flag = raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)
        upper = flag.upper()
        if upper == "\\SEEN":
            seen = True
        elif upper in _FLAG_LABELS:
            labels.add(_FLAG_LABELS[upper])
        elif upper not in _IGNORED and not flag.startswith("\\"):
            labels.add(flag)  # a keyword ($Forwarded, $Junk, a user's tag)
    if not seen:
        labels.add("UNREAD")
    return tuple(sorted(labels))


def message_from_fetch(folder: str, uidvalidity: int, uid: int, data: Mapping[bytes, Any]) -> MailMessage:
    """One FETCH response (fetch_items) as a MailMessage."""
    raw_headers = b""
    for key, value in data.items():
        if key.upper().startswith(b"BODY[HEADER") and isinstance(value, bytes):
            raw_headers = value
    headers: dict[str, str] = {}
    parsed = _parser.parsebytes(raw_headers) if raw_headers else None
    if parsed is not None:
        for name in FETCH_HEADERS:
            value = _decoded(_raw(parsed, name))
            if value:
                headers[name] = value
    internet_id = headers.get("Message-ID") or None
    references = headers.get("References", "").split()
    thread_root = references[0] if references else headers.get("In-Reply-To") or internet_id
    preview = data.get(b"PREVIEW")
    snippet = preview.decode(errors="replace") if isinstance(preview, bytes) else (preview or "")
    return MailMessage(
        id=message_id(folder, uidvalidity, uid),
        thread_id=thread_root,
        internet_message_id=internet_id,
        subject=headers.get("Subject", ""),
        sender=headers.get("From", ""),
        to=_addresses(parsed, "To"),
        cc=_addresses(parsed, "Cc"),
        date=_date(headers.get("Date"), data.get(b"INTERNALDATE")),
        snippet=" ".join(str(snippet).split())[:SNIPPET_CHARS],
        labels=labels_for(folder, data.get(b"FLAGS", ())),
        size=int(data[b"RFC822.SIZE"]) if data.get(b"RFC822.SIZE") is not None else None,
        headers=headers,
        extra={"folder": folder, "uid": uid, "uidvalidity": uidvalidity},
    )


def _raw(parsed: Any, name: str) -> str:
    value = parsed.get(name)
    if value is None:
        return ""
    # 8-bit bytes in a header come back as surrogates (or a Header object): keep them readable.
    text = str(value)
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _decoded(value: str) -> str:
    """RFC 2047 encoded words decoded, whitespace folded."""
    if "=?" in value:
        try:
            value = str(email.header.make_header(email.header.decode_header(value)))
        except (LookupError, ValueError, UnicodeError):
            pass  # an unknown charset or a broken word: keep the raw text
    return " ".join(value.split())


def _addresses(parsed: Any, name: str) -> tuple[str, ...]:
    if parsed is None:
        return ()
    values = [_raw(parsed, name)] if parsed.get(name) is not None else []
    out = []
    # Split the raw header first: a decoded display name may contain commas.
    for display, address in email.utils.getaddresses(values):
        if address:
            out.append(_format_address(_decoded(display), address) if display else address)
    return tuple(out)


def _format_address(display: str, address: str) -> str:
    """``Name <addr>`` in readable Unicode (formataddr would re-encode non-ASCII names)."""
    if any(c in display for c in '()<>@,;:\\".[]'):
        display = '"' + display.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return f"{display} <{address}>"


def _date(header: str | None, internal: Any) -> str | None:
    if header:
        try:
            return iso_utc(email.utils.parsedate_to_datetime(header))
        except (TypeError, ValueError, IndexError):
            pass
    if isinstance(internal, datetime.datetime):
        return iso_utc(internal)
    return None

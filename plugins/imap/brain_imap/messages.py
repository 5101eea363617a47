"""IMAP FETCH data -> the core's message model.

A message's id is ``{folder}:{UIDVALIDITY}:{UID}``: the only identity IMAP promises. When a
folder's UIDVALIDITY changes every id changes with it, and the core's resync reconciles: the
old ids are deleted, the renumbered messages received again (RFC 3501 gives no way to tell
which new UID is which old message).

What is downloaded, always with ``BODY.PEEK`` so nothing is marked read:

- a message up to ``max_message_bytes`` (and the account keeps bodies): the whole of it,
  ``BODY.PEEK[]``, converted as any raw message;
- a larger one, or any message of an account that keeps no bodies: its header and its
  ``BODYSTRUCTURE``, plus (with bodies) the start of its text parts, ``BODY.PEEK[n]<0.len>``.
  From those a *skeleton* of the message is built — the same tree of parts, each with the
  headers BODYSTRUCTURE describes, text parts with their content, attachments empty — and
  converted like the rest, so part numbers, file names and inline images come out the same;
  attachment sizes come from ``BINARY.SIZE`` (else from the encoded size).
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from brain.mail.provider import Flags, MessageContext, MessageRecord, iso_utc, message_from_mime, without_body

__all__ = [
    "Leaf",
    "content_items",
    "decoded_sizes",
    "fetch_items",
    "leaf_message",
    "leaves",
    "message_id",
    "record_from_fetch",
    "skeleton",
    "text_parts",
]

# Parts whose content is part of the body (when not attachments): what the skeleton carries.
_TEXT_SUBTYPES = frozenset({b"plain", b"html", b"calendar"})


def message_id(folder: str, uidvalidity: int, uid: int) -> str:
    """The core's id of one message."""
    return f"{folder}:{uidvalidity}:{uid}"


def fetch_items(*, preview: bool) -> list[str]:
    """What to FETCH first for every message: flags, dates, size and structure."""
    items = ["UID", "FLAGS", "INTERNALDATE", "RFC822.SIZE", "BODYSTRUCTURE"]
    if preview:
        items.append("PREVIEW")
    return items


@dataclass(frozen=True)
class Leaf:
    """One non-multipart part of a BODYSTRUCTURE, by its IMAP section number."""

    section: str
    structure: Sequence[Any]
    text: bool  # body text (plain, HTML, an invitation) rather than an attachment
    size: int  # encoded octets


def leaves(structure: Sequence[Any]) -> list[Leaf]:
    """Every leaf of a BODYSTRUCTURE in order (a single-part message is section ``1``)."""
    out: list[Leaf] = []

    def walk(node: Sequence[Any], section: str) -> None:
        if _is_multipart(node):
            for i, child in enumerate(node[0], 1):
                walk(child, f"{section}.{i}" if section else str(i))
            return
        out.append(Leaf(section or "1", node, _is_text(node), _int(node[6]) if len(node) > 6 else 0))

    walk(structure, "")
    return out


def content_items(parts: Sequence[Leaf], *, text_limit: int, bodies: bool, binary: bool) -> list[str]:
    """What to FETCH to build a skeleton: the header, text parts (their start), decoded sizes."""
    items = ["BODY.PEEK[HEADER]"]
    for leaf in parts:
        if leaf.text and bodies:
            items.append(f"BODY.PEEK[{leaf.section}]<0.{text_limit}>")
        elif not leaf.text and binary:
            items.append(f"BINARY.SIZE[{leaf.section}]")
    return items


def skeleton(structure: Sequence[Any], header: bytes, texts: Mapping[str, bytes]) -> bytes:
    """A message with ``structure``'s tree of parts: the top ``header``, each part's headers as
    BODYSTRUCTURE says them, ``texts`` (by section) as the content of text parts, the rest empty."""

    def node(part: Sequence[Any], section: str, head: bytes) -> bytes:
        if _is_multipart(part):
            boundary = f"=_brain_skeleton_{section or 'top'}".encode()
            subtype = _text(part[1]) or "mixed"
            head = _with_content_type(head, f'multipart/{subtype}; boundary="{boundary.decode()}"')
            body = b""
            for i, child in enumerate(part[0], 1):
                child_section = f"{section}.{i}" if section else str(i)
                body += b"--" + boundary + b"\r\n" + node(child, child_section, _leaf_headers(child)) + b"\r\n"
            return head + body + b"--" + boundary + b"--\r\n"
        if not section:  # a single-part message: the top header describes the part
            head = _with_content_type(head, _content_type(part))
        content = texts.get(section or "1", b"")
        if not content and _text(part[0]).lower() == "message" and len(part) > 7 and part[7]:
            content = _envelope_header(part[7])  # an attached message: at least its subject
        return head + content

    return node(structure, "", header if header.endswith(b"\r\n\r\n") else header.rstrip(b"\r\n") + b"\r\n\r\n")


def record_from_fetch(
    uid: int,
    data: Mapping[bytes, Any],
    raw: bytes,
    sizes: Mapping[str, int],
    *,
    folder: str,
    uidvalidity: int,
    special_use: str | None,
    own_addresses: Sequence[str],
    options: Any,
) -> MessageRecord:
    """One message as the model: ``raw`` is the message (or its skeleton), ``data`` the first
    FETCH's answer (INTERNALDATE as a datetime or ISO text), ``sizes`` decoded attachment sizes
    by section (for a skeleton). Module level, with the per-message arguments first: it runs in
    the core's conversion workers."""
    flags = _flag_names(data.get(b"FLAGS", ()))
    direction = None
    if "\\DRAFT" in {f.upper() for f in flags} or special_use == "\\Drafts":
        direction = "draft"
    elif special_use == "\\Sent":
        direction = "sent"
    preview = data.get(b"PREVIEW")
    internal = data.get(b"INTERNALDATE")
    context = MessageContext(
        message_id=message_id(folder, uidvalidity, uid),
        folders=(folder,),
        labels=tuple(sorted(f for f in flags if not f.startswith("\\"))),
        own_addresses=own_addresses,
        direction=direction,
        date=internal if isinstance(internal, str) else iso_utc(internal) if isinstance(internal, datetime.datetime) else None,
        size=int(data[b"RFC822.SIZE"]) if data.get(b"RFC822.SIZE") is not None else None,
        snippet=preview.decode(errors="replace") if isinstance(preview, bytes) else str(preview or ""),
    )
    record = message_from_mime(raw, context, options.convert)
    upper = {f.upper() for f in flags}
    changes: dict[str, Any] = {
        # RFC 5322 threads by the first References entry (the root), else what it answers.
        "thread_id": (record.references[:1] or [record.in_reply_to or record.internet_message_id])[0],
        "flags": Flags(
            read="\\SEEN" in upper,
            starred="\\FLAGGED" in upper,
            important=record.flags.important or "$IMPORTANT" in upper,
        ),
    }
    if sizes:
        changes["attachments"] = tuple(dataclasses.replace(a, size=sizes.get(a.id, a.size)) for a in record.attachments)
    record = dataclasses.replace(record, **changes)
    return record if options.bodies else without_body(record)


def leaf_message(leaf: Leaf, content: bytes) -> bytes:
    """One part as a message of its own (its headers from BODYSTRUCTURE, then ``content`` as
    the server holds it), for `brain.mail.provider.mime_part` to decode as part ``"1"``."""
    return _leaf_headers(leaf.structure) + content


def decoded_sizes(parts: Iterable[Leaf], data: Mapping[bytes, Any]) -> dict[str, int]:
    """Decoded size of each attachment part: ``BINARY.SIZE`` when fetched, else estimated."""
    out: dict[str, int] = {}
    for leaf in parts:
        if leaf.text:
            continue
        exact = data.get(f"BINARY.SIZE[{leaf.section}]".encode())
        if exact is not None:
            out[leaf.section] = int(exact)
            continue
        encoding = _text(leaf.structure[5]).lower() if len(leaf.structure) > 5 else ""
        # base64: 4 characters for 3 bytes, in lines of 76 plus CRLF.
        out[leaf.section] = leaf.size * 57 // 78 if encoding == "base64" else leaf.size
    return out


def text_parts(data: Mapping[bytes, Any]) -> dict[str, bytes]:
    """The fetched text parts by section (``BODY[1.2]<0>`` -> ``"1.2"``)."""
    out: dict[str, bytes] = {}
    for key, value in data.items():
        if key.startswith(b"BODY[") and key[5:6].isdigit() and isinstance(value, bytes):
            out[key[5:].split(b"]", 1)[0].decode()] = value
    return out


# BODYSTRUCTURE -> headers ------------------------------------------------------------------


def _is_multipart(node: Sequence[Any]) -> bool:
    return bool(node) and isinstance(node[0], list)


def _is_text(node: Sequence[Any]) -> bool:
    maintype, subtype = _text(node[0]).lower(), _text(node[1]).lower().encode()
    if maintype != "text" or subtype not in _TEXT_SUBTYPES:
        return False
    disposition = _disposition(node)
    names = [k for k, _ in _pairs(node[2])] + ([k for k, _ in _pairs(disposition[1])] if disposition else [])
    named = any(k.lower().startswith(("name", "filename")) for k in names)
    return not named and not (disposition and _text(disposition[0]).lower() == "attachment")


def _disposition(node: Sequence[Any]) -> Sequence[Any] | None:
    """The (type, params) of a leaf's Content-Disposition, where its kind puts it."""
    maintype, subtype = _text(node[0]).lower(), _text(node[1]).lower()
    index = 9 if maintype == "text" else 11 if (maintype, subtype) == ("message", "rfc822") else 8
    value = node[index] if len(node) > index else None
    return value if isinstance(value, tuple) and value else None


def _leaf_headers(node: Sequence[Any]) -> bytes:
    if _is_multipart(node):
        return b"\r\n"  # the multipart branch writes its own Content-Type
    lines = [f"Content-Type: {_content_type(node)}"]
    if node[3]:
        lines.append(f"Content-ID: {_text(node[3])}")
    if node[5]:
        lines.append(f"Content-Transfer-Encoding: {_text(node[5])}")
    disposition = _disposition(node)
    if disposition:
        lines.append(f"Content-Disposition: {_text(disposition[0])}{_params(disposition[1])}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape")


def _content_type(node: Sequence[Any]) -> str:
    return f"{_text(node[0]).lower()}/{_text(node[1]).lower()}{_params(node[2])}"


def _params(value: Any) -> str:
    out = ""
    for key, item in _pairs(value):
        text = item.replace("\\", "\\\\").replace('"', '\\"')
        # An RFC 2231 value (name*=utf-8''...) goes as it came; the rest quoted.
        out += f"; {key}={item}" if key.endswith("*") and " " not in item else f'; {key}="{text}"'
    return out


def _pairs(value: Any) -> list[tuple[str, str]]:
    if not isinstance(value, (tuple, list)):
        return []
    items = list(value)
    return [(_text(items[i]), _text(items[i + 1])) for i in range(0, len(items) - 1, 2)]


def _envelope_header(envelope: Any) -> bytes:
    """An attached message's envelope (date, subject, ...) as a header block with its subject."""
    subject = envelope[1] if isinstance(envelope, (tuple, list)) and len(envelope) > 1 else None
    if not isinstance(subject, bytes) or not subject:
        return b""
    return b"Subject: " + subject.replace(b"\r", b"").replace(b"\n", b"") + b"\r\n\r\n"


def _with_content_type(head: bytes, content_type: str) -> bytes:
    """``head`` (a header block) with its Content-Type replaced."""
    kept: list[bytes] = []
    skipping = False
    for line in head.rstrip(b"\r\n").split(b"\r\n"):
        if line[:1] in (b" ", b"\t") and skipping:
            continue
        skipping = line.lower().startswith(b"content-type:")
        if not skipping and line:
            kept.append(line)
    kept.append(f"Content-Type: {content_type}".encode("utf-8", "surrogateescape"))
    return b"\r\n".join(kept) + b"\r\n\r\n"


def _flag_names(flags: Iterable[bytes | str]) -> list[str]:
    names = [f.decode(errors="replace") if isinstance(f, bytes) else str(f) for f in flags]
    return [f for f in names if f.upper() != "\\RECENT"]  # session state, not the message's


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogateescape")
    return "" if value is None else str(value)


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0

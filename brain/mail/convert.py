"""Provider data -> `MessageRecord`: raw RFC 5322 bytes, Gmail's ``format=full`` tree, Graph JSON.

Raw MIME (Gmail ``format=raw``, IMAP ``BODY.PEEK[]``, Graph ``$value``) goes through the
stdlib parser with the ``compat32`` policy: it keeps every header as the raw text the sender
wrote, records defects instead of raising, and costs a fraction of ``policy.default``, whose
header objects are parsed as they are read (docs/mail-model.md). A single-part message with
plain headers skips the parser's line-by-line reading of the body (`_single_part`): the same
header fields go into the same `email.message.Message`, the body is decoded as
``get_payload(decode=True)`` decodes it. Decoding is done once, in `brain.mail.mailtext`, so
every provider's text goes through the same charset rules.

Gmail's ``format=full`` payload is the same MIME tree already split into parts (base64url
bodies, ``attachmentId`` for large ones); it is read through the same walk. Graph's message
JSON has no MIME tree (a body, recipients, an attachment listing) and is mapped field by field
onto the same normalisation: addresses, HTML to text, clean text, caps.

How a body is chosen: in ``multipart/alternative`` the text/plain alternative when it has
text, else the HTML one converted; other multiparts are read in order and their texts joined.
A text part with a file name or ``Content-Disposition: attachment`` is an attachment, as is
every non-text leaf, ``message/rfc822`` (not descended into), TNEF (``winmail.dat``) and
``text/calendar``, which also adds a one-line summary of the event to the text.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import datetime
import email.message
import email.parser
import email.policy
import email.utils
import functools
import quopri
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pybase64

from brain.mail.mailtext import (
    clean_text,
    clip_utf8,
    decode_bytes,
    decode_header_text,
    html_to_text,
    normalise_text,
    snippet_of,
)
from brain.mail.message import (
    DIRECTIONS,
    Address,
    Attachment,
    ConvertOptions,
    Direction,
    Flags,
    MessageContext,
    MessageRecord,
    iso_utc,
)

__all__ = [
    "attachment_filename",
    "gmail_context",
    "gmail_part_filename",
    "graph_context",
    "message_from_gmail",
    "message_from_graph",
    "message_from_mime",
]

DEFAULT_OPTIONS = ConvertOptions()

_parser = email.parser.BytesParser(policy=email.policy.compat32)
_MSG_ID = re.compile(r"<[^<>\s]*>")
# HTML handed to the converter is cut here first, so one huge message costs bounded time.
_HTML_INPUT_FACTOR = 4
_MAX_DEPTH = 64  # MIME nesting read; real mail stays under ten levels
_MAX_LIST = 500  # addresses per header, references, attachments: beyond this is not knowledge
_CACHED_CONTENT_TYPE = 200  # characters: longer Content-Type values are read each time, not kept
# Reply and forward prefixes of the common mail clients' languages: Re, Fwd, AW/WG (German),
# SV/VS (Nordic), TR (French), RIF (Italian), Antw/Doorst (Dutch), RV/ENC (Spanish, Portuguese).
_REPLY_SUBJECT = re.compile(
    r"\s*(?:re|fwd?|aw|wg|sv|vs|tr|rif|antw|doorst|rv|enc|odp|pd)\s*(?:\[\d+\])?\s*[:：]|\s*(?:回复|回覆|答复|转发|轉寄)",
    re.IGNORECASE,
)
_IMPORTANT = {"high", "urgent", "1", "2", "1 (highest)", "2 (high)"}


# The MIME walk ------------------------------------------------------------------------------


@dataclass
class _Part:
    """One node of a MIME tree, whether it came from the stdlib parser or Gmail's JSON."""

    content_type: str
    charset: str | None
    disposition: str | None
    filename: str | None
    content_id: str | None
    children: list[_Part] | None  # None for a leaf
    handle: str  # what the provider fetches the content by: a part number, an attachmentId
    payload: bytes | None  # decoded content; None when the provider did not send it
    size: int | None
    subject: str = ""  # message/rfc822: the enclosed message's subject, for its file name



class _Html:
    """An HTML document among the text segments: converted only if the body ends up using it.

    A holder, not a str subclass: making one of those copies the document, and so does
    taking the str back out of it.
    """

    __slots__ = ("html",)

    def __init__(self, html: str) -> None:
        self.html = html


@dataclass
class _Body:
    """What a walk collects from a subtree: text segments in order, HTML documents, attachments."""

    segments: list[str | _Html] = field(default_factory=list)  # plain text, or HTML still to convert
    htmls: list[str] = field(default_factory=list)
    attachments: list[Attachment] = field(default_factory=list)

    def has_plain(self) -> bool:
        return any(isinstance(s, str) and s.strip() for s in self.segments)

    def extend(self, other: _Body) -> None:
        self.segments.extend(other.segments)
        self.htmls.extend(other.htmls)
        self.attachments.extend(other.attachments)


def _walk(part: _Part) -> _Body:
    out = _Body()
    if part.children is not None:
        results = [_walk(child) for child in part.children]
        if part.content_type == "multipart/alternative":
            _choose_alternative(part.children, results, out)
        else:
            for result in results:
                out.extend(result)
        return out
    ctype = part.content_type
    if ctype in ("text/plain", "text/html") and part.disposition != "attachment" and not part.filename:
        text = decode_bytes(part.payload or b"", part.charset)
        if ctype == "text/plain":
            out.segments.append(normalise_text(text))
        else:
            out.segments.append(_Html(text))
            out.htmls.append(text)
        return out
    out.attachments.append(_attachment(part))
    if ctype == "text/calendar" and part.payload:
        summary = _calendar_summary(decode_bytes(part.payload, part.charset))
        if summary:
            out.segments.append(summary)
    return out


def _choose_alternative(children: Sequence[_Part], results: Sequence[_Body], out: _Body) -> None:
    """Text from the first alternative with plain text, else from the last (richest) one; HTML
    from the last alternative that has some; attachments and calendar summaries from all."""
    calendars = [r for c, r in zip(children, results) if c.content_type == "text/calendar"]
    others = [r for c, r in zip(children, results) if c.content_type != "text/calendar"]
    text_source = next((r for r in others if r.has_plain()), None)
    if text_source is None:
        text_source = next((r for r in reversed(others) if r.segments), None)
    html_source = next((r for r in reversed(others) if r.htmls), None)
    if text_source is not None:
        out.segments.extend(text_source.segments)
    if html_source is not None:
        out.htmls.extend(html_source.htmls)
    for result in others:
        out.attachments.extend(result.attachments)
    for result in calendars:
        out.extend(result)


def attachment_filename(filename: str | None, content_type: str, subject: str = "") -> str:
    """The name the model gives an attachment, and its download: its own file name, else
    ``<subject>.eml`` for an attached message (``subject``: the enclosed message's) and
    ``invite.ics`` for an invitation; else empty."""
    if filename:
        return filename
    if content_type == "message/rfc822":
        return f"{subject or 'message'}.eml"
    if content_type == "text/calendar":
        return "invite.ics"
    return ""


def gmail_part_filename(node: Mapping[str, Any]) -> str:
    """The model's name for the attachment that is this part of a Gmail ``format=full`` payload."""
    part = _gmail_part(node)
    return attachment_filename(part.filename, part.content_type, part.subject)


def _attachment(part: _Part) -> Attachment:
    inline = part.disposition == "inline" or (part.disposition is None and part.content_id is not None)
    return Attachment(
        id=part.handle,
        filename=attachment_filename(part.filename, part.content_type, part.subject),
        mime_type=part.content_type,
        size=part.size,
        content_id=part.content_id,
        inline=inline,
    )


# Calendar invitations ---------------------------------------------------------------------

_ICS_FOLD = re.compile(r"\r?\n[ \t]")
_ICS_LINE = re.compile(r"^(SUMMARY|DTSTART|DTEND|LOCATION|METHOD)((?:;[^:\r\n]*)?):(.*)$", re.MULTILINE | re.IGNORECASE)
_ICS_TIME = re.compile(r"^(\d{4})(\d{2})(\d{2})(?:T(\d{2})(\d{2})\d{0,2}(Z?))?$")
_ICS_TZID = re.compile(r"TZID=\"?([^\";:]+)", re.IGNORECASE)
_ICS_METHODS = {"REQUEST": "Invitation", "CANCEL": "Cancelled", "REPLY": "Reply", "PUBLISH": "Event"}


def _calendar_summary(ics: str) -> str:
    """One readable line about the event of an iCalendar body: what, when, where."""
    found: dict[str, tuple[str, str]] = {}
    for match in _ICS_LINE.finditer(_ICS_FOLD.sub("", ics[:65536])):
        found.setdefault(match.group(1).upper(), (match.group(2), match.group(3).strip()))
    if "SUMMARY" not in found and "DTSTART" not in found:
        return ""
    kind = _ICS_METHODS.get(found.get("METHOD", ("", ""))[1].upper(), "Event")
    parts = [f"{kind}: {_ics_text(found['SUMMARY'][1]) if 'SUMMARY' in found else '(no title)'}"]
    if "DTSTART" in found:
        parts.append(f"starts {_ics_time(*found['DTSTART'])}")
    if "DTEND" in found:
        parts.append(f"ends {_ics_time(*found['DTEND'])}")
    if found.get("LOCATION", ("", ""))[1]:
        parts.append(f"at {_ics_text(found['LOCATION'][1])}")
    return "[" + "; ".join(parts) + "]"


def _ics_text(value: str) -> str:
    return value.replace("\\n", " ").replace("\\N", " ").replace("\\,", ",").replace("\\;", ";").replace("\\\\", "\\")


def _ics_time(params: str, value: str) -> str:
    match = _ICS_TIME.match(value.strip())
    if match is None:
        return value.strip()
    year, month, day, hour, minute, utc = match.groups()
    text = f"{year}-{month}-{day}"
    if hour is not None:
        text += f" {hour}:{minute}"
        zone = _ICS_TZID.search(params)
        if utc:
            text += " UTC"
        elif zone:
            text += f" ({zone.group(1)})"
    return text


# Headers ----------------------------------------------------------------------------------


@dataclass
class _Envelope:
    """What the headers (or Graph's fields) say about a message."""

    sender: Address | None = None
    to: tuple[Address, ...] = ()
    cc: tuple[Address, ...] = ()
    bcc: tuple[Address, ...] = ()
    reply_to: tuple[Address, ...] = ()
    subject: str = ""
    date: str | None = None
    internet_message_id: str | None = None
    in_reply_to: str | None = None
    references: tuple[str, ...] = ()
    important: bool = False


def _envelope(headers: Mapping[str, list[str]]) -> _Envelope:
    def first(name: str) -> str | None:
        values = headers.get(name)
        return values[0] if values else None

    senders = _addresses(headers.get("from", ()))
    importance = (first("importance") or first("x-priority") or first("priority") or "").strip().lower()
    message_ids = _message_ids(first("message-id"))
    replied = _message_ids(first("in-reply-to"))
    return _Envelope(
        sender=senders[0] if senders else None,
        to=_addresses(headers.get("to", ())),
        cc=_addresses(headers.get("cc", ())),
        bcc=_addresses(headers.get("bcc", ())),
        reply_to=_addresses(headers.get("reply-to", ())),
        subject=decode_header_text(first("subject") or ""),
        date=_header_date(first("date")),
        internet_message_id=message_ids[0] if message_ids else None,
        in_reply_to=replied[0] if replied else None,
        references=tuple(_message_ids(" ".join(headers.get("references", ())))[:_MAX_LIST]),
        important=importance in _IMPORTANT,
    )


def _addresses(values: Sequence[str]) -> tuple[Address, ...]:
    if not values:
        return ()
    repaired = [decode_header_text(v) if not v.isascii() else v for v in values]
    out = []
    pairs = _plain_mailboxes(", ".join(repaired))
    # A plain mailbox's address is a dot-atom: printable ASCII without a blank, which
    # decode_header_text returns as it is unless it holds "=?".
    plain = pairs is not None
    if pairs is None:
        try:
            pairs = email.utils.getaddresses(repaired)
        except Exception:  # noqa: BLE001 - the stdlib's address parser on hostile input
            pairs = []
    for name, address in pairs:
        address = address.strip()
        if not address:
            continue
        decoded = address if plain and "=?" not in address else decode_header_text(address)
        hidden = _hidden_mailboxes(decoded) if decoded != address and "<" in decoded else None
        for mailbox in hidden or (Address(name=decode_header_text(name) if name else "", address=decoded),):
            out.append(mailbox)
            if len(out) >= _MAX_LIST:
                return tuple(out)
    return tuple(out)


def _hidden_mailboxes(decoded: str) -> list[Address] | None:
    """The mailboxes of an encoded word that held whole mailboxes, address and all (which RFC
    2047 forbids, but some mailers send: ``=?utf-8?b?...?=`` for ``Иван <ivan@example.com>``),
    read again from its decoded text; None if that gives no address."""
    try:
        pairs = email.utils.getaddresses([decoded])
    except Exception:  # noqa: BLE001 - the stdlib's address parser on hostile input
        return None
    found = [Address(name=name, address=address.strip()) for name, address in pairs if "@" in address]
    return found or None


# A mailbox in the forms nearly all mail uses: ``addr``, ``"Name" <addr>`` or ``Name <addr>``
# with a dot-atom address, then a comma or the end. The name is one quoted string without
# escapes, or words without specials; anything else (comments, groups, escapes, routes,
# domain literals, folds inside a name) is left to the stdlib's parser. Possessive, so that a
# long header that is none of these fails at once.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]"
_DOT_ATOM_ADDRESS = rf"{_ATEXT}++(?:\.{_ATEXT}++)*+@[A-Za-z0-9-]++(?:\.[A-Za-z0-9-]++)*+"
_NAME_WORD = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]++"
_PLAIN_MAILBOX = re.compile(
    rf"""[ \t\r\n]*+(?:({_DOT_ATOM_ADDRESS})|(?:"([^"\\\r\n]*+)"|({_NAME_WORD}(?:[ \t]++{_NAME_WORD})*+)?)[ \t]*+<({_DOT_ATOM_ADDRESS})>)[ \t\r\n]*+(?:,|\Z)"""
)


def _plain_mailboxes(value: str) -> list[tuple[str, str]] | None:
    """``email.utils.getaddresses([value])`` when every mailbox in it has a plain form, else None.

    The stdlib's address parser walks a header character by character in Python; the plain
    forms are read with one regular expression each and give the same pairs (an unquoted
    name's words joined by single spaces, as the stdlib joins them).
    """
    pairs = []
    pos = 0
    while pos < len(value):
        mailbox = _PLAIN_MAILBOX.match(value, pos)
        if mailbox is None:
            return None
        bare, quoted, words, address = mailbox.groups()
        if bare is not None:
            pairs.append(("", bare))
        else:
            pairs.append((quoted if quoted is not None else " ".join((words or "").split()), address))
        pos = mailbox.end()
    return pairs


def _message_ids(value: str | None) -> list[str]:
    """Message-IDs in a header: every ``<...>``; a bare id without brackets as it is."""
    if not value:
        return []
    value = decode_header_text(value)
    found = _MSG_ID.findall(value)
    if found:
        return found
    return value.split()[:1]


# A Date header as nearly all mail writes it (RFC 5322's preferred form, a numeric zone and at
# most a zone name as comment after it), which `_header_date` reads without the stdlib's
# general parser. The year is 1000-9999: the stdlib moves two-digit years into 1950-2049 and
# iso_utc writes years before 1000 unpadded, both left to the general path.
_PLAIN_DATE = re.compile(
    r"(?:(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun), )?(\d\d?) (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) "
    r"([1-9]\d\d\d) (\d\d):(\d\d):(\d\d) ([+-])(\d\d)(\d\d)(?: \([A-Za-z]{1,10}\))?",
    re.ASCII,
)
_MONTHS = {m: i for i, m in enumerate(("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), 1)}
_DAY = datetime.timedelta(days=1)


def _header_date(value: str | None) -> str | None:
    """The Date header as ISO 8601 UTC; None when it is missing, unreadable or out of range."""
    if not value:
        return None
    plain = _PLAIN_DATE.fullmatch(value)
    if plain is not None:
        # What parsedate_to_datetime and iso_utc give for this form, without the general
        # parser: the same checks (a zone of a day or more, a day, hour or second out of range
        # is no date), the same UTC moment.
        day, month, year, hour, minute, second, sign, zone_hours, zone_minutes = plain.groups()
        offset = datetime.timedelta(hours=int(zone_hours), minutes=int(zone_minutes))
        if offset >= _DAY:
            return None
        try:
            moment = datetime.datetime(int(year), _MONTHS[month], int(day), int(hour), int(minute), int(second))
            moment = moment - offset if sign == "+" else moment + offset
        except (ValueError, OverflowError):
            return None
        if moment.year >= 1000:
            # isoformat writes the same digits (a four-digit year, no microseconds here) in C,
            # where an f-string parses six format specs.
            return moment.isoformat() + ".000Z"
    try:
        # iso_utc inside: a moment past 9999-12-31 in UTC overflows there, and is no date either.
        return iso_utc(email.utils.parsedate_to_datetime(decode_header_text(value)))
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


# Assembly -------------------------------------------------------------------------------


def _record(
    context: MessageContext, envelope: _Envelope, body: _Body, options: ConvertOptions, size: int | None
) -> MessageRecord:
    original: dict[str, int] = {}
    limit = options.max_text_bytes
    texts = []
    for segment in body.segments:
        if isinstance(segment, _Html):
            html = segment.html
            if len(html) > limit * _HTML_INPUT_FACTOR:
                original["body_html"] = len(html.encode("utf-8", "surrogatepass"))
                html = html[: limit * _HTML_INPUT_FACTOR]
            segment = html_to_text(html)
        if segment:
            texts.append(segment)
    body_text, cut = clip_utf8("\n\n".join(texts), limit)
    if cut is not None:
        original["body_text"] = cut
    reply = bool(envelope.in_reply_to or envelope.references or _REPLY_SUBJECT.match(envelope.subject))
    clean, cut = clip_utf8(clean_text(body_text, options.reply_languages, reply=reply), limit)
    if cut is not None:
        original["body_text_clean"] = cut
    body_html = None
    if options.keep_html and body.htmls:
        body_html, cut = clip_utf8("\n".join(body.htmls), limit)
        if cut is not None:
            original["body_html"] = cut
    attachments = tuple(body.attachments[:_MAX_LIST])
    flags = context.flags or _HEADER_FLAGS[envelope.important]
    return _new_record(
        message_id=context.message_id,
        thread_id=context.thread_id,
        internet_message_id=envelope.internet_message_id,
        in_reply_to=envelope.in_reply_to,
        references=envelope.references,
        sender=envelope.sender,
        to=envelope.to,
        cc=envelope.cc,
        bcc=envelope.bcc,
        reply_to=envelope.reply_to,
        subject=envelope.subject,
        date=envelope.date or context.date,
        direction=_direction(context, envelope.sender),
        folders=tuple(context.folders),
        labels=tuple(context.labels),
        flags=flags,
        size=context.size if context.size is not None else size,
        snippet=snippet_of(clean or body_text or context.snippet, options.snippet_chars),
        body_text=body_text,
        body_text_clean=clean,
        body_html=body_html,
        attachments=attachments,
        has_attachments=any(not a.inline for a in attachments),
        truncated=bool(original),
        original_sizes=original,
    )


# Flags are frozen: the two a message without the provider's flags can have are made once.
_HEADER_FLAGS = {False: Flags(important=False), True: Flags(important=True)}


def _new_record(**fields: Any) -> MessageRecord:
    """``MessageRecord(**fields)``, given every field in the class's order, without its __init__.

    A frozen dataclass's __init__ sets each of its 25 fields through ``object.__setattr__``,
    a Python-level call apiece: ~40k instructions a message (callgrind), more than the rest
    of the record's assembly. MessageRecord has no ``__post_init__``, so the instance is the
    same: the same ``__dict__``, in the same order (tests/test_mail_message.py checks both).
    """
    record = object.__new__(MessageRecord)
    record.__dict__.update(fields)
    return record


def _direction(context: MessageContext, sender: Address | None) -> Direction:
    if context.direction in DIRECTIONS:
        return context.direction
    if sender is not None and context.own_addresses:
        own = sender.address.lower()
        if any(own == a.lower() for a in context.own_addresses):
            return "sent"
    return "received"


# Raw MIME -------------------------------------------------------------------------------


def message_from_mime(
    raw: bytes, context: MessageContext, options: ConvertOptions = DEFAULT_OPTIONS
) -> MessageRecord:
    """The model of one raw RFC 5322 message (any bytes: malformed input gives a best effort)."""
    try:
        single = _single_part(raw)
        if single is not None:
            msg, body, content = single
            headers = _header_lists(msg)
            root = _mime_part(msg, "", 0, body, content, headers)
        else:
            msg = _parser.parsebytes(raw)
            headers = _header_lists(msg)
            root = _mime_part(msg, "", 0, fields=headers)
    except RecursionError:
        # Nested deeper than the parser's recursion allows: keep the headers, the body as text.
        msg = _parser.parsebytes(raw, headersonly=True)
        body = _leaf_payload(msg)
        root = _Part(
            content_type="text/plain", charset=None, disposition=None, filename=None, content_id=None,
            children=None, handle="1", payload=body, size=len(body),
        )
        headers = _header_lists(msg)
    return _record(context, _envelope(headers), _walk(root), options, len(raw))


# One header field as the stdlib's feed parser reads it: a name of printable ASCII but the
# colon, the value after the colon's blanks, and its folded continuation lines. Possessive
# (no backtracking): each line has one reading, and a long header that fails fails at once.
_HEADER_FIELD = r"([\x21-\x39\x3b-\x7e]++):[ \t]*+([^\r\n]*+(?:\r?\n[ \t][^\r\n]*+)*+)\r?\n"
_HEADER_FIELDS = re.compile(_HEADER_FIELD)
# The first empty line after the first line: where a header block of such fields ends, if it
# is one (a field's lines are never empty: its first starts with its name, a continuation
# with a blank).
_BLANK_LINE = re.compile(rb"\n\r?\n")
_UUENCODE = ("x-uuencode", "uuencode", "uue", "x-uue")


def _single_part(raw: bytes) -> tuple[email.message.Message, bytes, tuple[str, str | None]] | None:
    """The headers the stdlib parser would read from ``raw``, the body and its content type and
    charset (`_type_and_charset`), when it is one part.

    The parser's feed reads a body line by line, which costs more than everything else done
    with a single-part message, whose body needs no reading at all. Here the header block is
    read field by field into the same `email.message.Message` (``set_raw``, as the parser
    does) and the body is left as bytes. Anything the parser would treat in its own way -- a
    multipart or message/* type, a line that is neither a header field nor its continuation,
    a bare CR as a line end, no blank line -- gives None: the caller parses the whole message
    with the stdlib.
    """
    if raw[:1] == b"\n" or raw[:2] == b"\r\n":
        head_end, body_start = 0, raw.index(b"\n") + 1  # no header at all
    else:
        blank = _BLANK_LINE.search(raw)
        if blank is None:
            return None
        head_end, body_start = blank.start() + 1, blank.end()
    # Decoded as BytesParser decodes its input: 8-bit bytes kept as surrogate escapes. One
    # pass of the field pattern reads the fields and proves that nothing else is there: split
    # leaves no text between them and after the last (what the parser would read otherwise).
    pieces = _HEADER_FIELDS.split(raw[:head_end].decode("ascii", "surrogateescape"))
    if any(pieces[::3]):
        return None
    msg = email.message.Message(policy=email.policy.compat32)
    # What set_raw does for each field, as the parser calls it: append (name, value).
    msg._headers.extend(zip(pieces[1::3], pieces[2::3]))
    content = _type_and_charset(msg)
    if content[0].split("/")[0] in ("multipart", "message"):
        return None
    return msg, raw[body_start:], content


def _header_lists(msg: email.message.Message) -> dict[str, list[str]]:
    """Each header's values under its lower-case name, in order; a value that is no str as its str."""
    headers: dict[str, list[str]] = {}
    for name, value in msg.raw_items():
        headers.setdefault(name.lower(), []).append(value if isinstance(value, str) else str(value))
    return headers


def _header_text(msg: email.message.Message, fields: Mapping[str, list[str]], name: str) -> str | None:
    """``str(msg.get(name, ""))`` (``name`` in lower case) from `_header_lists`, or None when
    the stdlib trips over the value.

    ``Message.get`` lower-cases every header name on each call, and compat32 hands back an
    ASCII value as it is; only a value that may carry surrogate escapes (turned into a
    ``Header``) is asked of the message.
    """
    values = fields.get(name)
    if values is None:
        return ""
    if values[0].isascii():
        return values[0]
    return _safe(lambda: str(msg.get(name, "")), None)


def _transfer_decoded(msg: email.message.Message, body: bytes, fields: Mapping[str, list[str]] | None = None) -> bytes:
    """``body`` as ``msg.get_payload(decode=True)`` gives it for that payload, without turning it into text and back."""
    if fields is None:
        cte = _safe(lambda: str(msg.get("content-transfer-encoding", "")).lower(), None)
    else:
        cte = _header_text(msg, fields, "content-transfer-encoding")
        cte = cte.lower() if cte is not None else None
    if cte == "base64":
        data = _base64(body)
        if data is not None:
            return data
    elif cte == "quoted-printable":
        return quopri.decodestring(body)
    elif cte is not None and cte not in _UUENCODE:
        return body
    msg.set_payload(body.decode("ascii", "surrogateescape"))
    return _leaf_payload(msg)


def _mime_part(
    msg: email.message.Message, number: str, depth: int, body: bytes | None = None,
    content: tuple[str, str | None] | None = None, fields: Mapping[str, list[str]] | None = None,
) -> _Part:
    """``msg`` as a tree of parts; ``body`` and ``content`` are a single part's undecoded body
    and its `_type_and_charset` (see `_single_part`), ``fields`` its `_header_lists`."""
    if fields is None:
        fields = _header_lists(msg)
    ctype, charset = content or _type_and_charset(msg)
    children: list[_Part] | None = None
    payload: bytes | None = None
    subject = ""
    is_multipart = msg.is_multipart()
    if is_multipart and depth >= _MAX_DEPTH:
        ctype = "application/octet-stream"  # past any real message's nesting: an opaque part
    elif is_multipart and not ctype.startswith("message/"):
        prefix = f"{number}." if number else ""
        children = [_mime_part(child, f"{prefix}{i}", depth + 1) for i, child in enumerate(msg.get_payload(), 1)]
    elif is_multipart:  # message/rfc822 and friends: an attachment, not descended into
        inner = msg.get_payload()
        if inner and ctype == "message/rfc822":
            subject = decode_header_text(str(inner[0].get("subject", "") or ""))
        payload = b"".join(_safe(m.as_bytes, b"") for m in inner)
    else:
        if ctype.startswith("multipart/"):
            ctype = "text/plain"  # a multipart whose boundary never came: keep its text
        payload = _leaf_payload(msg) if body is None else _transfer_decoded(msg, body, fields)
    # Most parts have neither a disposition nor a Content-ID: the dict says so without the
    # message's header-by-header lookups.
    return _Part(
        content_type=ctype,
        charset=charset,
        disposition=_safe(msg.get_content_disposition, None) if "content-disposition" in fields else None,
        filename=_filename(msg, fields),
        content_id=_content_id(msg.get("content-id")) if "content-id" in fields else None,
        children=children,
        handle=number or "1",
        payload=payload,
        size=len(payload) if payload is not None else None,
        subject=subject,
    )


def _type_and_charset(msg: email.message.Message) -> tuple[str, str | None]:
    """``msg.get_content_type()`` and ``msg.get_content_charset()``, each Content-Type value read once."""
    value = next((v for k, v in msg.raw_items() if k.lower() == "content-type"), None)
    # Without a Content-Type the default type depends on the parent; a long value is no
    # common one and is not kept.
    if not isinstance(value, str) or len(value) > _CACHED_CONTENT_TYPE:
        return _safe(msg.get_content_type, "text/plain"), _safe(msg.get_content_charset, None)
    return _content_type_of(value)


@functools.lru_cache(maxsize=1024)
def _content_type_of(value: str) -> tuple[str, str | None]:
    # The parts of a mailbox share a handful of Content-Type values, and the stdlib reads the
    # parameters in Python at every call; the answer depends on the value alone.
    probe = email.message.Message(policy=email.policy.compat32)
    probe.set_raw("Content-Type", value)
    return _safe(probe.get_content_type, "text/plain"), _safe(probe.get_content_charset, None)


def _base64(body: bytes) -> bytes | None:
    """A base64 body decoded as the stdlib decodes one that passes its validation, else None.

    The stdlib joins the lines (bytes.splitlines splits at CR and LF only) and decodes strictly
    (``binascii.a2b_base64(strict_mode=True)``); what fails that takes its lenient path, which
    the caller leaves to the stdlib. pybase64 validates the same way and decodes with SIMD,
    about ten times faster than binascii on a 27 KB body (`python -m bench.mail_convert`).
    The line ends go with ``bytes.replace``, which finds them with memchr and copies the
    lines between in blocks, where ``bytes.translate`` looks at every byte.
    """
    body = body.replace(b"\n", b"")
    if b"\r" in body:
        body = body.replace(b"\r", b"")
    try:
        return pybase64.b64decode(body, validate=True)
    except binascii.Error:
        return None


def _leaf_payload(msg: email.message.Message) -> bytes:
    raw = _safe(msg.get_payload, None)
    if isinstance(raw, str) and raw.isascii():
        # As get_payload(decode=True) reads it, for a base64 part that passes validation.
        if _safe(lambda: str(msg.get("content-transfer-encoding", "")).lower(), None) == "base64":
            data = _base64(raw.encode("ascii"))
            if data is not None:
                return data
    try:
        data = msg.get_payload(decode=True)
    except Exception:  # noqa: BLE001 - a broken transfer encoding: keep the bytes as sent
        data = None
    if isinstance(data, bytes):
        return data
    raw = msg.get_payload()
    if isinstance(raw, str):
        return raw.encode("utf-8", "surrogateescape")
    return b""


def _filename(msg: email.message.Message, fields: Mapping[str, list[str]]) -> str | None:
    # A file name is a parameter whose name has "name" in it (filename, name, filename*0*, ...)
    # of one of these headers (``fields``: the message's `_header_lists`); most parts have
    # none, and reading the parameters costs more.
    if not any("name" in value.lower() for key in ("content-type", "content-disposition") for value in fields.get(key, ())):
        return None
    name = _safe(msg.get_filename, None)
    if not name:
        return None
    return decode_header_text(str(name)) or None


def _content_id(value: Any) -> str | None:
    if value is None:
        return None
    text = decode_header_text(str(value)).strip().strip("<>").strip()
    return text or None


def _safe(call: Any, default: Any) -> Any:
    """``call()``, or ``default`` when the stdlib trips over a malformed header."""
    try:
        value = call()
    except Exception:  # noqa: BLE001 - malformed parameters raise from deep in email.message
        return default
    return default if value is None else value


# Gmail ------------------------------------------------------------------------------------


def gmail_context(
    resource: Mapping[str, Any], *, label_names: Mapping[str, str] | None = None, own_addresses: Collection[str] = ()
) -> MessageContext:
    """The context of a Gmail ``users.messages.get`` resource (any format): ids, label names, flags.

    ``label_names`` maps label ids to names (``labels.list``); system labels (``INBOX``,
    ``SENT``) are their own names. SENT and DRAFT set the direction.
    """
    ids = [str(x) for x in resource.get("labelIds") or ()]
    names = label_names or {}
    internal = resource.get("internalDate")
    date = None
    if internal is not None:
        try:
            date = iso_utc(datetime.datetime.fromtimestamp(int(internal) / 1000, datetime.timezone.utc))
        except (TypeError, ValueError, OverflowError, OSError):
            date = None
    direction: Direction | None = "draft" if "DRAFT" in ids else "sent" if "SENT" in ids else None
    size = resource.get("sizeEstimate")
    return MessageContext(
        message_id=str(resource.get("id", "")),
        thread_id=resource.get("threadId"),
        labels=tuple(names.get(i, i) for i in ids),
        flags=Flags(read="UNREAD" not in ids, starred="STARRED" in ids, important="IMPORTANT" in ids),
        own_addresses=own_addresses,
        direction=direction,
        date=date,
        size=size if isinstance(size, int) else None,
        snippet=str(resource.get("snippet") or ""),
    )


def message_from_gmail(
    resource: Mapping[str, Any],
    *,
    label_names: Mapping[str, str] | None = None,
    own_addresses: Collection[str] = (),
    options: ConvertOptions = DEFAULT_OPTIONS,
) -> MessageRecord:
    """The model of a Gmail ``format=full`` resource (its ``payload`` tree of parts).

    Parts whose content Gmail left out (only an ``attachmentId``) are attachments by
    definition; text parts carry ``body.data`` (base64url), which is all the body needs.
    For ``format=raw``, decode ``raw`` and call `message_from_mime` with `gmail_context`.
    """
    context = gmail_context(resource, label_names=label_names, own_addresses=own_addresses)
    payload = resource.get("payload") or {}
    headers = _header_map(payload.get("headers"))
    root = _gmail_part(payload, headers)
    return _record(context, _envelope(headers), _walk(root), options, None)


_PARAM_CHARSET = re.compile(r"""charset\s*=\s*["']?([^"';\s]+)""", re.IGNORECASE)
_PARAM_NAME = re.compile(r"""(?:file)?name\*?\s*=\s*["']?([^"';]+)""", re.IGNORECASE)


def _gmail_part(node: Mapping[str, Any], headers: Mapping[str, list[str]] | None = None, depth: int = 0) -> _Part:
    if headers is None:
        headers = _header_map(node.get("headers"))
    ctype = str(node.get("mimeType") or "text/plain").lower()
    body = node.get("body") or {}
    part_id = str(node.get("partId") or "")
    children = None
    parts = node.get("parts")
    if ctype.startswith("multipart/") and depth >= _MAX_DEPTH:
        ctype = "application/octet-stream"
    elif ctype.startswith("multipart/") and isinstance(parts, list) and parts:
        children = [_gmail_part(child, None, depth + 1) for child in parts if isinstance(child, Mapping)]
    elif ctype.startswith("multipart/"):
        ctype = "text/plain"  # a multipart whose boundary never came: keep its text
    content_type = (headers.get("content-type") or [""])[0]
    disposition_header = (headers.get("content-disposition") or [""])[0]
    disposition = disposition_header.split(";", 1)[0].strip().lower() or None
    charset = _PARAM_CHARSET.search(content_type)
    data = body.get("data")
    payload = _base64url(data) if isinstance(data, str) else None
    size = body.get("size")
    subject = ""
    if ctype == "message/rfc822":
        inner = [p for p in node.get("parts") or () if isinstance(p, Mapping)]
        for header in (inner[0].get("headers") or ()) if inner else ():
            if str(header.get("name", "")).lower() == "subject":
                subject = decode_header_text(str(header.get("value", "")))
    filename = str(node.get("filename") or "") or None
    return _Part(
        content_type=ctype,
        charset=charset.group(1) if charset else None,
        disposition=disposition,
        filename=decode_header_text(filename) if filename else None,
        content_id=_content_id((headers.get("content-id") or [None])[0]),
        children=children,
        handle=str(body.get("attachmentId") or part_id),
        payload=payload,
        size=size if isinstance(size, int) else (len(payload) if payload is not None else None),
        subject=subject,
    )


def _header_map(items: Any) -> dict[str, list[str]]:
    """``[{"name": ..., "value": ...}]`` (Gmail's and Graph's header lists) by lower-case name."""
    headers: dict[str, list[str]] = {}
    for header in items if isinstance(items, list) else ():
        if isinstance(header, Mapping):
            headers.setdefault(str(header.get("name", "")).lower(), []).append(str(header.get("value", "")))
    return headers


def _base64url(data: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(data + "=" * (-len(data) % 4))
    except (binascii.Error, ValueError):
        return b""


# Microsoft Graph --------------------------------------------------------------------------

# MAPI properties asked for with $expand=singleValueExtendedProperties: PR_MESSAGE_SIZE
# ("Integer 0xe08"), PR_IN_REPLY_TO_ID ("String 0x1042"), PR_INTERNET_REFERENCES ("String 0x1039").
_GRAPH_SIZE_TAG = 0x0E08
_GRAPH_IN_REPLY_TO_TAG = 0x1042
_GRAPH_REFERENCES_TAG = 0x1039


def _graph_properties(message: Mapping[str, Any]) -> dict[tuple[str, int], Any]:
    """A Graph message's singleValueExtendedProperties by (kind, tag): ("integer", 0x0E08)."""
    out: dict[tuple[str, int], Any] = {}
    for prop in message.get("singleValueExtendedProperties") or ():
        if not isinstance(prop, Mapping):
            continue
        kind, _, tag = str(prop.get("id", "")).partition(" ")
        try:
            out[(kind.lower(), int(tag, 16))] = prop.get("value")
        except ValueError:
            continue
    return out


def graph_context(
    message: Mapping[str, Any],
    *,
    folder_names: Mapping[str, str] | None = None,
    own_addresses: Collection[str] = (),
) -> MessageContext:
    """The context of a Graph message resource: ids, folder and category names, flags, direction."""
    folder = message.get("parentFolderId")
    names = folder_names or {}
    flag = message.get("flag") or {}
    value = _graph_properties(message).get(("integer", _GRAPH_SIZE_TAG))
    try:
        size = int(value) if value is not None else None
    except (TypeError, ValueError):
        size = None
    return MessageContext(
        message_id=str(message.get("id", "")),
        thread_id=message.get("conversationId"),
        folders=(names.get(folder, folder),) if folder else (),
        labels=tuple(str(c) for c in message.get("categories") or ()),
        flags=Flags(
            read=bool(message.get("isRead")),
            starred=isinstance(flag, Mapping) and flag.get("flagStatus") == "flagged",
            important=str(message.get("importance") or "").lower() == "high",
        ),
        own_addresses=own_addresses,
        direction="draft" if message.get("isDraft") else None,
        date=_graph_date(message.get("sentDateTime")) or _graph_date(message.get("receivedDateTime")),
        size=size,
        snippet=str(message.get("bodyPreview") or ""),
    )


def message_from_graph(
    message: Mapping[str, Any],
    *,
    attachments: Sequence[Mapping[str, Any]] | None = None,
    folder_names: Mapping[str, str] | None = None,
    own_addresses: Collection[str] = (),
    options: ConvertOptions = DEFAULT_OPTIONS,
) -> MessageRecord:
    """The model of a Graph message resource and (if listed) its attachments.

    ``body`` may be HTML or text (``Prefer: outlook.body-content-type="text"``); In-Reply-To
    and References come from ``internetMessageHeaders`` when it was selected, else from the
    expanded PR_IN_REPLY_TO_ID and PR_INTERNET_REFERENCES. Without an attachment listing,
    ``has_attachments`` is Graph's own flag.
    """
    context = graph_context(message, folder_names=folder_names, own_addresses=own_addresses)
    from_header = _envelope(_header_map(message.get("internetMessageHeaders")))
    senders = _graph_addresses([message.get("from") or message.get("sender")])
    properties = _graph_properties(message)
    in_reply_to = from_header.in_reply_to or next(
        iter(_message_ids(str(properties.get(("string", _GRAPH_IN_REPLY_TO_TAG)) or ""))), None
    )
    references = from_header.references or tuple(
        _message_ids(str(properties.get(("string", _GRAPH_REFERENCES_TAG)) or ""))[:_MAX_LIST]
    )
    envelope = _Envelope(
        sender=senders[0] if senders else from_header.sender,
        to=_graph_addresses(message.get("toRecipients")),
        cc=_graph_addresses(message.get("ccRecipients")),
        bcc=_graph_addresses(message.get("bccRecipients")),
        reply_to=_graph_addresses(message.get("replyTo")),
        subject=decode_header_text(str(message.get("subject") or "")),
        date=context.date,
        internet_message_id=(_message_ids(message.get("internetMessageId")) or [None])[0],
        in_reply_to=in_reply_to,
        references=references,
    )
    out = _Body()
    content = message.get("body")
    content = content if isinstance(content, Mapping) else {}
    text = str(content.get("content") or "")
    if str(content.get("contentType", "")).lower() == "html":
        out.segments.append(_Html(text))
        out.htmls.append(text)
    elif text:
        out.segments.append(normalise_text(text))
    for item in attachments or ():
        if not isinstance(item, Mapping):
            continue
        size = item.get("size")
        out.attachments.append(
            Attachment(
                id=str(item.get("id", "")),
                filename=str(item.get("name") or ""),
                mime_type=str(item.get("contentType") or "application/octet-stream").lower(),
                size=size if isinstance(size, int) else None,
                content_id=_content_id(item.get("contentId")),
                inline=bool(item.get("isInline")),
            )
        )
    record = _record(context, envelope, out, options, None)
    if attachments is None and message.get("hasAttachments"):
        return dataclasses.replace(record, has_attachments=True)
    return record


def _graph_addresses(values: Any) -> tuple[Address, ...]:
    out = []
    for value in values or ():
        mailbox = value.get("emailAddress") if isinstance(value, Mapping) else None
        if not isinstance(mailbox, Mapping) or not mailbox.get("address"):
            continue
        out.append(Address(name=str(mailbox.get("name") or "").strip(), address=str(mailbox["address"]).strip()))
        if len(out) >= _MAX_LIST:
            break
    return tuple(out)


def _graph_date(value: Any) -> str | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return iso_utc(datetime.datetime.fromisoformat(value.replace("Z", "+00:00")))
    except (ValueError, OverflowError):  # OverflowError: past 9999-12-31 once in UTC
        return None

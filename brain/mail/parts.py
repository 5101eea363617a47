"""One part of a raw message by its number: how a provider that holds raw MIME (IMAP, Gmail's
``format=raw``) hands out an attachment the model listed.

Part numbers are the ones `brain.mail.convert` gives attachments: IMAP section numbering
(``"2"``, ``"1.2"``; ``"1"`` for a single-part message), with ``message/rfc822`` parts as
leaves.
"""

from __future__ import annotations

import email.message
from dataclasses import dataclass
from email.parser import BytesParser
from email.policy import compat32

from brain.mail.convert import attachment_filename
from brain.mail.mailtext import decode_header_text

__all__ = ["MimePart", "mime_part"]

_parser = BytesParser(policy=compat32)


@dataclass(frozen=True)
class MimePart:
    """A part's decoded content, content type and file name (the model's: may be empty)."""

    content: bytes
    mime_type: str
    filename: str


def mime_part(raw: bytes, number: str) -> MimePart | None:
    """Part ``number`` of the message ``raw``, or None when it has no such part."""
    node: email.message.Message = _parser.parsebytes(raw)
    steps = number.split(".")
    if not node.is_multipart() or node.get_content_type().startswith("message/"):
        if steps != ["1"]:
            return None
        return _leaf(node)
    for depth, step in enumerate(steps):
        if not step.isdigit() or not node.is_multipart() or node.get_content_type().startswith("message/"):
            return None
        children = node.get_payload()
        index = int(step) - 1
        if not isinstance(children, list) or not 0 <= index < len(children):
            return None
        node = children[index]
        if depth < len(steps) - 1 and node.get_content_type().startswith("message/"):
            return None  # parts inside an attached message are not numbered by the model
    return _leaf(node)


def _leaf(node: email.message.Message) -> MimePart:
    if node.is_multipart():
        content = b"".join(m.as_bytes() for m in node.get_payload())
    else:
        try:
            data = node.get_payload(decode=True)
        except Exception:  # noqa: BLE001 - a broken transfer encoding: the bytes as sent
            data = None
        if not isinstance(data, bytes):
            payload = node.get_payload()
            data = payload.encode("utf-8", "surrogateescape") if isinstance(payload, str) else b""
        content = data
    try:
        filename = node.get_filename() or ""
    except Exception:  # noqa: BLE001 - malformed parameters raise from deep in email.message
        filename = ""
    ctype = node.get_content_type()
    subject = ""
    if ctype == "message/rfc822" and node.is_multipart() and node.get_payload():
        subject = decode_header_text(str(node.get_payload()[0].get("subject", "") or ""))
    # Named as the model names it: an unnamed invitation or attached message is no "attachment".
    return MimePart(content, ctype, attachment_filename(decode_header_text(str(filename)) if filename else None, ctype, subject))

"""Real-world-shaped MIME messages for the fakes and the tests that read them back.

`build_message` makes what mail clients send: plain text, HTML only, ``multipart/alternative``,
inline images in ``multipart/related`` (named by ``cid:`` in the HTML), attachments in
``multipart/mixed``, in any charset the stdlib can encode (quoted-printable or base64 as the
charset asks). The fake Gmail serves these bytes as ``format=raw`` and as a ``format=full``
payload tree, the fake Graph as a message resource, dovecot as the message itself.
"""

from __future__ import annotations

import datetime
import email.utils
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from email.header import Header
from email.mime.base import MIMEBase
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.charset import QP, Charset
from email.encoders import encode_base64
from email.message import Message

__all__ = ["Part", "build_message"]


@dataclass(frozen=True)
class Part:
    """An attachment, or an inline image when ``content_id`` is set (without angle brackets)."""

    filename: str
    mime_type: str
    data: bytes
    content_id: str | None = None


def _text(body: str, subtype: str, charset: str) -> MIMEText:
    # The stdlib picks the transfer encoding the charset calls for (QP for Latin, base64 for
    # KOI8-R and GB2312; Shift_JIS goes out as ISO-2022-JP, as Japanese mail does). UTF-8 goes
    # quoted-printable, as Gmail and Outlook send it.
    if charset.lower() in ("utf-8", "utf8"):
        utf8 = Charset("utf-8")
        utf8.body_encoding = QP
        return MIMEText(body, subtype, utf8)
    return MIMEText(body, subtype, charset)


def _leaf(part: Part, *, inline: bool) -> MIMEBase:
    maintype, _, subtype = part.mime_type.partition("/")
    leaf = MIMEBase(maintype, subtype or "octet-stream")
    leaf.set_payload(part.data)
    encode_base64(leaf)
    leaf.add_header("Content-Disposition", "inline" if inline else "attachment", filename=part.filename)
    if part.content_id:
        leaf["Content-ID"] = f"<{part.content_id}>"
    return leaf


def build_message(
    *,
    sender: str = "Alice Example <alice@example.com>",
    to: Sequence[str] = ("Ada <ada@example.com>",),
    cc: Sequence[str] = (),
    subject: str = "Hello",
    text: str | None = None,
    html: str | None = None,
    attachments: Sequence[Part] = (),
    inline: Sequence[Part] = (),
    charset: str = "utf-8",
    date: datetime.datetime | None = None,
    message_id: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> bytes:
    """One message as its RFC 5322 bytes (CRLF line ends), shaped by what is given."""
    if text is None and html is None:
        text = ""
    body: Message
    if html is not None and inline:
        related = MIMEMultipart("related")
        related.attach(_text(html, "html", charset))
        for image in inline:
            related.attach(_leaf(image, inline=True))
        html_part: Message = related
    elif html is not None:
        html_part = _text(html, "html", charset)
    if text is not None and html is not None:
        body = MIMEMultipart("alternative")
        body.attach(_text(text, "plain", charset))
        body.attach(html_part)
    elif html is not None:
        body = html_part
    else:
        body = _text(text or "", "plain", charset)
    if attachments:
        mixed = MIMEMultipart("mixed")
        mixed.attach(body)
        for attachment in attachments:
            mixed.attach(_leaf(attachment, inline=False))
        body = mixed
    domain = email.utils.parseaddr(sender)[1].rpartition("@")[2] or "example.com"
    top = {
        "From": sender,
        "To": ", ".join(to),
        **({"Cc": ", ".join(cc)} if cc else {}),
        "Subject": subject if subject.isascii() else Header(subject, "utf-8").encode(),
        "Date": email.utils.format_datetime(date or datetime.datetime.now(datetime.UTC).replace(microsecond=0)),
        "Message-ID": message_id or email.utils.make_msgid(domain=domain),
        **dict(headers or {}),
    }
    for name in reversed(list(top)):
        # Headers first, in the usual order, before the MIME ones the parts already carry.
        body._headers.insert(0, (name, top[name]))  # noqa: SLF001 - compat32 keeps raw (name, value) pairs
    if "MIME-Version" not in body:
        body["MIME-Version"] = "1.0"
    return body.as_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")

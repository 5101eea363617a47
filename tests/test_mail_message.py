"""The one message model: MIME, Gmail ``format=full`` and Graph JSON -> `MessageRecord`.

The golden corpus (tests/mail_corpus/NN-name.eml beside NN-name.json) pins the conversion of
real-world-shaped messages. Each JSON holds the provider context the message is converted
with, optional convert options, and the expected event payload. After a deliberate change
to the conversion, regenerate and read the diff line by line before committing it:

    BRAIN_REGEN_GOLDEN=1 .venv/bin/python -m pytest -q -p no:cacheprovider tests/test_mail_message.py
    git diff tests/mail_corpus
"""

from __future__ import annotations

import binascii
import dataclasses
import email.parser
import email.policy
import email.quoprimime
import email.utils
import json
import os
import random
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mailparser_reply.parser import EmailMessage as ReplyParse

from brain.mail import convert, mailtext, provider
from brain.mail.convert import message_from_gmail, message_from_graph, message_from_mime
from brain.mail.message import ConvertOptions, Flags, MessageContext, MessageRecord, event_schemas, iso_utc
from brain.mail.parts import mime_part
from brain.testing.fakes.gmail import mime_payload

CORPUS = Path(__file__).parent / "mail_corpus"
REGEN = os.environ.get("BRAIN_REGEN_GOLDEN") == "1"
OWN = ["me@example.com"]
ENVELOPE = {"account": "acc1", "provider": "imap", "address": "me@example.com"}


def corpus_files() -> list[Path]:
    return sorted(CORPUS.glob("*.eml"))


def context_from(data: dict[str, Any], stem: str) -> MessageContext:
    flags = data.get("flags")
    return MessageContext(
        message_id=data.get("message_id", stem),
        thread_id=data.get("thread_id"),
        folders=tuple(data.get("folders", ["INBOX"])),
        labels=tuple(data.get("labels", [])),
        flags=Flags(**flags) if flags is not None else None,
        own_addresses=tuple(data.get("own_addresses", OWN)),
        direction=data.get("direction"),
        date=data.get("date"),
        size=data.get("size"),
        snippet=data.get("snippet", ""),
    )


def convert_file(path: Path) -> tuple[dict[str, Any], dict[str, Any], MessageRecord]:
    golden = path.with_suffix(".json")
    spec = json.loads(golden.read_text()) if golden.exists() else {}
    context_data = spec.get("context", {})
    options_data = spec.get("options", {})
    record = message_from_mime(path.read_bytes(), context_from(context_data, path.stem), ConvertOptions(**options_data))
    return context_data, options_data, record


def test_a_record_is_built_as_its_dataclass_init_builds_it() -> None:
    # _record builds the frozen MessageRecord without its __init__ (convert._new_record): the
    # record must be the one __init__ makes, every field set, in the same order. A field
    # with a default that _record does not pass, or a __post_init__, has to be added there.
    assert not hasattr(MessageRecord, "__post_init__")
    for path in corpus_files():
        _context, _options, record = convert_file(path)
        rebuilt = MessageRecord(**{f.name: getattr(record, f.name) for f in dataclasses.fields(MessageRecord)})
        assert list(vars(record).items()) == list(vars(rebuilt).items()), path.name
        assert record == rebuilt and hash(record.flags) == hash(rebuilt.flags)


def test_the_corpus_has_at_least_30_messages_each_with_a_golden() -> None:
    files = corpus_files()
    assert len(files) >= 30
    missing = [p.name for p in files if not p.with_suffix(".json").exists() and not REGEN]
    assert not missing, f"no golden JSON for {missing}"


@pytest.mark.parametrize("path", corpus_files(), ids=lambda p: p.stem)
def test_conversion_matches_its_golden(path: Path) -> None:
    context_data, options_data, record = convert_file(path)
    got = record.as_event_data()
    golden = path.with_suffix(".json")
    if REGEN:
        spec: dict[str, Any] = {"context": context_data}
        if options_data:
            spec["options"] = options_data
        spec["message"] = got
        golden.write_text(json.dumps(spec, indent=2, ensure_ascii=False) + "\n")
    expected = json.loads(golden.read_text())["message"]
    assert got == expected


@pytest.mark.parametrize("path", corpus_files(), ids=lambda p: p.stem)
def test_every_golden_validates_against_the_received_schema(path: Path) -> None:
    message = json.loads(path.with_suffix(".json").read_text())["message"]
    jsonschema.validate({**ENVELOPE, **message}, event_schemas()["mail.message.received"])


def test_event_schemas_are_valid_json_schemas_and_reject_what_they_should() -> None:
    schemas = event_schemas()
    assert set(schemas) == {"mail.message.received", "mail.message.updated", "mail.message.deleted"}
    for schema in schemas.values():
        jsonschema.Draft202012Validator.check_schema(schema)
    record = message_from_mime(b"Subject: x\n\nbody\n", MessageContext(message_id="m"))
    data = record.as_event_data()
    received = schemas["mail.message.received"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**data, "direction": "sideways"}, received)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({k: v for k, v in data.items() if k != "body_text"}, received)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**data, "truncated": True}, received)  # without original_sizes
    jsonschema.validate({"message_id": "m", "labels": ["INBOX"], "added_labels": ["INBOX"]}, schemas["mail.message.updated"])
    jsonschema.validate({**ENVELOPE, "message_id": "m", "thread_id": None}, schemas["mail.message.deleted"])
    schemas["mail.message.received"]["properties"].clear()  # a caller's copy, not the module's
    assert event_schemas()["mail.message.received"]["properties"]


def test_providers_reach_the_model_through_the_provider_contract() -> None:
    for name in (
        "Address", "Attachment", "ConvertOptions", "Flags", "MessageContext", "MessageRecord",
        "event_schemas", "message_from_mime", "message_from_gmail", "message_from_graph",
        "gmail_context", "graph_context", "iso_utc",
    ):
        assert name in provider.__all__ and hasattr(provider, name), name


# Caps and options ---------------------------------------------------------------------------


def test_the_default_cap_cuts_text_at_256_kib_on_a_character_boundary() -> None:
    text = ("ü" * 99 + "\n") * 2000  # 2 bytes per ü: ~400 KB of UTF-8
    raw = b"Subject: big\nContent-Type: text/plain; charset=utf-8\n\n" + text.encode()
    record = message_from_mime(raw, MessageContext(message_id="big"))
    size = len(record.body_text.encode())
    assert record.truncated is True
    assert 256 * 1024 - 2 <= size <= 256 * 1024
    assert record.original_sizes["body_text"] == len(text.strip().encode())
    assert record.body_text.endswith("ü")
    jsonschema.validate(record.as_event_data(), event_schemas()["mail.message.received"])


def test_html_is_kept_only_when_asked_and_capped_too() -> None:
    html = "<html><body>" + "<p>Paragraph with <b>bold</b> text.</p>" * 2000 + "</body></html>"
    raw = b"Subject: h\nContent-Type: text/html; charset=utf-8\n\n" + html.encode()
    plain = message_from_mime(raw, MessageContext(message_id="h"))
    assert plain.body_html is None and "body_html" not in plain.as_event_data()
    kept = message_from_mime(raw, MessageContext(message_id="h"), ConvertOptions(keep_html=True, max_text_bytes=8192))
    assert kept.body_html is not None and kept.body_html.startswith("<html><body><p>")
    assert len(kept.body_html.encode()) <= 8192
    assert kept.original_sizes["body_html"] == len(html.encode())
    assert kept.body_text.startswith("Paragraph with bold text.")
    assert "<b>" not in kept.body_text


def test_an_enormous_html_body_is_converted_from_a_bounded_prefix() -> None:
    html = "<p>" + "word " * 1_000_000 + "</p>"  # 5 MB
    raw = b"Subject: h\nContent-Type: text/html\n\n" + html.encode()
    record = message_from_mime(raw, MessageContext(message_id="h"), ConvertOptions(max_text_bytes=4096))
    assert record.truncated is True
    assert record.original_sizes["body_html"] == len(html)
    assert len(record.body_text.encode()) <= 4096


# Gmail format=full ------------------------------------------------------------------------


def gmail_resource(raw: bytes, message_id: str, label_ids: list[str]) -> dict[str, Any]:
    """What Gmail's users.messages.get(format=full) answers for these MIME bytes."""
    return {
        "id": message_id,
        "threadId": f"t-{message_id}",
        "labelIds": label_ids,
        "snippet": "gmail's own snippet",
        "sizeEstimate": len(raw),
        "internalDate": "1741083300000",
        "payload": mime_payload(raw, message_id),
    }


def _comparable(record: MessageRecord) -> dict[str, Any]:
    """The part of a record that comes from the message itself, not from provider context."""
    data = record.as_event_data()
    data["attachments"] = [{k: v for k, v in a.items() if k != "id"} for a in data["attachments"]]
    for key in ("message_id", "thread_id", "size", "folders", "labels", "flags", "direction", "date"):
        data.pop(key)
    if not record.body_text:
        data.pop("snippet")  # the provider's own snippet stands in
    return data


@pytest.mark.parametrize("path", corpus_files(), ids=lambda p: p.stem)
def test_gmail_full_payload_gives_the_same_message_as_its_mime(path: Path) -> None:
    raw = path.read_bytes()
    _, options_data, from_mime = convert_file(path)
    resource = gmail_resource(raw, "18c0a", ["INBOX", "UNREAD", "Label_7"])
    from_gmail = message_from_gmail(
        resource, label_names={"Label_7": "Receipts"}, own_addresses=OWN, options=ConvertOptions(**options_data)
    )
    assert _comparable(from_gmail) == _comparable(from_mime)
    if from_mime.date is not None and "date" not in json.loads(path.with_suffix(".json").read_text())["context"]:
        assert from_gmail.date == from_mime.date
    assert from_gmail.message_id == "18c0a" and from_gmail.thread_id == "t-18c0a"
    assert from_gmail.labels == ("INBOX", "UNREAD", "Receipts")
    assert from_gmail.flags == Flags(read=False, starred=False, important=False)
    handles = {}  # what Gmail lets a client fetch each part by: its attachmentId, else its partId
    nodes = [resource["payload"]]
    while nodes:
        node = nodes.pop()
        handles[node["partId"]] = node["body"].get("attachmentId", node["partId"])
        nodes.extend(node.get("parts", []))
    assert all(a.id in handles.values() for a in from_gmail.attachments)


def test_gmail_labels_set_direction_flags_and_fallbacks() -> None:
    raw = b"From: someone@example.org\nSubject: s\n\nhello\n"
    sent = message_from_gmail(gmail_resource(raw, "a", ["SENT", "STARRED", "IMPORTANT"]))
    assert sent.direction == "sent"
    assert sent.flags == Flags(read=True, starred=True, important=True)
    assert sent.date == "2025-03-04T10:15:00.000Z"  # internalDate, as the message has no Date
    draft = message_from_gmail(gmail_resource(raw, "b", ["DRAFT"]))
    assert draft.direction == "draft"
    mine = message_from_gmail(gmail_resource(raw, "c", ["INBOX"]), own_addresses=["SomeOne@example.org"])
    assert mine.direction == "sent"
    empty = message_from_gmail({"id": "x", "payload": {"mimeType": "multipart/mixed", "parts": "junk"}})
    assert empty.body_text == "" and empty.message_id == "x"


# Microsoft Graph ------------------------------------------------------------------------


GRAPH_HTML = {
    "id": "AAMkAGI2",
    "conversationId": "AAQkAGI2conv",
    "internetMessageId": "<DB9PR01MB0002@eurprd01.prod.outlook.example>",
    "subject": "RE: Budget",
    "from": {"emailAddress": {"name": "Katherine Johnson", "address": "katherine@nasa.example"}},
    "toRecipients": [{"emailAddress": {"name": "Me", "address": "me@example.com"}}],
    "ccRecipients": [{"emailAddress": {"name": "", "address": "alan@bletchley.example"}}, {"emailAddress": {}}],
    "replyTo": [],
    "sentDateTime": "2025-03-04T08:01:12Z",
    "receivedDateTime": "2025-03-04T08:01:15Z",
    "isRead": False,
    "isDraft": False,
    "importance": "high",
    "flag": {"flagStatus": "flagged"},
    "categories": ["Finance"],
    "parentFolderId": "AAMkInbox",
    "hasAttachments": True,
    "bodyPreview": "Hi, numbers attached",
    "body": {
        "contentType": "html",
        "content": "<html><body><p>Hi,</p><p>numbers attached.</p><div id=\"divRplyFwdMsg\"><b>From:</b> Me<br>"
        "<b>Sent:</b> Monday<br><b>To:</b> Katherine<br><b>Subject:</b> Budget</div><p>Could you share them?</p>"
        "</body></html>",
    },
    "internetMessageHeaders": [
        {"name": "In-Reply-To", "value": "<budget-1@example.com>"},
        {"name": "References", "value": "<budget-0@example.com> <budget-1@example.com>"},
    ],
    "singleValueExtendedProperties": [{"id": "Integer 0xe08", "value": "48213"}],
}


def test_graph_html_message_with_attachment_listing() -> None:
    attachments = [
        {"@odata.type": "#microsoft.graph.fileAttachment", "id": "AAMkAtt1", "name": "budget.xlsx",
         "contentType": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet", "size": 10240,
         "isInline": False, "contentId": None},
        {"@odata.type": "#microsoft.graph.fileAttachment", "id": "AAMkAtt2", "name": "image001.png",
         "contentType": "image/png", "size": 2048, "isInline": True, "contentId": "image001.png@01DB8C9A"},
    ]
    record = message_from_graph(
        GRAPH_HTML, attachments=attachments, folder_names={"AAMkInbox": "Inbox"}, own_addresses=OWN
    )
    data = record.as_event_data()
    jsonschema.validate({**ENVELOPE, **data}, event_schemas()["mail.message.received"])
    assert data["message_id"] == "AAMkAGI2" and data["thread_id"] == "AAQkAGI2conv"
    assert data["from"] == {"name": "Katherine Johnson", "address": "katherine@nasa.example"}
    assert data["cc"] == [{"name": "", "address": "alan@bletchley.example"}]
    assert data["in_reply_to"] == "<budget-1@example.com>"
    assert data["references"] == ["<budget-0@example.com>", "<budget-1@example.com>"]
    assert data["date"] == "2025-03-04T08:01:12.000Z"
    assert data["folders"] == ["Inbox"] and data["labels"] == ["Finance"]
    assert data["flags"] == {"read": False, "starred": True, "important": True}
    assert data["size"] == 48213
    assert data["body_text"].startswith("Hi,\n\nnumbers attached.")
    assert data["body_text_clean"] == "Hi,\n\nnumbers attached."
    assert [a["id"] for a in data["attachments"]] == ["AAMkAtt1", "AAMkAtt2"]
    assert data["attachments"][1]["inline"] is True
    assert data["has_attachments"] is True


def test_graph_text_body_draft_and_attachments_not_listed() -> None:
    message = {
        **GRAPH_HTML,
        "isDraft": True,
        "body": {"contentType": "text", "content": "Plain body\r\n\r\nOn Mon, Mar 3, 2025 Ada wrote:\r\n> old"},
        "internetMessageHeaders": None,
        "singleValueExtendedProperties": None,
        "flag": None,
        "from": None,
        "sender": {"emailAddress": {"name": "Me", "address": "me@example.com"}},
    }
    record = message_from_graph(message)
    assert record.direction == "draft"
    assert record.body_text == "Plain body\n\nOn Mon, Mar 3, 2025 Ada wrote:\n> old"
    assert record.body_text_clean == "Plain body"
    assert record.attachments == () and record.has_attachments is True
    assert record.size is None and record.in_reply_to is None
    assert record.sender is not None and record.sender.address == "me@example.com"
    sent = message_from_graph({**message, "isDraft": False}, own_addresses=["ME@example.com"])
    assert sent.direction == "sent"
    bare = message_from_graph({"id": "x"})
    assert bare.body_text == "" and bare.sender is None and bare.direction == "received"


def test_graph_in_reply_to_and_references_from_the_expanded_mapi_properties() -> None:
    properties = [
        {"id": "Integer 0xe08", "value": "4321"},
        {"id": "String 0x1042", "value": "<ask@example.com>"},
        {"id": "String 0x1039", "value": "<root@example.com>\r\n <ask@example.com>"},
        {"id": "String 0xzz", "value": "ignored"}, "not an object",
    ]
    message = {**GRAPH_HTML, "internetMessageHeaders": None, "singleValueExtendedProperties": properties}
    record = message_from_graph(message)
    assert (record.size, record.in_reply_to) == (4321, "<ask@example.com>")
    assert record.references == ("<root@example.com>", "<ask@example.com>")
    # The headers themselves, when selected, come first.
    headers = [{"name": "In-Reply-To", "value": "<other@example.com>"}, {"name": "References", "value": "<other@example.com>"}]
    both = message_from_graph({**message, "internetMessageHeaders": headers})
    assert (both.in_reply_to, both.references) == ("<other@example.com>", ("<other@example.com>",))


# Robustness ---------------------------------------------------------------------------------


_RECEIVED: jsonschema.Draft202012Validator | None = None


def _assert_valid(record: MessageRecord) -> None:
    # One validator for every example: jsonschema.validate checks the schema itself each call,
    # most of a fuzz example's time.
    global _RECEIVED
    if _RECEIVED is None:
        schema = event_schemas()["mail.message.received"]
        jsonschema.Draft202012Validator.check_schema(schema)
        _RECEIVED = jsonschema.Draft202012Validator(schema)
    _RECEIVED.validate({**ENVELOPE, **record.as_event_data()})
    json.dumps(record.as_event_data(), ensure_ascii=False).encode("utf-8")  # no lone surrogates


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=4096))
def test_random_bytes_never_raise(raw: bytes) -> None:
    _assert_valid(message_from_mime(raw, MessageContext(message_id="fuzz", own_addresses=OWN)))


_SEEDS = [p.read_bytes() for p in corpus_files()]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(range(len(_SEEDS))),
    st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(0, 64), st.binary(max_size=16)), max_size=8),
)
def test_mangled_corpus_messages_never_raise(seed: int, edits: list[tuple[int, int, bytes]]) -> None:
    raw = bytearray(_SEEDS[seed])
    for at, length, insert in edits:  # splice: cut `length` bytes at `at`, put `insert` there
        at %= max(1, len(raw))
        raw[at : at + length] = insert
    _assert_valid(message_from_mime(bytes(raw), MessageContext(message_id="fuzz")))


def test_hostile_shapes_never_raise() -> None:
    rng = random.Random(7)
    deep = b"Content-Type: multipart/mixed; boundary=b0\n\n"
    for i in range(1, 60):
        deep += f"--b{i - 1}\nContent-Type: multipart/mixed; boundary=b{i}\n\n".encode()
    shapes = [
        deep,
        b"Content-Type: text/plain; charset=\"base64\"\n\n\xff\xfe",
        b"Content-Type: text/plain; charset=rot13\n\nuryyb",
        b"Content-Type: text/plain; charset=utf-16\n\n\xff\xfeh\x00i\x00\x00\xd8",
        b"Content-Type: text/html; charset=utf-8\nContent-Transfer-Encoding: x-uuencode\n\nbegin 644 x\n`\nend\n",
        b"Content-Type: text/calendar\n\nBEGIN:VEVENT\nDTSTART:garbage\nSUMMARY:\nEND:VEVENT\n",
        b"Content-Disposition: attachment; filename*=bogus''%ZZ%\nContent-Type: application/x; name*0*=x''%\n\n..",
        b"From: " + b"a" * 100_000 + b"\nTo: " + b"x@y, " * 10_000 + b"\n\n",
        b"Subject: =?utf-8?b?" + bytes(rng.randrange(256) for _ in range(300)) + b"?=\n\n",
        b"Content-Type: message/rfc822\n\n",
        b"Content-Type: multipart/alternative; boundary=a\n\n--a\nContent-Type: text/calendar\n\n--a--\n",
        # Shapes that make a backtracking header or address pattern take exponential or
        # quadratic time: this test would not finish.
        b"X-Field: value\n" * 60 + b"not a header line\n\nbody",
        b"Subject:" + b" " * 50_000 + b"x\r",
        b"From: a" + b" " * 50_000 + b"x\n\n",
        b"To: " + b"word " * 20_000 + b"<a@b.c\n\n",
    ]
    for raw in shapes:
        _assert_valid(message_from_mime(raw, MessageContext(message_id="hostile")))


def test_nesting_deeper_than_the_stack_keeps_headers_and_text() -> None:
    deep = b"Subject: deep\nContent-Type: multipart/mixed; boundary=b0\n\n"
    for i in range(1, 3000):
        deep += f"--b{i - 1}\nContent-Type: multipart/mixed; boundary=b{i}\n\n".encode()
    deep += b"--b2999\nContent-Type: text/plain\n\nhello from the bottom\n"
    record = message_from_mime(deep, MessageContext(message_id="deep"))
    _assert_valid(record)
    assert record.subject == "deep"
    assert "hello from the bottom" in record.body_text


# Fast paths -------------------------------------------------------------------------------
# The conversion reads the common shapes its own cheaper way and leaves everything else to
# the library it stands in for; each must give exactly what that library gives.

_compat32 = email.parser.BytesParser(policy=email.policy.compat32)

_FIELDS = [
    b"From: \"Ada, L\" <ada@example.com>", b"To: a@b.c,\r\n\tBob <bob@x.org>", b"Subject: =?utf-8?q?R=C3=A9?= tail",
    b"Subject:  \t spaced", b"Subject:", b"Date: Mon, 3 Mar 2025 10:00:00 +0000", b"X-8bit: caf\xc3\xa9 \xff",
    b"Content-ID: <img1@x>", b"Content-Disposition: attachment; filename*=utf-8''r%C3%A9sum%C3%A9.txt",
    b"Content-Disposition: inline", b"In-Reply-To: <p@x>", b"X-Folded: a\n b\n\tc", b"X-Blank-Fold: a\r\n \r\n",
]
_CONTENT_TYPES = [
    b"text/plain", b"text/html; charset=\"utf-8\"", b"TEXT/PLAIN; CHARSET=ISO-8859-1", b"application/pdf; name=a.pdf",
    b"text/calendar; method=REQUEST", b"multipart/mixed; boundary=x", b"message/rfc822", b"text", b"text/plain; charset*=utf-8''x",
]
_TRANSFER_ENCODINGS = [b"base64", b"BASE64", b"quoted-printable", b"8bit", b"7bit", b"x-uuencode", b"bogus"]
_BODIES = [b"aGVsbG8gd29ybGQ=\r\n", b"aGVsbG8\nd29y\nbGQ=\n", b"aGVsbG8gd29ybGQ", b"aGV!sbG8=", b"", b"caf=C3=A9 =\r\nsoft=ZZ\n", b"\xff\xferaw"]


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.sampled_from(_FIELDS), max_size=6),
    st.none() | st.sampled_from(_CONTENT_TYPES),
    st.none() | st.sampled_from(_TRANSFER_ENCODINGS),
    st.sampled_from(_BODIES),
    st.sampled_from([b"\n", b"\r\n", b"\r"]),
    st.lists(st.tuples(st.integers(0, 1 << 12), st.sampled_from([b"", b"\r", b"\n", b" ", b":", b"\xff", b"From "])), max_size=2),
)
def test_a_single_part_is_read_as_the_stdlib_parser_reads_it(
    fields: list[bytes], ctype: bytes | None, cte: bytes | None, body: bytes, newline: bytes, edits: list[tuple[int, bytes]]
) -> None:
    head = list(fields)
    head += [b"Content-Type: " + ctype] if ctype is not None else []
    head += [b"Content-Transfer-Encoding: " + cte] if cte is not None else []
    raw = bytearray(newline.join([*head, b""]) + newline + body)
    for at, insert in edits:
        at %= max(1, len(raw))
        raw[at:at] = insert
    fast = convert._single_part(bytes(raw))
    if fast is None:
        return  # the stdlib parses it
    msg, fast_body, content = fast
    parsed = _compat32.parsebytes(bytes(raw))
    assert list(msg.raw_items()) == list(parsed.raw_items())
    assert content == convert._type_and_charset(parsed)
    assert convert._mime_part(msg, "", 0, fast_body, content) == convert._mime_part(parsed, "", 0)


_PART_FIELDS = [
    *_FIELDS, *(b"Content-Type: " + c for c in _CONTENT_TYPES), *(b"Content-Transfer-Encoding: " + c for c in _TRANSFER_ENCODINGS),
    b"content-id: <\xff@x>", b"CONTENT-DISPOSITION: attachment; FileName=a.txt", b"Content-Disposition: \xe9; name=x",
    b"Content-Transfer-Encoding: Base64 \xff", b"Content-Type: text/plain; NAME=\"=?utf-8?q?R=C3=A9?=.txt\"",
]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(_PART_FIELDS), max_size=8), st.sampled_from([b"\n", b"\r\n"]))
def test_a_parts_headers_are_read_from_its_header_lists_as_the_message_reads_them(fields: list[bytes], newline: bytes) -> None:
    # _mime_part reads the transfer encoding, disposition, Content-ID and file name from one
    # dict of the headers (_header_lists); here they are held to the message's own lookups,
    # duplicates, upper-case names and 8-bit values included.
    parsed = _compat32.parsebytes(newline.join([*fields, b""]) + newline)
    lists = convert._header_lists(parsed)
    for name in ("content-transfer-encoding", "content-id", "content-disposition", "content-type", "x-8bit", "x-none"):
        assert convert._header_text(parsed, lists, name) == str(parsed.get(name, ""))
    part = convert._mime_part(parsed, "", 0)
    assert part.disposition == convert._safe(parsed.get_content_disposition, None)
    assert part.content_id == convert._content_id(parsed.get("content-id"))
    named = any(
        "name" in str(v).lower() for k, v in parsed.raw_items() if k.lower() in ("content-type", "content-disposition")
    )
    filename = convert._safe(parsed.get_filename, None) if named else None
    assert part.filename == ((mailtext.decode_header_text(str(filename)) or None) if filename else None)
    raw = newline.join([*fields, b""]) + newline
    for body in _BODIES:
        old_way, new_way = _compat32.parsebytes(raw), _compat32.parsebytes(raw)
        assert convert._transfer_decoded(new_way, body, lists) == convert._transfer_decoded(old_way, body), body


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=40) | st.text("AQw+/=\r\n!", max_size=40).map(str.encode))
def test_base64_bodies_decode_as_the_stdlibs_strict_decoder_decodes_them(body: bytes) -> None:
    try:
        expected: bytes | None = binascii.a2b_base64(body.translate(None, b"\r\n"), strict_mode=True)
    except binascii.Error:
        expected = None  # the stdlib's lenient path decodes it
    # None: the caller leaves it to the stdlib (pybase64 refuses excess padding, "AAAA=").
    got = convert._base64(body)
    assert got is None or got == expected


def test_base64_parts_of_a_multipart_decode_as_the_stdlib_decodes_them() -> None:
    for body in ("aGVsbG8gd29ybGQ=\r\n", "aGVsbG8\nd29y\nbGQ=\n", "aGVsbG8gd29ybGQ", "aGV!sbG8=", "", "\u00e9QQ=="):
        raw = (
            "Content-Type: multipart/mixed; boundary=b\n\n--b\nContent-Type: text/plain\n"
            f"Content-Transfer-Encoding: base64\n\n{body}\n--b--\n"
        ).encode("utf-8", "surrogateescape")
        leaf = _compat32.parsebytes(raw).get_payload()[0]
        assert convert._leaf_payload(leaf) == leaf.get_payload(decode=True), body


def test_the_common_single_part_shapes_take_the_fast_path() -> None:
    for raw in (
        b"From: a@b.c\r\nSubject: x\r\n  folded\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<p>x</p>",
        b"Subject: x\nContent-Transfer-Encoding: base64\n\naGk=\n",
        b"\n",
    ):
        assert convert._single_part(raw) is not None, raw
    for raw in (b"Content-Type: multipart/mixed; boundary=b\n\n--b--\n", b"From someone\nSubject: x\n\n", b"Subject: x\rTo: y\r\r"):
        assert convert._single_part(raw) is None, raw


_ADDRESS_PIECES = [
    "a", "Bob", "x.y", "=?utf-8?q?R=C3=A9?=", "\u00e9", '"Doe, J"', '""', '"a\\"b"', "<a@b.c>", "<x.y@ex-ample.org>", "a@b",
    "a@b.c", "@", ".", ",", " ", "\t", "\r\n ", "(c)", ":", ";", "<", ">", "[1.2.3.4]", "a..b@c", "a@b.", "O'Neil",
]


@settings(max_examples=500, deadline=None)
@given(st.lists(st.sampled_from(_ADDRESS_PIECES), max_size=8))
def test_plain_mailboxes_are_read_as_getaddresses_reads_them(pieces: list[str]) -> None:
    value = "".join(pieces)
    plain = convert._plain_mailboxes(value)
    if plain is not None:
        assert plain == email.utils.getaddresses([value])


@settings(max_examples=500, deadline=None)
@given(st.lists(st.sampled_from(_ADDRESS_PIECES), max_size=8))
def test_a_plain_mailboxs_address_needs_no_header_decoding(pieces: list[str]) -> None:
    # _addresses leaves a plain mailbox's address without "=?" as it is, where it used to
    # hand it to decode_header_text: that must return it unchanged.
    for _name, address in convert._plain_mailboxes("".join(pieces)) or []:
        if "=?" not in address:
            assert mailtext.decode_header_text(address.strip()) == address.strip()


def test_the_common_address_forms_take_the_fast_path() -> None:
    value = '"Ada, L" <ada@example.com>, Bob  Smith <bob.smith@mail.example.org>,\r\n\tc@d.e, <f@g.h>'
    assert convert._plain_mailboxes(value) == email.utils.getaddresses([value])
    assert len(convert._plain_mailboxes(value) or []) == 4
    assert convert._plain_mailboxes("Ada (work) <a@b.c>") is None
    assert convert._plain_mailboxes("team: a@b.c;") is None


_REPLY_PIECES = [
    "Sounds good.", "Thanks,\nAda", "Best regards,\nBob", "-- \nSig line", "Sent from my iPhone", "- item one\n- item two",
    "On Mon, 3 Mar 2025 at 10:00, Ada <ada@example.com> wrote:", "> quoted line", "From: Ada\nSent: Monday\nTo: Bob\nSubject: hi",
    "-----Original Message-----", "CAUTION: This email originated outside. Do not click links in this mail.", "_" * 40, "",
    "Am 3. M\u00e4rz 2025 um 10:00 schrieb Ada <ada@example.com>:", "   indented line   ", "word " * 40,
    "---------- Forwarded message ---------\nFrom: X <x@y>\nDate: Mon\nSubject: s\nTo: me",
]


@settings(max_examples=500, deadline=None)
@given(st.lists(st.sampled_from(_REPLY_PIECES), max_size=10), st.sampled_from([("en",), ("en", "de", "fr")]))
def test_the_answer_is_the_first_reply_mail_parser_reply_reads(pieces: list[str], languages: tuple[str, ...]) -> None:
    window = "\n".join(pieces)
    answer, quoted = mailtext._answer(window, languages)
    replies = ReplyParse(text=window, languages=list(languages), keep_hyphen_lists=True).read().replies
    assert (answer.body, answer.signatures, quoted) == (replies[0].body, replies[0].signatures, len(replies) > 1)


_LINE_PIECES = [*_REPLY_PIECES, " ", "  ", "\t", "\n", "\n\n", " \n", "\xa0", "\u2028", "\u3000", "\r", "x", "Thanks,", "> On x wrote:"]


@settings(max_examples=1000, deadline=None)
@given(st.lists(st.sampled_from(_LINE_PIECES), max_size=12), st.sampled_from([("en",), ("en", "de", "fr")]))
def test_reply_patterns_find_their_first_match_where_a_search_finds_it(pieces: list[str], languages: tuple[str, ...]) -> None:
    text = "".join(pieces)
    for pattern in mailtext._reply_patterns(languages):
        found, searched = mailtext._first_match(pattern, text), pattern.search(text)
        assert (found and (found.span(), found.groups())) == (searched and (searched.span(), searched.groups()))


def test_the_reply_header_and_signature_patterns_are_tried_at_line_starts_only() -> None:
    header, signature, disclaimers = mailtext._reply_patterns(("en", "de", "fr"))
    assert mailtext._starts_at_lines(header) and mailtext._starts_at_lines(signature)
    assert not mailtext._starts_at_lines(disclaimers)  # it is searched as before
    for source, anchored in (
        (r"(?m)^a|\n\s*b", True), (r"a|^b", False), (r"(?m)\s*^x", True), (r"(?m)\s+^x", False), (r"(?m)(?:> ?)*^x", False),
        (r"(?m)(?<!\A)^x", True), (r"(?s:^x)", False), (r"[\nx]y", False), (r"[\n]x", True),
    ):
        assert mailtext._starts_at_lines(re.compile(source)) is anchored, source


_SEPARATOR_PIECES = ["text", "", " ", "\r\n", "\n", "  padded  ", "_" * 32, "-" * 40, " " + "_" * 33, "_-" * 16, "_" * 31, "x" + "-" * 32]


@settings(max_examples=500, deadline=None)
@given(st.lists(st.sampled_from(_SEPARATOR_PIECES), max_size=12))
def test_the_reply_window_is_normalised_as_mail_parser_reply_normalises_it(pieces: list[str]) -> None:
    window = "\n".join(pieces)
    assert mailtext._reply_text(window) == ReplyParse(text=window).text


_DATE_PIECES = [
    "Tue, ", "Xyz, ", "04", "4", "31", "29", "00", " ", "  ", "Mar", "Feb", "Dec", "mar", "2025", "9999", "1000", "0999", "25",
    "10:00:00", "23:59:59", "24:00:00", "10:60:00", "10:00:60", "10:00", "+0100", "-0100", "-0000", "+2359", "+2400", "+9959",
    "-0075", "GMT", "(CET)", "(Pacific Time)",
]


@settings(max_examples=2000, deadline=None)
@given(st.lists(st.sampled_from(_DATE_PIECES), min_size=3, max_size=9))
def test_a_date_header_is_read_as_the_stdlib_reads_it(pieces: list[str]) -> None:
    value = " ".join(pieces)
    try:
        expected = iso_utc(email.utils.parsedate_to_datetime(mailtext.decode_header_text(value)))
    except (TypeError, ValueError, IndexError, OverflowError):
        expected = None
    assert convert._header_date(value) == expected


def test_the_common_date_form_takes_the_fast_path_and_a_date_past_9999_in_utc_is_no_date() -> None:
    assert convert._PLAIN_DATE.fullmatch("Tue, 04 Mar 2025 10:15:00 +0100 (CET)") is not None
    assert convert._header_date("Tue, 04 Mar 2025 10:15:00 +0100 (CET)") == "2025-03-04T09:15:00.000Z"
    # West of UTC the last hour of 9999 is past the last day iso_utc can write: the message
    # keeps no date rather than failing its conversion.
    for value in ("Fri, 31 Dec 9999 23:30:00 -0100", "Fri, 31 Dec 9999 23:30 -0100"):
        assert convert._header_date(value) is None
    raw = b"From: a@b.c\nDate: Fri, 31 Dec 9999 23:30:00 -0100\nSubject: far\n\nbody"
    assert message_from_mime(raw, MessageContext(message_id="far")).date is None


_QP_WORD_PIECES = ["a", "_", "=", "=E2", "=80", "=e9", "=3D", "=3", "=G1", "==", "\u00e9", "\u20ac", "?"]


@settings(max_examples=1000, deadline=None)
@given(st.lists(st.sampled_from(_QP_WORD_PIECES), max_size=8), st.sampled_from(["utf-8", "iso-8859-1", "bogus"]))
def test_q_encoded_words_decode_as_the_stdlib_decodes_them(pieces: list[str], charset: str) -> None:
    text = "".join(pieces).replace("?", "")
    try:
        expected = mailtext.decode_bytes(email.quoprimime.header_decode(text).encode("latin-1"), charset)
    except UnicodeEncodeError:
        expected = f"=?{charset}?q?{text}?="  # kept as sent
    assert mailtext.decode_header_text(f"=?{charset}?q?{text}?=") == " ".join(expected.split())


_ASCII_TEXT = [*"ab .=?_", *map(chr, range(33)), "\x7f"]
_UNICODE_TEXT = [*_ASCII_TEXT, "\xa0", "\xad", "\u034f", "\u200b", "\u2028", "\u3000", "\x85", "\ufeff", "\u2060", "\u00e9"]


@settings(max_examples=1000, deadline=None)
@given(st.text(st.sampled_from(_ASCII_TEXT), max_size=60) | st.text(st.sampled_from(_UNICODE_TEXT), max_size=60))
def test_text_normalisation_drops_invisibles_and_folds_blanks(text: str) -> None:
    invisible = f"[{re.escape(mailtext._INVISIBLE_CHARS)}]+"
    lines = re.sub(invisible, "", text.replace("\r\n", "\n").replace("\r", "\n")).split("\n")
    expected = re.sub("\n{4,}", "\n\n\n", "\n".join(line.rstrip() for line in lines)).strip()
    assert mailtext.normalise_text(text) == expected
    assert mailtext.snippet_of(text, 7) == re.sub(r"\s+", " ", text[:28]).strip()[:7]
    if "=?" not in text:
        assert mailtext.decode_header_text(text) == re.sub(r"\s+", " ", re.sub(invisible, "", text)).strip()


# Clean text -------------------------------------------------------------------------------


def _plain(subject: str, body: str, extra: str = "") -> bytes:
    return f"From: a@example.com\nSubject: {subject}\n{extra}Content-Type: text/plain; charset=utf-8\n\n{body}".encode()


def test_clean_text_cuts_a_long_quoted_history_from_a_reply() -> None:
    quote = "".join(f"> line {i} of the quoted history\n" for i in range(2000))  # ~60 KB
    body = f"Sounds good.\n\nOn Mon, 3 Mar 2025 at 10:00, Ada <ada@example.com> wrote:\n{quote}"
    for raw in (_plain("Re: plans", body), _plain("plans", body, "In-Reply-To: <x@example.com>\n")):
        record = message_from_mime(raw, MessageContext(message_id="r"))
        assert record.body_text_clean == "Sounds good."
        assert record.body_text.startswith("Sounds good.") and record.body_text.endswith("line 1999 of the quoted history")


def test_clean_text_keeps_an_answer_longer_than_the_window_and_a_long_non_reply_whole() -> None:
    answer = "\n\n".join(f"Paragraph {i}: " + "words " * 30 for i in range(40))  # ~7.6 KB, no cut in it
    long_reply = message_from_mime(
        _plain("Re: essay", answer + "\n\nOn Mon, 3 Mar 2025 Ada <ada@example.com> wrote:\n> q\n"), MessageContext(message_id="r")
    )
    assert long_reply.body_text_clean == long_reply.body_text
    newsletter = answer + "\n\nThanks,\nThe team\n"  # a sign-off that would cut a short message
    assert message_from_mime(_plain("News", newsletter), MessageContext(message_id="n")).body_text_clean.endswith("The team")
    short = message_from_mime(_plain("Note", "Ship it today.\n\nThanks,\nAda\n"), MessageContext(message_id="s"))
    assert short.body_text_clean == "Ship it today."


@pytest.mark.parametrize("path", corpus_files(), ids=lambda p: p.stem)
def test_every_attachment_the_model_lists_is_the_part_its_id_fetches(path: Path) -> None:
    """What a raw-MIME provider (IMAP, Gmail raw) hands out for an attachment id of the model
    (`brain.mail.parts.mime_part`) is that attachment: its type, its file name, its size; and a
    download through Gmail's format=full is named as the model names it."""
    _, _, record = convert_file(path)
    for attachment in record.attachments:
        part = mime_part(path.read_bytes(), attachment.id)
        assert part is not None, attachment
        assert (part.mime_type, part.filename) == (attachment.mime_type, attachment.filename), attachment
        if attachment.size is not None:
            assert len(part.content) == attachment.size, attachment
    # Gmail's format=full names the part of each attachment as the model does too.
    resource = gmail_resource(path.read_bytes(), "18c0a", ["INBOX"])
    nodes, by_handle = [resource["payload"]], {}
    while nodes:
        node = nodes.pop()
        by_handle[node["body"].get("attachmentId", node["partId"])] = node
        nodes.extend(node.get("parts", []))
    for attachment in message_from_gmail(resource).attachments:
        assert provider.gmail_part_filename(by_handle[attachment.id]) == attachment.filename, attachment

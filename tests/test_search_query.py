"""The search query language (brain.api.query) and what the index holds (brain.api.documents),
without a server: the parser against FTS5 itself, and the index rows a store writes.

Any query either parses into an expression that SQLite's FTS5 accepts, or is refused with a
400 naming a position inside it; hypothesis throws quotes, operators, NEAR, column filters,
stars, control characters and long inputs at it.
"""

from __future__ import annotations

import json
import sqlite3

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from brain.api.documents import document, field_token, type_token
from brain.api.highlights import Highlighter
from brain.api.query import QuerySyntaxError, parse
from brain.api.search import SCHEMA
from brain.errors import BadRequest

MAX = 1000


@pytest.fixture(scope="module")
def fts() -> sqlite3.Connection:
    db = sqlite3.connect(":memory:", isolation_level=None)
    db.execute("CREATE TABLE events (id INTEGER PRIMARY KEY)")
    db.executescript(SCHEMA)
    row = document("note.created", json.dumps({"title": "Lease renewal", "text": "Anna said the lease ends in März"}))
    db.execute("INSERT INTO search (rowid, subject, people, body, tags) VALUES (1, ?, ?, ?, ?)", row)
    return db


def matches(db: sqlite3.Connection, q: str) -> list[int]:
    return [r[0] for r in db.execute("SELECT rowid FROM search WHERE search MATCH ?", (parse(q, max_chars=MAX).fts,))]


@pytest.mark.parametrize(
    ("q", "found"),
    [
        ("lease", [1]), ("LEASE", [1]), ("marz", [1]), ("März", [1]), ("lea*", [1]), ('"lease renewal"', [1]),
        ('"renewal lease"', []), ("title:renewal", [1]), ("text:renewal", []), ("title:(renewal OR x)", [1]),
        ("anna -renewal", []), ("anna -zebra", [1]), ("zebra OR anna", [1]), ("type:note.created", [1]),
        ("type:note.*", [1]), ("type:note*", [1]), ("type:note", []), ("type:mail.*", []), ("has:attachment", []),
        ("body:anna", [1]), ("people:anna", []), ("NEAR(anna said)", []), ("{tags}: anna", []),
        ("tags:anna", []), ("subject:lease", []),
    ],
)
def test_the_language_over_fts5(fts: sqlite3.Connection, q: str, found: list[int]) -> None:
    assert matches(fts, q) == found


@pytest.mark.parametrize(
    ("q", "position", "says"),
    [
        ('"open', 1, "unterminated quote"), ("a (b", 3, "never closed"), ("a )", 3, "without a matching"),
        ("OR a", 1, "needs a term before"), ("a OR", 3, "must be followed"), ("a AND", 3, "must be followed"),
        ("AND a", 1, "needs a term before"), ("*", 1, "needs a prefix"), ("x*", 1, "at least 2"),
        ("-a", 1, "exclusion needs"), ("NOT a", 1, "exclusion needs"), ("a NOT", 3, "must be followed"),
        ("- -", 1, "nothing to search"), ("from:", 1, "needs a value"), ("has:x", 5, "has: knows"),
        ("type:a..b", 6, "not an event type"), ("a\x00b", 2, "control character U+0000"),
        ("(" * 17 + "a" + ")" * 17, 17, "nested deeper"), ("-a OR b", 4, "exclude alternatives"),
        ("a OR -b", 3, "not an exclusion"), ("@@ ##", 1, "nothing to search"),
    ],
)
def test_refusals_name_the_position(q: str, position: int, says: str) -> None:
    with pytest.raises(QuerySyntaxError) as caught:
        parse(q, max_chars=MAX)
    assert caught.value.extra["position"] == position
    assert says in caught.value.message and f"at position {position}" in caught.value.message


def test_length_and_term_limits() -> None:
    with pytest.raises(BadRequest, match="longer than 1000"):
        parse("x" * 1001, max_chars=MAX)
    with pytest.raises(QuerySyntaxError, match="more than 64 terms"):
        parse(" ".join(f"w{i}" for i in range(65)), max_chars=MAX)
    with pytest.raises(BadRequest, match="required"):
        parse("   ", max_chars=MAX)


_PIECES = st.sampled_from([
    "lease", "anna", '"', "(", ")", "*", "-", ":", "OR", "AND", "NOT", "NEAR", "NEAR(", ",", "{", "}", "^", "+",
    "from:", "type:", "has:", "subject:", "type:mail.*", "body:", "people:", "tags:", "rowid:", "'", "\\", " ",
    "\t", "\x00", "\x1f", "é", "\u00a0", "\U0001f600", "x" * 70, ".", "..", "label:", "a:b",
])


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(st.lists(_PIECES, max_size=25).map("".join), st.lists(_PIECES, max_size=25).map(" ".join),
                 st.text(max_size=200)))
def test_any_input_parses_into_valid_fts5_or_is_a_400(fts: sqlite3.Connection, q: str) -> None:
    try:
        parsed = parse(q, max_chars=MAX)
    except BadRequest as exc:
        assert exc.status == 400
        if isinstance(exc, QuerySyntaxError):
            assert 1 <= exc.extra["position"] <= max(1, len(q))
        return
    fts.execute("SELECT rowid FROM search WHERE search MATCH ?", (parsed.fts,)).fetchall()
    Highlighter(parsed.highlights).highlight("note", json.dumps({"text": q}))


def test_documents_are_a_function_of_type_and_stored_text() -> None:
    data = json.dumps({"title": "Tür", "from": {"name": "Zoë", "address": "zoe@x.example"}, "n": 5, "tags": ["a", "b"]})
    assert document("note", data) == document("note", data)
    doc = document("note", data)
    assert doc.subject == "Tür" and doc.people == ""
    tags = doc.tags.split()
    assert tags[0] == type_token("note")
    assert {"titleǂtur", "fromǂzoe", "fromǂx", "fromǂexample", "tagsǂa", "tagsǂb"} <= set(tags)
    assert field_token("reply_to") == "replyto" and field_token("---") is None


def test_mail_documents_hold_one_copy_of_the_text() -> None:
    body = "the body text " * 100
    data = json.dumps({"subject": "Hello", "from": {"name": "Ann", "address": "ann@x.example"}, "body_text": body,
                       "body_text_clean": body, "snippet": body[:200], "body_html": "<p>" + body,
                       "attachments": [{"id": "a1", "filename": "plan.pdf", "mime_type": "application/pdf"}],
                       "has_attachments": True, "labels": ["Work"], "account": "acc_1"})
    doc = document("mail.message.received", data)
    assert doc.subject == "Hello" and doc.people == "Ann\nann@x.example"
    assert doc.body == body + "\nplan.pdf"
    assert "bodytextǂthe" not in doc.tags and "ǂhasǂattachment" in doc.tags
    assert {"labelsǂwork", "accountǂacc", "attachmentsǂplan"} <= set(doc.tags.split())

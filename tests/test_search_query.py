"""The search query language (brain.api.query) and what the index holds (brain.api.documents),
without a server: the parser against FTS5 itself, and the index rows a store writes.

Any query either parses into an expression that SQLite's FTS5 accepts, or is refused with a
400 naming a position inside it; hypothesis throws quotes, operators, NEAR, column filters,
stars, control characters and long inputs at it.
"""

from __future__ import annotations

import json
import re
import sqlite3

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from brain.api.documents import COLUMNS, FieldSlots, document, field_token, type_token
from brain.api.highlights import Highlighter
from brain.api.query import QuerySyntaxError, parse
from brain.api.search import SCHEMA
from brain.errors import BadRequest

MAX = 1000


def index() -> tuple[sqlite3.Connection, FieldSlots]:
    db = sqlite3.connect(":memory:", isolation_level=None)
    db.executescript(SCHEMA)
    return db, FieldSlots(db)


def add(db: sqlite3.Connection, slots: FieldSlots, event_id: int, event_type: str, data: dict) -> None:  # type: ignore[type-arg]
    row = document(event_type, json.dumps(data), slots)
    db.execute(f"INSERT INTO search (rowid, {', '.join(COLUMNS)}) VALUES (?, {', '.join('?' * len(COLUMNS))})",
               (event_id, *row))


@pytest.fixture(scope="module")
def fts() -> tuple[sqlite3.Connection, FieldSlots]:
    db, slots = index()
    add(db, slots, 1, "note.created", {"title": "Lease renewal", "text": "Anna said the lease ends in März"})
    add(db, slots, 2, "mail.message.received", {"subject": "Budget", "from": {"name": "Bob", "address": "bob@x.example"},
                                                 "labels": ["Work"], "body_text": "numbers", "snippet": "numbers"})
    return db, slots


def matches(index: tuple[sqlite3.Connection, FieldSlots], q: str) -> list[int]:
    db, slots = index
    return [r[0] for r in db.execute("SELECT rowid FROM search WHERE search MATCH ?", (parse(q, max_chars=MAX).fts(slots),))]


@pytest.mark.parametrize(
    ("q", "found"),
    [
        ("lease", [1]), ("LEASE", [1]), ("marz", [1]), ("März", [1]), ("lea*", [1]), ('"lease renewal"', [1]),
        ('"renewal lease"', []), ("title:renewal", [1]), ("text:renewal", []), ("title:(renewal OR x)", [1]),
        ("anna -renewal", []), ("anna -zebra", [1]), ("zebra OR anna", [1]), ("type:note.created", [1]),
        ("type:note.*", [1]), ("type:note*", [1]), ("type:note", []), ("type:mail.*", [2]), ("has:attachment", []),
        ("body:anna", [1]), ("people:anna", []), ("people:bob", [2]), ("from:bob", [2]), ("to:bob", []),
        ("label:work", [2]), ("work", []), ("body:numbers", [2]), ("NEAR(anna said)", []), ("{meta}: anna", []),
        ("meta:anna", []), ("subject:lease", []), ("subject:budget", [2]), ("type:mail.* numbers", [2]),
    ],
)
def test_the_language_over_fts5(fts: tuple[sqlite3.Connection, FieldSlots], q: str, found: list[int]) -> None:
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
def test_any_input_parses_into_valid_fts5_or_is_a_400(fts: tuple[sqlite3.Connection, FieldSlots], q: str) -> None:
    try:
        parsed = parse(q, max_chars=MAX)
    except BadRequest as exc:
        assert exc.status == 400
        if isinstance(exc, QuerySyntaxError):
            assert 1 <= exc.extra["position"] <= max(1, len(q))
        return
    db, slots = fts
    db.execute("SELECT rowid FROM search WHERE search MATCH ?", (parsed.fts(slots),)).fetchall()
    Highlighter(parsed.highlights).highlight("note", json.dumps({"text": q}))


def test_highlights_mark_whole_words_even_where_their_letters_first_appear_inside_others() -> None:
    # The highlighter looks for a term's first word with str.find and tries the pattern there:
    # the first places it finds are inside other words, the mark belongs to the word itself.
    text = "strings and a substring " * 20 + "then the ring, a Ring-ring and ringing " + "tail " * 40

    def marks(q: str) -> list[str]:
        snippet = Highlighter(parse(q, max_chars=MAX).highlights).highlight("note", json.dumps({"text": text}))["text"]
        return re.findall("<mark>(.*?)</mark>", snippet)

    assert marks("ring") == ["ring", "Ring", "ring"]
    assert marks("ring*") == ["ring", "Ring", "ring", "ringing"]
    assert marks('"ring and"') == ["ring and"]
    assert set(marks("ringing OR substring")) == {"substring"}  # cut around the earliest of either term
    assert Highlighter(parse("rin", max_chars=MAX).highlights).highlight("note", json.dumps({"text": text})) == {}


def test_a_damaged_row_that_is_not_json_is_indexed_and_highlighted_as_one_string() -> None:
    db, slots = index()
    row = document("note", '{"text": "half a lease', slots)
    assert row[-1] == '{"text": "half a lease'  # one string, in the shared last column
    assert Highlighter(parse("lease", max_chars=MAX).highlights).highlight("note", '{"text": "half a lease') == {
        "data": '{"text": "half a <mark>lease</mark>'}


def test_documents_are_a_function_of_type_stored_text_and_slots() -> None:
    db, slots = index()
    data = json.dumps({"title": "Tür", "from": {"name": "Zoë", "address": "zoe@x.example"}, "n": 5, "tags": ["a", "b"]})
    first = document("note", data, slots)
    assert document("note", data, slots) == first
    assert slots.by_name == {"title": 0, "from": 1, "tags": 2}
    assert first[0] == type_token("note") and first[1:4] == ["Tür", "Zoë\nzoe@x.example", "a\nb"]
    assert set(first[4:]) == {""}
    assert field_token("reply_to") == "replyto" and field_token("---") is None
    # A rolled back slot is forgotten; the slots stay where they were given.
    db.execute("BEGIN")
    document("note", json.dumps({"later": "x"}), slots)
    db.execute("ROLLBACK")
    slots.reload()
    assert slots.by_name == {"title": 0, "from": 1, "tags": 2}
    assert slots.weights()[:5] == [0.0, 3.0, 2.0, 1.0, 1.0]


def test_fields_past_the_last_slot_share_it() -> None:
    db, slots = index()
    row = document("note", json.dumps({f"field{i}": f"w{i}" for i in range(60)}), slots)
    assert len(slots.by_name) == 47 and slots.full
    assert row[48] == "\n".join(f"w{i}" for i in range(47, 60))
    assert slots.find("field59") == 47 and slots.find("field3") == 3


def test_mail_documents_hold_one_copy_of_the_text() -> None:
    db, slots = index()
    body = "the body text " * 100
    data = json.dumps({"subject": "Hello", "from": {"name": "Ann", "address": "ann@x.example"}, "body_text": body,
                       "body_text_clean": body, "snippet": body[:200], "body_html": "<p>" + body,
                       "attachments": [{"id": "a1", "filename": "plan.pdf", "mime_type": "application/pdf"}],
                       "has_attachments": True, "labels": ["Work"], "account": "acc_1"})
    row = document("mail.message.received", data, slots)
    columns = {name: row[1 + slot] for name, slot in slots.by_name.items()}
    assert columns == {"subject": "Hello", "from": "Ann\nann@x.example", "bodytext": body, "attachments": "plan.pdf"}
    meta = row[0].split()
    assert "ǂhasǂattachment" in meta and {"labelsǂwork", "accountǂacc", "accountǂ1", "attachmentsǂa1",
                                            "attachmentsǂapplication"} <= set(meta)

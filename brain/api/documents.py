"""What the search index holds of an event: a function of its type, its stored data text and the
store's field slots.

The store's FTS5 table `search` (brain.api.search) has a column `meta` and SLOTS columns
`f0`..`f47`. Each top-level field of `data` has a column of its own in a store (its *slot*,
given the first time the field is indexed and never changed, kept in `search_fields`): the
strings inside the field, however nested (`from.name`, `from.address`, `to[2].address`), are
that column's text. So a word is indexed once, a field filter is a column filter
(`from:anna` looks in the `from` column) and a plain word looks in every column but `meta`.
Field names count folded, letters and digits only (`Reply_To` is `replyto`). When a store has
met more field names than there are slots, the later ones share the last slot (OVERFLOW): a
filter on one of them also finds the word in the others.

`meta` holds what is not text of a field: the event type and `has:` facts (tokens that start
with TAG, which no word can), and the words of a mail event's identifiers and bookkeeping
(ids, account, labels, folders, direction, date), each as `field<TAG>word` — TAG is U+01C2, a
letter to SQLite's unicode61 tokenizer, so `labelsǂwork` stays one token and `labels:work`
finds it while a plain `work` does not.

A mail event (`mail.*`, which only mail sync writes) is read through the mail message model
(docs/mail-model.md): subject, the people fields, `body_text` and attachment file names are
text; `body_text_clean`, `snippet` and `body_html` are left out (they repeat `body_text`), so a
20 KiB message is one copy of its text in the index.

Because the index is contentless (brain.api.search), an event's row is removed by handing
FTS5 the very same column values again: they are recomputed from the stored text (and the
store's slots, which never change), so this module must stay deterministic. Any change to
what it produces must bump `VERSION`: a store whose index was built by another version drops
it and builds it again in the background.
"""

from __future__ import annotations

import json
import re
import sqlite3
import unicodedata
from collections.abc import Iterator
from functools import lru_cache
from typing import Any, NamedTuple

# Bump on any change to what `document` returns for some input (see the module docstring), or
# to the table's definition (FTS_SCHEMA): an index of another version is dropped and built again.
# 2: a prefix index of every word's first three letters.
VERSION = 2
SLOTS = 48
OVERFLOW = SLOTS - 1
TAG = "\u01c2"  # LATIN LETTER ALVEOLAR CLICK: a letter (Lo), untouched by diacritic folding
TYPE_PREFIX = f"{TAG}type{TAG}"
HAS_ATTACHMENT = f"{TAG}has{TAG}attachment"
# A word longer than this is cut, alike when indexed and when queried.
MAX_WORD = 64
# BM25 weight of a field's column, by name: what names a thing, then who, then the rest.
# FTS5's bm25() discounts the matches of a long row (its length is all columns together), and a
# mail is a long row: its subject weighs more than a note's title, so that a mail named by the
# word still ranks beside a note named by it.
PEOPLE_FIELDS = frozenset({"from", "to", "cc", "bcc", "replyto"})
BODY_FIELDS = ("body", "bodytext", "text")
_WEIGHTS = {"title": 3.0, "name": 3.0, "subject": 4.0, **{n: 2.0 for n in PEOPLE_FIELDS}}
_WORD = re.compile(r"[^\W_]+")
_MAIL_TEXT = frozenset({"subject", "from", "to", "cc", "bcc", "reply_to", "body_text", "attachments"})
# Repeats of body_text (or markup): indexing them would only count the same words twice.
_MAIL_SKIPPED = frozenset({"body_text_clean", "body_html", "original_sizes", "snippet"})


def _text_field(mail: bool, key: str, value: dict[Any, Any]) -> bool | None:
    """How the index takes a top-level field of an event's data: True as text (its slot's column),
    False as tags (`meta`), None not at all. `leaves` and `document_of` both route by it."""
    if mail and key in _MAIL_SKIPPED and not (key == "snippet" and "body_text" not in value):
        return None  # (the older mail events carry only a snippet: that is their text)
    return not mail or key in _MAIL_TEXT or key == "snippet"


def _attachment_text(path: tuple[str, ...]) -> bool:
    """Whether a string of a mail event's attachments is text: a file name is ("the invoice pdf");
    ids and MIME types are tags."""
    return path[-1] == "filename"

# prefix='3': a query `abc*` reads one doclist, the prefix index's, instead of merging the
# doclists of every word that starts so (on 100,000 events, 10-60 ms for a common syllable, and
# twice: bm25 counts the matches again for its IDF). It costs a write about a quarter more of
# the table's own work; longer prefixes merge few words, two letters merge many (still slow).
FTS_SCHEMA = f"""
CREATE VIRTUAL TABLE IF NOT EXISTS search USING fts5(
    meta, {", ".join(f"f{i}" for i in range(SLOTS))}, content='', prefix='3',
    tokenize='unicode61 remove_diacritics 2'
);
"""
SCHEMA = FTS_SCHEMA + """
-- Which column (f<slot>) holds each top-level field of data; never changed once given.
CREATE TABLE IF NOT EXISTS search_fields (name TEXT PRIMARY KEY, slot INTEGER NOT NULL UNIQUE);
"""
COLUMNS = ("meta", *(f"f{i}" for i in range(SLOTS)))
_EMPTY_COLUMNS = ("",) * SLOTS


def fold(text: str) -> str:
    """Lower case without diacritics (what unicode61 with remove_diacritics 2 compares)."""
    if text.isascii():
        return text.lower()
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()


def words(text: str) -> list[str]:
    """The folded words of a text, each cut to MAX_WORD characters."""
    folded = fold(text)
    found = _WORD.findall(folded)
    return found if len(folded) <= MAX_WORD else [w[:MAX_WORD] for w in found]


@lru_cache(maxsize=4096)
def field_token(name: str) -> str | None:
    """A field name as the index knows it: folded, letters and digits only; None if none are left."""
    token = "".join(_WORD.findall(fold(name)))[:MAX_WORD]
    return token or None


def type_token(event_type: str) -> str:
    """The token of an event type: hex keeps it exact (case and punctuation) and prefix-searchable."""
    return TYPE_PREFIX + event_type.encode().hex()


def weight(field: str | None) -> float:
    """The BM25 weight of a field's column."""
    return _WEIGHTS.get(field or "", 1.0)


class FieldSlots:
    """A store's field -> column map (`search_fields`), kept in memory on the store's thread."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db
        self.by_name: dict[str, int] = {}
        self.reload()

    def reload(self) -> None:
        """Read the map again (after a rollback took back slots given in it)."""
        self.by_name = dict(self.db.execute("SELECT name, slot FROM search_fields").fetchall())

    @property
    def full(self) -> bool:
        """Whether every slot but the shared last one is taken."""
        return len(self.by_name) >= OVERFLOW

    def slot(self, field: str | None) -> int:
        """The column of a field, given now if it has none (inside the caller's transaction)."""
        if field is None:
            return OVERFLOW
        slot = self.by_name.get(field)
        if slot is None and not self.full:
            # Another worker with the store open may have given slots since (brain.workers): the
            # caller's write transaction holds the file, so the table is the truth now.
            self.reload()
            slot = self.by_name.get(field)
        if slot is None:
            if self.full:
                return OVERFLOW
            slot = len(self.by_name)
            self.db.execute("INSERT INTO search_fields (name, slot) VALUES (?, ?)", (field, slot))
            self.by_name[field] = slot
        return slot

    def find(self, field: str) -> int | None:
        """The column that holds a field's text in this store, None if no event had it."""
        slot = self.by_name.get(field)
        if slot is None and not self.full:
            self.reload()  # given by another worker since (brain.workers)?
            slot = self.by_name.get(field)
        if slot is None and self.full:
            return OVERFLOW
        return slot

    def weights(self) -> list[float]:
        """bm25() weights of every column, `meta` first (it scores nothing)."""
        out = [0.0] + [1.0] * SLOTS
        for name, slot in self.by_name.items():
            out[1 + slot] = weight(name)
        return out


class Leaf(NamedTuple):
    """One string of an event's data: where it sits, its field, and whether it is text or meta."""

    path: tuple[str, ...]  # object keys from the top; arrays are transparent
    text: str
    field: str | None  # the top-level field's token (None: data is not an object, or no letters)
    text_column: bool  # in its field's column (True) or tagged in `meta` (False)


def leaves(event_type: str, value: Any) -> Iterator[Leaf]:
    """Every indexed string of an event's data (parsed), routed as the index routes it."""
    if not isinstance(value, dict):
        for path, text in _strings(value, ()):
            yield Leaf(path, text, None, True)
        return
    mail = event_type.startswith("mail.")
    for key, child in value.items():
        key = str(key)
        text = _text_field(mail, key, value)
        if text is None:
            continue
        field = field_token(key)
        if isinstance(child, str):  # most fields: no walk
            if child:
                yield Leaf((key,), child, field, text)
            continue
        for path, string in _strings(child, (key,)):
            if mail and key == "attachments":
                yield Leaf(path, string, field, _attachment_text(path))
            else:
                yield Leaf(path, string, field, text)


def parse_data(data_text: str) -> Any:
    """An event's stored data, parsed; a damaged row's text that is not JSON is one string."""
    try:
        return json.loads(data_text)
    except ValueError:
        return data_text


def document(event_type: str, data_text: str, slots: FieldSlots) -> list[str]:
    """The index row of an event (`meta`, then one text per slot) from its type and stored data."""
    return document_of(event_type, parse_data(data_text), slots)


def document_of(event_type: str, value: Any, slots: FieldSlots) -> list[str]:
    """The index row of an event from its data parsed, or as its writer gave it when that reads
    the same (`NewEvent.plain`: JSON's own types, tuples for lists).

    What `leaves` routes, built without a Leaf per string: this runs on the store's thread for
    every event it indexes (a mail event's two dozen fields). A field's strings are gathered and
    folded as one text: `words` of strings joined by a newline (no word character, and a starter
    that normalisation never reorders across) are the words of each in turn.
    """
    meta = [type_token(event_type)]
    texts: dict[int, list[str]] = {}  # by slot: an event fills a few of the SLOTS columns
    if not isinstance(value, dict):
        strings: list[str] = []
        _collect(value, strings)
        if strings:
            texts[slots.slot(None)] = strings
    else:
        if _has_attachment(value):
            meta.append(HAS_ATTACHMENT)
        mail = event_type.startswith("mail.")
        for key, child in value.items():
            if not child or type(child) is bool or type(child) is int:
                continue  # no string in it
            key = str(key)
            text = _text_field(mail, key, value)
            if text is None:
                continue
            if isinstance(child, str):
                strings = [child]
            elif mail and key == "attachments":
                _attachment_strings(child, field_token(key), meta, texts, slots)
                continue
            else:
                strings = []
                _collect(child, strings)
                if not strings:
                    continue
            field = field_token(key)
            if text:
                slot = slots.slot(field)
                if slot in texts:
                    texts[slot].extend(strings)
                else:
                    texts[slot] = strings
            elif field is not None:
                prefix = field + TAG
                meta.extend([prefix + w for w in words(strings[0] if len(strings) == 1 else "\n".join(strings))])
    row = [" ".join(meta), *_EMPTY_COLUMNS]
    for slot, strings in texts.items():
        row[1 + slot] = "\n".join(strings)
    return row


def _attachment_strings(
    value: Any, field: str | None, meta: list[str], texts: dict[int, list[str]], slots: FieldSlots
) -> None:
    """A mail event's attachments (not a string), as `leaves` routes them: file names are text."""
    for path, string in _strings(value, ("attachments",)):
        if _attachment_text(path):
            texts.setdefault(slots.slot(field), []).append(string)
        elif field is not None:
            prefix = field + TAG
            meta.extend([prefix + w for w in words(string)])


def _collect(value: Any, out: list[str]) -> None:
    """Every non-empty string inside value, in `_strings`' order."""
    if isinstance(value, str):
        if value:
            out.append(value)
    elif isinstance(value, (dict, list, tuple)):
        for child in value.values() if isinstance(value, dict) else value:
            if type(child) is str:
                if child:
                    out.append(child)
            else:
                _collect(child, out)


def _strings(value: Any, path: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], str]]:
    """(path of object keys, text) of every string inside value; arrays are transparent."""
    if isinstance(value, str):
        if value:
            yield path, value
    elif isinstance(value, dict):
        for key, child in value.items():
            yield from _strings(child, (*path, str(key)))
    elif isinstance(value, (list, tuple)):  # tuples: a writer's value (document_of)
        for child in value:
            yield from _strings(child, path)


def _has_attachment(value: Any) -> bool:
    if not isinstance(value, dict):
        return False
    attachments = value.get("attachments")
    return value.get("has_attachments") is True or (isinstance(attachments, (list, tuple)) and bool(attachments))

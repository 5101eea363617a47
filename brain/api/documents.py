"""What the search index holds of an event: a pure function of its type and its stored data text.

Every event becomes one row of the store's FTS5 table `search` (brain.api.search), in four
columns:

- `subject`: what names the event (a mail's subject; a note's `title`, `subject` or `name`);
- `people`: a mail's senders and recipients, names and addresses;
- `body`: every other string of `data` (a mail's `body_text` and attachment file names);
- `tags`: field-qualified words, so a query can name the field a word must be in. Each word of
  each string is written as `field<TAG>word` under the top-level field it sits in (the name
  and the address of `from` are both `from`); TAG is U+01C2, a letter to SQLite's unicode61
  tokenizer, so `fromǂanna` stays one token. The event type and `has:` facts
  are tokens that start with TAG, which no field name can (field names keep letters and digits
  only).

A mail event (`mail.*`, which only mail sync writes) is read through the mail message model
(docs/mail-model.md): its quoted-reply-free copy, snippet and HTML are left out (they repeat
`body_text`), its ids and account are tags only, and its body is not tagged (`body:` is a
column filter instead), which keeps a 20 KiB message to one copy of its text in the index.

Because the index is contentless (brain.api.search), an event's row is removed by handing
FTS5 the very same column values again: they are recomputed from the stored text, so this
module must stay deterministic. Any change to what it produces must bump `VERSION`: a store
whose index was built by another version drops it and builds it again in the background.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Iterator
from functools import lru_cache
from typing import Any, NamedTuple

# Bump on any change to what `document` returns for some input (see the module docstring).
VERSION = 1
TAG = "\u01c2"  # LATIN LETTER ALVEOLAR CLICK: a letter (Lo), untouched by diacritic folding
TYPE_PREFIX = f"{TAG}type{TAG}"
HAS_ATTACHMENT = f"{TAG}has{TAG}attachment"
# A word longer than this is cut, alike when indexed and when queried.
MAX_WORD = 64
_WORD = re.compile(r"[^\W_]+")
_SUBJECT_KEYS = frozenset({"title", "subject", "name"})
_MAIL_PEOPLE = frozenset({"from", "to", "cc", "bcc", "reply_to"})
# Repeats of body_text (or markup): indexing them would only count the same words twice.
_MAIL_SKIPPED = frozenset({"body_text_clean", "body_html", "original_sizes"})


class Document(NamedTuple):
    """One event's row of the index, column by column."""

    subject: str
    people: str
    body: str
    tags: str


def fold(text: str) -> str:
    """Lower case without diacritics (what unicode61 with remove_diacritics 2 compares)."""
    if text.isascii():
        return text.lower()
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()


def words(text: str) -> list[str]:
    """The folded words of a text, each cut to MAX_WORD characters."""
    return [w[:MAX_WORD] for w in _WORD.findall(fold(text))]


@lru_cache(maxsize=4096)
def field_token(name: str) -> str | None:
    """A field name as it appears in tags: folded, letters and digits only; None if none are left."""
    token = "".join(_WORD.findall(fold(name)))[:MAX_WORD]
    return token or None


def type_token(event_type: str) -> str:
    """The tag of an event type: hex keeps it exact (case and punctuation) and prefix-searchable."""
    return TYPE_PREFIX + event_type.encode().hex()


class Leaf(NamedTuple):
    """One string of an event's data: where it sits, which column holds it, its tag field."""

    path: tuple[str, ...]  # object keys from the top; arrays are transparent
    text: str
    column: str | None  # "subject", "people", "body", or None (tags only, or left out)
    field: str | None  # the field token its words are tagged with (None: not tagged)


def leaves(event_type: str, value: Any) -> Iterator[Leaf]:
    """Every string of an event's data (parsed), routed as the index routes it."""
    mail = event_type.startswith("mail.")
    if not isinstance(value, dict):
        for path, text in _strings(value, ()):
            yield Leaf(path, text, "body", None)
        return
    for key, child in value.items():
        key = str(key)
        column, tag = _route(mail, key, value)
        if column is None and not tag:
            continue
        top = field_token(key) if tag else None
        if isinstance(child, str):  # most fields: no walk
            if child:
                yield Leaf((key,), child, column, top)
            continue
        for path, text in _strings(child, (key,)):
            leaf_column = column
            if mail and key == "attachments":
                # A file name is content ("the invoice pdf"); ids and MIME types are not.
                leaf_column = "body" if path[-1] == "filename" else None
            yield Leaf(path, text, leaf_column, top)


def document(event_type: str, data_text: str) -> Document:
    """The index row of an event, from its type and its data as stored (JSON text)."""
    value = json.loads(data_text)
    columns: dict[str, list[str]] = {"subject": [], "people": [], "body": []}
    tags: list[str] = [type_token(event_type)]
    if _has_attachment(value):
        tags.append(HAS_ATTACHMENT)
    for leaf in leaves(event_type, value):
        if leaf.column is not None:
            columns[leaf.column].append(leaf.text)
        if leaf.field is not None:
            prefix = leaf.field + TAG
            tags.extend([prefix + w for w in words(leaf.text)])
    return Document(
        "\n".join(columns["subject"]), "\n".join(columns["people"]), "\n".join(columns["body"]), " ".join(tags)
    )


def _route(mail: bool, key: str, data: dict[str, Any]) -> tuple[str | None, bool]:
    """(column or None, whether tagged) of a top-level field."""
    if not mail:
        return ("subject" if key in _SUBJECT_KEYS else "body"), True
    if key == "subject":
        return "subject", True
    if key in _MAIL_PEOPLE:
        return "people", True
    if key == "body_text":
        return "body", False
    if key == "snippet":
        # The older mail events carry only a snippet; the model's repeats its body_text.
        return ("body" if "body_text" not in data else None), False
    if key in _MAIL_SKIPPED:
        return None, False
    return None, True


def _strings(value: Any, path: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], str]]:
    """(path of object keys, text) of every string inside value; arrays are transparent."""
    if isinstance(value, str):
        if value:
            yield path, value
    elif isinstance(value, dict):
        for key, child in value.items():
            yield from _strings(child, (*path, str(key)))
    elif isinstance(value, list):
        for child in value:
            yield from _strings(child, path)


def _has_attachment(value: Any) -> bool:
    if not isinstance(value, dict):
        return False
    attachments = value.get("attachments")
    return value.get("has_attachments") is True or (isinstance(attachments, list) and bool(attachments))

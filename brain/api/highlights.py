"""Highlights: where a search result matched, as short snippets with the words marked.

`Highlighter.highlight` gives `{field path: snippet}` for the strings of an event's data that hold a word
of the query (a field filter's words only in its field). A snippet is the string, or about
SNIPPET characters of it around the first match, HTML-escaped, each match in `<mark>...</mark>`
(the only markup in it), `…` where it was cut. Words are compared as the index compares them:
case and diacritics folded, a prefix term matching the starts of words, a phrase its words in
a row.
"""

from __future__ import annotations

import html
import re
import unicodedata
from typing import Any

from brain.api.documents import leaves, parse_data
from brain.api.query import HighlightTerm

SNIPPET = 160
# Context kept before the first match when a long string is cut.
LEAD = 50
MAX_MARKS = 20
_WORD_CHARS = r"[^\W_]"
# (Within a snippet \b and \w, which count '_' as a letter, stand in for the index's
# letters-and-digits words: much faster to search, and only where a mark falls can differ.)
# A pattern that starts with \b gets none of the re module's literal-prefix search: over a
# 10 KiB mail body, one search costs about a hundred times a `str.find` of its first word. So a
# string is searched for each term's first word (its needle) with `find`, and the pattern is
# only tried, anchored, where a needle is.


class _AlignedFold(dict):  # type: ignore[type-arg]
    """A str.translate table folding case and diacritics one character to one character, so
    offsets in the folded text are offsets in the original."""

    def __missing__(self, code: int) -> int:
        char = chr(code)
        base = "".join(c for c in unicodedata.normalize("NFKD", char) if not unicodedata.combining(c))
        folded = base.casefold() if base else char
        if len(folded) != 1:
            folded = char.lower() if len(char.lower()) == 1 else char
        self[code] = ord(folded)
        return self[code]


_FOLD = _AlignedFold()


def fold_aligned(text: str) -> str:
    """`text` with case and diacritics folded, character for character."""
    return text.lower() if text.isascii() else text.translate(_FOLD)


class Highlighter:
    """The terms of one query, ready to mark the results of a page."""

    def __init__(self, terms: tuple[HighlightTerm, ...]) -> None:
        self.terms = [(term, p) for term in terms if (p := _pattern(term)) is not None]
        # Per (field, text or meta) of a string: the one pattern of the terms that apply there,
        # and their needles.
        self._by_place: dict[tuple[str | None, bool], tuple[re.Pattern[str], tuple[str, ...]] | None] = {}

    def highlight(self, event_type: str, data: str) -> dict[str, str]:
        """Marked snippets of the fields of an event where the terms are found."""
        if not self.terms:
            return {}
        value: Any = parse_data(data)
        out: dict[str, str] = {}
        for leaf in leaves(event_type, value):
            place = (leaf.field, leaf.text_column)
            if place not in self._by_place:
                wanted = [(p, needle) for term, (p, needle) in self.terms if _applies(term, leaf.field, leaf.text_column)]
                self._by_place[place] = (
                    re.compile("|".join(f"(?:{p})" for p, _ in wanted)), tuple({needle for _, needle in wanted}),
                ) if wanted else None
            found = self._by_place[place]
            if found is None:
                continue
            key = ".".join(leaf.path) or "data"
            if key not in out:
                snippet = _snippet(leaf.text, *found)
                if snippet is not None:
                    out[key] = snippet
        return out


def _applies(term: HighlightTerm, field: str | None, text_column: bool) -> bool:
    if term.fields is None:
        return text_column
    return field in term.fields


def _pattern(term: HighlightTerm) -> tuple[str, str] | None:
    """A regular expression over folded text for a term's words, and its first word (None: no words)."""
    found = re.findall(_WORD_CHARS + "+", fold_aligned(term.text))
    if not found:
        return None
    parts = [re.escape(w) for w in found]
    tail = r"\w*" if term.prefix else r"\b"
    return r"\b" + r"\W+".join(parts) + tail, found[0]


def _first_match(folded: str, pattern: re.Pattern[str], needles: tuple[str, ...]) -> re.Match[str] | None:
    """The first match of the pattern, tried only where one of its needles is."""
    first: re.Match[str] | None = None
    for needle in needles:
        at = folded.find(needle)
        while at >= 0 and (first is None or at < first.start()):
            match = pattern.match(folded, at)
            if match is not None:
                first = match
                break
            at = folded.find(needle, at + 1)
    return first


def _snippet(text: str, pattern: re.Pattern[str], needles: tuple[str, ...]) -> str | None:
    folded = fold_aligned(text)
    first = _first_match(folded, pattern, needles)
    if first is None:
        return None
    start, end = 0, len(text)
    if len(text) > SNIPPET:
        start = max(0, first.start() - LEAD)
        if start > 0:
            space = text.find(" ", start, first.start())
            start = space + 1 if space >= 0 else start
        end = min(len(text), start + SNIPPET)
        if end < len(text):
            space = text.rfind(" ", first.end(), end)
            end = space if space > first.end() else max(end, first.end())
    parts = ["…"] if start > 0 else []
    at = start
    for count, match in enumerate(pattern.finditer(folded, start, end)):
        if count >= MAX_MARKS:
            break
        parts.append(html.escape(text[at:match.start()], quote=False))
        parts.append(f"<mark>{html.escape(text[match.start():match.end()], quote=False)}</mark>")
        at = match.end()
    parts.append(html.escape(text[at:end], quote=False))
    if end < len(text):
        parts.append("…")
    return "".join(parts)

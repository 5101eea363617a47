"""The search query language, parsed here into a safe FTS5 expression (never raw user text).

    query    = and_expr
    and_expr = unary { [ "AND" ] unary }            every part must match
    unary    = ( "-" | "NOT" ) atom | or_expr       -x: without x (needs a part beside it)
    or_expr  = atom { "OR" atom }                   OR binds tighter than AND, as in mail search
    atom     = "(" and_expr ")" | [ field ":" ] value
    value    = word [ "*" ] | '"' words '"' [ "*" ] | "(" and_expr ")"   (a group only after field:)

`lea*` is a prefix (2 letters at least), `"exact words"` a phrase, `field:value` a field filter
(brain.api.documents: `from:anna`, `labels:inbox`, `account:acc_1`: a top-level field of
`data`, whatever is nested inside it), with these names of their own: `type:` an event type,
`type:mail.*` (or `type:mail*`) a type prefix; `has:attachment`; `label:` and `folder:` mean
`labels:` and `folders:`, `body:` the fields `body`, `body_text` and `text`, `people:` a mail's
`from`, `to`, `cc`, `bcc` and `reply_to`. `OR`, `AND` and `NOT` are operators in capitals
only; every other word (`NEAR`, `or`, `{col}`, `^`) is just a word.

`parse` checks a query and builds its tree; `ParsedQuery.fts` writes the FTS5 expression for
one store, whose field columns it needs (brain.api.documents.FieldSlots). User text only ever
reaches FTS5 inside a double-quoted string (quotes doubled), field names only as column names
of the index or tag tokens made of letters and digits, so no input can form FTS5 syntax: a
query is either turned into an expression FTS5 accepts or refused as a `QuerySyntaxError`
naming the 1-based character position of the problem.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field

from brain.api.documents import BODY_FIELDS, HAS_ATTACHMENT, PEOPLE_FIELDS, TAG, FieldSlots, field_token, type_token, words
from brain.errors import BadRequest

MAX_TERMS = 64
MAX_DEPTH = 16
MIN_PREFIX = 2
# Every column but meta: where a plain word is looked for.
TEXT_COLUMNS = "- {meta}"
_FIELD_RE = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")
_TYPE_VALUE = re.compile(r"[A-Za-z][A-Za-z0-9_-]*(?:\.[A-Za-z0-9_-]+)*")
# Filter names that stand for other fields (folded names, as field_token gives them).
_ALIASES: dict[str, tuple[str, ...]] = {
    "label": ("labels",), "folder": ("folders",), "body": BODY_FIELDS, "people": tuple(sorted(PEOPLE_FIELDS)),
}
_HAS = {"attachment": HAS_ATTACHMENT, "attachments": HAS_ATTACHMENT}
_OPERATORS = ("OR", "AND", "NOT")
_SPECIAL = '()"'


class QuerySyntaxError(BadRequest):
    """A query the language does not allow; the message and `position` say where."""

    code = "INVALID_QUERY"

    def __init__(self, message: str, position: int) -> None:
        super().__init__(f"q: {message} at position {position}", extra={"position": position})


@dataclass(frozen=True)
class Term:
    """One word or phrase, maybe a prefix, maybe limited to fields (or `type`, `has`)."""

    field: str | None
    text: str
    position: int
    prefix: bool = False
    fields: tuple[str, ...] = ()  # the folded field names a field filter looks in


@dataclass(frozen=True)
class Node:
    """`and` (all of items, none of `excluded`) or `or` (any of items)."""

    op: str
    items: tuple[Term | Node, ...]
    excluded: tuple[Term | Node, ...] = ()


@dataclass(frozen=True)
class HighlightTerm:
    """What a highlight looks for: a term's text (a prefix, maybe) in its fields, or in any text."""

    fields: tuple[str, ...] | None
    text: str
    prefix: bool


@dataclass(frozen=True)
class ParsedQuery:
    """A checked query: its tree, and what to highlight."""

    node: Term | Node
    highlights: tuple[HighlightTerm, ...]

    def fts(self, slots: FieldSlots) -> str:
        """The FTS5 MATCH expression for a store with these field columns."""
        return _fts(self.node, slots)

    def digest(self, *parts: str | None) -> str:
        """A short hash of the query and other parameters (binds a cursor to its query)."""
        text = "\x00".join([repr(self.node), *(p or "" for p in parts)])
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def parse(q: str, *, max_chars: int) -> ParsedQuery:
    """Parse a user's query; QuerySyntaxError (a 400) naming the position of what is wrong."""
    if len(q) > max_chars:
        raise BadRequest(f"q: longer than {max_chars} characters", code="INVALID_QUERY")
    for i, c in enumerate(q):
        if c < " " and c not in "\t\n\r" or c == "\x7f":
            raise QuerySyntaxError(f"control character U+{ord(c):04X}", i + 1)
    if not q.strip():
        raise BadRequest("q: required, the words to search for", code="INVALID_QUERY")
    parser = _Parser(q)
    node = parser.parse()
    if node is None:
        raise QuerySyntaxError("nothing to search for (no word with letters or digits)", 1)
    highlights: list[HighlightTerm] = []
    _collect_highlights(node, highlights)
    return ParsedQuery(node, tuple(highlights))


# -- lexing and parsing ------------------------------------------------------------------


@dataclass
class _Token:
    kind: str  # "word", "phrase", "(", ")", "op", "neg"
    text: str
    position: int  # 1-based
    field: str | None = None
    prefix: bool = False


@dataclass
class _Parser:
    q: str
    tokens: list[_Token] = field(default_factory=list)
    at: int = 0
    terms: int = 0

    def parse(self) -> Term | Node | None:
        self.tokens = list(self._lex())
        node = self._and(0)
        token = self._peek()
        if token is not None:  # only a ')' stops the top level early
            raise QuerySyntaxError("')' without a matching '('", token.position)
        return node

    # The lexer: words, phrases, parentheses, operators, '-' before a term, field prefixes.
    def _lex(self) -> list[_Token]:
        q, i, n = self.q, 0, len(self.q)
        out: list[_Token] = []
        while i < n:
            c = q[i]
            if c.isspace():
                i += 1
                continue
            if c in "()":
                out.append(_Token(c, c, i + 1))
                i += 1
                continue
            if c == "-" and i + 1 < n and not q[i + 1].isspace():
                out.append(_Token("neg", "-", i + 1))
                i += 1
                continue
            if c == '"':
                out.append(self._phrase(i, None))
                i = self._after_phrase(out[-1], i)
                continue
            end = i
            while end < n and not q[end].isspace() and q[end] not in _SPECIAL:
                end += 1
            text = q[i:end]
            name, colon, value = text.partition(":")
            if colon and _FIELD_RE.fullmatch(name) and not value.startswith("//"):
                fname = name.lower()
                if not value:
                    if end < n and q[end] == '"':
                        out.append(self._phrase(end, fname, field_position=i + 1))
                        i = self._after_phrase(out[-1], end)
                        continue
                    if end < n and q[end] == "(":
                        out.append(_Token("field(", fname, i + 1, field=fname))
                        i = end
                        continue
                    raise QuerySyntaxError(f"{name}: needs a value", i + 1)
                out.append(self._word(value, i + len(name) + 2, fname))
            elif text in _OPERATORS:
                out.append(_Token("op", text, i + 1))
            else:
                out.append(self._word(text, i + 1, None))
            i = end
        return out

    def _word(self, text: str, position: int, fname: str | None) -> _Token:
        prefix = text.endswith("*")
        return _Token("word", text.rstrip("*") if prefix else text, position, field=fname, prefix=prefix)

    def _phrase(self, i: int, fname: str | None, field_position: int | None = None) -> _Token:
        close = self.q.find('"', i + 1)
        if close < 0:
            raise QuerySyntaxError("unterminated quote", i + 1)
        return _Token("phrase", self.q[i + 1:close], field_position or i + 1, field=fname)

    def _after_phrase(self, token: _Token, quote: int) -> int:
        end = self.q.index('"', quote + 1) + 1
        if end < len(self.q) and self.q[end] == "*":
            token.prefix = True
            end += 1
        return end

    # The grammar, by recursive descent; None stands for a part with nothing searchable in it.
    def _peek(self) -> _Token | None:
        return self.tokens[self.at] if self.at < len(self.tokens) else None

    def _starts_atom(self, token: _Token | None) -> bool:
        return token is not None and token.kind in ("word", "phrase", "(", "field(")

    def _and(self, depth: int, fname: str | None = None) -> Term | Node | None:
        items: list[Term | Node] = []
        excluded: list[Term | Node] = []
        first_excluded: int | None = None
        seen_part = False
        while (token := self._peek()) is not None and token.kind != ")":
            if token.kind == "op" and token.text in ("AND", "OR"):
                if token.text == "OR" or not seen_part:
                    raise QuerySyntaxError(f"{token.text!r} needs a term before it", token.position)
                self.at += 1
                nxt = self._peek()
                if not (self._starts_atom(nxt) or (nxt is not None and nxt.kind == "neg") or _is_op(nxt, "NOT")):
                    raise QuerySyntaxError("'AND' must be followed by a term", token.position)
                continue
            seen_part = True
            negated = token.kind == "neg" or _is_op(token, "NOT")
            if negated:
                self.at += 1
                if not self._starts_atom(self._peek()):
                    raise QuerySyntaxError(f"{token.text!r} must be followed by a term", token.position)
            node = self._or(depth, fname, negated)
            if node is None:
                continue
            if negated:
                excluded.append(node)
                if first_excluded is None:
                    first_excluded = token.position
            else:
                items.append(node)
        if not items:
            if excluded:
                raise QuerySyntaxError("an exclusion needs a term beside it to exclude from", first_excluded or 1)
            return None
        if len(items) == 1 and not excluded:
            return items[0]
        return Node("and", tuple(items), tuple(excluded))

    def _or(self, depth: int, fname: str | None, negated: bool) -> Term | Node | None:
        # OR binds tighter than AND, as in mail search: `from:anna OR from:bob lease` is
        # (anna or bob) and lease.
        branches = [self._atom(depth, fname)]
        while _is_op(token := self._peek(), "OR"):
            assert token is not None
            if negated:
                raise QuerySyntaxError("'-' excludes one term; exclude alternatives with -(a OR b)", token.position)
            self.at += 1
            if not self._starts_atom(self._peek()):
                raise QuerySyntaxError("'OR' must be followed by a term (not an exclusion)", token.position)
            branches.append(self._atom(depth, fname))
        kept = [b for b in branches if b is not None]
        if not kept:
            return None
        if len(kept) == 1:
            return kept[0]
        return Node("or", tuple(kept))

    def _atom(self, depth: int, fname: str | None) -> Term | Node | None:
        token = self.tokens[self.at]
        self.at += 1
        if token.kind in ("(", "field("):
            inner_field = fname
            if token.kind == "field(":
                inner_field = token.field
                self.at += 1  # the '(' itself
            open_position = self.tokens[self.at - 1].position
            if depth >= MAX_DEPTH:
                raise QuerySyntaxError(f"nested deeper than {MAX_DEPTH} groups", open_position)
            node = self._and(depth + 1, inner_field)
            close = self._peek()
            if close is None or close.kind != ")":
                raise QuerySyntaxError("'(' is never closed", open_position)
            self.at += 1
            return node
        self.terms += 1
        if self.terms > MAX_TERMS:
            raise QuerySyntaxError(f"more than {MAX_TERMS} terms", token.position)
        return _term(token, token.field or fname)


def _is_op(token: _Token | None, name: str) -> bool:
    return token is not None and token.kind == "op" and token.text == name


def _term(token: _Token, fname: str | None) -> Term | None:
    """A checked Term, or None when it has no letters or digits to search for."""
    text = token.text
    if fname == "type":
        return _type_term(token)
    if fname == "has":
        if text.lower() not in _HAS or token.prefix:
            raise QuerySyntaxError(f"has: knows only {', '.join(sorted(_HAS))}", token.position)
        return Term("has", text.lower(), token.position)
    fields: tuple[str, ...] = ()
    if fname is not None:
        token_name = field_token(fname)
        if token_name is None:
            raise QuerySyntaxError(f"{fname}: not a field name", token.position)
        fields = _ALIASES.get(token_name, (token_name,))
    found = words(text)
    if token.prefix:
        if not found and not text.strip():
            raise QuerySyntaxError(f"'*' needs a prefix of at least {MIN_PREFIX} letters before it", token.position)
        if not found or len(found[-1]) < MIN_PREFIX:
            raise QuerySyntaxError(f"a prefix needs at least {MIN_PREFIX} letters or digits", token.position)
    if not found:
        return None
    return Term(fname, text, token.position, token.prefix, fields)


def _type_term(token: _Token) -> Term:
    text = token.text
    prefix = token.prefix
    if prefix and text.endswith("."):
        base = text[:-1]
    else:
        base = text
    if not _TYPE_VALUE.fullmatch(base) or len(base) > 128:
        raise QuerySyntaxError(f"type: {text[:40]!r} is not an event type or a prefix such as mail.*", token.position)
    return Term("type", text, token.position, prefix)


# -- to FTS5 -------------------------------------------------------------------------------


def _string(text: str) -> str:
    return '"' + text.replace('"', '""') + '"'


def _fts(node: Term | Node, slots: FieldSlots) -> str:
    if isinstance(node, Term):
        return _fts_term(node, slots)
    joined = (" AND " if node.op == "and" else " OR ").join(f"({_fts(item, slots)})" for item in node.items)
    if node.excluded:
        return f"({joined}) NOT ({' OR '.join(f'({_fts(item, slots)})' for item in node.excluded)})"
    return joined


def _fts_term(term: Term, slots: FieldSlots) -> str:
    star = " *" if term.prefix else ""
    if term.field is None:
        return f"{TEXT_COLUMNS} : {_string(term.text)}{star}"
    if term.field == "type":
        return f"meta : {_string(type_token(term.text))}{star}"
    if term.field == "has":
        return f"meta : {_string(HAS_ATTACHMENT)}"
    # The field's column where it has one here, and its tagged words in meta (mail's ids,
    # labels, account...); a field no event had matches only in meta, that is nothing.
    found = words(term.text)
    columns = sorted({f"f{slot}" for name in term.fields if (slot := slots.find(name)) is not None})
    alternatives = [f"{{{' '.join(columns)}}} : {_string(term.text)}{star}"] if columns else []
    for name in term.fields:
        alternatives.append(f"meta : {_string(' '.join(f'{name}{TAG}{w}' for w in found))}{star}")
    return " OR ".join(f"({a})" for a in alternatives)


def _collect_highlights(node: Term | Node, out: list[HighlightTerm]) -> None:
    if isinstance(node, Term):
        if node.field not in ("type", "has"):
            out.append(HighlightTerm(node.fields or None, node.text, node.prefix))
        return
    for item in node.items:  # excluded terms are never in a result: nothing to mark
        _collect_highlights(item, out)

"""Event types: the dotted names every event carries, and the filters readers select them by.

A type is a short dotted name (`note.created`, `mail.message.received`): letters, digits, `_`
and `-` in tokens separated by dots. It becomes the last tokens of a NATS subject, and readers
(GET /events, the event stream, webhooks) select events by exact names, by `prefix.*`
namespaces or by `prefix*` name prefixes, so the API role and the plugins that read its events
judge names alike.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, NamedTuple

from brain.errors import BadRequest

__all__ = ["MAX_TYPE_FILTERS", "MAX_TYPE_LENGTH", "TYPE_RE", "TypeFilter", "check_type"]

TYPE_RE = re.compile(r"[A-Za-z][A-Za-z0-9_-]*(?:\.[A-Za-z0-9_-]+)*")
MAX_TYPE_LENGTH = 128
MAX_TYPE_FILTERS = 20


def check_type(value: Any, field: str = "type") -> str:
    """A valid event type, or BadRequest naming the field."""
    if not isinstance(value, str) or not value:
        raise BadRequest(f"{field}: required, a dotted name such as 'note.created'")
    if len(value) > MAX_TYPE_LENGTH:
        raise BadRequest(f"{field}: longer than {MAX_TYPE_LENGTH} characters")
    if not TYPE_RE.fullmatch(value):
        raise BadRequest(f"{field}: must be dotted name tokens of letters, digits, '_' or '-', got {value[:60]!r}")
    return value


class TypeFilter(NamedTuple):
    """Which event types a reader wants: exact names and prefixes (None: every type)."""

    exact: frozenset[str]
    # "mail.*" -> "mail." (the namespace), "note*" -> "note" (note.created, notebook.opened).
    prefixes: tuple[str, ...]

    @classmethod
    def parse(cls, values: Sequence[str], field: str = "type") -> TypeFilter | None:
        """From query values (repeated, or comma-separated): `note.created`, `mail.*`, `note*`;
        `*`: every type."""
        exact: set[str] = set()
        prefixes: set[str] = set()
        for value in values:
            for item in value.split(","):
                item = item.strip(" ")  # spaces after commas; any other whitespace is refused
                if item == "*":
                    return None
                if item.endswith(".*"):
                    prefixes.add(check_type(item[:-2], field) + ".")
                elif item.endswith("*"):
                    prefixes.add(check_type(item[:-1], field))
                else:
                    exact.add(check_type(item, field))
        if not exact and not prefixes:
            return None
        if len(exact) + len(prefixes) > MAX_TYPE_FILTERS:
            raise BadRequest(f"{field}: at most {MAX_TYPE_FILTERS} types or prefixes")
        return cls(frozenset(exact), tuple(sorted(prefixes)))

    def matches(self, etype: str) -> bool:
        """Whether an event of this type passes."""
        return etype in self.exact or etype.startswith(self.prefixes)

    def sql(self) -> tuple[str, list[str]]:
        """A WHERE clause on `type` and its arguments (GLOB: case-sensitive, and a type holds no
        GLOB metacharacter)."""
        terms = [f"type IN ({','.join('?' * len(self.exact))})"] if self.exact else []
        terms += ["type GLOB ?"] * len(self.prefixes)
        return "(" + " OR ".join(terms) + ")", [*sorted(self.exact), *(p + "*" for p in self.prefixes)]

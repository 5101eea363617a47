"""Control characters: what must never reach a log line or an operator's terminal as it is.

A newline in a request path, a user agent, a name or a provider's error text would start a
forged log line; an ANSI escape would restyle or clear the terminal of whoever reads the log or
runs `brain users list`; a bidi override would reorder what they see. Text logs and the admin
CLI print such text through `escape_control`, and names are refused when `has_control` says so:
one definition of "control character" for all of them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

# C0 and C1 controls and DEL; the Unicode line and paragraph separators (line breaks to some
# viewers); the bidi embeddings, overrides and isolates (they reorder what follows them).
_CONTROL_CLASS = r"\u0000-\u001f\u007f-\u009f\u2028\u2029\u202a-\u202e\u2066-\u2069"
_CONTROL = re.compile(f"[{_CONTROL_CLASS}]")
# The JSON schema pattern of text that `has_control` lets through (names in the OpenAPI document).
NO_CONTROL_PATTERN = f"^[^{_CONTROL_CLASS}]*$"
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def has_control(text: str) -> bool:
    """Whether text holds a control character (as `escape_control` defines them)."""
    return _CONTROL.search(text) is not None


def escape_control(text: str) -> str:
    """text with every control character written as a visible escape (`\\n`, `\\x1b`, `\\u202e`)."""
    # isprintable() is False for every character of _CONTROL, and quick: the common case.
    if text.isprintable() or _CONTROL.search(text) is None:
        return text
    return _CONTROL.sub(_escape, text)


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    named = _NAMED.get(char)
    if named is not None:
        return named
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escaped_values(row: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of row with every string value escaped: a line of a text table, safe to print."""
    return {key: escape_control(value) if isinstance(value, str) else value for key, value in row.items()}

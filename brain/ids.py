"""Identifiers that end up in paths or subjects: one strict pattern, checked everywhere."""

from __future__ import annotations

import re
import secrets
import string

# A user id becomes a directory name (data/users/{id}) and a NATS subject token, so it is
# limited to characters that are safe in both and cannot spell "." or "..".
USER_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")

_ALPHABET = string.ascii_letters + string.digits


def new_id(length: int = 32) -> str:
    """A random id like Better Auth's (alphanumeric, 32 characters: ~190 bits)."""
    return "".join(secrets.choice(_ALPHABET) for _ in range(length))


def is_valid_user_id(value: object) -> bool:
    """True when value may be used as a user id (and so as a directory name)."""
    return isinstance(value, str) and USER_ID_RE.fullmatch(value) is not None

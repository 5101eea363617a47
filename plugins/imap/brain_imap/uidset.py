"""UID sets in IMAP's own sequence-set syntax ("1:40,42,45:50"): compact in a JSON cursor,
and usable as-is in UID commands."""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["decode", "encode", "take"]


def encode(uids: Iterable[int]) -> str:
    """The shortest sequence-set naming exactly ``uids`` ("" for none)."""
    values = sorted(set(uids))
    parts: list[str] = []
    i = 0
    while i < len(values):
        j = i
        while j + 1 < len(values) and values[j + 1] == values[j] + 1:
            j += 1
        parts.append(str(values[i]) if i == j else f"{values[i]}:{values[j]}")
        i = j + 1
    return ",".join(parts)


def decode(text: str | bytes) -> list[int]:
    """The UIDs a sequence-set without ``*`` names, ascending."""
    if isinstance(text, bytes):
        text = text.decode("ascii")
    out: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        low, sep, high = part.partition(":")
        a = int(low)
        b = int(high) if sep else a
        if a > b:
            a, b = b, a
        out.update(range(a, b + 1))
    return sorted(out)


def take(text: str, n: int) -> tuple[list[int], str]:
    """The first ``n`` UIDs of a sequence-set and the set of the rest, without expanding it all."""
    taken: list[int] = []
    rest: list[str] = []
    parts = [p for p in text.split(",") if p]
    for index, part in enumerate(parts):
        low, sep, high = part.partition(":")
        a, b = int(low), int(high) if sep else int(low)
        room = n - len(taken)
        if room <= 0:
            rest.extend(parts[index:])
            break
        if b - a + 1 <= room:
            taken.extend(range(a, b + 1))
            continue
        taken.extend(range(a, a + room))
        start = a + room
        rest.append(str(start) if start == b else f"{start}:{b}")
        rest.extend(parts[index + 1:])
        break
    return taken, ",".join(rest)

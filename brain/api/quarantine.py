"""Quarantine: a user's damaged events.db is moved aside, and the user is refused until it is rebuilt.

A store that fails `PRAGMA quick_check` when it opens, or on which SQLite reports
SQLITE_CORRUPT / SQLITE_NOTADB at any time, is closed and its files (`events.db` and its WAL)
are moved to `users/{id}/quarantine/{UTC time}/`, with `reason.json` saying why. While a user
has a quarantine entry and no `events.db`, their store is not opened again (a fresh, empty
store would hand out event ids that JetStream consumers have already seen): requests answer
503 `STORE_UNAVAILABLE` with reason `quarantined`. `brain repair --user ID` (or the server
itself with `api.auto_repair`) rebuilds `events.db` from the event stream (`brain.api.repair`)
and writes `repaired.json` beside `reason.json`.

Whether to run `quick_check` when a store opens: always on its first open in a process, and
again whenever the file changed since this process last closed it cleanly (someone else wrote
it); a store reopened after an idle stop, untouched, opens without reading every page.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

from brain.ids import is_valid_user_id

log = logging.getLogger("brain.api.quarantine")

QUARANTINE = "quarantine"
REASON = "reason.json"
REPAIRED = "repaired.json"
# The files of one store: the database and what SQLite keeps beside it in WAL mode.
SUFFIXES = ("", "-wal", "-shm")


def quarantine_dir(store: Path) -> Path:
    """`users/{id}/quarantine` (for the store `users/{id}/events.db`): where its damaged files go."""
    return store.parent / QUARANTINE


def new_entry(base: Path, user_id: str, reason: str, detail: str) -> Path:
    """A new directory under `base` named by the UTC time, with `reason.json` saying why."""
    now = dt.datetime.now(dt.timezone.utc)
    base.mkdir(mode=0o700, parents=True, exist_ok=True)
    entry = base / now.strftime("%Y%m%dT%H%M%S.%fZ")
    entry.mkdir(mode=0o700)
    (entry / REASON).write_text(json.dumps({
        "user_id": user_id, "reason": reason, "detail": detail, "quarantined_at": now.isoformat(),
    }, indent=2) + "\n")
    return entry


def move_files(path: Path, entry: Path) -> None:
    """Move the store at `path` (and its WAL) into `entry`."""
    for suffix in SUFFIXES:
        try:
            os.replace(f"{path}{suffix}", entry / f"events.db{suffix}")
        except FileNotFoundError:
            pass


def move_aside(path: Path, user_id: str, reason: str, detail: str) -> Path:
    """Move the user's events.db at `path` (and its WAL) into a new quarantine entry; its directory."""
    entry = new_entry(quarantine_dir(path), user_id, reason, detail)
    move_files(path, entry)
    log.error(
        "the store of user %s is damaged (%s: %s); moved to %s. The user's requests answer 503 until it is "
        "rebuilt: run `brain repair --user %s` (or set api.auto_repair = true)",
        user_id, reason, detail, entry, user_id,
    )
    return entry


def pending(path: Path) -> dict[str, Any] | None:
    """The unrepaired quarantine entry (its reason.json, plus `path`) of the store at `path`, or None.

    Only a user without an events.db can have one: a repaired (or restored) store ends it.
    """
    if path.exists():
        return None
    base = quarantine_dir(path)
    try:
        entries = sorted((e for e in base.iterdir() if e.is_dir()), reverse=True)
    except FileNotFoundError:
        return None
    for entry in entries:
        if (entry / REPAIRED).exists():
            return None  # the newest entry was repaired, and the store lost again since: not ours to hold
        try:
            info = json.loads((entry / REASON).read_text())
        except (OSError, ValueError):
            info = {"reason": "unknown"}
        return {**info, "path": str(entry)}
    return None


def mark_repaired(entry: Path, report: dict[str, Any]) -> None:
    """Record a quarantine entry as dealt with (the repair's report)."""
    (entry / REPAIRED).write_text(json.dumps(report, indent=2, default=str) + "\n")


def quarantined_users(data_path: Path) -> list[str]:
    """Every user with an unrepaired quarantine entry (a directory scan: for start-up and `brain check`)."""
    users = data_path / "users"
    try:
        candidates = sorted(e for e in users.iterdir() if is_valid_user_id(e.name) and (e / QUARANTINE).is_dir())
    except FileNotFoundError:
        return []
    return [entry.name for entry in candidates if pending(entry / "events.db") is not None]


class FileMemory:
    """Which store files this process last saw in a known-good state (to skip quick_check on reopen)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._good: dict[str, tuple[int, int, int]] = {}

    @staticmethod
    def _signature(path: Path) -> tuple[int, int, int] | None:
        try:
            st = path.stat()
        except OSError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def needs_check(self, user_id: str, path: Path) -> bool:
        """Whether the store must be checked as it opens: first open here, or changed by someone else."""
        signature = self._signature(path)
        if signature is None:
            return False  # a new store: nothing to check
        with self._lock:
            return self._good.get(user_id) != signature

    def remember(self, user_id: str, path: Path) -> None:
        """The store was closed cleanly (or just checked) by this process: its file as it is now is good."""
        signature = self._signature(path)
        with self._lock:
            if signature is None:
                self._good.pop(user_id, None)
            else:
                self._good[user_id] = signature

    def forget(self, user_id: str) -> None:
        """Check the store the next time it opens."""
        with self._lock:
            self._good.pop(user_id, None)

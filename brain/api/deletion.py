"""What the API role forgets when a user is deleted (`user_revoked`, `user_purge`; see brain.deletions).

1. At once: the user id joins the TokenVerifier's `revoked` set (checked whenever a token is
   verified; the user's cached tokens are dropped), kept in `data/revoked-users.json` until the
   last JWT minted for the user has expired, so a restart refuses them too.
2. Then: the user's UserStore stops for good (`StoreManager.close_user`), `data/users/{id}/`
   and the outbox marker are deleted, and the user's subjects are purged from the JetStream
   event stream (best effort: when the event bus is connected).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import threading
import time
from pathlib import Path

from brain.api.state import doorbell, store_manager, token_verifier
from brain.api.user_store import marker_path, store_path
from brain.ids import is_valid_user_id
from brain.process import Process
from brain.stash import StashKey

log = logging.getLogger("brain.api.deletion")

REVOKED_FILE = "revoked-users.json"


class RevokedUsers:
    """Deleted user ids whose JWTs may still be unexpired; persisted so a restart keeps them."""

    def __init__(self, data_path: Path) -> None:
        self.path = data_path / REVOKED_FILE
        # The set the TokenVerifier reads (mutated in place, on the event loop thread only).
        self.ids: set[str] = set()
        self._until: dict[str, float] = {}
        self._write_lock = threading.Lock()
        self._version = 0  # bumped by every change; a save never replaces a newer one
        self._saved_version = -1

    def load(self) -> RevokedUsers:
        """Read the file (a missing or unreadable one is an empty set, logged)."""
        try:
            raw = json.loads(self.path.read_text())
            entries = raw["users"] if isinstance(raw, dict) else {}
        except FileNotFoundError:
            entries = {}
        except (OSError, ValueError, KeyError) as exc:
            log.error("%s unreadable (%s); starting with no revoked users", self.path, exc)
            entries = {}
        now = time.time()
        for user_id, until in entries.items():
            if is_valid_user_id(user_id) and isinstance(until, (int, float)) and until > now:
                self._until[user_id] = float(until)
                self.ids.add(user_id)
        return self

    def add(self, user_id: str, until: float) -> None:
        """Refuse the user's tokens from now until `until` (epoch seconds)."""
        self.ids.add(user_id)
        self._until[user_id] = max(until, self._until.get(user_id, 0.0))
        self._version += 1

    def prune(self, now: float | None = None) -> None:
        """Forget users whose last token has expired."""
        now = time.time() if now is None else now
        for user_id in [u for u, until in self._until.items() if until <= now]:
            del self._until[user_id]
            self.ids.discard(user_id)
            self._version += 1

    def snapshot(self) -> tuple[int, dict[str, float]]:
        """A numbered copy to save."""
        return self._version, dict(self._until)

    def save(self, snapshot: tuple[int, dict[str, float]] | None = None) -> None:
        """Write the file atomically (0600), merged with what other workers wrote; blocking, so
        not on the event loop."""
        version, entries = self.snapshot() if snapshot is None else snapshot
        with self._write_lock:
            if version < self._saved_version:
                return  # a newer copy was written meanwhile
            self._saved_version = version
            self.path.parent.mkdir(parents=True, exist_ok=True)
            lock = os.open(self.path.with_name(f".{REVOKED_FILE}.lock"), os.O_RDWR | os.O_CREAT, 0o600)
            try:
                # Other workers of the server write it too: each adds to what is there.
                fcntl.flock(lock, fcntl.LOCK_EX)
                merged = {**RevokedUsers(self.path.parent).load()._until}
                for user_id, until in entries.items():
                    merged[user_id] = max(until, merged.get(user_id, 0.0))
                tmp = self.path.with_name(f".{REVOKED_FILE}.{os.getpid()}.tmp")
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "w") as fh:
                    json.dump({"users": merged}, fh)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, self.path)
            finally:
                os.close(lock)

    def __len__(self) -> int:
        return len(self.ids)


_REVOKED: StashKey[RevokedUsers] = StashKey("brain.api.revoked_users")


def revoked_users(rt: Process) -> RevokedUsers:
    """The process's revoked set, read from disk once; the token verifier refuses its ids."""

    def load() -> RevokedUsers:
        revoked = RevokedUsers(rt.settings.data_path).load()
        revoked.prune()
        token_verifier(rt).revoked = revoked.ids
        return revoked

    return rt.stash.setdefault(_REVOKED, load)


def remove_user_files(data_path: Path, user_id: str) -> bool:
    """Delete `data/users/{id}/` and the user's outbox marker; True if the directory existed."""
    user_dir = store_path(data_path, user_id).parent  # validated: sits right under data/users/
    existed = user_dir.exists()
    if existed:
        shutil.rmtree(user_dir)
    marker_path(data_path, user_id).unlink(missing_ok=True)
    return existed


def revoke(rt: Process, user_id: str, tokens_valid_until: int) -> None:
    """Refuse the user's tokens until the last one has expired (plus the verifier's leeway)."""
    revoked = revoked_users(rt)
    known = user_id in revoked.ids
    revoked.add(user_id, tokens_valid_until / 1000 + rt.settings.api.leeway_seconds)
    # Mail sync may still write for them here (through the event sink, with no token): their
    # store is not opened again, so nothing recreates the directory another worker deletes.
    store_manager(rt).deleted.add(user_id)
    dropped = token_verifier(rt).forget_user(user_id)
    if not known:
        log.info("tokens of deleted user %s refused from now on (%d cached dropped)", user_id, dropped)


def purge(rt: Process, user_id: str) -> None:
    """Persist the revoked set; close and delete the user's store; purge their published events."""
    revoked = revoked_users(rt)
    revoked.prune()
    revoked.save(revoked.snapshot())
    store_manager(rt).close_user(user_id)
    existed = remove_user_files(rt.settings.data_path, user_id)
    doorbell(rt).purge_user_events(user_id)
    log.info("store of deleted user %s %s", user_id, "deleted" if existed else "absent")

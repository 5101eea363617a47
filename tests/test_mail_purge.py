"""Purging a deleted user's rows from mail.db while another worker purges them too (brain.workers)."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest

from brain.mail import db as mail_db
from brain.mail.db import MailDb

SECRET = b"k" * 40


def test_a_purge_meets_another_workers_purge_of_the_same_user(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every worker purges a deleted user through a consumer of its own. The other worker's
    purge commits after this one has read the accounts: this one must still finish (before,
    its deferred transaction could not then write: SQLITE_BUSY at once, busy_timeout or not)."""
    path = tmp_path / "mail.db"
    db = MailDb(path, SECRET)
    db.upsert_account(user_id="u1", provider="gmail", address="ada@example.com")
    other = sqlite3.connect(path, isolation_level=None, timeout=15, check_same_thread=False)
    other_done = threading.Event()

    def other_worker_purges() -> None:
        other.execute("DELETE FROM accounts WHERE user_id = 'u1'")
        other_done.set()

    real_delete = mail_db.Credential.delete

    def delete_after_the_other_purge(*args: Any, **kwargs: Any) -> Any:
        # The accounts are read: now the other worker purges (waiting for this one, if it must).
        threading.Thread(target=other_worker_purges, daemon=True).start()
        other_done.wait(0.5)
        return real_delete(*args, **kwargs)

    monkeypatch.setattr(mail_db.Credential, "delete", delete_after_the_other_purge)
    try:
        assert db.purge_user("u1") == 1
        assert other_done.wait(15), "the other worker's purge never finished"
        assert other.execute("SELECT count(*) FROM accounts").fetchone()[0] == 0
    finally:
        other.close()
        db.close()

"""`brain mail status`: connected mail accounts, read from mail.db (server running or not)."""

from __future__ import annotations

import argparse
import json
from collections import Counter
from typing import Any

from brain.commands import settings_from_args
from brain.config import Settings, server_secret
from brain.control_chars import escaped_values
from brain.mail.db import Account, MailDb


def accounts(settings: Settings, user: str | None) -> list[dict[str, Any]]:
    """The accounts as `GET /mail/status` shows them, plus their user; empty without mail.db."""
    path = settings.data_path / "mail.db"
    if not path.exists():
        return []
    db = MailDb(path, server_secret(settings))
    try:
        with db.unit():
            query = Account.select().order_by(Account.user_id, Account.created_at, Account.id)
            if user is not None:
                query = query.where(Account.user_id == user)
            return [{"user": row.user_id, **row.status()} for row in query]
    finally:
        db.close()


def status(args: argparse.Namespace) -> int:
    """Print the accounts and a count by state."""
    user = args.user
    rows = accounts(settings_from_args(args), user)
    by_state = dict(sorted(Counter(r["state"] for r in rows).items()))
    if args.json:
        print(json.dumps({"accounts": rows, "by_state": by_state}))
        return 0
    if not rows:
        print("no mail accounts" + (f" for user {user}" if user else ""))
        return 0
    print(f"{'ACCOUNT':<20} {'USER':<32} {'PROVIDER':<8} {'STATE':<12} {'LAST SYNC':<26} {'MESSAGES':>8} {'INITIAL':<12} ADDRESS")
    # Addresses and error texts come from providers and mail servers: escaped.
    for r in map(escaped_values, rows):
        initial = r["initial_sync"]
        progress = "complete" if initial["complete"] else f"{initial['done']}/{initial['estimated_total'] or '?'}"
        print(f"{r['account']:<20} {r['user']:<32} {r['provider']:<8} {r['state']:<12} {r['last_sync_at'] or '-':<26} "
              f"{r['messages_synced']:>8} {progress:<12} {r['address']}")
        if r["last_error"]:
            print(f"{'':<20} last error ({r['last_error_at']}): {r['last_error']}")
    print("by state: " + ", ".join(f"{state} {n}" for state, n in by_state.items()))
    return 0

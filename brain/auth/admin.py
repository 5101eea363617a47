"""The auth role's commands: `brain keys list|rotate`, `brain users list|delete`.

`brain keys` works whether or not the server runs: it writes auth.db directly (SQLite
serialises it with the issuer), and a running issuer notices the change within
`auth.key_poll_seconds`. A rotated key is published at once and signs after
`auth.key_publish_delay_seconds` (or at once with --now).

`brain users delete` goes through a running server's control socket when one holds the data
directory; with none running, it does what the server would, in a process of its own.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from typing import Any

import peewee

from brain import datadir
from brain.auth import accounts, control, keys
from brain.auth.db import DeletedUser, Session, SigningKey, User, database, iso, now_ms, open_db
from brain.auth.deletion import as_event
from brain.commands import offline_process, settings_from_args
from brain.config import Settings, server_secret
from brain.control_chars import escaped_values
from brain.control_messages import control_key
from brain.deletions import publish_deletions, purge_here
from brain.errors import ConfigError
from brain.nats_auth import connect_options
from brain.redact import redact_text, redact_url

log = logging.getLogger("brain.cli")


def _open(settings: Settings) -> Any:
    db = open_db(settings.data_path / "auth.db")
    return db, keys.sealing_key(server_secret(settings))


def keys_list(args: argparse.Namespace) -> int:
    """Print the key ring."""
    settings = settings_from_args(args)
    db, _ = _open(settings)
    try:
        rows = keys.describe(settings.auth.retired_key_keep_seconds * 1000)
    finally:
        db.close()
    if args.json:
        print(json.dumps(rows))
    elif not rows:
        print("no signing keys yet (the server creates one on first start)")
    else:
        print(f"{'KID':<24} {'STATE':<8} {'ALG':<6} {'CREATED':<25} ACTIVATES")
        for r in map(escaped_values, rows):
            print(f"{r['kid']:<24} {r['state']:<8} {r['alg']:<6} {r['created']:<25} {r['activates']}")
    return 0


def keys_rotate(args: argparse.Namespace) -> int:
    """Add a new signing key."""
    settings = settings_from_args(args)
    db, aead = _open(settings)
    try:
        _check_secret(aead, settings)
        row = keys.rotate(aead, publish_delay_s=0 if args.now else settings.auth.key_publish_delay_seconds)
    finally:
        db.close()
    info = {"kid": row.kid, "activates": iso(row.activates_at)}
    if args.json:
        print(json.dumps(info))
    else:
        print(f"new signing key {row.kid}: published now, signs from {info['activates']}")
    return 0


def _check_secret(aead: Any, settings: Settings) -> None:
    # A key sealed with another secret than the server's would never open: refuse up front.
    if not SigningKey.select().exists():
        return
    try:
        keys.load_ring(aead, settings.auth.retired_key_keep_seconds * 1000)
    except keys.WrongSecret as exc:
        raise ConfigError(f"server.secret: {exc}") from None


def _auth_db(settings: Settings) -> Any:
    path = settings.data_path / "auth.db"
    if not path.exists():
        raise ConfigError(f"{path}: no auth database here (start the server once, or pass --data-dir)")
    return open_db(path)


def users_list(args: argparse.Namespace) -> int:
    """Print every user with their live session count."""
    settings = settings_from_args(args)
    db = _auth_db(settings)
    try:
        live = (
            Session.select(Session.user, peewee.fn.COUNT(Session.id).alias("n"))
            .where(Session.expires_at > now_ms())
            .group_by(Session.user)
        )
        counts = {row.user_id: row.n for row in live}
        rows = [
            {**user.public(), "sessions": counts.get(user.id, 0)}
            for user in User.select().order_by(User.created_at, User.id)
        ]
    finally:
        db.close()
    if args.json:
        print(json.dumps(rows))
    elif not rows:
        print("no users")
    else:
        print(f"{'ID':<32}  {'EMAIL':<32} {'NAME':<20} {'VERIFIED':<8} {'CREATED':<24} SESSIONS")
        # Names (and rows written before sign-up checked them) may hold anything: escaped.
        for r in map(escaped_values, rows):
            verified = "yes" if r["emailVerified"] else "no"
            print(f"{r['id']:<32}  {r['email']:<32} {r['name'][:20]:<20} {verified:<8} {r['createdAt']:<24} {r['sessions']}")
    return 0


def users_delete(args: argparse.Namespace) -> int:
    """Delete one user: through the running server, or directly when none runs."""
    settings = settings_from_args(args)
    ref = args.user
    _auth_db(settings).close()
    with datadir.exclusive(settings.data_path) as alone:
        if alone:
            result = _delete_offline(settings, ref)
        else:
            result = _delete_online(settings, ref)
    if result is None:
        print(f"brain: error: no user {ref!r}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result))
    else:
        user = escaped_values(result["user"])
        how = "by the running server" if result["mode"] == "server" else "directly (no server running)"
        print(f"deleted user {user['id']} <{user['email']}> {how}: sessions, "
              f"{result.get('mail_accounts_removed', 0)} mail account(s) and data/users/{user['id']}/ removed")
    return 0


def _delete_online(settings: Settings, ref: str) -> dict[str, Any] | None:
    try:
        status, body = control.call(settings.data_path, "POST", "/v1/users/delete", {"user": ref})
    except OSError as exc:
        raise ConfigError(
            f"a brain server is running on {settings.data_path} but its control socket "
            f"({control.SOCKET_FILE}) does not answer: {exc}"
        ) from None
    if status == 404:
        return None
    if status != 200:
        message = body.get("message") if isinstance(body, dict) else body
        raise ConfigError(f"the server refused the deletion ({status}): {message}")
    return body  # type: ignore[no-any-return]


def _delete_offline(settings: Settings, ref: str) -> dict[str, Any] | None:
    """No server runs (this process holds the data directory): do what the server would."""
    db = _auth_db(settings)
    try:
        user = control.find_user(ref)
        if user is None:
            return None
        public = user.public()
        with database.atomic():
            row = accounts.delete_user(user.id, now=now_ms(), jwt_ttl_ms=settings.auth.jwt_ttl_seconds * 1000)
        assert row is not None
        event = as_event(row)
        # Every plugin forgets the user as a server would (a server started within the JWT
        # lifetime must still refuse the user's tokens).
        purged = purge_here(offline_process(settings), event)
        if settings.nats.url:
            # Processes elsewhere listen on the shared NATS; otherwise the server publishes
            # the pending deletion when it next starts.
            try:
                published = asyncio.run(publish_deletions(
                    connect_options(settings.nats, settings.nats.url), control_key(server_secret(settings)), [event],
                    replicas=settings.nats.replicas,
                ))
                DeletedUser.update(published=True).where(DeletedUser.user_id.in_(published)).execute()
            except Exception as exc:  # noqa: BLE001 - published later by the server
                log.warning("NATS at %s unreachable (%s); the server will publish the deletion when it starts",
                            redact_url(settings.nats.url), redact_text(str(exc)))
        return {"user": public, **control.deletion_summary(row.tokens_valid_until, purged), "mode": "offline"}
    finally:
        db.close()

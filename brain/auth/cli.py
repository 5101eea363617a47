"""`brain keys list|rotate`: the signing key ring, from the command line.

Works whether or not the server runs: it writes auth.db directly (SQLite serialises it with the
issuer), and a running issuer notices the change within `auth.key_poll_seconds`. A rotated key is
published at once and signs after `auth.key_publish_delay_seconds` (or at once with --now).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

from brain.auth import keys
from brain.auth.db import SigningKey, iso, open_db
from brain.config import Settings, server_secret
from brain.control_chars import escaped_values
from brain.errors import ConfigError
from brain.redact import redact_text, redact_url


def add_parser(
    sub: Any,
    add_config_args: Callable[[argparse.ArgumentParser], None],
    settings_from_args: Callable[[argparse.Namespace], Settings],
) -> None:
    """Register `brain keys` and its subcommands on the top-level subparsers."""
    keys_parser = sub.add_parser("keys", help="list or rotate the JWT signing keys")
    keys_sub = keys_parser.add_subparsers(dest="keys_command", metavar="ACTION", required=True)

    listing = keys_sub.add_parser("list", help="show every signing key and its state")
    add_config_args(listing)
    listing.add_argument("--json", action="store_true", help="print JSON instead of a table")
    listing.set_defaults(func=lambda args: cmd_list(settings_from_args(args), as_json=args.json))

    rotate = keys_sub.add_parser("rotate", help="add a new signing key (published now, signing after the publish delay)")
    add_config_args(rotate)
    rotate.add_argument("--now", action="store_true", help="sign with the new key at once (skip the publish delay)")
    rotate.add_argument("--json", action="store_true", help="print the new key as JSON")
    rotate.set_defaults(func=lambda args: cmd_rotate(settings_from_args(args), now=args.now, as_json=args.json))


def _open(settings: Settings) -> Any:
    db = open_db(settings.data_path / "auth.db")
    return db, keys.sealing_key(server_secret(settings))


def cmd_list(settings: Settings, *, as_json: bool) -> int:
    """Print the key ring."""
    db, _ = _open(settings)
    try:
        rows = keys.describe(settings.auth.retired_key_keep_seconds * 1000)
    finally:
        db.close()
    if as_json:
        print(json.dumps(rows))
    elif not rows:
        print("no signing keys yet (the server creates one on first start)")
    else:
        print(f"{'KID':<24} {'STATE':<8} {'ALG':<6} {'CREATED':<25} ACTIVATES")
        for r in map(escaped_values, rows):
            print(f"{r['kid']:<24} {r['state']:<8} {r['alg']:<6} {r['created']:<25} {r['activates']}")
    return 0


def cmd_rotate(settings: Settings, *, now: bool, as_json: bool) -> int:
    """Add a new signing key."""
    db, aead = _open(settings)
    try:
        _check_secret(aead, settings)
        row = keys.rotate(aead, publish_delay_s=0 if now else settings.auth.key_publish_delay_seconds)
    finally:
        db.close()
    info = {"kid": row.kid, "activates": iso(row.activates_at)}
    if as_json:
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


# --- brain users -----------------------------------------------------------------------------------


def add_users_parser(
    sub: Any,
    add_config_args: Callable[[argparse.ArgumentParser], None],
    settings_from_args: Callable[[argparse.Namespace], Settings],
) -> None:
    """Register `brain users list|delete`."""
    users = sub.add_parser("users", help="list or delete user accounts")
    users_sub = users.add_subparsers(dest="users_command", metavar="ACTION", required=True)

    listing = users_sub.add_parser("list", help="every account: id, email, name, verified, created, live sessions")
    add_config_args(listing)
    listing.add_argument("--json", action="store_true", help="print JSON instead of a table")
    listing.set_defaults(func=lambda args: cmd_users_list(settings_from_args(args), as_json=args.json))

    delete = users_sub.add_parser(
        "delete",
        help="delete an account with its sessions, mail accounts and data",
        description="Delete an account: its sessions, mail accounts and credentials, and data/users/{id}/; "
        "its tokens stop working at once. With a server running on the data directory the server does it "
        "(through data/control.sock); otherwise this command edits the files itself.",
    )
    delete.add_argument("user", metavar="ID_OR_EMAIL", help="the user's id or email address")
    add_config_args(delete)
    delete.add_argument("--json", action="store_true", help="print the result as JSON")
    delete.set_defaults(func=lambda args: cmd_users_delete(settings_from_args(args), args.user, as_json=args.json))


def _auth_db(settings: Settings) -> Any:
    path = settings.data_path / "auth.db"
    if not path.exists():
        raise ConfigError(f"{path}: no auth database here (start the server once, or pass --data-dir)")
    return open_db(path)


def cmd_users_list(settings: Settings, *, as_json: bool) -> int:
    """Print every user with their live session count."""
    import peewee

    from brain.auth.db import Session, User, now_ms

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
    if as_json:
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


def cmd_users_delete(settings: Settings, ref: str, *, as_json: bool) -> int:
    """Delete one user: through the running server, or directly when none runs."""
    import sys

    from brain.auth import control

    db = _auth_db(settings)
    db.close()
    with control.exclusive_data_dir(settings.data_path) as alone:
        if alone:
            result = _delete_offline(settings, ref)
        else:
            result = _delete_online(settings, ref)
    if result is None:
        print(f"brain: error: no user {ref!r}", file=sys.stderr)
        return 1
    if as_json:
        print(json.dumps(result))
    else:
        user = escaped_values(result["user"])
        how = "by the running server" if result["mode"] == "server" else "directly (no server running)"
        print(f"deleted user {user['id']} <{user['email']}> {how}: sessions, "
              f"{result['mail_accounts_removed']} mail account(s) and data/users/{user['id']}/ removed")
    return 0


def _delete_online(settings: Settings, ref: str) -> dict[str, Any] | None:
    from brain.auth import control

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
    import asyncio
    import logging

    from brain.auth import accounts, control, deletion
    from brain.auth.control_messages import control_key
    from brain.auth.db import DeletedUser, database, now_ms
    from brain.nats_auth import connect_options
    from brain.mail.db import MailDb

    db = _auth_db(settings)
    try:
        user = control.find_user(ref)
        if user is None:
            return None
        public = user.public()
        with database.atomic():
            row = accounts.delete_user(user.id, now=now_ms(), jwt_ttl_ms=settings.auth.jwt_ttl_seconds * 1000)
        assert row is not None
        mail_accounts = 0
        if (settings.data_path / "mail.db").exists():
            mail_db = MailDb(settings.data_path / "mail.db", server_secret(settings))
            try:
                mail_accounts = deletion.purge_mail_rows(mail_db, user.id)
            finally:
                mail_db.close()
        deletion.remove_user_files(settings.data_path, user.id)
        # A server started within the JWT lifetime must still refuse the user's tokens.
        revoked = deletion.RevokedUsers(settings.data_path).load()
        revoked.add(user.id, row.tokens_valid_until / 1000 + settings.api.leeway_seconds)
        revoked.prune()
        revoked.save()
        if settings.nats.url:
            # API roles elsewhere listen on the shared NATS; otherwise the server publishes
            # the pending deletion when it next starts.
            try:
                published = asyncio.run(deletion.publish_deletions(
                    connect_options(settings.nats, settings.nats.url), control_key(server_secret(settings)),
                    [(user.id, row.deleted_at, row.tokens_valid_until)],
                ))
                DeletedUser.update(published=True).where(DeletedUser.user_id.in_(published)).execute()
            except Exception as exc:  # noqa: BLE001 - published later by the server
                logging.getLogger("brain.cli").warning("NATS at %s unreachable (%s); the server will publish "
                                                       "the deletion when it starts", redact_url(settings.nats.url),
                                                       redact_text(str(exc)))
        return {"user": public, **control.deletion_summary(row.tokens_valid_until, deletion.Purged(mail_accounts, True)),
                "mode": "offline"}
    finally:
        db.close()

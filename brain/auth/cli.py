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
from brain.errors import ConfigError


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
        for r in rows:
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

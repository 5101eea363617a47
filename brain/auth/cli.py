"""`brain keys`, `brain users`, `brain import`: the auth role's commands, declared here (they run
in brain.auth.admin and brain.auth.importer, imported only then)."""

from __future__ import annotations

from pathlib import Path

from brain.commands import CommandLine
from brain.plugins import hookimpl


@hookimpl
def register_commands(cli: CommandLine) -> None:
    """`brain keys list|rotate`, `brain users list|delete`, `brain import better-auth`."""
    keys_parser = cli.subcommands.add_parser("keys", help="list or rotate the JWT signing keys")
    keys_sub = keys_parser.add_subparsers(dest="keys_command", metavar="ACTION", required=True)

    listing = keys_sub.add_parser("list", help="show every signing key and its state")
    cli.add_config_args(listing)
    listing.add_argument("--json", action="store_true", help="print JSON instead of a table")
    cli.runs(listing, "brain.auth.admin:keys_list")

    rotate = keys_sub.add_parser("rotate", help="add a new signing key (published now, signing after the publish delay)")
    cli.add_config_args(rotate)
    rotate.add_argument("--now", action="store_true", help="sign with the new key at once (skip the publish delay)")
    rotate.add_argument("--json", action="store_true", help="print the new key as JSON")
    cli.runs(rotate, "brain.auth.admin:keys_rotate")

    users = cli.subcommands.add_parser("users", help="list or delete user accounts")
    users_sub = users.add_subparsers(dest="users_command", metavar="ACTION", required=True)

    users_list = users_sub.add_parser("list", help="every account: id, email, name, verified, created, live sessions")
    cli.add_config_args(users_list)
    users_list.add_argument("--json", action="store_true", help="print JSON instead of a table")
    cli.runs(users_list, "brain.auth.admin:users_list")

    delete = users_sub.add_parser(
        "delete",
        help="delete an account with its sessions, mail accounts and data",
        description="Delete an account: its sessions, mail accounts and credentials, and data/users/{id}/; "
        "its tokens stop working at once. With a server running on the data directory the server does it "
        "(through data/control.sock); otherwise this command edits the files itself.",
    )
    delete.add_argument("user", metavar="ID_OR_EMAIL", help="the user's id or email address")
    cli.add_config_args(delete)
    delete.add_argument("--json", action="store_true", help="print the result as JSON")
    cli.runs(delete, "brain.auth.admin:users_delete")

    parser = cli.subcommands.add_parser("import", help="import accounts from another auth server's database")
    kinds = parser.add_subparsers(dest="import_kind", metavar="KIND", required=True)
    ba = kinds.add_parser("better-auth", help="a Better Auth SQLite database (user, account, session, jwks, passkey)")
    cli.add_config_args(ba)
    ba.add_argument("path", type=Path, help="Better Auth's SQLite file, e.g. ./auth.db")
    ba.add_argument("--dry-run", action="store_true", help="report what would be imported; write nothing")
    ba.add_argument("--sessions", action="store_true", help="also import live sessions (users stay signed in)")
    ba.add_argument("--issuer", help="Better Auth's baseURL: the iss of its JWTs (needed to import its keys)")
    ba.add_argument("--audience", help="the aud of its JWTs (default: the issuer, as Better Auth sets it)")
    ba.add_argument("--json", action="store_true", help="print the report as JSON")
    cli.runs(ba, "brain.auth.importer:import_command")

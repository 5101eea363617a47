"""`brain mail status`: mail sync's command (declared here; run by brain.mail.admin)."""

from __future__ import annotations

from brain.commands import CommandLine
from brain.plugins import hookimpl


@hookimpl
def register_commands(cli: CommandLine) -> None:
    """`brain mail status`."""
    mail = cli.subcommands.add_parser("mail", help="mail sync accounts")
    mail_sub = mail.add_subparsers(dest="mail_command", metavar="ACTION", required=True)
    status = mail_sub.add_parser(
        "status", help="every connected account: provider, state, last sync, message counts, last error"
    )
    cli.add_config_args(status)
    status.add_argument("--user", metavar="ID", help="only this user's accounts")
    status.add_argument("--json", action="store_true", help="print JSON instead of a table")
    cli.runs(status, "brain.mail.admin:status")

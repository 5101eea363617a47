"""`brain repair`: the API role's command, declared here (it runs in brain.api.repair, imported only then)."""

from __future__ import annotations

from brain.commands import CommandLine
from brain.plugins import hookimpl


@hookimpl
def register_commands(cli: CommandLine) -> None:
    """`brain repair --user ID`."""
    repair = cli.subcommands.add_parser(
        "repair",
        help="rebuild a user's damaged or lost events.db from the event stream (and a backup)",
        description="Rebuild data/users/ID/events.db from the JetStream stream, plus what a backup and the "
        "damaged file still hold; report what was recovered and what is missing. The store must be "
        "quarantined (or missing); the server may keep running.",
    )
    cli.add_config_args(repair)
    repair.add_argument("--user", required=True, metavar="ID", help="the user whose store to rebuild")
    repair.add_argument("--backup", metavar="PATH",
                        help="a `brain backup` directory (or a directory of them: the newest with the store is used)")
    repair.add_argument("--force", action="store_true",
                        help="move a store that is in place to quarantine first (only while brain is stopped)")
    repair.add_argument("--json", action="store_true", help="print the report as JSON")
    cli.runs(repair, "brain.api.repair:repair_command")

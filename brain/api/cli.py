"""`brain repair`, `brain cluster status` and `brain cluster drain`: the API role's commands, declared here (they run in
brain.api.repair and brain.api.cluster_admin, imported only then)."""

from __future__ import annotations

from brain.commands import CommandLine
from brain.plugins import hookimpl


@hookimpl
def register_commands(cli: CommandLine) -> None:
    """`brain repair --user ID`, `brain cluster status` and `brain cluster drain NODE`."""
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
    cluster = cli.subcommands.add_parser("cluster", help="cluster mode: several nodes on one NATS JetStream cluster")
    cluster_sub = cluster.add_subparsers(dest="cluster_command", metavar="ACTION", required=True)
    status = cluster_sub.add_parser(
        "status", help="live nodes, users per node, mail leases per holder, the event stream's replicas and their lag"
    )
    cli.add_config_args(status)
    status.add_argument("--json", action="store_true", help="print JSON instead of text")
    cli.runs(status, "brain.api.cluster_admin:status")
    drain = cluster_sub.add_parser(
        "drain", help="hand a live node's users to the other live nodes (before maintenance)",
        description="Ask NODE to hand each of its users to another live node: it stops serving the user, "
        "publishes what its outbox still holds, and the new node rebuilds the store from the event stream. "
        "Returns once every user is served elsewhere. The node places no new user on itself until it restarts.",
    )
    cli.add_config_args(drain)
    drain.add_argument("node", metavar="NODE", help="the node to drain (its cluster.node_id)")
    drain.add_argument("--timeout", type=float, default=600.0, metavar="SECONDS",
                       help="how long to wait for the node to finish (default 600)")
    drain.add_argument("--json", action="store_true", help="print JSON instead of text")
    cli.runs(drain, "brain.api.cluster_admin:drain")

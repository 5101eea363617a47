"""The `brain` command line: `serve`, and the subcommands the plugins add (`register_commands`)."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

import brain
from brain.commands import CommandLine
from brain.errors import BrainError, StorageFault, explain
from brain.files import use_private_umask
from brain.plugins.manager import load_commands


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every subcommand."""
    parser = argparse.ArgumentParser(
        prog="brain",
        description="brain: auth issuer, per-user event stores, mail sync and JetStream streaming.",
    )
    parser.add_argument("--version", action="version", version=f"brain {brain.__version__}")
    sub = parser.add_subparsers(dest="subcommand", metavar="COMMAND")
    cli = CommandLine(sub)

    serve = sub.add_parser("serve", help="run the server (auth + API roles and embedded NATS by default)")
    cli.add_config_args(serve)
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--auth-port", type=int, help="auth role port (default 3000; 0 = any free port)")
    serve.add_argument("--api-port", type=int, help="API role port (default 8080; 0 = any free port)")
    serve.add_argument("--roles", help="comma-separated roles to run: auth,api (default both)")
    serve.add_argument("--workers", type=int, help="worker processes behind the ports (default: one per CPU; 1: no master)")
    cli.runs(serve, "brain.workers.master:serve_command")

    load_commands().hook.register_commands(cli=cli)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `brain` console script."""
    # Before anything is written: databases, secrets, backups and stores are the user's alone.
    use_private_umask()
    parser = build_parser()
    args = parser.parse_args(argv)
    target = getattr(args, "command", None)
    if not target:
        parser.print_help()
        return 2
    module, _, function = target.partition(":")
    try:
        return int(getattr(importlib.import_module(module), function)(args) or 0)
    except StorageFault as exc:  # a database that cannot be used (at start-up): which, and what to do
        print(f"brain: error: storage fault: {explain(exc)}", file=sys.stderr)
        return 2
    except BrainError as exc:
        print(f"brain: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"brain: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # pragma: no cover - signals are handled inside serve
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""The `brain` command line."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from typing import Any

import brain
from brain.config import load_settings
from brain.errors import BrainError
from brain.files import use_private_umask
from brain.logs import setup_logging
from brain.redact import redact_url

log = logging.getLogger("brain.cli")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every subcommand."""
    parser = argparse.ArgumentParser(
        prog="brain",
        description="brain: auth issuer, per-user event stores, mail sync and JetStream streaming.",
    )
    parser.add_argument("--version", action="version", version=f"brain {brain.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the server (auth + API roles and embedded NATS by default)")
    _add_config_args(serve)
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--auth-port", type=int, help="auth role port (default 3000; 0 = any free port)")
    serve.add_argument("--api-port", type=int, help="API role port (default 8080; 0 = any free port)")
    serve.add_argument("--roles", help="comma-separated roles to run: auth,api (default both)")
    serve.set_defaults(func=cmd_serve)

    from brain import backup

    backup.add_parser(sub, _add_config_args, settings_from_args)

    from brain.auth import cli as auth_cli

    auth_cli.add_parser(sub, _add_config_args, settings_from_args)
    auth_cli.add_users_parser(sub, _add_config_args, settings_from_args)

    from brain.auth import importer

    importer.add_parser(sub, _add_config_args, settings_from_args)

    from brain.mail import cli as mail_cli

    mail_cli.add_parser(sub, _add_config_args, settings_from_args)
    return parser


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", help="TOML settings file (see config/default.toml)")
    p.add_argument("--data-dir", metavar="DIR", help="data directory (default ./data)")


def settings_from_args(args: argparse.Namespace) -> Any:
    """Settings from the config file, environment and the flags given."""
    server: dict[str, Any] = {}
    if getattr(args, "data_dir", None):
        server["data_dir"] = args.data_dir
    if getattr(args, "host", None):
        server["host"] = args.host
    if getattr(args, "auth_port", None) is not None:
        server["auth_port"] = args.auth_port
    if getattr(args, "api_port", None) is not None:
        server["api_port"] = args.api_port
    if getattr(args, "roles", None):
        server["roles"] = [r.strip() for r in args.roles.split(",") if r.strip()]
    return load_settings(args.config, overrides={"server": server} if server else None)


def cmd_serve(args: argparse.Namespace) -> int:
    """`brain serve`."""
    from brain.runtime import Runtime, bind_sockets

    settings = settings_from_args(args)
    setup_logging(settings.log.format, settings.log.level)
    settings, sockets = bind_sockets(settings)
    runtime = Runtime(settings)
    log.info(
        "starting brain %s: roles %s, data %s, nats %s",
        brain.__version__,
        ",".join(settings.server.roles),
        settings.data_path,
        redact_url(settings.nats.url) or "embedded",
    )
    return asyncio.run(runtime.serve(sockets))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `brain` console script."""
    # Before anything is written: databases, secrets, backups and stores are the user's alone.
    use_private_umask()
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
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

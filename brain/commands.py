"""How plugins add `brain` subcommands (`register_commands`), and what a command may use.

`brain --help` builds its parser from the built-in plugins' command modules alone
(`brain.plugins.manager.load_commands`), so a command module imports nothing heavy: it only
declares arguments, and names the function that runs the command as `"module:function"`
(`CommandLine.runs`). That module is imported when the command runs, and its function is
called with the parsed arguments; it gets its settings with `settings_from_args(args)` and,
for work on a data directory with no server running, a process of its own with
`offline_process(settings)` (every plugin loaded and active, nothing started).
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from brain.config import Settings, load_settings

if TYPE_CHECKING:
    from brain.process import Process

__all__ = ["CommandLine", "offline_process", "settings_from_args"]


class CommandLine:
    """What `register_commands` gets: the subcommands to add to, and the shared arguments."""

    def __init__(self, subcommands: Any) -> None:
        self.subcommands = subcommands

    @staticmethod
    def add_config_args(parser: argparse.ArgumentParser) -> None:
        """--config and --data-dir, which every command that reads a data directory takes."""
        parser.add_argument("--config", metavar="FILE", help="TOML settings file (see config/default.toml)")
        parser.add_argument("--data-dir", metavar="DIR", help="data directory (default ./data)")

    @staticmethod
    def runs(parser: argparse.ArgumentParser, target: str) -> None:
        """Run `target` ("module:function", called with the parsed arguments) for this parser."""
        parser.set_defaults(command=target)


def settings_from_args(args: argparse.Namespace) -> Settings:
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
    if getattr(args, "workers", None) is not None:
        server["workers"] = args.workers
    if getattr(args, "roles", None):
        server["roles"] = [r.strip() for r in args.roles.split(",") if r.strip()]
    return load_settings(getattr(args, "config", None), overrides={"server": server} if server else None)


def offline_process(settings: Settings) -> Process:
    """A process for offline work on a data directory: every plugin loaded and active, nothing started."""
    # Imported here, not at the top: `brain --help` and every other command's parser import
    # this module, and must not pay for the whole server's imports.
    from brain.runtime import Runtime

    return Runtime(settings, offline=True)

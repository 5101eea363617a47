"""A plugin's manifest: what the core reads about a plugin before (and without) running it.

After Home Assistant's integration manifests. A built-in role declares one as `MANIFEST` in
its package (`brain/auth/__init__.py`), which imports nothing heavy, so the core can read it
cheaply; an entry-point plugin may declare one as `MANIFEST` in its entry-point module.
`tests/test_architecture.py` checks every manifest against the code (hassfest's job).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Manifest"]


@dataclass(frozen=True)
class Manifest:
    """Name, the listener served, dependencies, and the modules that carry the hooks.

    - `hooks`: modules (or `module:Factory` for a plugin object made fresh for each process)
      whose hook implementations the plugin adds; the first is registered under `name`.
    - `hookspecs`: a module of hooks the plugin itself defines (other plugins implement them).
    - `commands`: a module adding `brain` subcommands (`register_commands`); it is all
      `brain --help` imports of the plugin, so it must import nothing heavy.
    - `settings`: a module declaring the plugin's settings sections (`register_settings`),
      read whenever settings are loaded, so it must import nothing heavy either.
    - `listener`: the HTTP listener the plugin serves; the runtime calls its hooks only in a
      process that serves that listener (none: always).
    - `requires`: plugins that must be loaded too; their hooks are registered first.
    """

    name: str
    hooks: tuple[str, ...]
    hookspecs: str | None = None
    commands: str | None = None
    settings: str | None = None
    listener: str | None = None
    requires: tuple[str, ...] = ()
    description: str = ""

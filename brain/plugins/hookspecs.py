"""The core's hooks: how every plugin, the built-in roles included, wires itself into a process.

Each is documented, with an example, in docs/plugins.md. Plugins are modules (or objects) whose
functions are decorated with `@hookimpl`; the built-in roles are registered first
(`brain.plugins.manager.BUILTIN_PLUGINS`), then the enabled entry-point plugins (group `brain`).
Hooks are called with keyword arguments only. A role's own hooks (sign-up, mail providers,
stored events) live next to its code: `brain/auth/hookspecs.py`, `brain/api/hookspecs.py`,
`brain/mail/hookspecs.py`.

The hooks that take `rt` are called only for the plugins active in the process: a plugin whose
manifest names a listener the process does not serve is left out.
"""

from __future__ import annotations

from typing import Any

import pluggy

hookspec = pluggy.HookspecMarker("brain")
hookimpl = pluggy.HookimplMarker("brain")


@hookspec(historic=True)
def brain_startup(settings: Any, plugin_settings: Any) -> None:
    """Receive the server settings and this plugin's own `[plugins.NAME]` table at start-up."""


@hookspec
def register_settings(register: Any) -> None:
    """Declare settings sections: `register(brain.config.Section(...))` (read before anything runs)."""


@hookspec
def register_listeners(settings: Any, register: Any) -> None:
    """Declare HTTP listeners: call `register(brain.routes.Listener(...))` for each."""


@hookspec
def setup_process(rt: Any) -> None:
    """The process is being assembled: put what this plugin offers others into `rt.stash`."""


@hookspec
def register_children(rt: Any, register: Any) -> None:
    """Add actors to the supervision tree: `register(brain.actors.tree.Child(...) or Group(...))`."""


@hookspec
def register_routes(rt: Any, listener: str, register: Any) -> None:
    """Add routes to a listener: `register(brain.routes.Route(...))`, each with its OpenAPI operation."""


@hookspec
def setup_app(rt: Any, listener: str, app: Any) -> None:
    """Configure a served listener's aiohttp app before it starts: middlewares, cleanup_ctx, signals."""


@hookspec
def register_health(rt: Any, register: Any) -> None:
    """Contribute to /health: `register(name, figures=callable, problems=callable)`."""


@hookspec
def register_metrics(rt: Any, register: Any) -> None:
    """Contribute Prometheus metrics: `register(name, collect)`, collect() returning metric families."""


@hookspec
def register_commands(cli: Any) -> None:
    """Add `brain` subcommands to `cli.subcommands` (a `brain.commands.CommandLine`; no heavy imports)."""


@hookspec
def register_backup(register: Any) -> None:
    """Name the files a backup copies: `register(brain.backup.BackupFile(...))` for each."""


@hookspec
def check_data(data_dir: Any, rows: Any) -> None:
    """`brain check`: add this plugin's checks to `rows` (`brain.check.CheckRow`s, SQLite's done), or rows of its own."""


@hookspec
def user_revoked(rt: Any, user_id: str, tokens_valid_until: int) -> None:
    """A user was deleted: refuse their credentials from now on (event loop thread; must not block)."""


@hookspec
def user_purge(rt: Any, user_id: str) -> dict[str, Any] | None:
    """A user was deleted: delete what this plugin keeps about them (worker thread); figures or None."""

"""The plugin manager: loads the plugins config enables from the `brain` entry-point group."""

from __future__ import annotations

import importlib.metadata
import logging
from collections.abc import Iterable
from types import ModuleType
from typing import Any

import pluggy

from brain.errors import PluginError
from brain.plugins import hookspecs

log = logging.getLogger("brain.plugins")

ENTRY_POINT_GROUP = "brain"


def new_manager() -> pluggy.PluginManager:
    """An empty plugin manager that knows brain's hookspecs."""
    pm = pluggy.PluginManager("brain")
    pm.add_hookspecs(hookspecs)
    return pm


def installed_plugins() -> dict[str, importlib.metadata.EntryPoint]:
    """Every plugin installed in this environment, by entry-point name."""
    return {ep.name: ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}


def load_plugins(
    enabled: Iterable[str],
    *,
    builtins: Iterable[ModuleType | object] = (),
    extra: Iterable[tuple[str, ModuleType | object]] = (),
) -> pluggy.PluginManager:
    """Register the built-in plugins and the enabled entry-point plugins, then validate them.

    A plugin named in `enabled` that is not installed, fails to import, or implements a hook
    that does not exist (a misspelt name, a wrong argument) is a PluginError naming it.
    """
    pm = new_manager()
    for plugin in builtins:
        pm.register(plugin)
    available = installed_plugins()
    for name in enabled:
        ep = available.get(name)
        if ep is None:
            known = ", ".join(sorted(available)) or "none"
            raise PluginError(f"plugin {name!r} is enabled in config but not installed (installed: {known})")
        try:
            module = ep.load()
        except Exception as exc:
            raise PluginError(f"plugin {name!r} failed to import from {ep.value}: {exc}") from exc
        _register(pm, name, module)
    for name, module in extra:
        _register(pm, name, module)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginError(f"plugin {pm.get_name(exc.plugin) or exc.plugin!r}: {exc}") from exc
    log.info("plugins loaded: %s", ", ".join(n for n, _ in pm.list_name_plugin()) or "none")
    return pm


def _register(pm: pluggy.PluginManager, name: str, module: Any) -> None:
    try:
        pm.register(module, name=name)
    except pluggy.PluginValidationError as exc:
        raise PluginError(f"plugin {name!r}: {exc}") from exc
    except ValueError as exc:
        raise PluginError(f"plugin {name!r} could not be registered: {exc}") from exc

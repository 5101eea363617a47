"""The plugin manager: the built-in plugins first, then those config enables (entry-point group `brain`).

The core's own features and the three roles are plugins like any other (pytest's default
plugins, datasette's default plugins): `CORE` and `BUILTIN_PLUGINS` name them, and they reach
the process through the same hooks a third-party distribution uses. An entry of
`BUILTIN_PLUGINS` is a package whose `MANIFEST` (`brain.plugins.manifest.Manifest`) names the
modules that carry its hooks; an entry-point plugin is its module, with or without a MANIFEST.

`brain --help` must not pay for the server's imports: the command line is built by
`load_commands`, from the manifests' `commands` modules only.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
from collections.abc import Collection, Iterable
from types import ModuleType
from typing import Any

import pluggy

from brain.errors import PluginError
from brain.plugins import hookspecs
from brain.plugins.manifest import Manifest

log = logging.getLogger("brain.plugins")

ENTRY_POINT_GROUP = "brain"

# The core's own features: the embedded NATS server, /metrics, the account deletion relay,
# backups, storage faults.
CORE = Manifest(
    name="core",
    hooks=("brain.nats_embedded", "brain.metrics", "brain.deletions", "brain.backup", "brain.storage"),
    commands="brain.backup",
)
# The roles and the built-in features on top of them, registered in this order after the core and
# before any entry-point plugin.
BUILTIN_PLUGINS: tuple[str, ...] = (
    "brain.auth", "brain.api", "brain.mail", "brain.agents", "brain.webhooks", "brain.console",
)


class PluginManager(pluggy.PluginManager):
    """pluggy's manager, knowing brain's hookspecs and each plugin's manifest."""

    def __init__(self) -> None:
        super().__init__("brain")
        self.add_hookspecs(hookspecs)
        self.manifests: dict[str, Manifest] = {}
        self._owner: dict[int, str] = {}  # id(plugin object) -> name of the manifest it came with

    def add_manifest(self, manifest: Manifest) -> None:
        """Register the plugin a manifest describes: its hookspecs, then its hook modules."""
        if manifest.name in self.manifests:
            raise PluginError(f"two plugins are named {manifest.name!r}")
        missing = [name for name in manifest.requires if name not in self.manifests]
        if missing:
            raise PluginError(f"plugin {manifest.name!r} requires {', '.join(missing)}, which is not loaded first")
        if manifest.hookspecs:
            self.add_hookspecs(_load(manifest.hookspecs, manifest.name))
        self.manifests[manifest.name] = manifest
        for i, target in enumerate(manifest.hooks):
            plugin = _load(target, manifest.name)
            name = manifest.name if i == 0 else getattr(plugin, "__name__", target)
            _register(self, name, plugin)
            self._owner[id(plugin)] = manifest.name

    def manifest_of(self, plugin: object) -> Manifest | None:
        """The manifest a registered plugin object came with (None: a plugin without one)."""
        name = self._owner.get(id(plugin))
        return None if name is None else self.manifests[name]

    def inactive(self, served: Collection[str]) -> list[object]:
        """Registered plugins whose manifest names a listener that is not in `served`."""
        out = []
        for plugin in self.get_plugins():
            manifest = self.manifest_of(plugin)
            if manifest is not None and manifest.listener is not None and manifest.listener not in served:
                out.append(plugin)
        return out


def installed_plugins() -> dict[str, importlib.metadata.EntryPoint]:
    """Every plugin installed in this environment, by entry-point name."""
    return {ep.name: ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}


def builtin_manifests() -> list[Manifest]:
    """The core's manifest, then each built-in role's (read without importing the role's code)."""
    return [CORE, *(importlib.import_module(name).MANIFEST for name in BUILTIN_PLUGINS)]


def settings_sections(enabled: Iterable[str]) -> list[Any]:
    """The `brain.config.Section`s the built-in plugins and these entry-point plugins declare.

    Reads each built-in manifest's `settings` module and the entry-point modules only (no
    server code). An enabled plugin that is not installed or does not import is left for
    `load_plugins` to report.
    """
    pm = PluginManager()
    for manifest in builtin_manifests():
        if manifest.settings:
            _register(pm, manifest.name, _load(manifest.settings, manifest.name))
    available = installed_plugins()
    for name in enabled:
        ep = available.get(name)
        try:
            module = ep.load() if ep is not None else None
        except Exception:  # noqa: BLE001 - load_plugins names the plugin and the error
            module = None
        if module is not None and not pm.is_registered(module):
            _register(pm, name, module)
    found: list[Any] = []
    pm.hook.register_settings(register=found.append)
    return found


def load_commands() -> PluginManager:
    """The built-in plugins' command modules only: what `brain`'s argument parser is built from."""
    pm = PluginManager()
    for manifest in builtin_manifests():
        if manifest.commands:
            _register(pm, manifest.name, _load(manifest.commands, manifest.name))
    return pm


def load_plugins(enabled: Iterable[str]) -> PluginManager:
    """Register the built-in plugins and the enabled entry-point plugins, then validate them.

    A plugin named in `enabled` that is not installed, fails to import, or implements a hook
    that does not exist (a misspelt name, a wrong argument) is a PluginError naming it.
    """
    pm = PluginManager()
    for manifest in builtin_manifests():
        pm.add_manifest(manifest)
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
        _add_module(pm, name, module)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginError(f"plugin {pm.get_name(exc.plugin) or exc.plugin!r}: {exc}") from exc
    log.info("plugins loaded: %s", ", ".join(n for n, _ in pm.list_name_plugin()))
    return pm


def _add_module(pm: PluginManager, name: str, module: ModuleType) -> None:
    manifest = getattr(module, "MANIFEST", None)
    if isinstance(manifest, Manifest):
        pm.add_manifest(manifest)
    else:
        _register(pm, name, module)


def _load(target: str, owner: str) -> Any:
    """A module by name, or a fresh object from a `module:Factory` name."""
    module_name, _, factory = target.partition(":")
    try:
        module = importlib.import_module(module_name)
        return getattr(module, factory)() if factory else module
    except (ImportError, AttributeError) as exc:
        raise PluginError(f"plugin {owner!r}: cannot load {target}: {exc}") from exc


def _register(pm: PluginManager, name: str, plugin: Any) -> None:
    try:
        pm.register(plugin, name=name)
    except pluggy.PluginValidationError as exc:
        raise PluginError(f"plugin {name!r}: {exc}") from exc
    except ValueError as exc:
        raise PluginError(f"plugin {name!r} could not be registered: {exc}") from exc

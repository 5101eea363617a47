"""Typed, frozen settings: defaults in code, layered with a TOML file and the environment.

The loader. The core's sections ([server], [log], [nats], [cluster], [metrics], [plugins]) are in
brain/sections.py; every other section belongs to the plugin that reads it and is declared by
it (`register_settings`: a `Section` with its type, the original environment names that fill
it and its own checks), as are the original names of a provider's `[plugins.NAME]` table
(GOOGLE_CLIENT_ID fills `[plugins.gmail]`, declared by the Gmail plugin). `load_settings` asks
the built-in plugins and the enabled entry-point plugins for their sections.

Order of precedence (later wins): the defaults in code, `--config FILE`, environment variables,
command-line flags. `config/default.toml` lists every key with its default (a test keeps the
two in step). Unknown keys and values of the wrong type are start-up errors naming the key.

Environment variables: `BRAIN_<SECTION>__<KEY>` for any key (for example
`BRAIN_API__MAX_OPEN_STORES=64`), plus the original system's names, declared by whoever owns
them: `NATS_URL`, `BRAIN_SECRET` (or Better Auth's `BETTER_AUTH_SECRET`) by the core,
`AUTH_SERVER_URL` by the API role, `GOOGLE_CLIENT_ID`/`GOOGLE_CLIENT_SECRET` by the Gmail plugin,
`MICROSOFT_CLIENT_ID`/`MICROSOFT_CLIENT_SECRET`/`MICROSOFT_TENANT` by the Outlook plugin.
"""

from __future__ import annotations

import dataclasses
import os
import secrets
import tomllib
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from brain.errors import ConfigError
from brain.plugins.manager import settings_sections
from brain.sections import (
    ClusterSettings, LogSettings, MetricsSettings, NatsSettings, PluginSettings, ServerSettings, validate_core,
)

__all__ = ["Section", "Settings", "as_toml_defaults", "check_plugin_table", "load_settings", "server_secret"]


@dataclass(frozen=True)
class Section:
    """A settings section a plugin owns (what `register_settings` registers).

    `type`: the frozen dataclass `[name]` is built into (`settings.<name>`); None for the
    original environment names of a provider's free-form `[plugins.<name>]` table. `env`: those
    original names, each filling one key. `validate`: cross-field checks, given the whole
    settings (raise ConfigError naming the key). `tables`: the section also holds free-form
    `[<name>.SUB]` tables, kept in its `settings` field.
    """

    name: str
    type: type | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    validate: Callable[[Settings], None] | None = None
    tables: bool = False


@dataclass(frozen=True)
class Settings:
    """Every setting brain reads: the core's sections, and the plugins' by name (`settings.auth`)."""

    server: ServerSettings = field(default_factory=ServerSettings)
    log: LogSettings = field(default_factory=LogSettings)
    nats: NatsSettings = field(default_factory=NatsSettings)
    cluster: ClusterSettings = field(default_factory=ClusterSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    plugins: PluginSettings = field(default_factory=PluginSettings)
    # The plugins' own sections, by name.
    sections: Mapping[str, Any] = field(default_factory=dict)

    def __getattr__(self, name: str) -> Any:
        # Only reached for names that are not fields: a plugin's section.
        sections = self.__dict__.get("sections", {})
        if name in sections:
            return sections[name]
        raise AttributeError(f"no settings section {name!r} (is the plugin that owns it loaded?)")

    # Derived values -------------------------------------------------------------------

    @property
    def data_path(self) -> Path:
        """The data directory, absolute."""
        return Path(self.server.data_dir).resolve()

    @property
    def tls(self) -> bool:
        """Whether the HTTP listeners serve TLS."""
        return bool(self.server.tls_cert and self.server.tls_key)

    def local_url(self, port: int) -> str:
        """Where a listener on `port` of this host is reached (loopback for a wildcard host)."""
        scheme = "https" if self.tls else "http"
        host = self.server.host
        if host in ("0.0.0.0", "", "::"):
            host = "127.0.0.1"
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return f"{scheme}://{host}:{port}"

    @property
    def auth_public_url(self) -> str:
        """The auth role's public URL: configured, or where it listens."""
        return (self.server.public_url or self.local_url(self.server.auth_port)).rstrip("/")

    @property
    def api_public_url(self) -> str:
        """The API role's public URL: configured, or where it listens."""
        return (self.server.api_public_url or self.local_url(self.server.api_port)).rstrip("/")

    def plugin_settings(self, name: str) -> Mapping[str, Any]:
        """The `[plugins.NAME]` table (empty if absent)."""
        return self.plugins.settings.get(name, {})


# The core's own sections, and the original system's names for their keys.
CORE_SECTIONS: tuple[Section, ...] = (
    Section("server", ServerSettings, env={"BRAIN_SECRET": "secret", "BETTER_AUTH_SECRET": "secret"}),
    Section("log", LogSettings),
    Section("nats", NatsSettings, env={
        "NATS_URL": "url", "NATS_USER": "user", "NATS_PASSWORD": "password", "NATS_TOKEN": "token",
        "NATS_NKEY": "nkey_seed_file", "NATS_CREDS": "creds_file", "NATS_CA": "tls_ca_file",
        "NATS_CERT": "tls_cert_file", "NATS_KEY": "tls_key_file",
    }),
    Section("cluster", ClusterSettings, env={"BRAIN_NODE_ID": "node_id"}),
    Section("metrics", MetricsSettings),
    Section("plugins", PluginSettings, tables=True),
)


# Loading ---------------------------------------------------------------------------------


def _coerce(key: str, value: Any, hint: Any, *, from_env: bool) -> Any:
    """Check (and, for environment strings, parse) one value against its type hint."""
    origin = typing.get_origin(hint)
    if origin is Literal:
        allowed = typing.get_args(hint)
        if value not in allowed:
            raise ConfigError(f"{key}: must be one of {', '.join(map(repr, allowed))}, got {value!r}")
        return value
    if hint is bool:
        if from_env and isinstance(value, str):
            low = value.strip().lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: must be true or false, got {value!r}")
        return value
    if hint is int:
        if from_env and isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                raise ConfigError(f"{key}: must be an integer, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: must be an integer, got {value!r}")
        return value
    if hint is float:
        if from_env and isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                raise ConfigError(f"{key}: must be a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: must be a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: must be a string, got {value!r}")
        return value
    if origin is tuple:
        if from_env and isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{key}: must be a list of strings, got {value!r}")
        return tuple(value)
    raise ConfigError(f"{key}: unsupported setting type {hint!r}")  # pragma: no cover


def _build_section(name: str, cls: type, table: Mapping[str, Any], env_table: Mapping[str, Any]) -> Any:
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for key, value in table.items():
        if key not in hints:
            raise ConfigError(f"unknown setting {name}.{key}")
        kwargs[key] = _coerce(f"{name}.{key}", value, hints[key], from_env=False)
    for key, value in env_table.items():
        if key not in hints:
            raise ConfigError(f"unknown setting {name}.{key} (from the environment)")
        kwargs[key] = _coerce(f"{name}.{key}", value, hints[key], from_env=True)
    return cls(**kwargs)


def _build_tabled(section: Section, table: dict[str, Any], env_table: dict[str, Any]) -> Any:
    """A section with free-form `[name.SUB]` tables (env `BRAIN_NAME__SUB__KEY`) beside its typed keys."""
    name = section.name
    env_tables = env_table.pop("", {})
    tables: dict[str, dict[str, Any]] = {}
    for key in [k for k, v in table.items() if isinstance(v, Mapping)]:
        tables[key] = dict(table.pop(key))
    for sub, extra in env_tables.items():
        tables.setdefault(sub, {}).update(extra)
    if "settings" in table or "settings" in env_table:
        raise ConfigError(f"{name}.settings: write these tables as [{name}.NAME]")
    for key, value in table.items():
        if not _is_field(section, key):
            raise ConfigError(f"unknown setting {name}.{key} (its tables are [{name}.NAME])")
    assert section.type is not None
    typed = _build_section(name, section.type, table, env_table)
    frozen = {sub: types.MappingProxyType(t) for sub, t in tables.items()}
    return dataclasses.replace(typed, settings=types.MappingProxyType(frozen))


def _is_field(section: Section, key: str) -> bool:
    return section.type is not None and key in typing.get_type_hints(section.type)


def _merge(base: dict[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(dict(out[key]), value)
        else:
            out[key] = value
    return out


def _drop_overridden(env_table: dict[str, Any], over: Mapping[str, Any], *, tabled: bool) -> None:
    """Remove from a section's environment values what explicit overrides set (a tabled section's
    sub-tables key by key)."""
    for key, value in over.items():
        if tabled and isinstance(value, Mapping):
            sub = env_table.get("", {}).get(key, {})
            for subkey in value:
                sub.pop(subkey, None)
        else:
            env_table.pop(key, None)


def _env_tables(environ: Mapping[str, str], sections: Iterable[Section]) -> dict[str, dict[str, Any]]:
    """The environment's overrides by section: the declared original names first, then BRAIN_*."""
    by_section: dict[str, dict[str, Any]] = {}
    for section in sections:
        for env_name, key in section.env.items():
            value = environ.get(env_name, "")
            if value == "":
                continue
            if section.type is None:  # a provider's [plugins.NAME] table
                by_section.setdefault("plugins", {}).setdefault("", {}).setdefault(section.name, {})[key] = value
            else:
                by_section.setdefault(section.name, {})[key] = value
    tabled = {s.name for s in sections if s.tables}
    known = {s.name for s in sections if s.type is not None}
    for env_name, value in environ.items():
        if not env_name.startswith("BRAIN_") or "__" not in env_name:
            continue
        name, _, key = env_name[len("BRAIN_"):].partition("__")
        name, key = name.lower(), key.lower()
        if name in tabled and "__" in key:
            sub, _, subkey = key.partition("__")
            by_section.setdefault(name, {}).setdefault("", {}).setdefault(sub, {})[subkey] = value
            continue
        if name not in known:
            raise ConfigError(f"unknown settings section {name!r} in environment variable {env_name}")
        by_section.setdefault(name, {})[key] = value
    return by_section


def _read(config_file: str | os.PathLike[str] | None, overrides: Mapping[str, Mapping[str, Any]] | None) -> dict[str, Any]:
    table: dict[str, Any] = {}
    if config_file:
        path = Path(config_file)
        try:
            with path.open("rb") as fh:
                table = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    if overrides:
        table = _merge(table, overrides)
    for name, value in table.items():
        if not isinstance(value, Mapping):
            raise ConfigError(f"[{name}] must be a table")
    return table


def load_settings(
    config_file: str | os.PathLike[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    sections: Iterable[Section] | None = None,
) -> Settings:
    """Build the settings from defaults, a TOML file, the environment and explicit overrides.

    `sections`: the plugins' sections; by default those of the built-in plugins and of the
    entry-point plugins `[plugins] enabled` names.
    """
    environ = os.environ if environ is None else environ
    table = _read(config_file, overrides)
    if sections is None:
        sections = plugin_sections(_enabled(table, environ))
    declared = [*CORE_SECTIONS, *sections]
    known = {s.name: s for s in declared if s.type is not None}
    for name in table:
        if name not in known:
            raise ConfigError(f"unknown settings section [{name}]")
    env = _env_tables(environ, declared)
    # Explicit overrides (the command line's flags) are the last layer: they win over the
    # environment as well as over the file they were merged into.
    for name, over in (overrides or {}).items():
        _drop_overridden(env.get(name, {}), over, tabled=name in known and known[name].tables)
    built: dict[str, Any] = {}
    for name, section in known.items():
        file_table = dict(table.get(name, {}))
        env_table = dict(env.get(name, {}))
        assert section.type is not None
        built[name] = (
            _build_tabled(section, file_table, env_table)
            if section.tables
            else _build_section(name, section.type, file_table, env_table)
        )
    core = {s.name for s in CORE_SECTIONS}
    settings = Settings(
        **{name: value for name, value in built.items() if name in core},
        sections=types.MappingProxyType({name: value for name, value in built.items() if name not in core}),
    )
    validate_core(settings)
    for section in declared:
        if section.validate is not None:
            section.validate(settings)
    return settings


def _enabled(table: Mapping[str, Any], environ: Mapping[str, str]) -> tuple[str, ...]:
    """`[plugins] enabled`, read before the rest (it says whose sections there are)."""
    enabled: Any = PluginSettings.enabled
    if "enabled" in table.get("plugins", {}):
        enabled = _coerce("plugins.enabled", table["plugins"]["enabled"], tuple[str, ...], from_env=False)
    if "BRAIN_PLUGINS__ENABLED" in environ:
        enabled = _coerce("plugins.enabled", environ["BRAIN_PLUGINS__ENABLED"], tuple[str, ...], from_env=True)
    return tuple(enabled)


def plugin_sections(enabled: Iterable[str]) -> list[Section]:
    """The sections the built-in plugins and these entry-point plugins declare."""
    return settings_sections(enabled)


def server_secret(settings: Settings) -> bytes:
    """The server secret: configured, or (dev mode) generated once into the data dir, 0600."""
    if settings.server.secret:
        return settings.server.secret.encode()
    if settings.server.mode == "production":  # pragma: no cover - _validate refuses this
        raise ConfigError("server.secret: required in production mode")
    path = settings.data_path / "secret.key"
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        value = path.read_text().strip()
        if len(value) < 32:
            raise ConfigError(f"{path}: the stored server secret is too short; delete it to regenerate") from None
        return value.encode()
    with os.fdopen(fd, "w") as fh:
        fh.write(secrets.token_urlsafe(48) + "\n")
        # On disk before anything is encrypted with it: a secret lost to a crash of the machine
        # (or a disk error) would leave every key and token in auth.db and mail.db unreadable.
        fh.flush()
        os.fsync(fh.fileno())
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
    return path.read_text().strip().encode()


def as_toml_defaults() -> dict[str, dict[str, Any]]:
    """The defaults as a TOML-shaped dict (used to keep config/default.toml true)."""
    out: dict[str, dict[str, Any]] = {}
    for section in [*CORE_SECTIONS, *plugin_sections(PluginSettings.enabled)]:
        if section.type is None:
            continue
        values: dict[str, Any] = {}
        for f in dataclasses.fields(section.type()):
            if section.tables and f.name == "settings":
                continue
            v = getattr(section.type(), f.name)
            values[f.name] = list(v) if isinstance(v, tuple) else v
        out[section.name] = values
    return out


def check_plugin_table(plugin: str, table: Mapping[str, Any], allowed: frozenset[str]) -> None:
    """Refuse keys a plugin does not know in its `[plugins.NAME]` table, naming the key."""
    for key in table:
        if key not in allowed:
            raise ConfigError(f"unknown setting plugins.{plugin}.{key} (known: {', '.join(sorted(allowed))})")

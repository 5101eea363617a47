"""Settings: defaults, TOML, environment (including the original system's names), errors."""

from __future__ import annotations

import os
import stat
import tomllib
from pathlib import Path

import pytest

from brain.api.settings import expected_issuer, jwks_url
from brain.auth.settings import jwt_issuer
from brain.config import Settings, as_toml_defaults, load_settings, server_secret
from brain.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "brain.toml"
    path.write_text(text)
    return path


def test_default_toml_lists_exactly_the_defaults() -> None:
    with (REPO / "config" / "default.toml").open("rb") as fh:
        table = tomllib.load(fh)
    assert table == as_toml_defaults()
    assert load_settings(REPO / "config" / "default.toml", environ={}) == load_settings(environ={})


def test_production_example_loads_with_a_secret() -> None:
    s = load_settings(REPO / "config" / "production.example.toml", environ={"BRAIN_SECRET": "s" * 40})
    assert s.server.mode == "production"
    assert s.log.format == "json"
    assert s.auth.require_email_verification is True and s.smtp.host


def test_production_requires_secret(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="server.secret"):
        load_settings(write(tmp_path, '[server]\nmode = "production"\n'), environ={})


def test_unknown_key_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"api\.max_open_storez"):
        load_settings(write(tmp_path, "[api]\nmax_open_storez = 3\n"), environ={})
    with pytest.raises(ConfigError, match=r"\[apii\]"):
        load_settings(write(tmp_path, "[apii]\nx = 1\n"), environ={})


@pytest.mark.parametrize(
    "text, key",
    [
        ('[server]\nauth_port = "3000"\n', "server.auth_port"),
        ("[server]\nauth_port = 70000\n", "server.auth_port"),
        ("[log]\nformat = 'xml'\n", "log.format"),
        ("[api]\nmax_open_stores = 0\n", "api.max_open_stores"),
        ("[api]\nalgorithms = ['HS256']\n", "api.algorithms"),
        ("[server]\nroles = ['web']\n", "server.roles"),
        ("[log]\naccess_log = 'yes'\n", "log.access_log"),
        ("[server]\ntls_cert = 'a.pem'\n", "server.tls_cert"),
        ("[mail]\nconvert_workers = -2\n", "mail.convert_workers"),
    ],
)
def test_bad_values_are_named(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, text), environ={})
    assert key in str(info.value)


def test_bad_toml_is_reported(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(write(tmp_path, "[server\n"), environ={})
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "missing.toml", environ={})


def test_original_environment_names() -> None:
    env = {
        "AUTH_SERVER_URL": "http://auth.internal:3000",
        "NATS_URL": "nats://10.0.0.5:4222",
        "GOOGLE_CLIENT_ID": "gid",
        "GOOGLE_CLIENT_SECRET": "gsecret",
        "MICROSOFT_CLIENT_ID": "mid",
        "MICROSOFT_CLIENT_SECRET": "msecret",
        "MICROSOFT_TENANT": "contoso",
    }
    s = load_settings(environ=env)
    assert s.api.auth_server_url == "http://auth.internal:3000"
    assert jwks_url(s) == "http://auth.internal:3000/api/auth/jwks"
    assert s.nats.url == "nats://10.0.0.5:4222"
    assert dict(s.plugin_settings("gmail")) == {"client_id": "gid", "client_secret": "gsecret"}
    assert dict(s.plugin_settings("outlook")) == {"client_id": "mid", "client_secret": "msecret", "tenant": "contoso"}


def test_generic_environment_overrides_are_typed(tmp_path: Path) -> None:
    s = load_settings(
        write(tmp_path, "[api]\nmax_open_stores = 3\n"),
        environ={"BRAIN_API__MAX_OPEN_STORES": "64", "BRAIN_SERVER__ROLES": "api", "BRAIN_LOG__ACCESS_LOG": "false"},
    )
    assert s.api.max_open_stores == 64
    assert s.server.roles == ("api",)
    assert s.log.access_log is False
    with pytest.raises(ConfigError, match="api.max_open_stores"):
        load_settings(environ={"BRAIN_API__MAX_OPEN_STORES": "many"})
    with pytest.raises(ConfigError, match="api.nope"):
        load_settings(environ={"BRAIN_API__NOPE": "1"})


def test_settings_are_frozen() -> None:
    s = Settings()
    with pytest.raises(AttributeError):
        s.server.host = "0.0.0.0"  # type: ignore[misc]


def test_derived_urls() -> None:
    s = load_settings(environ={}, overrides={"server": {"auth_port": 3100, "api_port": 8100}})
    assert s.auth_public_url == "http://127.0.0.1:3100"
    assert jwt_issuer(s) == expected_issuer(s) == "http://127.0.0.1:3100"
    assert jwks_url(s) == "http://127.0.0.1:3100/api/auth/jwks"
    s = load_settings(environ={}, overrides={"server": {"public_url": "https://auth.example.com/"}})
    assert jwt_issuer(s) == "https://auth.example.com"


def test_dev_secret_is_generated_once_0600(tmp_path: Path) -> None:
    s = load_settings(environ={}, overrides={"server": {"data_dir": str(tmp_path / "d")}})
    first = server_secret(s)
    assert len(first) >= 32
    path = tmp_path / "d" / "secret.key"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert server_secret(s) == first


def test_configured_secret_wins(tmp_path: Path) -> None:
    s = load_settings(environ={"BRAIN_SECRET": "x" * 32}, overrides={"server": {"data_dir": str(tmp_path)}})
    assert server_secret(s) == b"x" * 32
    assert not (tmp_path / "secret.key").exists()
    with pytest.raises(ConfigError, match="at least 32"):
        load_settings(environ={"BRAIN_SECRET": "short"})


def test_plugin_tables(tmp_path: Path) -> None:
    s = load_settings(
        write(tmp_path, '[plugins]\nenabled = ["gmail"]\n[plugins.gmail]\nclient_id = "a"\n'),
        environ={"BRAIN_PLUGINS__GMAIL__PAGE_SIZE": "50"},
    )
    assert s.plugins.enabled == ("gmail",)
    assert dict(s.plugin_settings("gmail")) == {"client_id": "a", "page_size": "50"}
    with pytest.raises(ConfigError, match="plugins.bogus"):
        load_settings(write(tmp_path, "[plugins]\nbogus = 1\n"), environ={})


def test_command_line_flags_win_over_the_environment_and_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """README, Configuration: "defaults → --config FILE → environment → command-line flags", later
    wins. The flags went in under the environment, so `BRAIN_SERVER__DATA_DIR=/srv/brain brain
    users delete --data-dir ./other ...` acted on /srv/brain."""
    import argparse

    from brain.commands import settings_from_args

    config = write(tmp_path, '[server]\napi_port = 1111\nhost = "127.0.0.2"\n')
    monkeypatch.setenv("BRAIN_SERVER__API_PORT", "2222")
    monkeypatch.setenv("BRAIN_SERVER__DATA_DIR", str(tmp_path / "from-env"))
    monkeypatch.setenv("BRAIN_SERVER__WORKERS", "3")
    args = argparse.Namespace(config=str(config), data_dir=str(tmp_path / "from-flag"), api_port=3333, workers=None)
    s = settings_from_args(args)
    assert (s.server.api_port, s.server.data_dir) == (3333, str(tmp_path / "from-flag"))
    assert s.server.workers == 3  # no flag: the environment
    assert s.server.host == "127.0.0.2"  # neither: the file

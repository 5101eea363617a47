"""Each of the core's wiring hooks reaches where docs/plugins.md says, through a plugin that
implements them all (tests/plugins/probe_plugin.py), in a process of its own (nothing served);
and a plugin's `send_auth_email` is asked before the built-in SMTP sender."""

from __future__ import annotations

import argparse
import sqlite3
from pathlib import Path

import pytest

from prometheus_client.exposition import generate_latest

from brain.backup import backup_files
from brain.check import check, table
from brain.commands import CommandLine
from brain.config import load_settings, plugin_sections
from brain.contracts import UserDeleted
from brain.deletions import purge_here
from brain.health import HEALTH
from brain.metrics import Metrics
from brain.plugins import hookimpl
from brain.errors import ConfigError
from brain.plugins.manager import PluginManager, load_plugins
from brain.runtime import Runtime
from tests.plugins import probe_plugin

USER = "probeuser0000000000000000000001"


def probed_runtime(tmp_path: Path) -> Runtime:
    settings = load_settings(environ={}, overrides={"server": {"data_dir": str(tmp_path / "data")}, "plugins": {"enabled": []}})
    pm = load_plugins(())
    pm.register(probe_plugin, name="probe")
    return Runtime(settings, plugin_manager=pm)


def test_listener_process_tree_routes_and_app(tmp_path: Path) -> None:
    rt = probed_runtime(tmp_path)
    assert rt.listeners["probe"].served and rt.serves("probe")
    assert rt.stash[probe_plugin.PROBE] == ["setup_process"]
    assert "probe" in [spec.id for spec in rt.child_specs()]
    assert rt.stash[probe_plugin.PROBE][-1] == "register_children"
    app = rt.make_app("probe")
    assert app[probe_plugin.SETUP_KEY] == "configured"
    assert [r.resource.canonical for r in app.router.routes() if r.method == "GET"] == ["/probe"]


def test_health_and_metrics(tmp_path: Path) -> None:
    rt = probed_runtime(tmp_path)
    health = rt.stash[HEALTH]
    assert health.sections()["probe"] == {"alive": True}
    assert "probe: always complaining" in health.problems()
    assert b"brain_probe 42.0" in generate_latest(Metrics(rt).registry)


def test_commands_and_backup_files() -> None:
    pm = load_plugins(())
    pm.register(probe_plugin, name="probe")
    parser = argparse.ArgumentParser()
    pm.hook.register_commands(cli=CommandLine(parser.add_subparsers(dest="subcommand")))
    assert parser.parse_args(["probe"]).command == "tests.plugins.probe_plugin:command"
    assert "probe.db" in [f.path for f in backup_files(pm)]


def test_check_data_adds_a_column_to_the_plugins_own_database(tmp_path: Path) -> None:
    pm = load_plugins(())
    pm.register(probe_plugin, name="probe")
    sqlite3.connect(tmp_path / "probe.db").close()
    (row,) = [r for r in check(tmp_path, pm) if r.path == "probe.db"]
    assert row.checks == {"integrity": "ok", "index": "ok", "probe": "looked at"} and not row.problems
    assert "probe.db" in table([row]) and "LOOKED AT" not in table([row])


def test_user_revoked_then_user_purge(tmp_path: Path) -> None:
    rt = probed_runtime(tmp_path)
    summary = purge_here(rt, UserDeleted(USER, 1, 2))
    assert rt.stash[probe_plugin.PROBE][-2:] == [f"user_revoked {USER} 2", f"user_purge {USER}"]
    assert summary["probe_rows_removed"] == 3


def test_a_plugins_send_auth_email_comes_before_the_built_in_sender(tmp_path: Path) -> None:
    sent: list[tuple[str, str]] = []

    class Mailer:
        @hookimpl
        def send_auth_email(self, to: str, subject: str, text: str, kind: str) -> bool:
            sent.append((to, kind))
            return True

    # Production without [smtp] host: the built-in sender would refuse (EmailNotConfigured).
    settings = load_settings(
        environ={},
        overrides={"server": {"data_dir": str(tmp_path / "data"), "mode": "production", "secret": "s" * 40}},
    )
    pm = load_plugins(())
    pm.register(Mailer(), name="mailer")
    Runtime(settings, plugin_manager=pm)
    assert pm.hook.send_auth_email(to="ada@example.com", subject="Reset", text="...", kind="password-reset") is True
    assert sent == [("ada@example.com", "password-reset")]


def test_a_plugin_owns_its_settings_section_and_its_original_names() -> None:
    pm = PluginManager()
    pm.register(probe_plugin, name="probe")
    found: list[object] = []
    pm.hook.register_settings(register=found.append)
    sections = [*plugin_sections(()), *found]
    assert load_settings(environ={}, sections=sections).probe.level == 1
    assert load_settings(environ={"PROBE_LEVEL": "3"}, sections=sections).probe.level == 3
    assert load_settings(environ={"BRAIN_PROBE__LEVEL": "4"}, sections=sections).probe.level == 4
    with pytest.raises(ConfigError, match="probe.level: at most 9"):
        load_settings(environ={"PROBE_LEVEL": "10"}, sections=sections)
    with pytest.raises(ConfigError, match="unknown settings section 'probe'"):
        load_settings(environ={"BRAIN_PROBE__LEVEL": "4"})  # not loaded: nobody owns [probe]

"""A plugin implementing every one of the core's wiring hooks, for tests/test_hooks.py.

Each implementation records that it ran (in the process's stash, under PROBE) and adds one small
thing of its own, so the test can see each hook reach the place it is documented to reach.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aiohttp import web
from prometheus_client.metrics_core import GaugeMetricFamily

from brain.actors.base import BrainActor, Link
from brain.actors.supervisor import ChildSpec
from brain.actors.tree import Child
from brain.backup import BackupFile
from brain.config import Section, Settings
from brain.errors import ConfigError
from brain.plugins import hookimpl
from brain.routes import Listener, Route
from brain.stash import StashKey
from brain.web import json_response

PROBE: StashKey[list[str]] = StashKey("tests.probe")
SETUP_KEY: web.AppKey[str] = web.AppKey("tests.probe.setup", str)


@dataclass(frozen=True)
class ProbeSettings:
    """[probe]."""

    level: int = 1


def _check(settings: Settings) -> None:
    if settings.probe.level > 9:
        raise ConfigError(f"probe.level: at most 9, got {settings.probe.level}")


@hookimpl
def register_settings(register: Any) -> None:
    register(Section("probe", ProbeSettings, env={"PROBE_LEVEL": "level"}, validate=_check))


class Probe(BrainActor):
    """The probe's actor: it only answers."""

    def __init__(self, *, link: Link | None = None) -> None:
        super().__init__(link=link)

    def ping(self) -> str:
        return "pong"


@hookimpl
def register_listeners(settings: Any, register: Any) -> None:
    register(Listener(name="probe", host="127.0.0.1", port=0, served=True, tls=False, documented=False))


@hookimpl
def setup_process(rt: Any) -> None:
    rt.stash.set(PROBE, ["setup_process"])


@hookimpl
def register_children(rt: Any, register: Any) -> None:
    rt.stash[PROBE].append("register_children")
    register(Child(ChildSpec(id="probe", start=lambda link: Probe.start(link=link))))


@hookimpl
def register_routes(rt: Any, listener: str, register: Any) -> None:
    if listener == "probe":

        async def probe(_request: web.Request) -> web.Response:
            return json_response({"probe": True})

        register(Route("GET", "/probe", probe))


@hookimpl
def setup_app(rt: Any, listener: str, app: web.Application) -> None:
    if listener == "probe":
        app[SETUP_KEY] = "configured"


@hookimpl
def register_health(rt: Any, register: Any) -> None:
    register("probe", figures=lambda: {"alive": True}, problems=lambda: ["probe: always complaining"])


@hookimpl
def register_metrics(rt: Any, register: Any) -> None:
    register("probe", lambda: [GaugeMetricFamily("brain_probe", "The probe's one figure.", value=42)])


@hookimpl
def register_commands(cli: Any) -> None:
    cli.runs(cli.subcommands.add_parser("probe", help="the probe's command"), "tests.plugins.probe_plugin:command")


def command(_args: Any) -> int:
    """`brain probe`."""
    return 0


@hookimpl
def register_backup(register: Any) -> None:
    register(BackupFile("probe.db", "probe"))


@hookimpl
def check_data(data_dir: Any, rows: Any) -> None:
    for row in rows:
        if row.kind == "probe":
            row.note("probe", "looked at")


@hookimpl
def user_revoked(rt: Any, user_id: str, tokens_valid_until: int) -> None:
    rt.stash[PROBE].append(f"user_revoked {user_id} {tokens_valid_until}")


@hookimpl
def user_purge(rt: Any, user_id: str) -> dict[str, int]:
    rt.stash[PROBE].append(f"user_purge {user_id}")
    return {"probe_rows_removed": 3}

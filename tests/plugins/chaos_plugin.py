"""Fault injection inside a running `brain serve` (tests only): crash actors on command.

Enabled as `chaos` through tests/plugins/chaos_dist's entry point. Its table:
`[plugins.chaos] control_dir = "chaos"` (relative to the server's working directory). A test
drops `<name>.json` files there, `{"crash": "UserStore", "count": 3}`; a daemon thread polls
the directory, crashes up to `count` live actors of that class and answers with
`<name>.done` (`{"crashed": n}`).

An actor is crashed the way a bug would crash it: a *tell* whose handler raises (here a call of
its `on_receive` without the message argument, a TypeError in the actor's own thread). Pykka
then runs `on_failure` and brain's `BrainActor` reports the exit to its supervisor as an error,
so everything after that is brain's real supervision at work.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import pykka

from brain.config import check_plugin_table
from brain.plugins import hookimpl

POLL_SECONDS = 0.02
_started = threading.Event()


@hookimpl
def brain_startup(settings: Any, plugin_settings: Any) -> None:
    table = plugin_settings.get("chaos", {})
    check_plugin_table("chaos", table, frozenset({"control_dir"}))
    if _started.is_set():
        return
    _started.set()
    control = Path(table.get("control_dir", "chaos"))
    control.mkdir(parents=True, exist_ok=True)
    threading.Thread(target=_watch, args=(control,), name="chaos", daemon=True).start()


def crash(class_name: str, count: int) -> int:
    """Crash up to count live actors of class_name; how many were told to crash."""
    crashed = 0
    for ref in pykka.ActorRegistry.get_by_class_name(class_name)[:count]:
        try:
            ref.proxy().on_receive.defer()  # TypeError in the actor's thread: a crash
            crashed += 1
        except pykka.ActorDeadError:
            continue
    return crashed


def _watch(control: Path) -> None:
    while True:
        for command in sorted(control.glob("*.json")):
            try:
                order = json.loads(command.read_text())
            except (OSError, ValueError):
                continue  # still being written
            crashed = crash(str(order["crash"]), int(order.get("count", 1)))
            done = command.with_suffix(".done")
            tmp = done.with_suffix(".tmp")
            tmp.write_text(json.dumps({"crashed": crashed}))
            os.replace(tmp, done)
            command.unlink()
        time.sleep(POLL_SECONDS)

"""The console's settings: [console] (declared through `register_settings`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from brain.config import Section, Settings
from brain.plugins import hookimpl


@dataclass(frozen=True)
class ConsoleSettings:
    """Whether the API role serves the console at /console/."""

    # "dev": only in dev mode (server.mode); "always"; "never".
    serve: Literal["dev", "always", "never"] = "dev"


def served(settings: Settings) -> bool:
    """Whether this configuration serves the console."""
    choice = settings.console.serve
    return choice == "always" or (choice == "dev" and settings.server.mode == "dev")


@hookimpl
def register_settings(register: Callable[[Section], None]) -> None:
    """[console]."""
    register(Section("console", ConsoleSettings))

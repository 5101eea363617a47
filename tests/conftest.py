"""Shared fixtures: a running brain server process per test (or per module)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import BrainServer


@pytest.fixture
def brain_server(tmp_path: Path) -> Iterator[BrainServer]:
    """A started brain (both roles, embedded NATS) in a fresh data dir; stopped afterwards."""
    server = BrainServer(tmp_path / "brain")
    with server:
        yield server


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator[type]:
    """Factory for servers a test configures itself; all are stopped afterwards."""
    made: list[BrainServer] = []

    def factory(name: str = "brain", **kwargs: object) -> BrainServer:
        server = BrainServer(tmp_path / name, **kwargs)  # type: ignore[arg-type]
        made.append(server)
        return server

    try:
        yield factory  # type: ignore[misc]
    finally:
        for server in made:
            server.close()

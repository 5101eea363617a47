"""brain's pytest plugin (entry point `pytest11: brain`): fixtures for testing mail providers."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from brain.testing.fakes import loopback_only as _loopback_only


@pytest.fixture
def loopback_only() -> Iterator[None]:
    """Fail the test if it opened a connection to anything but 127.0.0.1 (fakes only)."""
    with _loopback_only() as refused:
        yield
    assert refused == [], f"connections outside loopback: {refused}"

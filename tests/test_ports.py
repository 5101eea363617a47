"""brain.testing.free_port: ports no other process is handed before a test's server binds them."""

from __future__ import annotations

import socket

import pytest

from brain.testing.ports import _PortCounter, _ephemeral_start


def test_xdist_workers_count_through_disjoint_blocks_below_the_ephemeral_range(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "4")
    taken: list[set[int]] = []
    for worker in range(4):
        monkeypatch.setenv("PYTEST_XDIST_WORKER", f"gw{worker}")
        counter = _PortCounter()
        taken.append({counter.take() for _ in range(50)})
    assert all(len(ports) == 50 for ports in taken)
    assert len(set().union(*taken)) == 200  # no port given to two workers
    assert max(set().union(*taken)) < _ephemeral_start()  # none the kernel hands out itself


def test_a_port_something_holds_is_passed_over() -> None:
    first = _PortCounter().take()
    counter = _PortCounter(range(first, first + 3), 0)
    with socket.socket() as held:
        held.bind(("127.0.0.1", first + 1))
        held.listen()
        assert [counter.take(), counter.take(), counter.take()] == [first, first + 2, first]

"""Slow mail providers cannot starve the server: connects run on their own bounded pool, one
user has only a few in flight, and opening a user's store never waits behind them.

The "provider" is a local TCP listener that accepts IMAP connections and never says a word,
so each connect hangs until the IMAP timeout, as a black-holed or malicious server would make
it (loopback is allowed through the IMAP plugin's allowed_networks).
"""

from __future__ import annotations

import concurrent.futures
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.support import BrainServer, free_port, wait_until
from tests.test_auth_helpers import bearer, new_user

IMAP_TIMEOUT = 60  # seconds a hanging connect takes to fail: far beyond the bounds checked here
# The event loop's default executor (store activation's pool before issue 13) has this many threads.
DEFAULT_EXECUTOR_THREADS = min(32, (os.cpu_count() or 1) + 4)


class SilentServer:
    """Accepts TCP connections on loopback and never answers; `close()` ends them all."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0), backlog=128)
        self.port = self.sock.getsockname()[1]
        self.accepted: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted.append(conn)

    def close(self) -> None:
        # shutdown() wakes the accept() blocked in the thread (close() alone does not, on Linux);
        # connections still in the backlog are reset by close().
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # already closed
        self._thread.join(timeout=5)
        self.sock.close()
        for conn in self.accepted:
            conn.close()


@pytest.fixture
def silent() -> Iterator[SilentServer]:
    server = SilentServer()
    try:
        yield server
    finally:
        server.close()


def start_brain(tmp_path: Path, **mail: Any) -> BrainServer:
    env = {
        "BRAIN_PLUGINS__ENABLED": "imap",
        "BRAIN_PLUGINS__IMAP__TIMEOUT": str(IMAP_TIMEOUT),
        "BRAIN_PLUGINS__IMAP__ALLOWED_NETWORKS": "127.0.0.0/8",
    }
    return BrainServer(tmp_path / "brain", env=env, config={"mail": mail} if mail else None).start()


def imap_connect(server: BrainServer, jwt: str, port: int) -> requests.Response:
    body = {"provider": "imap", "host": "127.0.0.1", "port": port, "tls": "plain", "username": "u", "password": "p"}
    return requests.post(f"{server.api_url}/mail/connect", json=body, headers=bearer(jwt), timeout=IMAP_TIMEOUT * 10)


def test_hanging_mail_connects_do_not_starve_a_new_users_first_write(tmp_path: Path, silent: SilentServer) -> None:
    """More hanging connects than the default executor has threads; a new store still opens at once."""
    server = start_brain(tmp_path)
    pool = concurrent.futures.ThreadPoolExecutor(DEFAULT_EXECUTOR_THREADS + 2)
    try:
        newcomer = new_user(server)  # signed up, but its store is not open yet
        senders = [new_user(server) for _ in range(DEFAULT_EXECUTOR_THREADS + 2)]  # one connect each
        connects = [pool.submit(imap_connect, server, user["jwt"], silent.port) for user in senders]
        wait_until(lambda: len(silent.accepted) >= 2, timeout=20, what="connects to hang at the silent server")
        time.sleep(1)  # the rest reach their pool

        started = time.monotonic()
        r = requests.post(
            f"{server.api_url}/events", json={"type": "note.created", "data": 1}, headers=bearer(newcomer["jwt"]),
            timeout=IMAP_TIMEOUT * 2,
        )
        took = time.monotonic() - started
        assert r.status_code == 201, r.text
        # Normally a fraction of a second; behind the hanging connects it was IMAP_TIMEOUT.
        assert took < IMAP_TIMEOUT / 6, f"the first POST /events of a new user took {took:.1f} s"
        assert not any(f.done() for f in connects), "the connects were meant to still hang"

        silent.close()  # the hanging connects now fail fast: the provider went away
        for f in connects:
            assert f.result().status_code == 502, f.result().text
    finally:
        silent.close()
        pool.shutdown(wait=True)
        server.close()


def test_one_user_has_at_most_connects_per_user_in_flight(tmp_path: Path, silent: SilentServer) -> None:
    server = start_brain(tmp_path)  # [mail] connects_per_user = 2, the default
    pool = concurrent.futures.ThreadPoolExecutor(2)
    try:
        user, other = new_user(server), new_user(server)
        hanging = [pool.submit(imap_connect, server, user["jwt"], silent.port) for _ in range(2)]
        wait_until(lambda: len(silent.accepted) >= 2, timeout=20, what="two connects to hang")

        r = imap_connect(server, user["jwt"], silent.port)
        assert r.status_code == 429, r.text
        assert r.json()["code"] == "TOO_MANY_CONNECTS" and "at most 2 at a time" in r.json()["message"]
        assert int(r.headers["Retry-After"]) >= 1
        assert len(silent.accepted) == 2  # refused before it reached the provider
        # Another user's connect is not held up by this user's (nothing listens there: a quick 502).
        r = imap_connect(server, other["jwt"], free_port())
        assert r.status_code == 502 and r.json()["code"] == "PROVIDER_UNAVAILABLE", r.text

        silent.close()
        assert [f.result().status_code for f in hanging] == [502, 502]
        # The slots were given back.
        assert imap_connect(server, user["jwt"], free_port()).status_code == 502
    finally:
        silent.close()
        pool.shutdown(wait=True)
        server.close()

"""Password hashing at the production parameters: argon2id at OWASP's minimum, and sign-in that
costs the same for an unknown email as for a wrong password (the dummy-hash path runs)."""

from __future__ import annotations

import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from argon2 import PasswordHasher

from tests.support import BrainServer
from tests.test_auth_helpers import PASSWORD, module_server, new_user, sign_in, unique_email  # noqa: F401

# The production parameters (BrainServer otherwise uses fast ones).
AUTH_CONFIG = {"argon2_memory_kib": 19_456, "argon2_time_cost": 2, "argon2_parallelism": 1}


@pytest.fixture
def server(module_server: BrainServer) -> BrainServer:  # noqa: F811
    return module_server


def argon2_seconds() -> float:
    """How long one verify takes here at the production parameters (best of three)."""
    hasher = PasswordHasher(memory_cost=19_456, time_cost=2, parallelism=1)
    stored = hasher.hash(PASSWORD)
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        hasher.verify(stored, PASSWORD)
        best = min(best, time.perf_counter() - started)
    return best


def timed_sign_in(server: BrainServer, email: str, password: str) -> tuple[float, int, bytes]:
    started = time.perf_counter()
    r = sign_in(server, email, password)
    return time.perf_counter() - started, r.status_code, r.content


def test_hash_is_argon2id_at_owasp_minimum(server: BrainServer) -> None:
    body = new_user(server)
    db = sqlite3.connect(f"file:{server.data_dir / 'auth.db'}?mode=ro", uri=True)
    try:
        (stored,) = db.execute("SELECT password_hash FROM user WHERE id = ?", (body["user"]["id"],)).fetchone()
    finally:
        db.close()
    assert stored.startswith("$argon2id$v=19$m=19456,t=2,p=1$")


def test_unknown_email_costs_a_verify_like_a_wrong_password(server: BrainServer) -> None:
    email = unique_email("timing")
    new_user(server, email)
    floor = argon2_seconds() * 0.5  # generous: the machine is shared
    wrong = [timed_sign_in(server, email, f"wrong password {i}") for i in range(3)]
    unknown = [timed_sign_in(server, unique_email("ghost"), f"wrong password {i}") for i in range(3)]
    assert {(status, body) for _, status, body in wrong} == {(status, body) for _, status, body in unknown}
    assert all(status == 401 for _, status, _ in wrong + unknown)
    # Both paths run a full argon2 verify; skipping it for unknown emails would take ~1 ms.
    assert min(t for t, _, _ in unknown) >= floor, (unknown, floor)
    assert min(t for t, _, _ in wrong) >= floor, (wrong, floor)


def test_concurrent_sign_ins_all_complete(server: BrainServer) -> None:
    email = unique_email("burst")
    new_user(server, email)
    with ThreadPoolExecutor(max_workers=16) as pool:
        statuses = list(pool.map(lambda _: sign_in(server, email).status_code, range(16)))
    assert statuses == [200] * 16

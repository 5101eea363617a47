"""Rate limits on sign-up/sign-in: per client IP (trusted-proxy aware) and per-account failures."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.support import BrainServer
from tests.test_auth_helpers import PASSWORD, bearer, module_server, new_user, sign_in, sign_up, unique_email  # noqa: F401

# The account-lockout tests share one server (each uses its own addresses); the IP tests need their own.
AUTH_CONFIG = {"rate_limit_account_failures": 3, "rate_limit_account_window_seconds": 120}
TOO_MANY = {"message": "Too many requests. Please try again later.", "code": "TOO_MANY_REQUESTS"}


@pytest.fixture
def server(module_server: BrainServer) -> BrainServer:  # noqa: F811
    return module_server


def assert_429(r: requests.Response, *, window: int) -> None:
    assert r.status_code == 429, r.text
    retry = int(r.headers["Retry-After"])
    assert 1 <= retry <= window
    assert r.headers["X-Retry-After"] == r.headers["Retry-After"]  # Better Auth's header


def test_default_ip_limit_allows_normal_use_then_429(make_server) -> None:  # type: ignore[no-untyped-def]
    server = make_server().start()  # default limits
    endpoint = f"{server.auth_url}/api/auth/sign-in/email"
    body = new_user(server)
    # An office behind one NAT address: 30 real sign-ins a minute must go through.
    for _ in range(29):
        assert sign_in(server, body["user"]["email"]).status_code == 200
    # Any request counts, bad ones too (60 per minute by default).
    for _ in range(30):
        assert requests.post(endpoint, data=b"{", headers={"Content-Type": "application/json"}, timeout=10).status_code == 400
    r = sign_in(server, body["user"]["email"])
    assert_429(r, window=60)
    assert r.json() == TOO_MANY
    assert sign_up(server).status_code == 429  # the same budget
    # Sessions keep working; only sign-up/sign-in are limited.
    assert requests.get(f"{server.auth_url}/api/auth/token", headers=bearer(body["token"]), timeout=10).status_code == 200


def test_forwarded_for_is_believed_only_from_trusted_proxies(make_server) -> None:  # type: ignore[no-untyped-def]
    limits = {"rate_limit_ip_per_minute": 3}
    proxied = make_server("proxied", config={"server": {"trusted_proxies": ["127.0.0.1"]}, "auth": limits}).start()
    direct = make_server("direct", config={"auth": limits}).start()

    def attempt(server: BrainServer, forwarded: str) -> requests.Response:
        return requests.post(
            f"{server.auth_url}/api/auth/sign-up/email",
            json={"name": "P", "email": unique_email("proxy"), "password": PASSWORD},
            headers={"X-Forwarded-For": forwarded},
            timeout=30,
        )

    # Behind a trusted proxy, each client address has its own budget...
    for _ in range(3):
        assert attempt(proxied, "198.51.100.7").status_code == 200
    assert_429(attempt(proxied, "198.51.100.7"), window=60)
    r = attempt(proxied, "203.0.113.9, 198.51.100.8")  # the rightmost untrusted hop is the client
    assert r.status_code == 200 and r.json()["session"]["ipAddress"] == "198.51.100.8"
    # ...while a direct client cannot escape its budget by inventing addresses.
    for i in range(3):
        r = attempt(direct, f"192.0.2.{i}")
        assert r.status_code == 200 and r.json()["session"]["ipAddress"] == "127.0.0.1"
    assert_429(attempt(direct, "192.0.2.99"), window=60)


def test_failed_sign_ins_lock_the_account_not_the_others(server: BrainServer) -> None:
    victim, bystander = unique_email("victim"), unique_email("bystander")
    new_user(server, victim)
    new_user(server, bystander)
    for _ in range(3):
        assert sign_in(server, victim, "guess guess guess").status_code == 401
    locked = sign_in(server, victim)  # even the right password waits
    assert_429(locked, window=120)
    assert locked.json()["code"] == "TOO_MANY_REQUESTS"
    assert sign_in(server, victim.upper()).status_code == 429  # same account, other spelling
    assert sign_in(server, bystander).status_code == 200
    # An unknown address is locked the same way: the lock does not reveal who exists.
    ghost = unique_email("ghost")
    for _ in range(3):
        assert sign_in(server, ghost, "guess guess guess").status_code == 401
    ghost_locked = sign_in(server, ghost, "guess guess guess")
    assert ghost_locked.status_code == 429 and ghost_locked.json() == locked.json()


def test_success_clears_failures(server: BrainServer) -> None:
    email = unique_email("clear")
    new_user(server, email)
    for _ in range(2):
        assert sign_in(server, email, "wrong password").status_code == 401
    assert sign_in(server, email).status_code == 200
    for _ in range(2):
        assert sign_in(server, email, "wrong password").status_code == 401
    assert sign_in(server, email).status_code == 200


def test_concurrent_guesses_cannot_outrun_the_lock(server: BrainServer) -> None:
    email = unique_email("burst")
    new_user(server, email)
    with ThreadPoolExecutor(max_workers=12) as pool:
        statuses = list(pool.map(lambda i: sign_in(server, email, f"guess number {i}").status_code, range(12)))
    assert statuses.count(401) == 3 and statuses.count(429) == 9


def test_ipv6_clients_share_one_budget_per_64(make_server) -> None:  # type: ignore[no-untyped-def]
    server = make_server(config={"server": {"trusted_proxies": ["127.0.0.1"]},
                                 "auth": {"rate_limit_ip_per_minute": 3}}).start()

    def attempt(forwarded: str) -> requests.Response:
        return requests.post(
            f"{server.auth_url}/api/auth/sign-up/email",
            json={"name": "Six", "email": unique_email("v6"), "password": PASSWORD},
            headers={"X-Forwarded-For": forwarded}, timeout=30,
        )

    # One host owns the whole /64: a fresh address per request is the same client.
    for host in ("2001:db8:1:2::1", "2001:db8:1:2::2", "2001:db8:1:2:aaaa::3"):
        assert attempt(host).status_code == 200
    assert_429(attempt("2001:db8:1:2:ffff:ffff:ffff:ffff"), window=60)
    assert attempt("2001:db8:1:3::1").status_code == 200  # the next /64 is someone else


def test_flooding_other_accounts_does_not_lift_a_lockout(make_server) -> None:  # type: ignore[no-untyped-def]
    server = make_server(config={"auth": {**AUTH_CONFIG, "rate_limit_ip_per_minute": 100_000,
                                          "rate_limit_max_keys": 40}}).start()
    victim = unique_email("locked")
    new_user(server, victim)
    for _ in range(3):
        assert sign_in(server, victim, "guess guess guess").status_code == 401
    assert_429(sign_in(server, victim), window=120)
    # The attacker fills the limiter with five times as many other accounts as it remembers,
    # hoping the victim's failures are forgotten.
    with ThreadPoolExecutor(max_workers=4) as pool:
        statuses = set(pool.map(lambda i: sign_in(server, f"flood-{i}-{victim}", "guess guess guess").status_code,
                                range(200)))
    assert statuses == {401}
    assert_429(sign_in(server, victim), window=120)  # still locked, even with the right password

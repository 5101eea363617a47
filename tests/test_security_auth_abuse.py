"""Auth abuse: credential stuffing across accounts and client addresses, account enumeration,
sign-out, and what the key endpoints may ever show.

The server trusts 127.0.0.1 as a proxy (`server.trusted_proxies`), so each request can claim
its own client address in `X-Forwarded-For`, as traffic through a real load balancer would.
"""

from __future__ import annotations

import json
import random
import time
from typing import Any

import requests

from tests.support import BrainServer, wait_until
from tests.test_auth_helpers import PASSWORD, bearer, brain_cli, new_user, sign_in, sign_up, unique_email
from tests.test_reliability_helpers import wait_api_ready

ACCOUNT_FAILURES = 3
IP_PER_MINUTE = 8
PRIVATE_JWK_MEMBERS = {"d", "p", "q", "dp", "dq", "qi", "oth", "k"}


def attempt(server: BrainServer, email: str, password: str, ip: str) -> requests.Response:
    return requests.post(
        f"{server.auth_url}/api/auth/sign-in/email", json={"email": email, "password": password},
        headers={"X-Forwarded-For": ip}, timeout=30,
    )


def shape(r: requests.Response) -> tuple[int, str, tuple[str, ...]]:
    """What a client can compare between two answers: status, body, header names."""
    names = tuple(sorted(h.lower() for h in r.headers if h.lower() not in ("date", "content-length")))
    return r.status_code, r.text, names


def test_credential_stuffing_across_accounts_and_addresses_is_limited(make_server) -> None:  # type: ignore[no-untyped-def]
    server: BrainServer = make_server(
        config={
            "server": {"trusted_proxies": ["127.0.0.1"]},
            "auth": {"rate_limit_ip_per_minute": IP_PER_MINUTE, "rate_limit_account_failures": ACCOUNT_FAILURES,
                     "rate_limit_account_window_seconds": 600},
        },
    ).start()
    rng = random.Random(7)
    victims = [unique_email("victim") for _ in range(4)]
    for i, email in enumerate(victims):
        r = requests.post(
            f"{server.auth_url}/api/auth/sign-up/email", json={"name": "V", "email": email, "password": PASSWORD},
            headers={"X-Forwarded-For": f"198.51.100.{i}"}, timeout=30,
        )
        assert r.status_code == 200, r.text
    ghosts = [unique_email("ghost") for _ in range(4)]
    fresh_ip = (f"203.0.113.{i}" for i in range(1, 250))

    # 1. A botnet: every guess from a new address. Each account still gets only
    #    ACCOUNT_FAILURES guesses, then it is locked, for the right password too.
    wordlist = [f"guess-{i:04d}-password" for i in range(12)] + [PASSWORD]
    for email in victims + ghosts:
        answers = [attempt(server, email, pw, next(fresh_ip)) for pw in wordlist]
        statuses = [r.status_code for r in answers]
        assert statuses == [401] * ACCOUNT_FAILURES + [429] * (len(wordlist) - ACCOUNT_FAILURES), (email, statuses)
        assert all(int(r.headers["Retry-After"]) >= 1 for r in answers[ACCOUNT_FAILURES:])
    # Known and unknown accounts answered alike at every step (no enumeration through the lock).
    first = [shape(attempt(server, e, "another-guess-1", next(fresh_ip))) for e in (victims[0], ghosts[0])]
    assert first[0] == first[1], first

    # 2. One address trying many accounts: the address runs out after IP_PER_MINUTE requests,
    #    whichever accounts (existing or not) it tries, and a sign-up counts the same.
    ip = "192.0.2.77"
    others = [unique_email("spray") for _ in range(IP_PER_MINUTE + 4)]
    statuses = [attempt(server, rng.choice(others), "spray-password-1", ip).status_code for _ in range(IP_PER_MINUTE)]
    assert statuses == [401] * IP_PER_MINUTE, statuses
    r = attempt(server, rng.choice(others), "spray-password-1", ip)
    assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
    r = requests.post(
        f"{server.auth_url}/api/auth/sign-up/email", json={"name": "S", "email": unique_email(), "password": PASSWORD},
        headers={"X-Forwarded-For": ip}, timeout=30,
    )
    assert r.status_code == 429
    # Spoofing a different client through a hop we do not trust does not help: the rightmost
    # untrusted hop is the client.
    r = attempt(server, rng.choice(others), "spray-password-1", f"10.9.8.7, {ip}")
    assert r.status_code == 429

    # 3. After all of it, an untouched account of the same server signs in normally.
    bystander = unique_email("bystander")
    assert requests.post(
        f"{server.auth_url}/api/auth/sign-up/email", json={"name": "B", "email": bystander, "password": PASSWORD},
        headers={"X-Forwarded-For": "198.51.100.200"}, timeout=30,
    ).status_code == 200
    assert attempt(server, bystander, PASSWORD, "198.51.100.201").status_code == 200


def test_sign_in_does_not_reveal_which_emails_exist(make_server) -> None:  # type: ignore[no-untyped-def]
    server: BrainServer = make_server(config={"auth": {"rate_limit_ip_per_minute": 1000, "rate_limit_account_failures": 1000}}).start()
    known = unique_email("known")
    new_user(server, known)
    for password in ("wrong password 1", "", "x", "p" * 200):
        a, b = sign_in(server, known, password), sign_in(server, unique_email("nobody"), password)
        assert shape(a) == shape(b), (password, shape(a), shape(b))
    # Case and spacing variants of the known address answer like any unknown one does.
    for variant in (known.upper(), f" {known}", known.replace("@", "@@")):
        assert shape(sign_in(server, variant, "wrong password 1"))[0] in (400, 401)


def test_sign_up_with_verification_required_does_not_reveal_existing_emails(make_server) -> None:  # type: ignore[no-untyped-def]
    """Better Auth's generic duplicate answer: same status, same body shape, same hashing work."""
    production_argon2 = {"argon2_memory_kib": 19_456, "argon2_time_cost": 2}
    server: BrainServer = make_server(
        config={"auth": {"require_email_verification": True, "rate_limit_ip_per_minute": 1000, **production_argon2}},
    ).start()
    taken = unique_email("taken")
    assert sign_up(server, taken).status_code == 200

    def timed(email: str) -> tuple[float, requests.Response]:
        started = time.perf_counter()
        r = sign_up(server, email, password="another password 1", name="Someone")
        return time.perf_counter() - started, r

    existing = [timed(taken) for _ in range(3)]
    fresh = [timed(unique_email("fresh")) for _ in range(3)]
    for (_, a), (_, b) in zip(existing, fresh):
        assert a.status_code == b.status_code == 200, (a.text, b.text)
        ba, bb = a.json(), b.json()
        assert set(ba) == set(bb) and set(ba["user"]) == set(bb["user"])
        assert ba["token"] is bb["token"] is None and ba["session"] is bb["session"] is None
        assert ba["user"]["emailVerified"] is bb["user"]["emailVerified"] is False
        assert {k for k in a.headers if k.lower() != "date"} == {k for k in b.headers if k.lower() != "date"}
    # Both paths hash the password (argon2 at production cost): neither is a fast path.
    t_existing, t_fresh = min(t for t, _ in existing), min(t for t, _ in fresh)
    assert t_existing >= 0.4 * t_fresh, (t_existing, t_fresh)
    # The existing account was not touched: still the first password.
    assert sign_in(server, taken, "another password 1").status_code == 401
    assert sign_in(server, taken).status_code == 403  # right password, not verified yet


def test_sign_out_revokes_the_session_and_its_jwt_source(make_server) -> None:  # type: ignore[no-untyped-def]
    server: BrainServer = make_server(
        config={"auth": {"jwt_ttl_seconds": 3, "rate_limit_ip_per_minute": 1000}, "api": {"leeway_seconds": 1}},
    ).start()
    wait_api_ready(server)
    body = new_user(server)
    other = sign_in(server, body["user"]["email"]).json()
    jwt = requests.get(f"{server.auth_url}/api/auth/token", headers=bearer(body["token"]), timeout=10).json()["token"]
    assert requests.get(f"{server.api_url}/me", headers=bearer(jwt), timeout=10).status_code == 200
    r = requests.post(f"{server.auth_url}/api/auth/sign-out", headers=bearer(body["token"]), timeout=10)
    assert r.status_code == 200
    # The session is dead everywhere it could be used, at once.
    assert requests.get(f"{server.auth_url}/api/auth/get-session", headers=bearer(body["token"]), timeout=10).content == b"null"
    assert requests.get(f"{server.auth_url}/api/auth/token", headers=bearer(body["token"]), timeout=10).status_code == 401
    # A JWT is a bearer credential until its exp (here 3 s, plus 1 s leeway): after that nothing of the session
    # can reach the API, while the user's other session keeps working.
    wait_until(lambda: requests.get(f"{server.api_url}/me", headers=bearer(jwt), timeout=10).status_code == 401, timeout=15)
    assert requests.get(f"{server.auth_url}/api/auth/token", headers=bearer(other["token"]), timeout=10).status_code == 200


def leaks_private_material(document: Any) -> list[str]:
    """Private JWK members or PEM private keys anywhere inside a JSON document."""
    found: list[str] = []

    def walk(node: Any, where: str) -> None:
        if isinstance(node, dict):
            if "kty" in node and PRIVATE_JWK_MEMBERS & set(node):
                found.append(f"{where}: private members {sorted(PRIVATE_JWK_MEMBERS & set(node))}")
            for key, value in node.items():
                walk(value, f"{where}.{key}")
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, f"{where}[{i}]")
        elif isinstance(node, str) and "PRIVATE KEY" in node:
            found.append(f"{where}: a PEM private key")

    walk(document, "$")
    return found


def test_no_endpoint_ever_shows_a_private_key(make_server) -> None:  # type: ignore[no-untyped-def]
    server: BrainServer = make_server(config={"auth": {"rate_limit_ip_per_minute": 1000, "key_poll_seconds": 0.3}}).start()
    wait_api_ready(server)
    user = new_user(server)

    def public_documents() -> dict[str, Any]:
        docs = {}
        for base, path, headers in (
            (server.auth_url, "/api/auth/jwks", {}),
            (server.auth_url, "/.well-known/openid-configuration", {}),
            (server.auth_url, "/api/auth/get-session", bearer(user["token"])),
            (server.api_url, "/health", {}),
            (server.api_url, "/openapi.json", {}),
            (server.api_url, "/me", bearer(user["jwt"])),
        ):
            r = requests.get(base + path, headers=headers, timeout=10)
            assert r.status_code == 200, (path, r.text)
            docs[path] = r.json()
        return docs

    for round_ in range(3):  # as created, after a rotation, after a restart
        docs = public_documents()
        problems = [p for path, doc in docs.items() for p in leaks_private_material(doc)]
        assert not problems, problems
        keys = docs["/api/auth/jwks"]["keys"]
        assert keys and all(set(k) == {"kty", "n", "e", "kid", "alg", "use"} for k in keys), keys
        assert "PRIVATE" not in json.dumps(docs) and "secret" not in json.dumps(docs["/api/auth/jwks"]).lower()
        if round_ == 0:
            out = brain_cli(server, "keys", "rotate", "--now")
            assert out.returncode == 0, out.stderr
            wait_until(lambda: len(requests.get(f"{server.auth_url}/api/auth/jwks", timeout=10).json()["keys"]) >= 2, timeout=20)
        elif round_ == 1:
            assert server.stop() == 0
            server.start()
            wait_api_ready(server)

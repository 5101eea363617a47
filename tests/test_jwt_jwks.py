"""The JWKS cache against real issuers: start-up without keys, outages, rotation, floods, bad keys.

The API role runs as its own `brain serve --roles api` process and fetches keys over HTTP,
either from a fake foreign issuer in this process (tests/fakes/issuer.py) or from a real
`brain serve --roles auth` process.
"""

from __future__ import annotations

import secrets
import time
from pathlib import Path
from typing import Any

import requests
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from tests.fakes.issuer import FakeIssuer
from tests.support import BrainServer, free_port, wait_until
from tests.test_jwt import api_server, assert_refused, health, me


def jwks_stats(server: BrainServer) -> dict[str, Any]:
    return health(server)["jwks"]


def test_api_answers_503_until_the_keys_are_loaded(tmp_path: Path) -> None:
    port = free_port()
    issuer = FakeIssuer(port=port)  # not started yet: the API starts without keys
    server = BrainServer(
        tmp_path / "api", roles="api", env={"AUTH_SERVER_URL": f"http://127.0.0.1:{port}"},
        config={"api": {"issuer": issuer.issuer}},
    ).start()
    try:
        assert jwks_stats(server)["loaded"] is False
        r = me(server, issuer.token("alice"))
        assert r.status_code == 503 and int(r.headers["Retry-After"]) >= 1, r.text
        assert requests.get(f"{server.api_url}/events", timeout=5).status_code == 401  # no token: still 401
        issuer.start()
        try:
            wait_until(lambda: jwks_stats(server)["loaded"], timeout=15, what="keys after the issuer came up")
            assert me(server, issuer.token("alice")).status_code == 200
            stats = jwks_stats(server)
            assert stats["failures"] >= 1 and stats["keys"] == 1 and stats["last_error"] is None
        finally:
            issuer.stop()
    finally:
        server.close()


def test_real_issuer_stopped_valid_tokens_still_accepted(make_server) -> None:  # type: ignore[no-untyped-def]
    auth_port, api_port = free_port(), free_port()
    auth = make_server("auth", roles="auth", auth_port=auth_port, api_port=api_port).start()
    api = make_server(
        "api", roles="api", auth_port=auth_port, api_port=api_port,
        env={"AUTH_SERVER_URL": auth.auth_url}, config={"api": {"jwks_refresh_seconds": 0.5}},
    ).start()
    first = requests.post(
        f"{auth.auth_url}/api/auth/sign-up/email",
        json={"name": "A", "email": "a@example.com", "password": "password1234"}, timeout=30,
    ).json()
    second = requests.post(
        f"{auth.auth_url}/api/auth/sign-up/email",
        json={"name": "B", "email": "b@example.com", "password": "password1234"}, timeout=30,
    ).json()
    wait_until(lambda: jwks_stats(api)["loaded"], timeout=15, what="keys from the auth role")
    assert me(api, first["jwt"]).json()["id"] == first["user"]["id"]

    assert auth.stop() == 0
    wait_until(lambda: jwks_stats(api)["failures"] >= 2, timeout=15, what="refreshes failing")
    stats = jwks_stats(api)
    assert stats["stale"] is True and stats["loaded"] is True and stats["keys"] >= 1
    assert stats["last_error"]
    # A cached token and one never seen before (a real signature check against kept keys).
    assert me(api, first["jwt"]).status_code == 200
    r = me(api, second["jwt"])
    assert r.status_code == 200 and r.json()["id"] == second["user"]["id"]

    auth.start()
    wait_until(lambda: not jwks_stats(api)["stale"], timeout=15, what="fresh keys after the issuer returned")


def test_rotation_new_kid_is_accepted_after_one_refetch(tmp_path: Path) -> None:
    with FakeIssuer() as issuer:
        server = api_server(tmp_path / "api", issuer)
        try:
            old = issuer.token("alice")
            assert me(server, old).status_code == 200
            fetches = issuer.jwks_fetches
            new_kid = issuer.rotate()
            new = issuer.token("alice")
            # The first request with the unknown kid is refused at once (nobody waits for the
            # issuer) and asks for one refetch.
            assert_refused(me(server, new), "unknown key id")
            wait_until(lambda: new_kid in jwks_stats(server)["kids"], timeout=10, what="the rotated key")
            assert me(server, new).status_code == 200
            assert me(server, old).status_code == 200  # the old key is still published
            stats = jwks_stats(server)
            assert stats["refetches"] == 1 and issuer.jwks_fetches == fetches + 1
        finally:
            server.close()


def test_random_kid_flood_causes_one_fetch(tmp_path: Path) -> None:
    with FakeIssuer() as issuer:
        server = api_server(tmp_path / "api", issuer)
        try:
            before = issuer.jwks_fetches
            session = requests.Session()
            for _ in range(150):
                token = issuer.token("alice", headers={"kid": secrets.token_urlsafe(12)})
                r = session.get(f"{server.api_url}/me", headers={"Authorization": f"Bearer {token}"}, timeout=10)
                assert r.status_code == 401
            time.sleep(0.5)  # let a (wrongly) queued second fetch happen before counting
            assert issuer.jwks_fetches == before + 1
            stats = jwks_stats(server)
            assert stats["refetches"] == 1 and stats["misses"] == 150
            assert me(server, issuer.token("alice")).status_code == 200
        finally:
            server.close()


def test_malformed_keys_are_skipped_not_fatal(tmp_path: Path) -> None:
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    with FakeIssuer() as issuer:
        issuer.extra_jwks = [
            {"kty": "RSA", "kid": "garbled", "n": "!!!", "e": "AQAB"},
            {"kty": "oct", "kid": "symmetric", "k": "c2VjcmV0"},
            "not an object",
            {**RSAAlgorithm.to_jwk(weak.public_key(), as_dict=True), "kid": "weak"},
            {"kty": "EC", "kid": "bad-curve", "crv": "P-999", "x": "AA", "y": "AA"},
            {"kty": "RSA", "n": "AQAB", "e": "AQAB"},  # no kid
            {**issuer.jwks()["keys"][0], "use": "enc", "kid": "encryption"},
            {**issuer.jwks()["keys"][0]},  # duplicate kid
        ]
        server = api_server(tmp_path / "api", issuer)
        try:
            stats = jwks_stats(server)
            assert stats["keys"] == 1 and stats["kids"] == [issuer.current_kid]
            assert len(stats["skipped_keys"]) == 8, stats["skipped_keys"]
            assert me(server, issuer.token("alice")).status_code == 200
            assert_refused(me(server, issuer.token("alice", headers={"kid": "symmetric"})), "unknown key id")
        finally:
            server.close()


def test_keys_dropped_from_the_jwks_stop_their_tokens_even_cached(tmp_path: Path) -> None:
    with FakeIssuer() as issuer:
        server = api_server(tmp_path / "api", issuer, jwks_refresh_seconds=0.5)
        try:
            old_kid = issuer.current_kid
            token = issuer.token("alice")
            assert me(server, token).status_code == 200  # now cached
            issuer.rotate()
            issuer.remove_key(old_kid)
            wait_until(lambda: old_kid not in jwks_stats(server)["kids"], timeout=10, what="the refresh")
            assert_refused(me(server, token), "unknown key id")
            assert me(server, issuer.token("alice")).status_code == 200
        finally:
            server.close()


def test_empty_or_garbage_jwks_keeps_the_last_good_keys(tmp_path: Path) -> None:
    with FakeIssuer() as issuer:
        server = api_server(tmp_path / "api", issuer, jwks_refresh_seconds=0.5)
        try:
            for document in (b'{"keys": []}', b"<html>oops</html>", b'{"keys": "nope"}'):
                issuer.raw_document = document
                failures = jwks_stats(server)["failures"]
                wait_until(lambda: jwks_stats(server)["failures"] > failures, timeout=10, what="a failed refresh")
                assert jwks_stats(server)["keys"] == 1
                assert me(server, issuer.token("alice")).status_code == 200
            issuer.fail_next(3, status=500, path_prefix="/api/auth/jwks")
            issuer.raw_document = None
            wait_until(lambda: not jwks_stats(server)["stale"], timeout=15, what="recovery")
        finally:
            server.close()


def test_staleness_cap_then_recovery_when_the_issuer_returns(tmp_path: Path) -> None:
    port = free_port()
    issuer = FakeIssuer(port=port).start()
    server = api_server(
        tmp_path / "api", issuer, jwks_refresh_seconds=0.3, jwks_max_staleness_seconds=1.5
    )
    try:
        token = issuer.token("alice")
        assert me(server, token).status_code == 200
        issuer.stop()
        # Past the cap the keys are no longer trusted: 503 (a server-side problem), not 401.
        wait_until(lambda: me(server, token).status_code == 503, timeout=10, what="keys expiring")
        assert jwks_stats(server)["expired"] is True
        issuer.start()
        wait_until(lambda: me(server, token).status_code == 200, timeout=15, what="keys after the issuer returned")
        assert jwks_stats(server)["expired"] is False
    finally:
        server.close()
        issuer.stop()

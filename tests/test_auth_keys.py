"""The key ring across restarts and rotations: sessions and JWTs survive, keys publish before signing."""

from __future__ import annotations

import json

import requests

from tests.support import BrainServer, wait_until
from tests.test_auth_helpers import NO_LIMITS, bearer, brain_cli, jwks, new_user, sign_in, token_kid, verify_jwt

FAST_POLL = {**NO_LIMITS, "key_poll_seconds": 0.2}


def fresh_jwt(server: BrainServer, session_token: str) -> str:
    r = requests.get(f"{server.auth_url}/api/auth/token", headers=bearer(session_token), timeout=10)
    assert r.status_code == 200, r.text
    return r.json()["token"]


def kids(server: BrainServer) -> list[str]:
    return [k["kid"] for k in jwks(server)["keys"]]


def test_restart_keeps_sessions_jwts_and_keys_and_picks_up_offline_rotation(make_server) -> None:  # type: ignore[no-untyped-def]
    server = make_server(config={"auth": FAST_POLL}).start()
    body = new_user(server)
    before = kids(server)
    assert server.stop() == 0
    server.start()
    assert kids(server) == before
    # The old JWT still verifies against the restarted server's JWKS, and the session lives on.
    assert verify_jwt(server, body["jwt"])["sub"] == body["user"]["id"]
    r = requests.get(f"{server.auth_url}/api/auth/get-session", headers=bearer(body["token"]), timeout=10)
    assert r.status_code == 200 and r.json()["user"]["id"] == body["user"]["id"]
    assert token_kid(fresh_jwt(server, body["token"])) == before[0]
    assert sign_in(server, body["user"]["email"]).status_code == 200

    # Rotate while stopped: the next start publishes both keys and signs with the new one.
    assert server.stop() == 0
    out = brain_cli(server, "keys", "rotate", "--now", "--json")
    assert out.returncode == 0, out.stderr
    new_kid = json.loads(out.stdout)["kid"]
    text = brain_cli(server, "keys", "list")
    assert text.returncode == 0 and new_kid in text.stdout and "current" in text.stdout
    server.start()
    assert set(kids(server)) == {before[0], new_kid}
    assert token_kid(fresh_jwt(server, body["token"])) == new_kid
    assert verify_jwt(server, body["jwt"])["sub"] == body["user"]["id"]


def test_rotation_while_running_publishes_before_signing(make_server) -> None:  # type: ignore[no-untyped-def]
    # Long enough for two `brain` CLI starts on a busy two-core machine to fit inside the delay.
    server = make_server(config={"auth": {**FAST_POLL, "key_publish_delay_seconds": 10.0}}).start()
    body = new_user(server)
    old_jwt = body["jwt"]
    (old_kid,) = kids(server)

    out = brain_cli(server, "keys", "rotate", "--json")
    assert out.returncode == 0, out.stderr
    new_kid = json.loads(out.stdout)["kid"]
    wait_until(lambda: new_kid in kids(server), timeout=10, what="the new key in the JWKS")
    # Published, but not yet signing: caches get a head start.
    assert token_kid(fresh_jwt(server, body["token"])) == old_kid
    listing = {k["kid"]: k["state"] for k in json.loads(brain_cli(server, "keys", "list", "--json").stdout)}
    assert listing == {old_kid: "current", new_kid: "pending"}

    wait_until(lambda: token_kid(fresh_jwt(server, body["token"])) == new_kid, timeout=25, what="signing with the new key")
    # The retired key stays published, so tokens it signed still verify.
    assert set(kids(server)) == {old_kid, new_kid}
    assert verify_jwt(server, old_jwt)["sub"] == body["user"]["id"]
    listing = {k["kid"]: k["state"] for k in json.loads(brain_cli(server, "keys", "list", "--json").stdout)}
    assert listing == {old_kid: "retired", new_kid: "current"}


def test_retired_keys_leave_the_jwks_after_the_keep_time(make_server) -> None:  # type: ignore[no-untyped-def]
    server = make_server(
        config={"auth": {**FAST_POLL, "jwt_ttl_seconds": 1, "retired_key_keep_seconds": 2}}
    ).start()
    (old_kid,) = kids(server)
    out = brain_cli(server, "keys", "rotate", "--now", "--json")
    new_kid = json.loads(out.stdout)["kid"]
    wait_until(lambda: set(kids(server)) == {old_kid, new_kid}, timeout=10, what="both keys published")
    wait_until(lambda: kids(server) == [new_kid], timeout=15, what="the retired key to be pruned")


def test_wrong_secret_is_refused_not_silently_rekeyed(make_server) -> None:  # type: ignore[no-untyped-def]
    server = make_server(config={"auth": NO_LIMITS}).start()
    assert server.stop() == 0
    out = brain_cli(server, "keys", "rotate", env={"BRAIN_SECRET": "x" * 40})
    assert out.returncode == 2
    assert "server.secret" in out.stderr and "does not open" in out.stderr
    server.env["BRAIN_SECRET"] = "y" * 40
    server.start(wait=False)
    wait_until(lambda: server.proc.poll() is not None, timeout=60, what="brain to give up")
    assert server.proc.returncode != 0
    assert "does not open with this server secret" in server.log_text(since_start=True)


def test_scheduled_rotation(make_server) -> None:  # type: ignore[no-untyped-def]
    # key_rotation_days is a float so a test can ask for "every 1.5 seconds".
    server = make_server(
        config={"auth": {**FAST_POLL, "key_rotation_days": 1.5 / 86400, "key_publish_delay_seconds": 0.5}}
    ).start()
    body = new_user(server)
    (first,) = kids(server)
    wait_until(lambda: len(kids(server)) >= 2, timeout=15, what="a scheduled rotation")
    wait_until(lambda: token_kid(fresh_jwt(server, body["token"])) != first, timeout=15, what="the rotated key to sign")
    assert first in kids(server)
    assert "scheduled key rotation" in server.log_text()

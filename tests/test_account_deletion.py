"""Account deletion end to end: `POST /api/auth/delete-user` and `brain users delete`.

Three users of one real server, each with events and a Gmail account synced from the local
fake Gmail. One is deleted over HTTP, one with the CLI while the server runs, one with the CLI
while it is stopped. Each time: the deleted user's JWT is refused at once (and after a
restart), their directory, sessions and mail rows are gone, and the others' data is intact.
A second test runs the roles as two processes: the API learns of the deletion over JetStream.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from brain.testing.fakes.gmail import FakeGmail
from tests.support import BrainServer, free_port, wait_until
from tests.test_auth_helpers import NO_LIMITS, PASSWORD, bearer, brain_cli, sign_in, sign_up, unique_email
from tests.test_mail_engine import gmail_settings

FRESH_AGE = 2


@pytest.fixture
def gmail() -> Iterator[FakeGmail]:
    yield from FakeGmail.running()


class Person:
    """A signed-up user with a session, a JWT, events and a synced Gmail account."""

    def __init__(self, server: BrainServer, gmail: FakeGmail, name: str) -> None:
        self.server = server
        self.email = unique_email(name)
        body = sign_up(server, self.email).json()
        self.id, self.session, self.jwt = body["user"]["id"], body["token"], body["jwt"]
        self.mailbox = f"{name}@gmail.example"
        gmail.populate(self.mailbox, 4, seed=hash(name) % 1000)
        for i in range(3):
            r = self.api("POST", "/events", json={"type": "note.created", "data": {"n": i, "who": name}})
            assert r.status_code == 201, r.text
        self.gmail = gmail
        self.refresh_token = gmail.issue_refresh_token(self.mailbox)
        r = self.api("POST", "/mail/connect", json={"provider": "gmail", "refresh_token": self.refresh_token})
        assert r.status_code == 201, r.text
        self.account = r.json()["account"]["account"]
        wait_until(lambda: len(self.events("mail.message.received")) == 4, timeout=30, what=f"{name}'s mail")

    def api(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        # Just after a start the API answers 503 until it has the issuer's keys.
        deadline = time.monotonic() + 15
        while True:
            r = requests.request(method, self.server.api_url + path, headers=bearer(self.jwt), timeout=30, **kwargs)
            if r.status_code != 503 or time.monotonic() > deadline:
                return r
            time.sleep(0.1)

    def events(self, type: str | None = None) -> list[dict[str, Any]]:  # noqa: A002
        r = self.api("GET", "/events", params={"limit": 1000, **({"type": type} if type else {})})
        assert r.status_code == 200, r.text
        return r.json()["events"]

    @property
    def directory(self) -> Any:
        return self.server.data_dir / "users" / self.id

    def assert_intact(self) -> None:
        assert self.api("GET", "/me").json()["id"] == self.id
        events = self.events()
        assert len([e for e in events if e["type"] == "note.created"]) == 3
        assert len([e for e in events if e["type"] == "mail.message.received"]) == 4
        assert [a["account"] for a in self.api("GET", "/mail/status").json()["accounts"]] == [self.account]
        assert (self.directory / "events.db").exists()
        assert mail_rows(self.server, self.id) == (1, 1, 4)

    def assert_gone(self) -> None:
        for method, path in (("GET", "/me"), ("GET", "/events"), ("POST", "/events"), ("GET", "/mail/status")):
            r = requests.request(method, self.server.api_url + path, headers=bearer(self.jwt), json={}, timeout=10)
            assert r.status_code == 401, (path, r.text)
            assert 'error="invalid_token"' in r.headers["WWW-Authenticate"]
        assert not self.directory.exists()
        assert not (self.server.data_dir / "outbox" / self.id).exists()
        assert mail_rows(self.server, self.id) == (0, 0, 0)
        # The Gmail grant was revoked at Google, not merely forgotten.
        form = {"grant_type": "refresh_token", "refresh_token": self.refresh_token,
                "client_id": self.gmail.client_id, "client_secret": self.gmail.client_secret}
        r = requests.post(self.gmail.token_uri, data=form, timeout=10)
        assert r.status_code == 400 and r.json()["error"] == "invalid_grant"
        r = requests.get(f"{self.server.auth_url}/api/auth/get-session", headers=bearer(self.session), timeout=10)
        assert r.status_code == 200 and r.json() is None
        assert sign_in(self.server, self.email).status_code == 401
        with sqlite3.connect(f"file:{self.server.data_dir / 'auth.db'}?mode=ro", uri=True) as db:
            assert db.execute("SELECT count(*) FROM user WHERE id = ?", (self.id,)).fetchone() == (0,)
            assert db.execute("SELECT count(*) FROM session WHERE user_id = ?", (self.id,)).fetchone() == (0,)


def mail_rows(server: BrainServer, user_id: str) -> tuple[int, int, int]:
    """(accounts, credentials, indexed messages) of a user in mail.db."""
    with sqlite3.connect(f"file:{server.data_dir / 'mail.db'}?mode=ro", uri=True) as db:
        ids = [row[0] for row in db.execute("SELECT id FROM accounts WHERE user_id = ?", (user_id,))]
        marks = ",".join("?" * len(ids)) or "''"
        creds = db.execute(f"SELECT count(*) FROM credentials WHERE account_id IN ({marks})", ids).fetchone()[0]
        messages = db.execute(f"SELECT count(*) FROM messages WHERE account_id IN ({marks})", ids).fetchone()[0]
    return len(ids), creds, messages


def delete_user(server: BrainServer, session: str, body: dict[str, Any] | None = None) -> requests.Response:
    return requests.post(f"{server.auth_url}/api/auth/delete-user", json=body or {}, headers=bearer(session), timeout=60)


def test_delete_over_http_and_with_the_cli(gmail: FakeGmail, make_server) -> None:  # type: ignore[no-untyped-def]
    server = make_server(
        config={
            "auth": {**NO_LIMITS, "session_fresh_age_seconds": FRESH_AGE},
            "mail": {"sync_interval_seconds": 0.5, "retry_base_seconds": 0.2},
            "plugins": {"gmail": gmail_settings(gmail, auth_uri=gmail.base_url + "/o/oauth2/auth")},
        }
    ).start()
    ann, bob, cat = (Person(server, gmail, name) for name in ("ann", "bob", "cat"))

    # --- over HTTP, in Better Auth's shape ---
    r = requests.post(f"{server.auth_url}/api/auth/delete-user", json={}, timeout=10)
    assert r.status_code == 401 and r.json() == {"message": "Unauthorized", "code": "UNAUTHORIZED"}
    time.sleep(FRESH_AGE + 0.2)
    r = delete_user(server, ann.session)
    assert r.status_code == 400
    assert r.json() == {"message": "Session expired. Re-authenticate to perform this action.", "code": "SESSION_EXPIRED"}
    r = delete_user(server, ann.session, {"password": "not the password"})
    assert r.status_code == 400 and r.json() == {"message": "Invalid password", "code": "INVALID_PASSWORD"}
    r = delete_user(server, ann.session, {"token": "abc"})
    assert r.status_code == 404 and r.json()["code"] == "INVALID_TOKEN"
    ann.assert_intact()
    r = delete_user(server, ann.session, {"password": PASSWORD})
    assert r.status_code == 200 and r.json() == {"success": True, "message": "User deleted"}
    assert "better-auth.session_token=;" in r.headers["Set-Cookie"]
    ann.assert_gone()  # the JWT is refused at once: no waiting for it to expire
    bob.assert_intact()
    cat.assert_intact()

    # --- with the CLI, while the server runs (it asks the server) ---
    out = brain_cli(server, "users", "delete", bob.email.upper(), "--json")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["mode"] == "server" and result["user"]["id"] == bob.id and result["mail_accounts_removed"] == 1
    bob.assert_gone()
    cat.assert_intact()
    out = brain_cli(server, "users", "delete", bob.id)
    assert out.returncode == 1 and "no user" in out.stderr

    # The address is free again, for a new account that starts empty.
    fresh = sign_up(server, ann.email).json()
    assert fresh["user"]["id"] != ann.id
    r = requests.post(server.api_url + "/events", json={"type": "note.created", "data": {}}, headers=bearer(fresh["jwt"]), timeout=10)
    assert r.status_code == 201
    r = requests.get(server.api_url + "/events", headers=bearer(fresh["jwt"]), timeout=10)
    assert [e["data"] for e in r.json()["events"]] == [{}]

    # A restart still refuses the deleted users' unexpired JWTs (the revoked set is on disk).
    assert server.stop() == 0
    server.start()
    for gone in (ann, bob):
        r = gone.api("GET", "/me")
        assert r.status_code == 401, r.text
    cat.assert_intact()

    # --- with the CLI, while no server runs (it edits the files itself) ---
    assert server.stop() == 0
    out = brain_cli(server, "users", "delete", cat.id)
    assert out.returncode == 0, out.stderr
    assert f"deleted user {cat.id}" in out.stdout and "no server running" in out.stdout
    assert not cat.directory.exists() and mail_rows(server, cat.id) == (0, 0, 0)
    server.start()
    # Ready is logged before the API's first JWKS fetch: until then every token is 503, not 401.
    wait_until(lambda: server.health()["jwks"]["loaded"], timeout=15, what="the API to load the signing keys")
    cat.assert_gone()
    # The deletion made offline was published when the server came back (nothing left pending).
    with sqlite3.connect(f"file:{server.data_dir / 'auth.db'}?mode=ro", uri=True) as db:
        wait_until(lambda: db.execute("SELECT count(*) FROM deleted_user WHERE NOT published").fetchone() == (0,),
                   timeout=15, what="pending deletions published")
        assert db.execute("SELECT count(*) FROM deleted_user").fetchone() == (3,)


def test_split_roles_learn_of_a_deletion_through_jetstream(make_server) -> None:  # type: ignore[no-untyped-def]
    auth_port, api_port, nats_port = free_port(), free_port(), free_port()
    secret = {"BRAIN_SECRET": "one-secret-for-every-role-" + "s" * 16}  # deletions are signed with it
    auth = make_server(
        "auth", roles="auth", auth_port=auth_port, api_port=api_port, env=secret,
        config={"auth": NO_LIMITS, "nats": {"embedded_port": nats_port}},
    ).start()
    # The API shares the auth role's embedded NATS, with the credential the auth role made for it.
    credential = json.loads((auth.data_dir / "nats" / "credentials").read_text())
    api = make_server(
        "api", roles="api", auth_port=auth_port, api_port=api_port,
        env={**secret, "AUTH_SERVER_URL": auth.auth_url, "NATS_URL": f"nats://127.0.0.1:{nats_port}",
             "NATS_USER": credential["user"], "NATS_PASSWORD": credential["password"]},
    ).start()
    body = sign_up(auth, unique_email("split")).json()
    user_id, headers = body["user"]["id"], bearer(body["jwt"])

    def post() -> requests.Response:
        return requests.post(api.api_url + "/events", json={"type": "note.created", "data": {}}, headers=headers, timeout=10)

    assert wait_until(lambda: post().status_code == 201, timeout=15, what="the API to accept the token")
    other = sign_up(auth, unique_email("split")).json()
    assert requests.post(api.api_url + "/events", json={"type": "x", "data": 1}, headers=bearer(other["jwt"]), timeout=10).status_code == 201
    assert (api.data_dir / "users" / user_id / "events.db").exists()

    r = delete_user(auth, body["token"])
    assert r.status_code == 200, r.text
    wait_until(lambda: post().status_code == 401, timeout=10, what="the API to refuse the deleted user's JWT")
    wait_until(lambda: not (api.data_dir / "users" / user_id).exists(), timeout=10, what="the user's directory to go")
    assert (api.data_dir / "users" / other["user"]["id"] / "events.db").exists()
    r = requests.get(api.api_url + "/events", headers=bearer(other["jwt"]), timeout=10)
    assert r.status_code == 200 and len(r.json()["events"]) == 1
    # The API's revoked set survives its restart.
    assert api.stop() == 0
    api.start()
    r = requests.get(api.api_url + "/me", headers=headers, timeout=10)
    deadline = time.monotonic() + 15
    while r.status_code == 503 and time.monotonic() < deadline:
        time.sleep(0.1)
        r = requests.get(api.api_url + "/me", headers=headers, timeout=10)
    assert r.status_code == 401

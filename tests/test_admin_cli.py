"""The admin commands as a subprocess against a data directory a real server populated:
`brain users list|delete`, `brain keys list|rotate`, `brain mail status`, human and --json."""

from __future__ import annotations

import json
import re
import sqlite3
import time
from collections.abc import Iterator

import pytest
import requests

from brain.mail.db import Account, MailDb
from brain.testing.fakes.gmail import FakeGmail
from tests.support import BrainServer, wait_until
from tests.test_auth_helpers import NO_LIMITS, bearer, brain_cli, new_user, sign_in, unique_email
from tests.test_mail_engine import gmail_settings
from tests.test_server import run_cli

ISO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


@pytest.fixture
def gmail() -> Iterator[FakeGmail]:
    yield from FakeGmail.running()


@pytest.mark.parametrize(
    "args, needles",
    [
        (("users", "--help"), ("list", "delete")),
        (("users", "list", "--help"), ("--json", "--data-dir", "--config")),
        (("users", "delete", "--help"), ("ID_OR_EMAIL", "--json", "control.sock")),
        (("keys", "--help"), ("list", "rotate")),
        (("keys", "list", "--help"), ("--json",)),
        (("keys", "rotate", "--help"), ("--json", "--now")),
        (("mail", "--help"), ("status",)),
        (("mail", "status", "--help"), ("--json", "--user")),
    ],
)
def test_every_admin_command_has_help(args: tuple[str, ...], needles: tuple[str, ...]) -> None:
    out = run_cli(*args)
    assert out.returncode == 0, out.stderr
    for needle in needles:
        assert needle in out.stdout, (args, needle)


def test_admin_commands_read_what_the_server_wrote(gmail: FakeGmail, make_server) -> None:  # type: ignore[no-untyped-def]
    server: BrainServer = make_server(
        config={
            "auth": NO_LIMITS,
            "mail": {"sync_interval_seconds": 0.5},
            "plugins": {"gmail": gmail_settings(gmail)},
        }
    ).start()
    ada = new_user(server, unique_email("ada"))
    assert sign_in(server, ada["user"]["email"]).status_code == 200  # a second session
    bea = new_user(server, unique_email("bea"))
    gmail.populate("ada@gmail.example", 3)
    r = requests.post(
        server.api_url + "/mail/connect",
        json={"provider": "gmail", "refresh_token": gmail.issue_refresh_token("ada@gmail.example")},
        headers=bearer(ada["jwt"]), timeout=30,
    )
    assert r.status_code == 201, r.text
    account = r.json()["account"]["account"]

    def synced() -> bool:
        status = requests.get(server.api_url + "/mail/status", headers=bearer(ada["jwt"]), timeout=10).json()
        return status["accounts"][0]["initial_sync"]["complete"]

    wait_until(synced, timeout=30, what="ada's initial sync")

    # users list
    out = brain_cli(server, "users", "list", "--json")
    assert out.returncode == 0, out.stderr
    users = {u["email"]: u for u in json.loads(out.stdout)}
    assert set(users) == {ada["user"]["email"], bea["user"]["email"]}
    assert users[ada["user"]["email"]]["sessions"] == 2 and users[bea["user"]["email"]]["sessions"] == 1
    assert users[ada["user"]["email"]]["id"] == ada["user"]["id"] and users[ada["user"]["email"]]["emailVerified"] is False
    assert ISO.fullmatch(users[bea["user"]["email"]]["createdAt"])
    out = brain_cli(server, "users", "list")
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["ID", "EMAIL", "NAME", "VERIFIED", "CREATED", "SESSIONS"]
    ada_line = next(line for line in lines if ada["user"]["id"] in line)
    assert ada["user"]["email"] in ada_line and ada_line.split()[-1] == "2" and " no " in ada_line

    # mail status
    out = brain_cli(server, "mail", "status", "--json")
    assert out.returncode == 0, out.stderr
    status = json.loads(out.stdout)
    [row] = status["accounts"]
    assert row["account"] == account and row["user"] == ada["user"]["id"] and row["provider"] == "gmail"
    assert row["address"] == "ada@gmail.example" and row["messages_synced"] == 3 and row["initial_sync"]["complete"]
    assert status["by_state"] == {row["state"]: 1}
    out = brain_cli(server, "mail", "status")
    assert account in out.stdout and "gmail" in out.stdout and "ada@gmail.example" in out.stdout
    # The account syncs every 0.5 s, so its state may have moved since the --json call: the
    # summary must agree with the row printed in the same output.
    [line] = [line for line in out.stdout.splitlines() if line.startswith(account)]
    assert f"by state: {line.split()[3]} 1" in out.stdout
    out = brain_cli(server, "mail", "status", "--user", bea["user"]["id"], "--json")
    assert json.loads(out.stdout) == {"accounts": [], "by_state": {}}
    out = brain_cli(server, "mail", "status", "--user", bea["user"]["id"])
    assert out.stdout.strip() == f"no mail accounts for user {bea['user']['id']}"

    # keys list | rotate
    out = brain_cli(server, "keys", "list", "--json")
    [key] = json.loads(out.stdout)
    assert key["state"] == "current"
    out = brain_cli(server, "keys", "rotate", "--json")
    assert out.returncode == 0, out.stderr
    kid = json.loads(out.stdout)["kid"]
    out = brain_cli(server, "keys", "list")
    assert kid in out.stdout and key["kid"] in out.stdout and "pending" in out.stdout

    # users delete (server running), human output
    out = brain_cli(server, "users", "delete", bea["user"]["email"])
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"deleted user {bea['user']['id']} <{bea['user']['email']}> by the running server")
    assert [u["email"] for u in json.loads(brain_cli(server, "users", "list", "--json").stdout)] == [ada["user"]["email"]]

    # The same reads with the server stopped.
    assert server.stop() == 0
    assert json.loads(brain_cli(server, "mail", "status", "--json").stdout)["accounts"][0]["account"] == account
    assert len(json.loads(brain_cli(server, "users", "list", "--json").stdout)) == 1


def test_users_commands_need_an_auth_database(tmp_path) -> None:  # type: ignore[no-untyped-def]
    for args in (("users", "list"), ("users", "delete", "someone@example.com")):
        out = run_cli(*args, "--data-dir", str(tmp_path / "empty"), cwd=tmp_path)
        assert out.returncode == 2
        assert "no auth database" in out.stderr and str(tmp_path / "empty") in out.stderr
    out = run_cli("mail", "status", "--json", "--data-dir", str(tmp_path / "empty"), cwd=tmp_path)
    assert out.returncode == 0 and json.loads(out.stdout) == {"accounts": [], "by_state": {}}


HOSTILE_NAME = "Mallory\x1b[2J\x1b]0;owned\x07\u202e"
HOSTILE_ERROR = "server said:\x1b[31m no\r\n2000-01-01T00:00:00 INFO    brain: forged"


def test_admin_commands_escape_what_users_and_providers_wrote(make_server) -> None:  # type: ignore[no-untyped-def]
    """Text written by users or mail servers (a name stored before sign-up refused control
    characters, an address, a provider's error) cannot drive the operator's terminal."""
    server: BrainServer = make_server(config={"auth": NO_LIMITS}).start()
    user = new_user(server, unique_email("mallory"))["user"]
    assert server.stop() == 0
    with sqlite3.connect(server.data_dir / "auth.db") as db:
        db.execute("UPDATE user SET name = ? WHERE id = ?", (HOSTILE_NAME, user["id"]))
        db.execute("UPDATE signing_key SET alg = alg || ?", ("\x1b[5m",))
    mail_db = MailDb(server.data_dir / "mail.db", b"s" * 32)  # the credentials are never read here
    try:
        with mail_db.unit():
            Account.create(id="acct-hostile", user_id=user["id"], provider="imap", address="eve\x1b[31m@mail.example",
                           state="error", last_error=HOSTILE_ERROR, last_error_at=time.time())
    finally:
        mail_db.close()

    printed = {
        args: brain_cli(server, *args) for args in (("users", "list"), ("mail", "status"), ("keys", "list"))
    }
    # JSON output stays exact (JSON escapes control characters itself).
    [listed] = json.loads(brain_cli(server, "users", "list", "--json").stdout)
    assert listed["name"] == HOSTILE_NAME
    printed["users", "delete"] = brain_cli(server, "users", "delete", user["id"])
    for args, out in printed.items():
        assert out.returncode == 0, (args, out.stderr)
        assert not re.search("[\x00-\x09\x0b-\x1f\x7f-\x9f\u202e]", out.stdout), (args, out.stdout)
    assert "Mallory\\x1b[2J\\x1b]" in printed["users", "list"].stdout
    status = printed["mail", "status"].stdout
    assert "eve\\x1b[31m@mail.example" in status
    assert "server said:\\x1b[31m no\\r\\n2000-01-01" in status
    assert not [line for line in status.splitlines() if line.startswith("2000-01-01")]
    assert "\\x1b[5m" in printed["keys", "list"].stdout
    assert printed["users", "delete"].stdout.startswith(f"deleted user {user['id']} <{user['email']}>")

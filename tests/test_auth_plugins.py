"""Auth plugin hooks, through a sample plugin installed as an entry point (tests/plugins/auth_sample_plugin.py)."""

from __future__ import annotations

import json
import os

import pytest
import requests

from tests.support import REPO, BrainServer, wait_until
from tests.test_auth_helpers import bearer, module_server, new_user, sign_up, unique_email, verify_jwt  # noqa: F401

SAMPLE_DIST = REPO / "tests" / "plugins" / "sample_dist"


# notify_file is relative to the server's working directory (its workdir).
EXTRA_CONFIG = {"plugins": {"authsample": {"notify_file": "signups.jsonl"}}}
SERVER_ENV = {
    "BRAIN_PLUGINS__ENABLED": "authsample",
    "PYTHONPATH": os.pathsep.join([str(SAMPLE_DIST), str(REPO)]),
}


@pytest.fixture
def server(module_server: BrainServer) -> BrainServer:  # noqa: F811
    return module_server


def test_plugin_is_loaded(server: BrainServer) -> None:
    # The built-in plugins (the SMTP sender, brain.auth.smtp, among them) are registered first,
    # like any plugin, and the enabled entry-point plugins after them.
    loaded = next(line for line in server.log_text().splitlines() if "plugins loaded: " in line)
    names = loaded.split("plugins loaded: ", 1)[1].split(", ")
    assert "builtin-smtp" in names and names[-1] == "authsample"


def test_validate_sign_up_can_veto(server: BrainServer) -> None:
    email = "someone@blocked.example"
    r = sign_up(server, email)
    assert r.status_code == 400
    assert r.json() == {"message": "sign-ups from blocked.example are closed", "code": "SIGN_UP_REFUSED"}
    r = sign_up(server, unique_email(), name="robot")
    assert r.status_code == 400 and r.json()["message"] == "no robots"
    # Nothing was written: the address cannot sign in, and no notification went out.
    r = requests.post(f"{server.auth_url}/api/auth/sign-in/email", json={"email": email, "password": "whatever1"}, timeout=10)
    assert r.status_code == 401
    notify = server.workdir / "signups.jsonl"
    assert not notify.exists() or email not in notify.read_text()


def test_jwt_claims_are_added_and_reserved_ones_refused(server: BrainServer) -> None:
    body = new_user(server, unique_email("claims").replace("@example.com", "@pro.example"))
    claims = verify_jwt(server, body["jwt"])
    assert claims["plan"] == "pro"
    assert claims["sub"] == body["user"]["id"]  # not "impostor"
    assert claims["iss"] == server.auth_url  # not "evil"
    r = requests.get(f"{server.auth_url}/api/auth/token", headers=bearer(body["token"]), timeout=10)
    assert verify_jwt(server, r.json()["token"])["plan"] == "pro"
    other = new_user(server)
    assert verify_jwt(server, other["jwt"])["plan"] == "free"
    log = server.log_text()
    assert "reserved claim 'sub'; refused" in log and "reserved claim 'iss'; refused" in log


def test_after_sign_up_is_told_once_committed(server: BrainServer) -> None:
    body = new_user(server)
    notify = server.workdir / "signups.jsonl"

    def notified() -> bool:
        return notify.exists() and any(
            json.loads(line) == {"id": body["user"]["id"], "email": body["user"]["email"]}
            for line in notify.read_text().splitlines()
        )

    wait_until(notified, timeout=10, what="the after_sign_up notification")

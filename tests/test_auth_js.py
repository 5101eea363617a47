"""Compatibility: Better Auth's own JS client (and jose) against the running auth role.

Needs node and npm; without them this test fails (it does not skip). The first run installs the
pinned packages from tests/js/package-lock.json with `npm ci` (tests/js_packages.py).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jwt
import pytest

from brain.ids import is_valid_user_id
from tests.js_packages import JS_DIR, JS_INSTALLED, NpmInstallFailed, ensure_installed
from tests.support import BrainServer
from tests.test_auth_helpers import NO_LIMITS


def npm_install(js_dir: Path = JS_DIR, expected: tuple[str, ...] = JS_INSTALLED) -> None:
    """The packages js_dir's scripts import (tests/js by default), installed or waited for;
    a failed test without npm."""
    try:
        ensure_installed(js_dir, expected)
    except NpmInstallFailed as failure:
        pytest.fail(str(failure))


def run_node(script: str, server: BrainServer, **env: str) -> dict[str, Any]:
    """Run tests/js/<script> against the server; the steps it printed."""
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not installed: the Better Auth compatibility test needs node and npm")
    npm_install()
    full_env = {**os.environ, "AUTH_URL": server.auth_url, "API_URL": server.api_url, "AUDIENCE": "brain",
                "ISSUER": server.auth_url, **env}
    out = subprocess.run([node, script], cwd=JS_DIR, capture_output=True, text=True, timeout=180, env=full_env)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)["steps"]


class Steps:
    """What a script's steps saw (none may have thrown): `ok(name)` is a step's data, which must
    have come without an error; `error(name)` its error, which must have come without data."""

    def __init__(self, steps: dict[str, Any]) -> None:
        for name, step in steps.items():
            assert "thrown" not in step, (name, step)
        self.steps = steps

    def __getitem__(self, name: str) -> Any:
        return self.steps[name]

    def ok(self, name: str) -> Any:
        assert self.steps[name]["error"] is None, (name, self.steps[name])
        return self.steps[name]["data"]

    def error(self, name: str) -> Any:
        assert self.steps[name]["data"] is None, (name, self.steps[name])
        return self.steps[name]["error"]


def run_compat(server: BrainServer) -> dict[str, Any]:
    return run_node("compat.mjs", server)


def test_better_auth_client_and_jose(make_server) -> None:  # type: ignore[no-untyped-def]
    server = make_server(config={"auth": NO_LIMITS}).start()
    steps = run_compat(server)
    for name, step in steps.items():
        assert "thrown" not in step, (name, step)

    sign_up = steps["signUp"]
    assert sign_up["error"] is None
    user = sign_up["data"]["user"]
    assert is_valid_user_id(user["id"]) and user["email"] == user["email"].lower()
    assert set(sign_up["data"]) == {"token", "user", "session", "jwt"}
    assert sign_up["bearer"].startswith(sign_up["data"]["token"] + ".")  # set-auth-token: signed
    assert sign_up["jwtHeader"] == sign_up["data"]["jwt"]

    assert steps["duplicate"]["error"] == {
        "status": 422, "code": "USER_ALREADY_EXISTS_USE_ANOTHER_EMAIL", "message": "User already exists. Use another email.",
    }
    assert steps["shortPassword"]["error"]["status"] == 400
    assert steps["shortPassword"]["error"]["code"] == "PASSWORD_TOO_SHORT"
    assert steps["wrongPassword"]["error"] == {
        "status": 401, "code": "INVALID_EMAIL_OR_PASSWORD", "message": "Invalid email or password",
    }

    sign_in = steps["signIn"]
    assert sign_in["error"] is None and sign_in["data"]["redirect"] is False
    assert sign_in["data"]["user"] == user
    token = sign_in["data"]["token"]
    assert sign_in["bearer"].startswith(token + ".")

    for name in ("getSession", "getSessionRawToken"):
        got = steps[name]["data"]
        assert got["user"] == user and got["session"]["token"] == token, name
    assert steps["getSession"]["jwtHeader"]

    jwt_token = steps["token"]["data"]["token"]
    claims = jwt.decode(jwt_token, options={"verify_signature": False})
    assert claims["sub"] == user["id"]
    kids = [k["kid"] for k in steps["jwks"]["data"]["keys"]]
    assert jwt.get_unverified_header(jwt_token)["kid"] in kids

    # jose verified every JWT against our JWKS, with issuer and audience, and refused a wrong audience.
    for name, result in steps["verify"].items():
        assert result["ok"] is True, (name, result)
        assert result["payload"]["sub"] == user["id"] and result["payload"]["iss"] == server.auth_url
        assert result["payload"]["aud"] == "brain" and result["header"]["alg"] == "RS256"
    assert steps["verifyWrongAudience"] == {"ok": False, "code": "ERR_JWT_CLAIM_VALIDATION_FAILED"}

    assert steps["signOut"] == {"data": {"success": True}, "error": None}
    assert steps["afterSignOutSession"] == {"data": None, "error": None}
    assert steps["afterSignOutToken"]["error"]["status"] == 401

"""Helpers shared by the auth tests (no tests here): sign-up/sign-in calls and JWT checks."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
import requests

from tests.support import BrainServer

PASSWORD = "correct horse battery"
_counter = itertools.count()

# Auth tests that are not about limits must not trip them: every request comes from 127.0.0.1.
NO_LIMITS = {"rate_limit_ip_per_minute": 100_000, "rate_limit_account_failures": 1000}


def unique_email(prefix: str = "user") -> str:
    """An address no other test uses."""
    return f"{prefix}-{os.getpid()}-{next(_counter)}@example.com"


def sign_up(server: BrainServer, email: str | None = None, password: str = PASSWORD, **extra: Any) -> requests.Response:
    """POST sign-up/email; the response, whatever it is."""
    body = {"name": extra.pop("name", "Test User"), "email": email or unique_email(), "password": password, **extra}
    return requests.post(f"{server.auth_url}/api/auth/sign-up/email", json=body, timeout=30)


def sign_in(server: BrainServer, email: str, password: str = PASSWORD, **kwargs: Any) -> requests.Response:
    """POST sign-in/email."""
    body = {"email": email, "password": password, **kwargs.pop("extra", {})}
    return requests.post(f"{server.auth_url}/api/auth/sign-in/email", json=body, timeout=30, **kwargs)


def new_user(server: BrainServer, email: str | None = None) -> dict[str, Any]:
    """Sign up a fresh user and return the response body (asserting success)."""
    r = sign_up(server, email)
    assert r.status_code == 200, r.text
    return r.json()


def bearer(token: str) -> dict[str, str]:
    """An Authorization header for a session token or JWT."""
    return {"Authorization": f"Bearer {token}"}


def jwks(server: BrainServer) -> dict[str, Any]:
    """The server's JWKS document."""
    r = requests.get(f"{server.auth_url}/api/auth/jwks", timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


def verify_jwt(server: BrainServer, token: str, *, audience: str = "brain") -> dict[str, Any]:
    """Verify a JWT against the server's published JWKS (kid lookup, RS256, iss, aud, exp)."""
    kid = jwt.get_unverified_header(token)["kid"]
    key = next((k for k in jwks(server)["keys"] if k["kid"] == kid), None)
    assert key is not None, f"kid {kid} is not in the JWKS"
    public = jwt.algorithms.RSAAlgorithm.from_jwk(key)
    return jwt.decode(
        token, public, algorithms=["RS256"], audience=audience, issuer=server.auth_url,
        options={"require": ["exp", "iat", "sub", "iss", "aud"]},
    )


def token_kid(token: str) -> str:
    """The kid in a JWT's header."""
    return jwt.get_unverified_header(token)["kid"]


def brain_cli(server: BrainServer, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run `python -m brain ARGS --config <server's config> --data-dir <server's data dir>`."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("BRAIN_")}
    full_env.update(env or {})
    server.command()  # writes the server's config file
    return subprocess.run(
        [sys.executable, "-m", "brain", *args, "--config", str(server.workdir / "brain.toml"),
         "--data-dir", str(server.data_dir)],
        capture_output=True, text=True, timeout=60, env=full_env, cwd=server.workdir,
    )


@pytest.fixture(scope="module")
def module_server(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[BrainServer]:
    """One server for a whole test module, configured by the module's AUTH_CONFIG (its [auth]
    table), EXTRA_CONFIG (other tables) and SERVER_ENV (environment)."""
    config = {"auth": {**NO_LIMITS, **getattr(request.module, "AUTH_CONFIG", {})}}
    config.update(getattr(request.module, "EXTRA_CONFIG", {}))
    env = getattr(request.module, "SERVER_ENV", {})
    server = BrainServer(Path(tmp_path_factory.mktemp("auth")) / "brain", config=config, env=env)
    with server:
        yield server

"""The OpenAPI document is the contract: `schemathesis run --checks all` against a live server.

schemathesis (its own CLI, as an app developer would run it) generates valid and invalid
requests from /openapi.json for every operation, in every phase (examples, coverage, fuzzing,
stateful), and checks each answer: no server error, only documented status codes, bodies and
headers that match their schemas, invalid data refused, valid data accepted, undeclared methods
refused with 405, authentication not ignored. A constraint the server enforces but the document
does not state (or the other way round) fails here. The settings, including the few operations
whose answers depend on state a generated request cannot know, are in tests/schemathesis.toml.

The API role runs whole, here. The auth role runs in two parts (tests/test_openapi_contract_auth.py):
the operations that keep who the run is signed in as, with one user and the stateful phase
(sign up -> token -> ...), and those that change it (the password, the email, deleting the user,
two-factor, passkeys, API keys, linked accounts) with a user of its own for every request
(tests/schemathesis_hooks.py) and without the stateful phase, whose chains would be sent as
different users. The MCP endpoint (/mcp) is held to its transport's description (the JSON-RPC
envelope, headers, statuses and error codes); MCP's methods themselves are tests/test_mcp.py's.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from brain.testing.fakes.gmail import FakeGmail
from brain.testing.fakes.microsoft import FakeMicrosoft
from tests.support import REPO, BrainServer
from tests.test_auth_helpers import NO_LIMITS, PASSWORD
from tests.test_fuzz_openapi import mail_plugins
from tests.test_reliability_helpers import User, wait_api_ready

CONFIG = REPO / "tests" / "schemathesis.toml"
# For the run with a fresh user per request: the same seed, no configured credentials.
IDENTITY_CONFIG = REPO / "tests" / "schemathesis-identity.toml"
SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"
# Every limit lifted, two-factor's own per-address one too: a run sends many /two-factor/* requests
# from one address, and answers of 429 would leave the logic behind them untested (and fail the
# check that a wrong credential is refused with 401/403 when the limit happens to be spent).
CONTRACT_LIMITS = {**NO_LIMITS, "two_factor_rate_limit_max": 100_000}
# A run is a few minutes on a busy machine: longer than the suite's default test timeout allows.
RUN_TIMEOUT = 900
@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrainServer]:
    gmail, microsoft = FakeGmail().start(), FakeMicrosoft().start()
    s = BrainServer(
        tmp_path_factory.mktemp("contract") / "brain",
        config={"auth": CONTRACT_LIMITS, "plugins": mail_plugins(gmail, microsoft), "mail": {"sync_interval_seconds": 5.0}},
    )
    try:
        with s:
            wait_api_ready(s)
            yield s
    finally:
        gmail.stop()
        microsoft.stop()


def schemathesis(server: BrainServer, base_url: str, *filters: str, fresh_users: bool = False) -> tuple[int, str]:
    """Run `schemathesis run --checks all` with our settings; (exit code, its report).

    fresh_users: each request signs up a user of its own first (tests/schemathesis_hooks.py).
    """
    # Its cache (.schemathesis/) goes beside the server's data, not into the checkout.
    workdir = server.workdir
    user = User.sign_up(server)
    env = {**os.environ, "BRAIN_TEST_JWT": user.jwt, "BRAIN_TEST_EMAIL": user.email, "BRAIN_TEST_PASSWORD": PASSWORD,
           "BRAIN_AUTH_URL": server.auth_url}
    if fresh_users:
        env.update(SCHEMATHESIS_HOOKS="tests.schemathesis_hooks", PYTHONPATH=str(REPO))
    command = [
        str(SCHEMATHESIS), "--config-file", str(IDENTITY_CONFIG if fresh_users else CONFIG), "--no-color", "run",
        f"{server.api_url}/openapi.json",
        "--url", base_url, "--checks", "all", "--workers", "1", *filters,
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT - 60, cwd=workdir)
    return done.returncode, done.stdout + done.stderr


def assert_clean(code: int, report: str) -> None:
    summary = report[report.rfind("SUMMARY"):]
    # The failures and the summary, each line cut short (a generated value can be megabytes long).
    start = min((i for i in (report.find("= ERRORS ="), report.find("= FAILURES =")) if i >= 0), default=0)
    shown = "\n".join(line[:400] for line in report[start:].splitlines())[:30000]
    print(summary)  # the seed and the counts, shown by `pytest -s`
    assert code == 0 and re.search(r"Test cases:\s+\d+ generated", summary), shown
    assert not re.search(r"\d+ (failures?|errors?)", summary.splitlines()[-1]), shown


@pytest.mark.timeout(RUN_TIMEOUT)
def test_api_role_keeps_its_contract(server: BrainServer) -> None:
    code, report = schemathesis(server, server.api_url, "--exclude-path-regex", r"^/(api/auth/|\.well-known/|examples/)")
    assert_clean(code, report)
    assert "Traceback" not in server.log_text(), server.log_text()[-3000:]

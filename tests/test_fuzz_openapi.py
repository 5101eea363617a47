"""OpenAPI-driven fuzzing: schemathesis generates requests for every operation in `/openapi.json`.

Each generated request (valid and invalid data alike) is sent with a valid credential and must
not get a 5xx. For every protected API operation the very same request is sent again with no
token and with bad ones, and must get 401 with `WWW-Authenticate: Bearer error="invalid_token"`:
no endpoint skips the token check, whatever its input. The mail providers point at local fakes,
so a generated `POST /mail/connect` never leaves loopback.

`make test` runs a few examples per operation and mode; tests/soak many more (`SOAK_SCALE`).
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from brain.testing.fakes.gmail import FakeGmail
from brain.testing.fakes.microsoft import FakeMicrosoft
from tests.support import BrainServer
from tests.test_auth_helpers import NO_LIMITS, sign_in
from tests.test_mail_server import mail_config
from tests.test_reliability_helpers import User, wait_api_ready

EXAMPLES = 12
# `make test` sends the bad tokens with the first few cases of each operation and mode (the token
# check comes before any input is read); the soak run sends them with every case.
TOKEN_CASES = 3
STREAM_PATH = "/events/stream"


def mail_plugins(gmail: FakeGmail, microsoft: FakeMicrosoft) -> dict[str, Any]:
    """Provider tables pointing every endpoint at the local fakes."""
    return mail_config(gmail, microsoft)["plugins"]


@pytest.fixture(scope="module")
def fakes() -> Iterator[tuple[FakeGmail, FakeMicrosoft]]:
    gmail, microsoft = FakeGmail().start(), FakeMicrosoft().start()
    try:
        yield gmail, microsoft
    finally:
        gmail.stop()
        microsoft.stop()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, fakes: tuple[FakeGmail, FakeMicrosoft]) -> Iterator[BrainServer]:
    s = BrainServer(
        tmp_path_factory.mktemp("fuzz") / "brain",
        config={"auth": NO_LIMITS, "plugins": mail_plugins(*fakes), "mail": {"sync_interval_seconds": 5.0}},
    )
    with s:
        wait_api_ready(s)
        yield s


# aiohttp's answer to a request line or header over its limits (8190 bytes for a header,
# 16384 for the request line: the fuzzer's long repeated query parameters reach them), given
# before the request is routed.
TOO_LONG_TO_PARSE = re.compile(r"Got more than \d+ bytes")


def tampered(jwt: str) -> list[str]:
    """Bad tokens built from a good one: another sub under the old signature, alg none, junk."""
    head, payload, sig = jwt.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    forged = base64.urlsafe_b64encode(json.dumps({**claims, "sub": "someone-else"}).encode()).rstrip(b"=").decode()
    none = base64.urlsafe_b64encode(b'{"alg":"none","typ":"JWT"}').rstrip(b"=").decode()
    return [f"{head}.{forged}.{sig}", f"{none}.{payload}.", f"{head}.{payload}.{sig[:-6]}AAAAAA", "not-a-jwt"]


def fuzz(server: BrainServer, *, examples: int, derandomize: bool = True, token_cases: int | None = TOKEN_CASES) -> list[str]:
    """Run every operation of the spec in both generation modes; the problems found. The bad
    tokens go with the first `token_cases` cases of each operation and mode (None: every case)."""
    alice = User.sign_up(server)
    # A session of its own for sign-out, which the fuzzer will revoke over and over.
    spare = sign_in(server, alice.email).json()["token"]
    schema = schemathesis.openapi.from_url(f"{server.api_url}/openapi.json")
    bad_tokens = tampered(alice.jwt)
    problems: list[str] = []
    http = requests.Session()
    tried = [0]  # protected cases of the current operation and mode

    def check(case: Any) -> None:
        op = case.operation
        on_auth_role = op.path.startswith(("/api/auth/", "/.well-known/"))
        protected = not on_auth_role and op.definition.raw.get("security", None) != []
        credential = (spare if op.path.endswith("/sign-out") else alice.token) if on_auth_role else alice.jwt
        name = f"{op.method.upper()} {op.path}"
        # A stream opened with a good credential does not end (tests/test_stream.py covers its
        # input); it still gets every check without one.
        if op.path != STREAM_PATH:
            r = case.call(session=http, headers={"Authorization": f"Bearer {credential}"}, timeout=15)
            if r.status_code >= 500:
                problems.append(f"{name} -> {r.status_code} {r.text[:200]} for {case.as_curl_command()}")
        if not protected:
            return
        tried[0] += 1
        if token_cases is not None and tried[0] > token_cases:
            return
        for bad in [None, *bad_tokens]:
            headers = {} if bad is None else {"Authorization": f"Bearer {bad}"}
            r = case.call(session=http, headers=headers, timeout=15)
            if r.status_code == 400 and TOO_LONG_TO_PARSE.match(r.text):
                continue  # refused by aiohttp's parser before any route: there was no token check to skip
            challenge = header(r, "WWW-Authenticate")
            if r.status_code != 401 or not challenge.startswith('Bearer error="invalid_token"'):
                problems.append(f"{name} with token {str(bad)[:20]!r} -> {r.status_code}: skips the token check"
                                f" ({r.text[:80]!r})")

    for result in schema.get_all_operations():
        op = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            tried[0] = 0
            run_cases(op.as_strategy(generation_mode=mode), check, examples, derandomize=derandomize)
    return problems


def header(response: Any, name: str) -> str:
    """A response header from schemathesis' Response (its headers map names to lists)."""
    for key, value in response.headers.items():
        if key.lower() == name.lower():
            return value[0] if isinstance(value, list) else value
    return ""


def run_cases(strategy: Any, check: Callable[[Any], None], examples: int, *, derandomize: bool) -> None:
    """Draw up to `examples` cases from strategy and check each (no shrinking: bounded time)."""

    @settings(
        max_examples=examples,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
        database=None,
        derandomize=derandomize,
    )
    @given(case=strategy)
    def run(case: Any) -> None:
        check(case)

    try:
        run()
    except Unsatisfiable:
        pass  # nothing to make invalid (an operation without parameters or body, negative mode)


# Every operation of the spec is fuzzed, so the time grows with the API (the retrieval routes
# added six); on a loaded shared machine the default 300 s came too close.
@pytest.mark.timeout(900)
def test_openapi_fuzzing_finds_no_5xx_and_no_route_without_auth(server: BrainServer) -> None:
    problems = fuzz(server, examples=EXAMPLES)
    assert not problems, "\n".join(sorted(set(problems))[:30])
    # The server is still well after all of it.
    assert requests.get(f"{server.api_url}/health", timeout=5).json()["status"] == "ok"
    assert "Traceback" not in server.log_text(), server.log_text()[-3000:]


def test_state_and_session_signatures_with_non_ascii_are_refused_not_500(server: BrainServer) -> None:
    """Found by the fuzzer: hmac.compare_digest raises TypeError on non-ASCII str operands."""
    for path, params in (("callback", {"state": "\u00e9.\u00e9\u00e9", "code": "x"}), ("start", {"flow": "\u00e9.\u00e9\u00e9"})):
        # A browser is sent on to the result page, which names the refusal.
        r = requests.get(f"{server.api_url}/mail/oauth/{path}", params=params, allow_redirects=False, timeout=10)
        assert r.status_code == 302 and "status=error&code=INVALID_STATE" in r.headers["Location"], r.text
    values = [("abc." + "\u00e9" * 44).encode(), b"abc." + b"\xff" * 44, b"\xff\xfe" * 16, "\u00e9".encode() * 16]
    for value in values:  # sent as raw bytes on the wire: UTF-8 and not
        for headers in ({"Authorization": b"Bearer " + value}, {"Cookie": b"better-auth.session_token=" + value}):
            for method, path in (("GET", "/api/auth/token"), ("GET", "/api/auth/get-session"), ("POST", "/api/auth/sign-out")):
                r = requests.request(method, f"{server.auth_url}{path}", headers=headers, timeout=10)
                assert r.status_code < 500, (headers, path, r.status_code, r.text)
            for method, path in (("GET", "/me"), ("GET", "/mail/status")):
                r = requests.request(method, f"{server.api_url}{path}", headers=headers, timeout=10)
                assert r.status_code == 401, (headers, path, r.status_code, r.text)

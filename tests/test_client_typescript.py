"""The TypeScript client (clients/typescript) against a real brain process, with node's test runner.

Needs node and npm (fails without them, does not skip); the first run installs the pinned dev
dependencies (openapi-typescript, typescript) from clients/typescript/package-lock.json.
Also here: `tsc` over the declarations and the generated schema, the README's quickstart run as
written, and `clients/generate.py --check`: the checked-in document and both clients' generated
types must be what the server's routes make today.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from brain.testing.fakes.gmail import FakeGmail
from brain.testing.fakes.microsoft import FakeMicrosoft
from brain.testing.fakes.mime import Part
from tests.support import REPO, BrainServer
from tests.test_auth_helpers import NO_LIMITS, unique_email
from tests.test_auth_js import npm_install
from tests.test_client_python import readme_block
from tests.test_mail_connect_limits import start_brain
from tests.test_mail_server import GMAIL_USER, mail_config
from tests.test_reliability_helpers import wait_api_ready

TS_DIR = REPO / "clients" / "typescript"
ATTACHMENT = "a small text attachment"
# JWT lifetime (seconds) of the server whose streams end when their JWTs do.
JWT_TTL = 3


def node() -> str:
    found = shutil.which("node")
    if found is None:
        pytest.fail("node is not installed: the TypeScript client's tests need node and npm")
    npm_install(TS_DIR, ("openapi-typescript/package.json", "typescript/package.json"))
    return found


def run_node(args: list[str], server: BrainServer, **env: str) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "BRAIN_API_URL": server.api_url, "BRAIN_AUTH_URL": server.auth_url, **env}
    return subprocess.run([node(), *args], cwd=TS_DIR, capture_output=True, text=True, timeout=300, env=full_env)


@pytest.fixture(scope="module")
def gmail() -> Iterator[FakeGmail]:
    fake = FakeGmail().start()
    try:
        yield fake
    finally:
        fake.stop()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, gmail: FakeGmail) -> Iterator[BrainServer]:
    microsoft = FakeMicrosoft().start()
    s = BrainServer(tmp_path_factory.mktemp("tsclient") / "brain", config={"auth": NO_LIMITS, **mail_config(gmail, microsoft)})
    try:
        with s:
            wait_api_ready(s)
            yield s
    finally:
        microsoft.stop()


def test_client_against_a_live_server(server: BrainServer, gmail: FakeGmail) -> None:
    message = gmail.add_message(GMAIL_USER, subject="Notes",
                                attachments=[Part("notes.txt", "text/plain", ATTACHMENT.encode())])
    done = run_node(["--test", "test/client.test.mjs"], server, BRAIN_GMAIL_REFRESH_TOKEN=gmail.issue_refresh_token(GMAIL_USER),
                    BRAIN_GMAIL_MESSAGE=message, BRAIN_GMAIL_ATTACHMENT=ATTACHMENT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "# fail 0" in done.stdout and "# pass 5" in done.stdout, done.stdout


def test_the_stream_follows_live_events_and_resumes(server: BrainServer) -> None:
    done = run_node(["--test", "test/stream.test.mjs"], server)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "# fail 0" in done.stdout and "# pass 1" in done.stdout and "# skipped 1" in done.stdout, done.stdout


def test_the_stream_resumes_across_jwt_expiries(tmp_path: Path) -> None:
    with BrainServer(tmp_path / "brain", config={"auth": {**NO_LIMITS, "jwt_ttl_seconds": JWT_TTL}}) as short_lived:
        wait_api_ready(short_lived)
        done = run_node(["--test", "test/stream.test.mjs"], short_lived, BRAIN_JWT_TTL=str(JWT_TTL))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "# fail 0" in done.stdout and "# pass 1" in done.stdout and "# skipped 1" in done.stdout, done.stdout


def test_a_429_is_retried_after_its_retry_after(tmp_path: Path) -> None:
    server = start_brain(tmp_path)  # the IMAP provider, allowed on loopback
    try:
        done = run_node(["--test", "test/retry.test.mjs"], server)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "# pass 1" in done.stdout, done.stdout
    finally:
        server.close()


def test_readme_quickstart_runs_as_written(server: BrainServer) -> None:
    code = readme_block(TS_DIR / "README.md", "js")
    assert len(code.strip().splitlines()) <= 10
    # Run from the package's own directory, where `import ... from "brain-client"` resolves to it.
    done = run_node(["--input-type=module", "-e", code], server, BRAIN_EMAIL=unique_email("readme"))
    assert done.returncode == 0, done.stderr
    assert "hello" in done.stdout, done.stdout


def test_declarations_type_check_against_the_generated_schema() -> None:
    node()
    done = subprocess.run([node(), "node_modules/typescript/bin/tsc", "-p", "tsconfig.json"], cwd=TS_DIR,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr


def test_generated_files_match_the_document_the_server_builds() -> None:
    node()
    done = subprocess.run([sys.executable, str(REPO / "clients" / "generate.py"), "--check"], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr

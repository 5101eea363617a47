"""Credentials in configured URLs never show: not on /health, /metrics, in the log or CLI output."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from brain.redact import redact_text, redact_url
from tests.support import METRICS_TOKEN, BrainServer, free_port, wait_until
from tests.test_auth_helpers import NO_LIMITS, brain_cli, new_user
from tests.test_jetstream import NatsServer

USER = "brain-user"
PASSWORD = "pw-" + secrets.token_hex(12)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("nats://u:p4ss@127.0.0.1:4222", "nats://***@127.0.0.1:4222"),
        ("nats://s3cret-token@nats.example:4222", "nats://***@nats.example:4222"),
        ("tls://a:b@n1:4222,tls://c:d@n2:4222", "tls://***@n1:4222,tls://***@n2:4222"),
        ("u:p@host:4222", "***@host:4222"),
        ("https://x:y@auth.example/api/auth/jwks?token=abc&a=1&Client_Secret=z#access_token=t",
         "https://***@auth.example/api/auth/jwks?token=***&a=1&Client_Secret=***#access_token=***"),
        ("https://h/p?code=1&state=2&page=3&api%5Fkey=4", "https://h/p?code=***&state=***&page=3&api%5Fkey=***"),
        ("https://u:p@w@h/", "https://***@h/"),  # an '@' in the password
        ("nats://127.0.0.1:4222", "nats://127.0.0.1:4222"),
        ("", ""),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_redact_text_masks_every_url_in_a_message() -> None:
    message = "connect to nats://a:b@h:1, then 'https://c:d@i/x?password=e' failed: OSError(111)"
    assert redact_text(message) == "connect to nats://***@h:1, then 'https://***@i/x?password=***' failed: OSError(111)"


@pytest.fixture
def nats_with_password(tmp_path: Path) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path / "nats", args=("--user", USER, "--pass", PASSWORD)).start()
    try:
        yield server
    finally:
        server.stop()


def test_nats_credentials_in_the_url_never_show(make_server, nats_with_password: NatsServer, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    url = f"nats://{USER}:{PASSWORD}@127.0.0.1:{nats_with_password.port}"
    server: BrainServer = make_server(env={"NATS_URL": url}, config={"auth": NO_LIMITS, "metrics": {"token": METRICS_TOKEN}}).start()
    detail = wait_until(lambda: (b := server.health())["nats"].get("connected") and b, timeout=20,
                        what="the event bus connected with the URL's credentials")
    assert detail["nats"]["url"] == f"nats://***@127.0.0.1:{nats_with_password.port}"
    user = new_user(server)  # something to log and count
    shown = {
        "/health": requests.get(f"{server.api_url}/health", timeout=5).text,
        "/health?detail=1": str(server.health()),
        "/metrics": requests.get(f"{server.api_url}/metrics", timeout=5,
                                 headers={"Authorization": f"Bearer {METRICS_TOKEN}"}).text,
    }
    # NATS goes away: the disconnection and every reconnect attempt are logged, and /health says so.
    nats_with_password.stop()
    wait_until(lambda: not server.health()["nats"]["connected"], timeout=15, what="the bus to notice")
    shown["/health?detail=1 (degraded)"] = str(server.health())
    assert server.stop() == 0
    # The CLI too: a deletion it cannot publish names the NATS it tried.
    with_dead_nats = f"nats://{USER}:{PASSWORD}@127.0.0.1:{free_port()}"
    out = brain_cli(server, "users", "delete", user["user"]["email"], env={"NATS_URL": with_dead_nats})
    shown["brain users delete"] = out.stdout + out.stderr
    shown["log"] = server.log_text()
    assert "nats://***@127.0.0.1" in shown["log"]
    for where, text in shown.items():
        assert PASSWORD not in text, where

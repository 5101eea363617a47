"""What reaches the server's log: no secrets (reset tokens, verification tokens, OAuth codes), and
no forged lines (control characters from paths, user agents and other outside text escaped)."""

from __future__ import annotations

import io
import json
import logging
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from brain.logs import JsonFormatter, TextFormatter
from tests.support import BrainServer, wait_until
from tests.test_auth_email import APP, Inbox, get, link_in, mail_config, request_reset, smtp  # noqa: F401
from tests.test_auth_helpers import sign_up, unique_email

FORGED = "2000-01-01T00:00:00 INFO    brain.access.auth: GET /forged 200 0 0.01ms"


@pytest.fixture(scope="module")
def server(smtp: tuple[Inbox, int], tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrainServer]:  # noqa: F811
    server = BrainServer(Path(tmp_path_factory.mktemp("logs")) / "brain", config=mail_config(smtp[1]))
    with server:
        yield server


def logged(server: BrainServer, needle: str) -> str:
    """The log once a line with needle is in it (access lines are written in batches)."""
    wait_until(lambda: needle in server.log_text(), timeout=10, what=f"{needle!r} in the log")
    return server.log_text()


def raw_request(port: int, head: bytes) -> bytes:
    """Send one raw HTTP/1.1 request head; the response's status line."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head)
        return sock.recv(4096).split(b"\r\n", 1)[0]


def test_reset_and_verification_tokens_never_reach_the_log(server: BrainServer, smtp: tuple[Inbox, int]) -> None:  # noqa: F811
    inbox = smtp[0]
    address = unique_email("secret")
    assert sign_up(server, address, callbackURL="/welcome").status_code == 200
    for count in (1, 2):
        assert request_reset(server, address, redirectTo=f"{APP}/reset").status_code == 200
        inbox.wait(address, count=count)
    first, second = (link_in(m) for m in inbox.to(address))
    tokens = [first.split("/reset-password/", 1)[1].split("?", 1)[0], second.split("/reset-password/", 1)[1].split("?", 1)[0]]
    # The whole flow: open the link (token in the path), set the password with the token in the
    # query once and in the body once, try a verification token in a query.
    assert get(first).status_code == 302
    assert get(f"{server.auth_url}/api/auth/reset-password/{tokens[1]}").status_code == 200
    r = requests.post(f"{server.auth_url}/api/auth/reset-password", params={"token": tokens[0]},
                      json={"newPassword": "a new passphrase"}, timeout=15)
    assert r.status_code == 200, r.text
    r = requests.post(f"{server.auth_url}/api/auth/reset-password", json={"newPassword": "x" * 12, "token": tokens[1]},
                      timeout=15)
    assert r.status_code == 400  # used up by the first reset
    code, state = uuid.uuid4().hex, uuid.uuid4().hex
    assert get(f"{server.auth_url}/api/auth/verify-email", params={"token": code}).status_code == 401
    get(f"{server.api_url}/mail/oauth/callback", params={"code": code, "state": state})

    log = logged(server, "GET /mail/oauth/callback")
    assert "GET /api/auth/reset-password/[redacted] 302" in log
    assert "GET /api/auth/reset-password/[redacted] 200" in log
    for secret in (*tokens, code, state):
        assert secret not in log


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_control_characters_cannot_forge_log_lines(make_server, fmt: str) -> None:  # type: ignore[no-untyped-def]
    server: BrainServer = make_server(config={"log": {"format": fmt}}).start()
    marker = uuid.uuid4().hex
    forged = FORGED.replace(" ", "%20")
    for port in (server.auth_port, server.api_port):
        for path in (f"/{marker}%0A{forged}", f"/{marker}%0D%0A{forged}", f"/{marker}%1B[31mred%E2%80%AEdesrever"):
            status = raw_request(port, f"GET {path} HTTP/1.1\r\nHost: x\r\nUser-Agent: a\tb\r\nConnection: close\r\n\r\n".encode())
            assert status == b"HTTP/1.1 404 Not Found", status
    wait_until(lambda: server.log_text().count(marker) >= 6, timeout=10, what="six access lines")
    time.sleep(0.3)  # anything else those requests would log
    before = len(server.log_text().splitlines())
    # Control characters in a header: aiohttp refuses the request (400); one access line says so.
    for agent in (b"agent\x1b[2J\x1b]0;owned\x07", b"agent\x7f", b"agent\x01\n" + FORGED.encode()):
        status = raw_request(server.auth_port, b"GET /" + marker.encode() + b" HTTP/1.1\r\nHost: x\r\nUser-Agent: " + agent
                             + b"\r\nConnection: close\r\n\r\n")
        assert status.startswith(b"HTTP/1.") and b" 400 " in status, status
    wait_until(lambda: len(server.log_text().splitlines()) >= before + 3, timeout=10, what="three access lines")
    time.sleep(0.3)  # anything else those requests would log
    log = server.log_text()
    added = log.splitlines()[before:]
    assert len(added) == 3 and all("UNKNOWN / 400" in line for line in added), added

    lines = [line for line in log.splitlines() if marker in line]
    assert len(lines) == 6, lines  # one per request, whatever its path holds
    assert not [line for line in log.splitlines() if line.startswith("2000-01-01")]
    for raw in ("\x1b", "\x07", "\x01", "\r", "\u202e"):
        assert raw not in log
    if fmt == "text":
        assert f"/{marker}\\n2000-01-01T00:00:00 INFO" in log and f"/{marker}\\x1b[31mred\\u202edesrever" in log
    else:
        paths = {json.loads(line)["path"] for line in lines}
        assert f"/{marker}\n{FORGED}" in paths and f"/{marker}\x1b[31mred\u202edesrever" in paths


def test_text_records_escape_their_data_and_indent_their_own_lines() -> None:
    """TextFormatter: arguments stay on their line; a traceback's lines cannot pose as records."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(TextFormatter())
    logger = logging.getLogger(f"brain.test.{uuid.uuid4().hex}")
    logger.addHandler(handler)
    logger.propagate = False
    logger.warning("user %s from %r sent %d bytes in %.1f s", "eve\n" + FORGED, "ua\x1b[2J", 12, 0.5)
    logger.warning("mapping %(who)s", {"who": "eve\r\u2028" + FORGED})
    try:
        raise ValueError("bad input\n" + FORGED + "\x1b[2J")
    except ValueError:
        logger.exception("handling failed for %s", "x\ny")
    logger.warning("a message of its own:\n%s\n%s", "line one", "line two")
    lines = stream.getvalue().splitlines()
    records = [line for line in lines if not line.startswith(" ")]
    assert len(records) == 4 and not [line for line in lines if line.startswith("2000-01-01")], lines
    assert records[0].endswith(f"WARNING {logger.name}: user eve\\n{FORGED} from 'ua\\x1b[2J' sent 12 bytes in 0.5 s")
    assert records[1].endswith(f"mapping eve\\r\\u2028{FORGED}")
    assert records[2].endswith("handling failed for x\\ny")
    assert f"    ValueError: bad input\n    {FORGED}\\x1b[2J" in stream.getvalue()
    assert stream.getvalue().endswith(": a message of its own:\n    line one\n    line two\n")


def test_json_records_are_one_line_by_construction() -> None:
    record = logging.makeLogRecord({"msg": "path %s", "args": ("/x\n" + FORGED + "\x1b\r\u2028",), "levelno": 20})
    line = JsonFormatter().format(record)
    assert "\n" not in line and "\r" not in line and "\x1b" not in line and "\u2028" not in line
    assert json.loads(line)["msg"] == "path /x\n" + FORGED + "\x1b\r\u2028"

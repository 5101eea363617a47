"""Hostile input and hostile clients: malformed JSON, huge bodies and headers, slowloris, idle floods.

Every malformed request gets a 4xx (never a 5xx) and leaves nothing half-written; slow clients
(headers or body trickled a byte at a time) and hundreds of idle connections do not stop the
server from answering everyone else promptly, and the connections they hold are cut after
`server.idle_timeout_seconds` instead of piling up. The mail endpoints get the same treatment
with a connected account (a fake Gmail): broken JSON, wrong types, 8 MB bodies and tricks in the
path's ids are a JSON 4xx, and never reach another user's account or attachment.
"""

from __future__ import annotations

import json
import random
import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import requests

from brain.testing.fakes.gmail import FakeGmail
from brain.testing.fakes.mime import Part
from tests.support import BrainServer, wait_until
from tests.test_auth_helpers import NO_LIMITS
from tests.test_mail_server import mail_config
from tests.test_reliability_helpers import User, all_events, wait_api_ready

IDLE_TIMEOUT = 2.0
BODY_TIMEOUT = 2.0


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrainServer]:
    s = BrainServer(
        tmp_path_factory.mktemp("hostile") / "brain",
        config={"auth": NO_LIMITS, "server": {"idle_timeout_seconds": IDLE_TIMEOUT, "body_timeout_seconds": BODY_TIMEOUT}},
    )
    with s:
        wait_api_ready(s)
        yield s


@pytest.fixture(scope="module")
def user(server: BrainServer) -> User:
    return User.sign_up(server)


def malformed_bodies(rng: random.Random, n: int) -> Iterator[bytes]:
    """Broken JSON of many kinds: truncated, binary, deep, huge numbers, bad escapes, BOMs."""
    good = json.dumps({"type": "ok.type", "data": {"a": [1, 2, {"b": "c"}], "s": "x" * 50}}).encode()
    fixed = [
        b"", b" ", b"{", b"}", b"[", b"{]", b'{"type"', b'{"type":}', b"nul", b"tru", b"\x00", b"\xef\xbb\xbf{}",
        b'{"type": "a", "data": 1,}', b"{'type': 'a'}", b'{"type": "a", "data": "\\x41"}', b'{"type": "a", "data": "\\ud83d"}',
        b'{"a":' * 3000 + b"1" + b"}" * 3000, b"[" * 100_000, b'{"type": "a", "data": 1e999999}', b'{"type": "a", "data": -Infinity}',
        b'{"type": "a", "data": 123456789012345678901234567890123456789012345678901234567890}',
        b'{"type": "a", "data": "' + b"\xff\xfe" * 10 + b'"}', b'\x1f\x8b\x08\x00\x00\x00\x00\x00', b"\r\n\r\n",
    ]
    yield from fixed
    for _ in range(n):
        cut = rng.randrange(1, len(good))
        kind = rng.randrange(4)
        if kind == 0:
            yield good[:cut]
        elif kind == 1:
            yield good[:cut] + bytes([rng.randrange(256)]) + good[cut + 1:]
        elif kind == 2:
            yield bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200)))
        else:
            yield good[:cut] + good[:cut]


def test_malformed_json_is_always_a_4xx_and_stores_nothing(server: BrainServer, user: User) -> None:
    rng = random.Random(4)
    before = len(all_events(server, user))
    targets = [
        (server.api_url, "/events", user.headers),
        (server.api_url, "/mail/connect", user.headers),
        (server.api_url, "/mail/disconnect", user.headers),
        (server.auth_url, "/api/auth/sign-up/email", {}),
        (server.auth_url, "/api/auth/sign-in/email", {}),
    ]
    session = requests.Session()
    problems = []
    stored = 0
    for body in malformed_bodies(rng, 150):
        base, path, headers = rng.choice(targets)
        ctype = rng.choice(["application/json", "application/json; charset=utf-8", "text/plain", "application/x-www-form-urlencoded", ""])
        r = session.post(base + path, data=body, headers={**headers, "Content-Type": ctype}, timeout=15)
        if r.status_code == 201 and path == "/events":
            stored += 1  # a mutation that happens to be valid JSON and a valid event
        elif not 400 <= r.status_code < 500:
            problems.append((path, body[:60], r.status_code, r.text[:200]))
        elif r.headers.get("Content-Type", "").split(";")[0] != "application/json" or "message" not in r.json():
            problems.append((path, body[:60], "not a JSON error", r.text[:200]))
    assert not problems, problems[:10]
    assert len(all_events(server, user)) == before + stored


def test_huge_bodies_headers_and_urls_are_refused_cheaply(server: BrainServer, user: User) -> None:
    big = b'{"type": "a", "data": "' + b"x" * 8_000_000 + b'"}'
    for headers in (user.headers, {**user.headers, "Transfer-Encoding": "chunked"}):
        data: Any = big if "Transfer-Encoding" not in headers else iter([big[i: i + 65536] for i in range(0, len(big), 65536)])
        h = {k: v for k, v in headers.items() if k != "Transfer-Encoding"}
        try:
            r = requests.post(f"{server.api_url}/events", data=data, headers={**h, "Content-Type": "application/json"}, timeout=30)
            assert r.status_code == 413, r.text[:200]
        except requests.ConnectionError:
            pass  # the server may cut the connection once it has answered 413
    # A Content-Length far above the limit is refused from the head alone, before any body.
    with socket.create_connection(("127.0.0.1", server.api_port), timeout=10) as s:
        s.sendall(
            b"POST /events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Authorization: Bearer {user.jwt}\r\nContent-Length: 999999999\r\n\r\n{{".encode()
        )
        assert s.recv(200).startswith(b"HTTP/1.1 413 ")
    for headers in ({"X-Big": "a" * 100_000}, {f"X-H{i}": "v" for i in range(2000)}):
        try:
            r = requests.get(f"{server.api_url}/me", headers={**user.headers, **headers}, timeout=10)
            assert 400 <= r.status_code < 500, r.status_code
        except requests.ConnectionError:
            pass  # aiohttp may drop a request whose head is too large
    r = requests.get(f"{server.api_url}/events", params={"type": "a" * 200_000}, headers=user.headers, timeout=10)
    assert 400 <= r.status_code < 500
    assert requests.get(f"{server.api_url}/me", headers=user.headers, timeout=10).status_code == 200


def open_slow(server: BrainServer, kind: str) -> socket.socket:
    """A connection that starts a request head and then stalls (slowloris), or sends nothing."""
    sock = socket.create_connection(("127.0.0.1", server.api_port), timeout=10)
    if kind == "slow-headers":
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-a: ")
    return sock


def closed_by_server(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        return sock.recv(65536) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def test_slowloris_and_idle_floods_do_not_stop_other_clients(server: BrainServer, user: User) -> None:
    socks = {"slow-headers": [], "idle": []}
    stop = threading.Event()

    def trickle() -> None:
        # One more header byte on every slow connection now and then: a classic slowloris.
        while not stop.is_set():
            for s in socks["slow-headers"]:
                try:
                    s.send(b"a")
                except OSError:
                    pass
            stop.wait(0.5)

    try:
        for _ in range(300):
            socks["slow-headers"].append(open_slow(server, "slow-headers"))
        for _ in range(400):
            socks["idle"].append(open_slow(server, "idle"))
        feeder = threading.Thread(target=trickle, daemon=True)
        feeder.start()
        # Everyone else is served, promptly, while 700 connections hang around.
        session = requests.Session()
        slowest = 0.0
        for i in range(60):
            started = time.monotonic()
            r = session.post(f"{server.api_url}/events", json={"type": "during.flood", "data": i}, headers=user.headers, timeout=10)
            assert r.status_code == 201, r.text
            assert session.get(f"{server.api_url}/health", timeout=10).status_code == 200
            slowest = max(slowest, time.monotonic() - started)
        assert slowest < 2.0, slowest  # generous: a shared 2-core machine
        # The server cuts them after its idle timeout, however slowly they keep sending.
        everything = socks["slow-headers"] + socks["idle"]
        wait_until(
            lambda: all(closed_by_server(s) for s in everything), timeout=IDLE_TIMEOUT * 6, interval=0.5,
            what="the server to close slow and idle connections",
        )
    finally:
        stop.set()
        for group in socks.values():
            for s in group:
                s.close()
    assert requests.get(f"{server.api_url}/me", headers=user.headers, timeout=10).status_code == 200


def test_slow_bodies_do_not_block_other_writes_of_the_same_user(server: BrainServer, user: User) -> None:
    slow = []
    try:  # authenticated, so each gets as far as the handler reading its body
        for _ in range(50):
            sock = socket.create_connection(("127.0.0.1", server.api_port), timeout=10)
            sock.sendall(
                b"POST /events HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                + f"Authorization: Bearer {user.jwt}\r\n".encode()
                + b"Content-Length: 100000\r\n\r\n{\"type\": \"slow\", \"data\": \""
            )
            slow.append(sock)
        for i in range(20):
            r = requests.post(f"{server.api_url}/events", json={"type": "beside.slow", "data": i}, headers=user.headers, timeout=10)
            assert r.status_code == 201, r.text
    finally:
        for s in slow:
            s.close()
    # The half-sent events were never stored.
    assert not [e for e in all_events(server, user) if e["type"] == "slow"]


def test_a_body_that_never_finishes_gets_408_and_stores_nothing(server: BrainServer, user: User) -> None:
    sock = socket.create_connection(("127.0.0.1", server.api_port), timeout=15)
    try:
        sock.sendall(
            b"POST /events HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            + f"Authorization: Bearer {user.jwt}\r\n".encode()
            + b"Content-Length: 1000\r\n\r\n{\"type\": \"never.finished\", \"data\": \""
        )
        started = time.monotonic()
        reply = b""
        while b"\r\n\r\n" not in reply:
            chunk = sock.recv(4096)
            if not chunk:
                break
            reply += chunk
        waited = time.monotonic() - started
    finally:
        sock.close()
    assert reply.startswith(b"HTTP/1.1 408"), reply[:200]
    assert BODY_TIMEOUT - 0.5 <= waited < BODY_TIMEOUT + 10
    assert not [e for e in all_events(server, user) if e["type"] == "never.finished"]


def test_connection_storms_leave_the_server_healthy(server: BrainServer, user: User) -> None:
    # Connections opened and dropped at once, mid-request, and with garbage instead of HTTP.
    junk = [b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", b"GARBAGE\r\n\r\n", b"GET / HTTP/9.9\r\n\r\n", b"\x00" * 100]
    for i in range(300):
        with socket.create_connection(("127.0.0.1", server.api_port), timeout=10) as s:
            if i % 3:
                s.sendall(junk[i % len(junk)] if i % 3 == 1 else b"POST /events HTTP/1.1\r\nContent-Length: 10\r\n\r\n{")
    body = requests.get(f"{server.api_url}/health", timeout=10).json()
    assert body["status"] == "ok"
    assert requests.get(f"{server.api_url}/me", headers=user.headers, timeout=10).status_code == 200
    # The status of an access-log line ("METHOD PATH STATUS SIZE TIME"), not a 500-byte body.
    assert not re.search(r"brain\.access\.\w+: \S+ \S+ 5\d\d ", server.log_text())


@pytest.mark.parametrize("field", ["type", "data"])
def test_unicode_and_control_characters_are_stored_or_refused_never_mangled(server: BrainServer, user: User, field: str) -> None:
    values = ["\u0000", "\u202e", "\ufeff", "\U0010ffff", "a\u0300", "\r\n", "\u2028", "\x7f", "\ud7ff"]
    for value in values:
        body = {"type": value, "data": 1} if field == "type" else {"type": "uni.code", "data": value}
        r = requests.post(f"{server.api_url}/events", json=body, headers=user.headers, timeout=10)
        assert r.status_code in (201, 400), (value, r.status_code, r.text)
        if r.status_code == 201:
            assert r.json()[field] == value


def test_mail_endpoints_answer_hostile_input_with_a_clear_4xx_never_another_users_data(tmp_path: Path) -> None:
    """Every mail endpoint a client calls, with malformed JSON, wrong types, oversized bodies and
    tricks in the path's ids (traversal, encoded separators, NUL, overlong, another user's ids):
    a 4xx with a JSON message, never a 5xx, never another user's attachment."""
    secret = b"%PDF-1.4 bob's secret " + bytes(range(256))
    with FakeGmail() as gmail:
        gmail.add_message("ann@example.com", subject="Ann's", attachments=[Part("a.pdf", "application/pdf", b"%PDF ann")])
        bobs = gmail.add_message("bob@example.com", subject="Bob's", attachments=[Part("s.pdf", "application/pdf", secret)])
        with BrainServer(tmp_path / "brain", config={"auth": NO_LIMITS, **mail_config(gmail)}) as server:
            wait_api_ready(server)
            ann, bob = User.sign_up(server), User.sign_up(server)
            accounts = {}
            for user, mailbox in ((ann, "ann@example.com"), (bob, "bob@example.com")):
                r = requests.post(f"{server.api_url}/mail/connect", headers=user.headers, timeout=30,
                                  json={"provider": "gmail", "refresh_token": gmail.issue_refresh_token(mailbox)})
                assert r.status_code == 201, r.text
                accounts[user.id] = r.json()["account"]["account"]
            wait_until(lambda: len(all_events(server, bob)) == 1 and len(all_events(server, ann)) == 1, timeout=30,
                       what="both mailboxes synced")
            (bob_attachment,) = all_events(server, bob)[0]["data"]["attachments"]
            mine, theirs = accounts[ann.id], accounts[bob.id]
            session = requests.Session()
            problems: list[Any] = []

            def check(method: str, path: str, *, expect: tuple[int, ...] | None = None, **kwargs: Any) -> requests.Response:
                headers = {**ann.headers, **kwargs.pop("headers", {})}
                r = session.request(method, server.api_url + path, headers=headers, timeout=30, **kwargs)
                if secret in r.content:
                    problems.append((method, path[:80], "another user's attachment", r.status_code))
                elif expect is not None and r.status_code not in expect:
                    problems.append((method, path[:80], str(kwargs.get("json", kwargs.get("data", b"")))[:60], r.status_code, r.text[:200]))
                elif expect is None and not 400 <= r.status_code < 500:
                    problems.append((method, path[:80], str(kwargs.get("json", kwargs.get("data", b"")))[:60], r.status_code, r.text[:200]))
                elif expect is None and (r.headers.get("Content-Type", "").split(";")[0] != "application/json"
                                         or not r.json().get("message")):
                    problems.append((method, path[:80], "not a JSON error", r.text[:200]))
                return r

            # Malformed JSON, to every mail endpoint that reads a body.
            writes = [("POST", "/mail/connect"), ("POST", "/mail/disconnect"), ("PATCH", f"/mail/accounts/{mine}")]
            for i, body in enumerate(malformed_bodies(random.Random(15), 60)):
                method, path = writes[i % len(writes)]
                try:
                    valid = isinstance(json.loads(body.decode("utf-8-sig")), dict)  # e.g. a BOM and {}: no change
                except (ValueError, RecursionError):
                    valid = False
                check(method, path, data=body, headers={"Content-Type": "application/json"},
                      expect=(200, 400, 404) if valid else None)

            # Wrong types and values.
            for body in ({"provider": 5}, {"provider": ["gmail"]}, {"provider": None}, {"provider": "x" * 100_000},
                         {"provider": "gmail", "refresh_token": 5}, {"provider": "gmail", "refresh_token": ""},
                         {"provider": "gmail", "sync": []}, {"provider": "gmail", "sync": {"folders": [1]}}, [], "gmail", 5, None):
                check("POST", "/mail/connect", json=body)
            for body in ({"account": 5}, {"account": ["x"]}, {"account": {"$ne": ""}}, {"account": ""}, {"account": "a" * 5000},
                         {"account": theirs}, {}, [], None):
                check("POST", "/mail/disconnect", json=body)
            for body in ({"folders": 5}, {"folders": []}, {"folders": [""]}, {"folders": ["a" * 10_000]}, {"folders": ["a\r\nb"]},
                         {"folders": ["x"] * 1000}, {"bodies": "yes"}, {"bodies": 1}, {"keep_html": 0}, {"exclude_spam_trash": None},
                         {"sync_window_days": True}, {"sync_window_days": "365"}, {"sync_window_days": 0}, {"sync_window_days": 1e300},
                         {"sync_window_days": 2.5}, {"sync_window_days": -1}, {"nope": 1}, [], "x", 5, None):
                check("PATCH", f"/mail/accounts/{mine}", json=body)

            # Oversized bodies.
            big = b'{"provider": "gmail", "refresh_token": "' + b"x" * 8_000_000 + b'"}'
            for method, path in writes:
                try:
                    check(method, path, data=big, headers={"Content-Type": "application/json"})
                except requests.ConnectionError:
                    pass  # the server may cut the connection once it has answered 413

            # Tricks in the ids of the path: never a 5xx, never another user's account or attachment.
            tricks = ["..", "../..", "..%2F..%2Fmail.db", "%2e%2e%2f%2e%2e", "%00", "a%00b", "%FF%FE", "x" * 5000,
                      quote(theirs, safe=""), theirs + "%2F..", "%E2%80%AE", "%0D%0AX-Injected:%201", "*", "%25"]
            for trick in tricks:
                check("PATCH", f"/mail/accounts/{trick}", json={"bodies": False})
                check("POST", f"/mail/accounts/{trick}/sync", json={})
            message, attachment = quote(bobs, safe=""), quote(bob_attachment["id"], safe="")
            for m, a in ((message, attachment), *((t, attachment) for t in tricks), *((message, t) for t in tricks)):
                check("GET", f"/mail/messages/{m}/attachments/{a}")
                check("GET", f"/mail/messages/{m}/attachments/{a}?account={quote(theirs, safe='')}")
            check("GET", f"/mail/messages/{message}/attachments/{attachment}?account=" + "a" * 5000)

            assert not problems, problems[:10]
            # Nothing of ann's or bob's changed, and the server is well.
            statuses = {u.id: requests.get(f"{server.api_url}/mail/status", headers=u.headers, timeout=10).json()["accounts"]
                        for u in (ann, bob)}
            assert [(a["account"], a["state"], a["sync"]["bodies"]) for a in statuses[bob.id]] == [(theirs, "idle", True)]
            assert [(a["account"], a["sync"]["bodies"]) for a in statuses[ann.id]] == [(mine, True)]
            r = requests.get(f"{server.api_url}/mail/messages/{message}/attachments/{attachment}", headers=bob.headers, timeout=30)
            assert r.status_code == 200 and r.content == secret  # the owner still gets it
            assert not re.search(r"brain\.access\.\w+: \S+ \S+ 5\d\d ", server.log_text())

"""The dovecot harness (brain/testing/fakes/dovecot.py) really runs dovecot, with the IMAP extensions the
IMAP provider relies on: CONDSTORE, QRESYNC, IDLE, UIDPLUS, SPECIAL-USE, STARTTLS and implicit TLS.

These tests need Debian's dovecot-imapd (.ci/run installs it); without it they fail, never skip.
"""

from __future__ import annotations

import imaplib
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from brain.testing.fakes import dovecot as dovecot_module
from brain.testing.fakes.dovecot import Dovecot, make_message

ALICE = "alice@example.test"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Dovecot]:
    with Dovecot(tmp_path / "dovecot") as running:
        yield running


def _capabilities(conn: imaplib.IMAP4) -> set[str]:
    typ, data = conn.capability()
    assert typ == "OK"
    return set(data[0].decode().upper().split())


def test_missing_dovecot_fails_instead_of_skipping(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(dovecot_module, "SEARCH_PATH", [str(tmp_path)])
    with pytest.raises(AssertionError, match="dovecot is not installed"):
        Dovecot(tmp_path / "d").start()


def test_login_append_and_list(server: Dovecot) -> None:
    assert server.host == "127.0.0.1"
    uid = server.append(ALICE, "first")
    uids = server.append_many(ALICE, ["second", "third"])
    assert [uid, *uids] == [1, 2, 3]
    box = server.messages(ALICE)
    assert [m["subject"] for m in box.values()] == ["first", "second", "third"]
    assert all(m["message_id"].startswith("<") for m in box.values())
    # Wrong password is refused; other users' mailboxes are separate.
    conn = imaplib.IMAP4(server.host, server.port, timeout=10)
    with pytest.raises(imaplib.IMAP4.error):
        conn.login(ALICE, "wrong")
    conn.shutdown()
    assert server.uids("bob@example.test") == []
    with server.imap(ALICE, folder=None) as conn:
        typ, data = conn.list()
        listing = b"\n".join(d for d in data if isinstance(d, bytes)).decode()
    assert re.search(r"\\Sent\) \"/\" Sent", listing), listing
    assert "INBOX" in listing


def test_deliver_many_lands_in_the_mailbox(server: Dovecot) -> None:
    assert server.deliver_many(ALICE, [f"local {i}" for i in range(50)]) == 50  # into a new mailbox
    server.append(ALICE, "over imap")
    box = server.messages(ALICE)
    assert len(box) == 51 and sorted(box) == list(range(1, 52))
    assert {m["subject"] for m in box.values()} >= {"over imap", "local 0", "local 49"}


def test_flags_and_expunge(server: Dovecot) -> None:
    a, b, c = server.append_many(ALICE, ["a", "b", "c"])
    server.add_flags(ALICE, [a, c], [r"\Seen", "$Work"])
    server.remove_flags(ALICE, [c], [r"\Seen"])
    server.expunge(ALICE, [b])
    box = server.messages(ALICE)
    assert set(box) == {a, c}
    assert box[a]["flags"] == {r"\Seen", "$Work"}
    assert box[c]["flags"] == {"$Work"}


def test_condstore_and_qresync(server: Dovecot) -> None:
    server.append_many(ALICE, ["one", "two"])
    conn = imaplib.IMAP4(server.host, server.port, timeout=10)
    try:
        conn.login(ALICE, server.users[ALICE])
        caps = _capabilities(conn)
        assert {"CONDSTORE", "QRESYNC", "IDLE", "UIDPLUS", "SPECIAL-USE"} <= caps
        typ, data = conn._simple_command("SELECT", "INBOX", "(CONDSTORE)")
        assert typ == "OK", data
        conn.state = "SELECTED"  # imaplib's select() takes no parameters; we sent it raw
        oks = b" ".join(conn.untagged_responses.get("OK", []))
        match = re.search(rb"HIGHESTMODSEQ (\d+)", oks)
        assert match, oks
        highest = int(match.group(1))
        uidvalidity = int(conn.untagged_responses["UIDVALIDITY"][-1])
        conn.close()
        # QRESYNC must be enabled before SELECT; then VANISHED reports expunges since a MODSEQ.
        typ, data = conn._simple_command("ENABLE", "QRESYNC")
        assert typ == "OK" and b"QRESYNC" in b" ".join(conn.untagged_responses.pop("ENABLED", [b""]))
        server.add_flags(ALICE, [1], [r"\Flagged"])
        server.expunge(ALICE, [2])
        conn.untagged_responses.clear()
        typ, data = conn._simple_command("SELECT", "INBOX", f"(QRESYNC ({uidvalidity} {highest}))")
        assert typ == "OK", data
        assert conn.untagged_responses.get("VANISHED") == [b"(EARLIER) 2"]
        fetched = b" ".join(x for x in conn.untagged_responses.get("FETCH", []) if isinstance(x, bytes))
        assert re.search(rb"UID 1 .*\\Flagged", fetched) or re.search(rb"\\Flagged.*UID 1", fetched), fetched
    finally:
        conn.logout()


def test_hidden_capabilities(tmp_path: Path) -> None:
    with Dovecot(tmp_path / "d", capabilities_without=["CONDSTORE", "QRESYNC"]) as server:
        with server.imap(ALICE, folder=None) as conn:
            caps = _capabilities(conn)
    assert "CONDSTORE" not in caps and "QRESYNC" not in caps and "IDLE" in caps


def test_idle_sees_new_mail(server: Dovecot) -> None:
    conn = imaplib.IMAP4(server.host, server.port, timeout=10)
    try:
        conn.login(ALICE, server.users[ALICE])
        conn.select("INBOX")
        tag = conn._new_tag()
        conn.send(tag + b" IDLE\r\n")
        assert conn.readline().startswith(b"+")
        started = time.monotonic()
        server.append(ALICE, "while idling")
        conn.sock.settimeout(10)
        line = b""
        while b"EXISTS" not in line:
            line = conn.readline()
            assert line, "connection closed during IDLE"
        assert line.strip() == b"* 1 EXISTS"
        assert time.monotonic() - started < 10
        conn.send(b"DONE\r\n")
        while not line.startswith(tag):
            line = conn.readline()
        assert b"OK" in line
    finally:
        conn.logout()


def test_tls_modes(server: Dovecot) -> None:
    with imaplib.IMAP4_SSL(server.host, server.tls_port, ssl_context=server.ssl_context(), timeout=10) as conn:
        assert conn.login(ALICE, server.users[ALICE])[0] == "OK"
    with imaplib.IMAP4(server.host, server.port, timeout=10) as conn:
        assert "STARTTLS" in _capabilities(conn)
        conn.starttls(ssl_context=server.ssl_context())
        assert conn.login(ALICE, server.users[ALICE])[0] == "OK"


def test_restart_keeps_mail_and_drops_clients(server: Dovecot) -> None:
    uids = server.append_many(ALICE, ["kept", "also kept"])
    validity = server.uidvalidity(ALICE)
    conn = imaplib.IMAP4(server.host, server.port, timeout=10)
    conn.login(ALICE, server.users[ALICE])
    server.restart()
    with pytest.raises((imaplib.IMAP4.abort, OSError)):
        conn.noop()
        conn.noop()
    assert server.uids(ALICE) == uids
    assert server.uidvalidity(ALICE) == validity
    assert server.starts == 2


def test_hard_restart_is_a_crash_the_server_survives(server: Dovecot) -> None:
    uids = server.append_many(ALICE, ["kept"])
    conn = imaplib.IMAP4(server.host, server.port, timeout=10)
    conn.login(ALICE, server.users[ALICE])
    started = time.monotonic()
    server.stop(keep_mail=True, hard=True)
    assert time.monotonic() - started < 1.0  # no clean shutdown to wait for
    with pytest.raises((imaplib.IMAP4.abort, OSError)):
        conn.noop()
        conn.noop()
    server.start()
    assert server.uids(ALICE) == uids


def test_uidvalidity_reset_renumbers_the_same_mail(server: Dovecot) -> None:
    server.append_many(ALICE, ["x", "y", "z"])
    server.expunge(ALICE, [1])
    server.add_flags(ALICE, [3], [r"\Seen"])
    before = server.messages(ALICE)
    old = server.uidvalidity(ALICE)
    new = server.reset_uidvalidity(ALICE)
    assert new != old
    after = server.messages(ALICE)
    assert sorted(after) == [1, 2]  # new UIDs for the same two messages
    assert sorted(m["message_id"] for m in after.values()) == sorted(m["message_id"] for m in before.values())
    assert {m["subject"]: m["flags"] for m in after.values()} == {"y": set(), "z": {r"\Seen"}}


def test_stop_frees_ports_and_removes_mail(tmp_path: Path) -> None:
    server = Dovecot(tmp_path / "d").start()
    mail_root = server.mail_root
    assert mail_root is not None and mail_root.exists()
    server.append(ALICE, make_message("bye"))
    server.stop()
    assert not mail_root.exists()
    for port in (server.port, server.tls_port):
        with pytest.raises(OSError), socket.create_connection((server.host, port), timeout=2):
            pass


def test_set_password_applies_to_new_logins(server: Dovecot) -> None:
    old = server.users[ALICE]
    server.set_password(ALICE, "changed-password")
    with pytest.raises(imaplib.IMAP4.error), imaplib.IMAP4(server.host, server.port, timeout=10) as conn:
        conn.login(ALICE, old)
    assert server.uids(ALICE) == []  # logs in with the new password

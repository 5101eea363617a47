"""The IMAP provider against a real dovecot (brain/testing/fakes/dovecot.py), through the core's own
token provider: connect validation, login outcomes, TLS modes, paging, the three incremental
modes, UIDVALIDITY changes, special-use folders and IDLE.

These need Debian's dovecot-imapd (.ci/run installs it); without it they fail, never skip.
"""

from __future__ import annotations

import datetime
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from brain.mail.provider import (
    Address,
    AuthFailed,
    ConnectRejected,
    Credentials,
    CursorExpired,
    Flags,
    MessageGone,
    SyncContext,
    SyncOptions,
    SyncPage,
    Transient,
)
from brain.testing import free_port, sync_context, wait_until
from brain.testing.conformance import ProviderConformance
from brain.testing.fakes.dovecot import Dovecot, make_message
from brain.testing.fakes.mime import Part, build_message
from brain_imap import idle as idle_module
from brain_imap import uidset
from brain_imap.messages import message_id
from brain_imap.provider import ImapProvider

ALICE = "alice@example.test"


@pytest.fixture(scope="module")
def dovecot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dovecot]:
    server = Dovecot(tmp_path_factory.mktemp("dovecot"), users={ALICE: "pw", **{f"user{i}@example.test": f"pw{i}" for i in range(USERS)}})
    server.start()
    try:
        yield server
    finally:
        server.stop()


USERS = 50
_next_user = iter(range(USERS))


@pytest.fixture
def user(dovecot: Dovecot) -> str:
    """A mailbox no other test touches (one dovecot serves the whole module)."""
    return f"user{next(_next_user)}@example.test"


def fields(dovecot: Dovecot, user: str, **overrides: Any) -> dict[str, Any]:
    base = {"host": "127.0.0.1", "port": dovecot.port, "tls": "starttls", "username": user, "password": dovecot.users[user]}
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


# dovecot listens on loopback, which the host policy refuses unless allowed.
LOOPBACK = ["127.0.0.0/8", "::1/128"]


def make_provider(dovecot: Dovecot, **settings: Any) -> ImapProvider:
    return ImapProvider(
        {"ca_file": str(dovecot.ca_path), "timeout": 10, "allowed_networks": LOOPBACK, **settings},
        page_size=settings.pop("page_size", 100),
    )


def context(provider: ImapProvider, credentials: Credentials) -> SyncContext:
    return sync_context(provider, credentials, account_id="acct", address=credentials.extra.get("address", ""))


class ImapMailbox:
    """The conformance suite's driver of dovecot: one user's INBOX."""

    def __init__(self, dovecot: Dovecot, user: str) -> None:
        self.dovecot = dovecot
        self.user = user

    def provider(self, *, page_size: int) -> ImapProvider:
        return make_provider(self.dovecot, page_size=page_size)

    def credentials(self) -> Credentials:
        credentials = make_provider(self.dovecot).direct_credentials(fields(self.dovecot, self.user))
        assert credentials is not None
        return credentials

    def address(self) -> str:
        return self.user

    def add(self, subject: str) -> str:
        uid = self.dovecot.append(self.user, subject)
        return message_id("INBOX", self.dovecot.uidvalidity(self.user), uid)

    def delete(self, message: str) -> None:
        self.dovecot.expunge(self.user, [int(message.rpartition(":")[2])])

    def revoke(self) -> None:
        self.dovecot.set_password(self.user, "changed-by-the-user")
        self.dovecot.restart()  # drops the sessions still logged in with the old password


class TestImapConformance(ProviderConformance):
    @pytest.fixture
    def mailbox(self, dovecot: Dovecot, user: str) -> ImapMailbox:
        return ImapMailbox(dovecot, user)


def connect(dovecot: Dovecot, user: str, provider: ImapProvider | None = None, **overrides: Any) -> tuple[ImapProvider, SyncContext]:
    provider = provider or make_provider(dovecot)
    creds = provider.direct_credentials(fields(dovecot, user, **overrides))
    return provider, context(provider, creds)


def run_pages(step: Any, start: dict[str, Any] | None) -> tuple[list[SyncPage], dict[str, Any]]:
    """Call ``step(position)`` until the last page; every page and the final cursor."""
    pages = []
    position = start
    for _ in range(1000):
        page = step(position)
        pages.append(page)
        if page.next is None:
            assert page.cursor is not None
            return pages, page.cursor
        position = page.next
    raise AssertionError("sync did not finish")


def run_initial(provider: ImapProvider, ctx: SyncContext) -> tuple[list[SyncPage], dict[str, Any]]:
    return run_pages(lambda cp: provider.initial_sync(ctx, cp), None)


def run_incremental(provider: ImapProvider, ctx: SyncContext, cursor: dict[str, Any]) -> tuple[list[SyncPage], dict[str, Any]]:
    return run_pages(lambda pos: provider.incremental_sync(ctx, pos), cursor)


def uid_of(message: Any) -> int:
    return int(message.message_id.rsplit(":", 1)[1])


def by_id(pages: list[SyncPage]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for page in pages:
        for m in page.messages:
            assert m.message_id not in out, f"{m.message_id} twice in one run"
            out[m.message_id] = m
    return out


# Connecting ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bad", "named"),
    [
        ({"host": None}, "host"),
        ({"password": ""}, "password"),
        ({"host": "imaps://mail.example.test"}, "host"),
        ({"host": "mail.example.test:993"}, "host"),
        ({"tls": "ssl"}, "tls"),
        ({"port": "993"}, "port"),
        ({"port": 70000}, "port"),
        ({"tls": "plain", "host": "mail.example.test"}, "loopback"),
        ({"folders": []}, "folders"),
        ({"folders": ["INBOX", 3]}, "folders"),
        ({"username": "a\r\nb"}, "username"),
        ({"refresh_token": "x"}, "refresh_token"),
    ],
)
def test_connect_fields_are_checked(dovecot: Dovecot, bad: dict[str, Any], named: str) -> None:
    with pytest.raises(ConnectRejected, match=named):
        make_provider(dovecot).direct_credentials(fields(dovecot, ALICE, **bad))


def test_login_outcomes(dovecot: Dovecot, user: str) -> None:
    provider = make_provider(dovecot)
    good = provider.refresh(provider.direct_credentials(fields(dovecot, user)))
    assert good.access_token and good.expires_at and good.expires_at > time.time() + 3600
    with pytest.raises(AuthFailed, match="login refused"):
        provider.refresh(provider.direct_credentials(fields(dovecot, user, password="wrong")))
    with pytest.raises(Transient):
        provider.refresh(provider.direct_credentials(fields(dovecot, user, port=free_port())))


def test_tls_modes(dovecot: Dovecot, user: str) -> None:
    provider = make_provider(dovecot)
    for mode, port in (("implicit", dovecot.tls_port), ("starttls", dovecot.port), ("plain", dovecot.port)):
        provider.refresh(provider.direct_credentials(fields(dovecot, user, tls=mode, port=port)))
    # Without the test CA the server's certificate is not trusted: refused, not ignored.
    untrusting = ImapProvider({"timeout": 10, "allowed_networks": LOOPBACK})
    with pytest.raises(ConnectRejected, match="certificate"):
        untrusting.refresh(untrusting.direct_credentials(fields(dovecot, user, tls="implicit", port=dovecot.tls_port)))


def test_host_policy_refuses_non_public_addresses_unless_allowed(dovecot: Dovecot, user: str) -> None:
    """A user cannot point brain at loopback, private or metadata addresses (network probing)."""
    strict = ImapProvider({"ca_file": str(dovecot.ca_path), "timeout": 10})
    for host in ("127.0.0.1", "localhost", "10.1.2.3", "192.168.0.10", "169.254.169.254", "::1",
                 "::ffff:127.0.0.1", "0.0.0.0", "100.64.0.1", "fc00::1", "224.0.0.1"):
        with pytest.raises(ConnectRejected, match="non-public address"):
            strict.direct_credentials(fields(dovecot, user, host=host))
    with pytest.raises(ConnectRejected, match="cannot be resolved"):
        strict.direct_credentials(fields(dovecot, user, host="no-such-host.invalid"))
    # Stored credentials whose host is refused now (the policy tightened) fail before connecting.
    allowed = make_provider(dovecot)
    credentials = allowed.direct_credentials(fields(dovecot, user))
    with pytest.raises(ConnectRejected, match="non-public address"):
        strict.refresh(credentials)
    allowed.refresh(credentials)  # allowed_networks lets the operator's own networks through
    with pytest.raises(ValueError, match="allowed_networks"):
        ImapProvider({"allowed_networks": ["not-a-network"]})


def test_connection_goes_to_the_checked_address_not_a_new_lookup(dovecot: Dovecot, user: str) -> None:
    """The pinned client never resolves the name again (DNS rebinding gains nothing)."""
    from brain_imap.hosts import PinnedIMAPClient

    client = PinnedIMAPClient("mail.example.invalid", address="127.0.0.1", port=dovecot.port, ssl=False, timeout=10)
    try:
        assert client.has_capability("IMAP4REV1")
    finally:
        client.shutdown()


def test_address_and_folders_checked_at_connect(dovecot: Dovecot, user: str) -> None:
    provider, ctx = connect(dovecot, user, address="Alice <a@example.test>")
    assert provider.account_address(ctx) == "Alice <a@example.test>"
    provider, ctx = connect(dovecot, user, folders=["INBOX", "Nope"])
    with pytest.raises(ConnectRejected, match="Nope"):
        provider.account_address(ctx)
    provider.close()


# Initial sync ------------------------------------------------------------------------------


def test_initial_sync_pages_and_resumes_by_uid(dovecot: Dovecot, user: str) -> None:
    uids = dovecot.append_many(user, [f"message {i}" for i in range(25)])
    dovecot.add_flags(user, uids[:3], [r"\Seen", r"\Flagged", "$Work"])
    provider, ctx = connect(dovecot, user, provider=make_provider(dovecot, page_size=10))
    first = provider.initial_sync(ctx, None)
    assert len(first.messages) == 10 and first.estimated_total == 25 and first.next is not None
    # A new provider (a restarted server) resumes from the checkpoint alone.
    provider.close()
    provider2, ctx2 = connect(dovecot, user, provider=make_provider(dovecot, page_size=10))
    rest, cursor = [], None
    checkpoint = first.next
    while checkpoint is not None:
        page = provider2.initial_sync(ctx2, checkpoint)
        rest.append(page)
        checkpoint, cursor = page.next, page.cursor
    got = by_id([first, *rest])
    assert len(got) == 25 and cursor is not None
    validity = dovecot.uidvalidity(user)
    m = got[f"INBOX:{validity}:{uids[0]}"]
    assert m.subject == "message 0" and m.internet_message_id and m.internet_message_id.startswith("<")
    assert m.labels == ("$Work",) and m.folders == ("INBOX",)
    assert m.flags == Flags(read=True, starred=True, important=False)
    assert got[f"INBOX:{validity}:{uids[5]}"].flags == Flags(read=False, starred=False, important=False)
    assert m.sender == Address("", "sender@example.test") and m.to == (Address("", user),)
    assert m.date and m.date.endswith("Z") and m.body_text == "hello" and m.direction == "received"
    assert m.size and m.size > 100
    assert m.thread_id == m.internet_message_id
    assert cursor["states"]["INBOX"]["mode"] == "qresync"
    provider2.close()


def test_special_use_folders_by_flag(dovecot: Dovecot, user: str) -> None:
    dovecot.append(user, "inbox mail")
    dovecot.append(user, "sent mail", folder="Sent")
    dovecot.append(user, "draft", folder="Drafts")
    provider, ctx = connect(dovecot, user, folders=["INBOX", "\\Sent", "\\Important"])  # no \Important folder
    pages, cursor = run_initial(provider, ctx)
    got = by_id(pages)
    assert sorted(m.subject for m in got.values()) == ["inbox mail", "sent mail"]
    assert {m.subject: m.folders for m in got.values()} == {"inbox mail": ("INBOX",), "sent mail": ("Sent",)}
    assert {m.subject: m.direction for m in got.values()} == {"inbox mail": "received", "sent mail": "sent"}
    assert cursor["folders"] == ["INBOX", "Sent"]
    dovecot.append(user, "sent later", folder="Sent")
    pages, _ = run_incremental(provider, ctx, cursor)
    assert [m.subject for m in by_id(pages).values()] == ["sent later"]
    provider.close()


def test_every_folder_but_junk_and_trash_and_new_ones_later(dovecot: Dovecot, user: str) -> None:
    for folder in ("INBOX", "Sent", "Drafts", "Archive", "Junk", "Trash"):
        dovecot.append(user, f"in {folder}", folder=folder, flags=[r"\Draft"] if folder == "Drafts" else [])
    provider, ctx = connect(dovecot, user)
    pages, cursor = run_initial(provider, ctx)
    got = {m.subject: m for m in by_id(pages).values()}
    assert sorted(got) == ["in Archive", "in Drafts", "in INBOX", "in Sent"]
    assert [got[s].direction for s in ("in INBOX", "in Sent", "in Drafts", "in Archive")] == [
        "received", "sent", "draft", "received"]
    assert cursor["folders"][0] == "INBOX"

    dovecot.create_folder(user, "Projects")
    dovecot.append(user, "in Projects", folder="Projects")
    pages, cursor = run_incremental(provider, ctx, cursor)
    assert [(m.subject, m.folders) for m in by_id(pages).values()] == [("in Projects", ("Projects",))]
    pages, cursor = run_incremental(provider, ctx, cursor)
    assert by_id(pages) == {}

    ctx.options = SyncOptions(exclude_spam_trash=False)
    with pytest.raises(CursorExpired):  # Junk and Trash are new to it...
        pages, cursor = run_incremental(provider, ctx, {**cursor, "folders": [*cursor["folders"], "Gone"]})
    pages, _ = run_initial(provider, ctx)
    assert {"in Junk", "in Trash"} <= {m.subject for m in by_id(pages).values()}
    provider.close()


def test_only_messages_received_inside_the_sync_window_are_fetched(dovecot: Dovecot, user: str) -> None:
    old = datetime.datetime(2020, 1, 1, 12, tzinfo=datetime.timezone.utc)
    dovecot.append(user, "old", internal_date=old)
    dovecot.append(user, "old sent", folder="Sent", internal_date=old)
    dovecot.append(user, "recent")
    dovecot.append(user, "recent sent", folder="Sent")
    provider, ctx = connect(dovecot, user)
    ctx.options = SyncOptions(since=datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc).timestamp())
    pages, cursor = run_initial(provider, ctx)
    assert sorted(m.subject for m in by_id(pages).values()) == ["recent", "recent sent"]  # by INTERNALDATE
    dovecot.append(user, "later")
    pages, _ = run_incremental(provider, ctx, cursor)
    assert [m.subject for m in by_id(pages).values()] == ["later"]
    provider.close()


PDF = b"%PDF-1.4\n" + bytes(range(256)) * 64
PNG = b"\x89PNG\r\n\x1a\n" + bytes(400)


def test_bodies_attachments_and_charsets_without_marking_anything_read(dovecot: Dovecot, user: str) -> None:
    dovecot.append(user, build_message(subject="Newsletter", html="<h1>News</h1><p>Item <b>one</b></p>"))
    dovecot.append(user, build_message(
        subject="Report", text="See the report.", html='<p>See <img src="cid:c1"></p>',
        attachments=[Part("Q1 report.pdf", "application/pdf", PDF)], inline=[Part("chart.png", "image/png", PNG, "c1")],
    ))
    dovecot.append(user, build_message(subject="Привет", text="Привет из Москвы", charset="koi8-r"))
    dovecot.append(user, build_message(subject="Grüße", text="Grüße – bis bald", charset="windows-1252"))
    whole, ctx = connect(dovecot, user)
    pages, _ = run_initial(whole, ctx)
    got = {m.subject: m for m in by_id(pages).values()}
    assert got["Newsletter"].body_text == "News\n\nItem one"
    report = got["Report"]
    assert report.body_text == "See the report."
    assert [(a.id, a.filename, a.mime_type, a.size, a.content_id, a.inline) for a in report.attachments] == [
        ("1.2.2", "chart.png", "image/png", len(PNG), "c1", True),
        ("2", "Q1 report.pdf", "application/pdf", len(PDF), None, False),
    ]
    assert got["Привет"].body_text == "Привет из Москвы" and got["Grüße"].body_text == "Grüße – bis bald"
    assert all(not flags for flags in (m["flags"] for m in dovecot.messages(user).values()))  # nothing \Seen

    # The same messages through skeletons (each larger than the whole-message cap).
    skeletal = make_provider(dovecot, max_message_bytes=100)
    _, ctx2 = connect(dovecot, user, provider=skeletal)
    pages, _ = run_initial(skeletal, ctx2)
    again = {m.subject: m for m in by_id(pages).values()}
    for subject, message in got.items():
        assert again[subject].body_text == message.body_text
        assert again[subject].attachments == message.attachments
        assert again[subject].sender == message.sender and again[subject].date == message.date
    assert all(not m["flags"] for m in dovecot.messages(user).values())

    pdf = whole.fetch_attachment(ctx, report.message_id, "2")
    assert (pdf.mime_type, pdf.filename, pdf.size, b"".join(pdf.chunks)) == ("application/pdf", "Q1 report.pdf", len(PDF), PDF)
    png = skeletal.fetch_attachment(ctx2, report.message_id, "1.2.2")
    assert (png.mime_type, png.filename, b"".join(png.chunks)) == ("image/png", "chart.png", PNG)
    for gone in ((report.message_id, "7"), (report.message_id.replace(":1", ":9999", 1), "2"), ("nonsense", "1")):
        with pytest.raises(MessageGone):
            whole.fetch_attachment(ctx, *gone)
    assert all(not m["flags"] for m in dovecot.messages(user).values())
    assert whole.revoke(ctx.tokens.credentials()).revoked is None

    without = make_provider(dovecot)
    _, ctx3 = connect(dovecot, user, provider=without)
    ctx3.options = SyncOptions(bodies=False)
    pages, _ = run_initial(without, ctx3)
    bare = {m.subject: m for m in by_id(pages).values()}
    assert bare["Report"].body_text == "" and bare["Report"].attachments == report.attachments
    for p in (whole, skeletal, without):
        p.close()


# Incremental sync ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("hidden", "mode"),
    [((), "qresync"), (("QRESYNC",), "condstore"), (("QRESYNC", "CONDSTORE"), "plain")],
)
def test_incremental_modes(tmp_path: Path, hidden: tuple[str, ...], mode: str) -> None:
    with Dovecot(tmp_path / "d", capabilities_without=hidden) as server:
        a, b, c = server.append_many(ALICE, ["a", "b", "c"])
        provider, ctx = connect(server, ALICE)
        pages, cursor = run_initial(provider, ctx)
        assert len(by_id(pages)) == 3 and cursor["states"]["INBOX"]["mode"] == mode
        validity = server.uidvalidity(ALICE)
        # Nothing happened: nothing reported.
        pages, cursor = run_incremental(provider, ctx, cursor)
        assert by_id(pages) == {} and not any(p.deleted for p in pages)
        # A flag change, an expunge and a new message.
        server.add_flags(ALICE, [a], [r"\Seen", "$Todo"])
        server.expunge(ALICE, [b])
        d = server.append(ALICE, "d")
        pages, cursor = run_incremental(provider, ctx, cursor)
        got = by_id(pages)
        deleted = [x for p in pages for x in p.deleted]
        assert deleted == [f"INBOX:{validity}:{b}"]
        assert got[f"INBOX:{validity}:{a}"].labels == ("$Todo",) and got[f"INBOX:{validity}:{a}"].flags.read
        assert got[f"INBOX:{validity}:{d}"].subject == "d"
        # Only what changed (plain mode re-reads the changed block, which here holds all).
        expected = {a, d} if mode != "plain" else {a, c, d}
        assert {uid_of(m) for m in got.values()} == expected
        # And the cursor moved on: the same changes are not reported twice.
        pages, cursor = run_incremental(provider, ctx, cursor)
        assert by_id(pages) == {} and not any(p.deleted for p in pages)
        provider.close()


def test_incremental_pages_through_many_changes(dovecot: Dovecot, user: str) -> None:
    provider, ctx = connect(dovecot, user, provider=make_provider(dovecot, page_size=7))
    _, cursor = run_initial(provider, ctx)
    dovecot.append_many(user, [f"n{i}" for i in range(30)])
    pages, cursor = run_incremental(provider, ctx, cursor)
    assert [len(p.messages) for p in pages if p.messages] == [7, 7, 7, 7, 2] and len(by_id(pages)) == 30
    provider.close()


def test_uidvalidity_change_is_cursor_expired(tmp_path: Path) -> None:
    with Dovecot(tmp_path / "d") as server:
        server.append_many(ALICE, ["x", "y"])
        provider, ctx = connect(server, ALICE)
        _, cursor = run_initial(provider, ctx)
        provider.close()
        server.reset_uidvalidity(ALICE)
        with pytest.raises(CursorExpired, match="UIDVALIDITY"):
            provider.incremental_sync(ctx, cursor)
        # The full resync that follows sees the renumbered messages under new ids.
        pages, _ = run_initial(provider, ctx)
        validity = server.uidvalidity(ALICE)
        assert sorted(by_id(pages)) == [f"INBOX:{validity}:1", f"INBOX:{validity}:2"]
        provider.close()


def test_server_restart_between_steps_is_survived(tmp_path: Path) -> None:
    with Dovecot(tmp_path / "d") as server:
        server.append_many(ALICE, ["x"])
        provider, ctx = connect(server, ALICE)
        _, cursor = run_initial(provider, ctx)
        server.restart()  # the provider's kept connection is now dead
        server.append(ALICE, "after restart")
        pages, cursor = run_incremental(provider, ctx, cursor)
        assert [m.subject for m in by_id(pages).values()] == ["after restart"]
        server.stop(keep_mail=True)
        with pytest.raises(Transient):
            provider.incremental_sync(ctx, cursor)
        provider.close()


# IDLE ---------------------------------------------------------------------------------------


def test_idle_wakes_the_core_on_new_mail_and_stops_on_close(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Long polls: a stop that waited for the poll to time out would take seconds.
    monkeypatch.setattr(idle_module, "_CHECK_SECONDS", 5.0)
    with Dovecot(tmp_path / "d") as server:
        provider, ctx = connect(server, ALICE)
        wakes: list[str] = []
        lock = threading.Lock()

        def wake(reason: str) -> None:
            with lock:
                wakes.append(reason)

        ctx.wake = wake  # type: ignore[attr-defined]
        _, cursor = run_initial(provider, ctx)
        assert provider._watcher is None  # only after a finished incremental run
        _, cursor = run_incremental(provider, ctx, cursor)
        watcher = provider._watcher
        assert watcher is not None
        wait_until(lambda: "idle-connected" in wakes, timeout=10, what="IDLE to connect")
        started = time.monotonic()
        server.append(ALICE, make_message("pushed"))
        wait_until(lambda: "idle" in wakes, timeout=10, what="IDLE to report the new message")
        assert time.monotonic() - started < 5
        # A flag change and an expunge wake it too.
        count = wakes.count("idle")
        server.add_flags(ALICE, [1], [r"\Seen"])
        wait_until(lambda: wakes.count("idle") > count, timeout=10, what="IDLE to report a flag change")
        # The server restarts: the watcher reconnects and wakes the core to catch up.
        connects = watcher.connects
        server.restart()
        wait_until(lambda: watcher.connects > connects, timeout=20, what="IDLE to reconnect")
        wait_until(lambda: watcher._session is not None, timeout=10, what="IDLE session")
        stopping = time.monotonic()
        provider.close()
        assert not watcher.alive
        assert time.monotonic() - stopping < 2.5  # cut at once, not polled out


def test_uid_sets() -> None:
    assert uidset.encode([5, 1, 2, 3, 9, 10]) == "1:3,5,9:10"
    assert uidset.decode("1:3,5,10:9") == [1, 2, 3, 5, 9, 10]
    assert uidset.take("1:3,5,9:10", 4) == ([1, 2, 3, 5], "9:10")
    assert uidset.take("1:10", 3) == ([1, 2, 3], "4:10")
    assert uidset.take("1:4", 3) == ([1, 2, 3], "4")
    assert uidset.take("", 3) == ([], "")


def test_headers_are_decoded_and_odd_messages_survive(dovecot: Dovecot, user: str) -> None:
    encoded = (
        b"From: =?utf-8?q?J=C3=BCrgen?= <j@example.test>\r\n"
        b"To: a@example.test, \"B, Person\" <b@example.test>\r\n"
        b"Cc: c@example.test, =?utf-8?q?Z=C3=B6e?= <z@example.test>\r\n"
        b"Subject: =?utf-8?b?R3LDvMOfZQ==?=\r\n"
        b"Date: Tue, 03 Jan 2023 10:00:00 +0200\r\n"
        b"Message-ID: <child@example.test>\r\n"
        b"In-Reply-To: <parent@example.test>\r\n"
        b"References: <root@example.test> <parent@example.test>\r\n"
        b"\r\nbody\r\n"
    )
    bare = b"Subject: no date, no id\r\n\r\nx\r\n"
    dovecot.append(user, encoded)
    dovecot.append(user, bare)
    provider, ctx = connect(dovecot, user)
    pages, _ = run_initial(provider, ctx)
    first, second = sorted(by_id(pages).values(), key=uid_of)
    assert first.subject == "Grüße" and first.sender == Address("Jürgen", "j@example.test")
    assert first.to == (Address("", "a@example.test"), Address("B, Person", "b@example.test"))
    assert first.cc == (Address("", "c@example.test"), Address("Zöe", "z@example.test"))
    assert first.date == "2023-01-03T08:00:00.000Z"
    assert first.thread_id == "<root@example.test>" and first.internet_message_id == "<child@example.test>"
    assert first.snippet == "body"
    assert second.subject == "no date, no id" and second.internet_message_id is None
    assert second.date and second.date.endswith("Z")  # INTERNALDATE stands in
    provider.close()


def test_plugin_settings_are_checked_at_startup(tmp_path: Path) -> None:
    for env, named in (
        ({"BRAIN_PLUGINS__IMAP__FOLDRES": "INBOX"}, "plugins.imap.foldres"),
        ({"BRAIN_PLUGINS__IMAP__TIMEOUT": "soon"}, "plugins.imap.timeout"),
        ({"BRAIN_PLUGINS__IMAP__ALLOWED_NETWORKS": "10.0.0.0/8,intranet"}, "plugins.imap.allowed_networks"),
        ({"BRAIN_PLUGINS__IMAP__CA_FILE": str(tmp_path / "missing.pem")}, "plugins.imap.ca_file"),
    ):
        full = {k: v for k, v in os.environ.items() if not k.startswith("BRAIN_")}
        full.update({"BRAIN_PLUGINS__ENABLED": "imap", **env})
        out = subprocess.run(
            [sys.executable, "-m", "brain", "serve", "--data-dir", str(tmp_path / "d"), "--auth-port", "0", "--api-port", "0"],
            capture_output=True, text=True, timeout=60, env=full, cwd=tmp_path,
        )
        assert out.returncode == 2, out.stderr
        assert named in out.stderr, out.stderr

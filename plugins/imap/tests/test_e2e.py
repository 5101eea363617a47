"""End to end: the real `brain serve` process (imap plugin enabled) against a real dovecot.

A user signs up on the auth role, connects a mailbox with `POST /mail/connect`, and reads what
sync made of it with `GET /events` on the API role, exactly as a client would. The mailbox is
changed over IMAP by the dovecot harness, as another mail client would change it. The whole
data of events is checked for a plain message and for each shape issue 15 names (a reply with
alternatives, an inline image and an attachment; HTML only; a non-UTF-8 charset; folders).

These need Debian's dovecot-imapd (.ci/run installs it); without it they fail, never skip.
"""

from __future__ import annotations

import datetime
import itertools
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import requests

from brain.testing.fakes.dovecot import Dovecot
from brain.testing.fakes.mime import Part, build_message
from tests.support import BrainServer, wait_until

ALICE = "alice@example.test"
RECEIVED, UPDATED, DELETED = "mail.message.received", "mail.message.updated", "mail.message.deleted"
_emails = itertools.count()


@pytest.fixture
def dovecot(tmp_path: Path) -> Iterator[Dovecot]:
    with Dovecot(tmp_path / "dovecot") as running:
        yield running


def start_brain(tmp_path: Path, dovecot: Dovecot, *, convert_workers: int = -1, **imap_settings: Any) -> BrainServer:
    env = {
        "BRAIN_PLUGINS__ENABLED": "gmail,outlook,imap",
        "BRAIN_PLUGINS__IMAP__CA_FILE": str(dovecot.ca_path),
        "BRAIN_PLUGINS__IMAP__TIMEOUT": "10",
        # dovecot listens on loopback, which the host policy refuses unless allowed.
        "BRAIN_PLUGINS__IMAP__ALLOWED_NETWORKS": "127.0.0.0/8,::1/128",
        **{f"BRAIN_PLUGINS__IMAP__{k.upper()}": str(v) for k, v in imap_settings.items()},
    }
    # A long poll interval: anything that shows up quickly came through IDLE (or a retry).
    config = {"mail": {"sync_interval_seconds": 3600.0, "retry_base_seconds": 0.2, "max_backoff_seconds": 2.0,
                       "convert_workers": convert_workers}}
    return BrainServer(tmp_path / "brain", env=env, config=config).start()


class Client:
    """One signed-up user talking to both roles."""

    def __init__(self, server: BrainServer) -> None:
        self.server = server
        email = f"user{next(_emails)}@example.com"
        r = requests.post(
            f"{server.auth_url}/api/auth/sign-up/email",
            json={"name": "Test User", "email": email, "password": "correct horse battery staple"},
            timeout=15,
        )
        assert r.status_code == 200, r.text
        self.headers = {"Authorization": f"Bearer {r.json()['jwt']}"}

    def post(self, path: str, body: dict[str, Any]) -> requests.Response:
        return requests.post(f"{self.server.api_url}{path}", json=body, headers=self.headers, timeout=30)

    def status(self) -> list[dict[str, Any]]:
        r = requests.get(f"{self.server.api_url}/mail/status", headers=self.headers, timeout=10)
        assert r.status_code == 200, r.text
        return r.json()["accounts"]

    def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        cursor = None
        for _ in range(1000):
            params: dict[str, Any] = {"limit": 1000}
            if kind:
                params["type"] = kind
            if cursor:
                params["cursor"] = cursor
            r = requests.get(f"{self.server.api_url}/events", params=params, headers=self.headers, timeout=10)
            assert r.status_code == 200, r.text
            body = r.json()
            out.extend(e for e in body["events"] if e["type"].startswith("mail."))
            cursor = body["next_cursor"]
            if not cursor:
                return out
        raise AssertionError("too many pages")

    def mailbox_view(self) -> dict[str, list[str]]:
        """What the store says the mailbox holds now: message id -> state (events folded)."""
        live: dict[str, list[str]] = {}
        # Fold in commit order (the store's id), not the API's listing order.
        for event in sorted(self.events(), key=lambda e: e["id"]):
            data = event["data"]
            if event["type"] == RECEIVED:
                assert data["message_id"] not in live, f"{data['message_id']} received twice while live"
                live[data["message_id"]] = view_of(data)
            elif event["type"] == UPDATED:
                live[data["message_id"]] = view_of(data)
            elif event["type"] == DELETED:
                live.pop(data["message_id"], None)
        return live


def view_of(data: dict[str, Any]) -> list[str]:
    """A message's folders, keywords and flags as one sorted list."""
    flags = [name for name in ("read", "starred") if data["flags"][name]]
    return sorted([*data["folders"], *data["labels"], *flags])


def connect_body(dovecot: Dovecot, user: str = ALICE, **overrides: Any) -> dict[str, Any]:
    body = {
        "provider": "imap", "host": "127.0.0.1", "port": dovecot.tls_port, "tls": "implicit",
        "username": user, "password": dovecot.users[user],
    }
    body.update(overrides)
    return body


def server_view(dovecot: Dovecot, user: str = ALICE) -> dict[str, list[str]]:
    """The mailbox as dovecot has it, in the same shape as Client.mailbox_view."""
    validity = dovecot.uidvalidity(user)
    out = {}
    for uid, m in dovecot.messages(user).items():
        flags = {str(f).upper() for f in m["flags"]}  # type: ignore[union-attr]
        labels = {"INBOX"} | ({"read"} if "\\SEEN" in flags else set())
        labels |= {"starred"} if "\\FLAGGED" in flags else set()
        labels |= {str(f) for f in m["flags"] if not str(f).startswith("\\")}  # type: ignore[union-attr]
        out[f"INBOX:{validity}:{uid}"] = sorted(labels)
    return out


def account_state(client: Client) -> dict[str, Any]:
    (account,) = client.status()
    return account


def test_connect_sync_idle_flags_expunge_disconnect(tmp_path: Path, dovecot: Dovecot) -> None:
    uids = dovecot.append_many(ALICE, [f"before connect {i}" for i in range(12)])
    brain = start_brain(tmp_path, dovecot)
    try:
        client = Client(brain)
        # Bad input is a 400 naming the field; a wrong password is a 400 before anything is stored.
        r = client.post("/mail/connect", connect_body(dovecot, tls="plain", host="192.0.2.1"))
        assert r.status_code == 400 and "loopback" in r.json()["message"]
        r = client.post("/mail/connect", {"provider": "imap", "host": "127.0.0.1"})
        assert r.status_code == 400 and "username" in r.json()["message"] and "password" in r.json()["message"]
        r = client.post("/mail/connect", connect_body(dovecot, password="wrong"))
        assert r.status_code == 400 and r.json()["code"] == "PROVIDER_AUTH_FAILED", r.text
        assert "AUTHENTICATIONFAILED" in r.json()["message"] and "b'" not in r.json()["message"]
        assert client.status() == []

        r = client.post("/mail/connect", connect_body(dovecot))
        assert r.status_code == 201, r.text
        account = r.json()["account"]
        assert account["provider"] == "imap" and account["address"] == ALICE
        assert "password" not in r.text

        # Initial sync: every message, once.
        wait_until(lambda: account_state(client)["state"] == "idle", timeout=30, what="initial sync")
        status = account_state(client)
        assert status["initial_sync"] == {"complete": True, "done": 12, "estimated_total": 12}
        assert status["messages_synced"] == 12
        received = client.events(RECEIVED)
        assert sorted(e["data"]["subject"] for e in received) == sorted(f"before connect {i}" for i in range(12))
        assert client.mailbox_view() == server_view(dovecot)
        first = next(e for e in received if e["data"]["subject"] == "before connect 0")["data"]
        validity = dovecot.uidvalidity(ALICE)
        assert {k: v for k, v in first.items() if k not in ("account", "thread_id", "internet_message_id", "date")} == {
            "provider": "imap", "address": ALICE, "message_id": f"INBOX:{validity}:{uids[0]}",
            "in_reply_to": None, "references": [], "from": {"name": "", "address": "sender@example.test"},
            "to": [{"name": "", "address": ALICE}], "cc": [], "bcc": [], "reply_to": [],
            "subject": "before connect 0", "direction": "received", "folders": ["INBOX"], "labels": [],
            "flags": {"read": False, "starred": False, "important": False}, "size": first["size"],
            "snippet": "hello", "body_text": "hello", "body_text_clean": "hello", "attachments": [],
            "has_attachments": False, "truncated": False,
        }
        assert first["thread_id"] == first["internet_message_id"] and first["size"] > 100

        # New mail arrives: IDLE makes it show up within seconds (the poll interval is an hour).
        started = time.monotonic()
        dovecot.append(ALICE, "pushed by IDLE")
        wait_until(lambda: len(client.events(RECEIVED)) == 13, timeout=15, what="new mail via IDLE")
        assert time.monotonic() - started < 10
        assert "pushed by IDLE" in {e["data"]["subject"] for e in client.events(RECEIVED)}

        # A flag change is mail.message.updated; an expunge is mail.message.deleted.
        dovecot.add_flags(ALICE, [uids[0]], [r"\Seen", r"\Flagged"])
        wait_until(lambda: client.events(UPDATED), timeout=15, what="flag change via IDLE")
        (updated,) = client.events(UPDATED)
        assert updated["data"]["flags"] == {"read": True, "starred": True, "important": False}
        assert updated["data"]["folders"] == ["INBOX"] and updated["data"]["labels"] == []
        assert "body_text" not in updated["data"]  # a change of state carries the state only
        dovecot.expunge(ALICE, [uids[1], uids[2]])
        wait_until(lambda: len(client.events(DELETED)) == 2, timeout=15, what="expunge via IDLE")
        validity = dovecot.uidvalidity(ALICE)
        assert {e["data"]["message_id"] for e in client.events(DELETED)} == {
            f"INBOX:{validity}:{uids[1]}", f"INBOX:{validity}:{uids[2]}",
        }
        assert client.mailbox_view() == server_view(dovecot)
        wait_until(lambda: account_state(client)["messages_synced"] == 11, timeout=10, what="status count")

        # Disconnect: sync stops (IDLE too), the events stay.
        r = client.post("/mail/disconnect", {"account": account["account"]})
        assert r.status_code == 200 and r.json()["account"]["state"] == "disconnected"
        before = len(client.events())
        dovecot.append(ALICE, "after disconnect")
        time.sleep(2)
        assert len(client.events()) == before
    finally:
        brain.close()


def test_uidvalidity_reset_makes_the_store_match_the_mailbox(tmp_path: Path, dovecot: Dovecot) -> None:
    uids = dovecot.append_many(ALICE, [f"m{i}" for i in range(8)])
    dovecot.add_flags(ALICE, uids[:2], [r"\Seen"])
    brain = start_brain(tmp_path, dovecot)
    try:
        client = Client(brain)
        assert client.post("/mail/connect", connect_body(dovecot)).status_code == 201
        wait_until(lambda: account_state(client)["state"] == "idle", timeout=30, what="initial sync")
        old_view = client.mailbox_view()
        assert old_view == server_view(dovecot)
        # Meanwhile the server renumbers the folder (and some mail changes as well).
        dovecot.expunge(ALICE, [uids[3]])
        old_validity = dovecot.uidvalidity(ALICE)
        new_validity = dovecot.reset_uidvalidity(ALICE)
        dovecot.append(ALICE, "after reset")
        # The IDLE watcher reconnects, the sync sees the new UIDVALIDITY: full resync + reconcile.
        wait_until(
            lambda: client.mailbox_view() == server_view(dovecot) and account_state(client)["state"] == "idle",
            timeout=30,
            what="resync after the UIDVALIDITY change",
        )
        view = client.mailbox_view()
        assert len(view) == 8 and all(mid.startswith(f"INBOX:{new_validity}:") for mid in view)
        deleted = {e["data"]["message_id"] for e in client.events(DELETED)}
        assert deleted == set(old_view)  # every old id, once
        assert all(mid.startswith(f"INBOX:{old_validity}:") for mid in deleted)
        assert account_state(client)["messages_synced"] == 8
    finally:
        brain.close()


def test_dovecot_restart_mid_sync_resumes_without_duplicates(tmp_path: Path, dovecot: Dovecot) -> None:
    total = 400
    dovecot.deliver_many(ALICE, [f"bulk {i}" for i in range(total)])
    brain = start_brain(tmp_path, dovecot, page_size=4)
    try:
        client = Client(brain)
        assert client.post("/mail/connect", connect_body(dovecot)).status_code == 201
        wait_until(lambda: account_state(client)["initial_sync"]["done"] >= 20, timeout=30, interval=0.01, what="sync to start")
        log_offset = len(dovecot.log_text())
        dovecot.stop(keep_mail=True, hard=True)  # a crash: every session, the sync's included, dies now
        done_at_crash = account_state(client)["initial_sync"]["done"]
        assert done_at_crash < total, "the initial sync finished before the crash; make the mailbox bigger"
        dovecot.start()
        wait_until(lambda: account_state(client)["state"] == "idle", timeout=60, what="sync to finish after the restart")
        status = account_state(client)
        assert status["initial_sync"]["complete"] and status["messages_synced"] == total
        received = client.events(RECEIVED)
        ids = [e["data"]["message_id"] for e in received]
        assert len(ids) == len(set(ids)) == total  # no duplicates, no gaps
        assert client.mailbox_view() == server_view(dovecot)
        # The rest came over new sessions to the restarted server.
        assert f"Login: user=<{ALICE}>" in dovecot.log_text()[log_offset:]
    finally:
        brain.close()


def test_password_changed_on_the_server_means_needs_reauth(tmp_path: Path, dovecot: Dovecot) -> None:
    dovecot.append(ALICE, "hello")
    brain = start_brain(tmp_path, dovecot)
    try:
        client = Client(brain)
        assert client.post("/mail/connect", connect_body(dovecot)).status_code == 201
        wait_until(lambda: account_state(client)["state"] == "idle", timeout=30, what="initial sync")
        dovecot.set_password(ALICE, "a-new-password")
        dovecot.restart()  # drops every session: the next logins use the new password
        wait_until(lambda: account_state(client)["state"] == "needs_reauth", timeout=30, what="needs_reauth")
        assert "login refused" in account_state(client)["last_error"]
        # Connecting again with the new password resumes the same account.
        r = client.post("/mail/connect", connect_body(dovecot))
        assert r.status_code == 200, r.text
        dovecot.append(ALICE, "after reauth")
        wait_until(lambda: len(client.events(RECEIVED)) == 2, timeout=30, what="sync after reconnect")
        assert account_state(client)["state"] in ("idle", "syncing")
    finally:
        brain.close()


def test_every_folder_synced_and_an_attachment_downloaded_without_marking_read(tmp_path: Path, dovecot: Dovecot) -> None:
    pdf = b"%PDF-1.4\n" + bytes(range(256)) * 40
    dovecot.create_folder(ALICE, "Projects/Alpha")
    dovecot.append(ALICE, build_message(subject="Plan", text="The plan.", attachments=[Part("plan.pdf", "application/pdf", pdf)]),
                   folder="Projects/Alpha")
    dovecot.append(ALICE, build_message(subject="Sent one", sender=f"Alice <{ALICE}>"), folder="Sent")
    dovecot.append(ALICE, "junk", folder="Junk")
    for i in range(10):  # a page big enough for the conversion workers, whatever the machine's cores
        dovecot.append(ALICE, build_message(subject=f"filler {i}", html="<p>filler</p>"), folder="Archive")
    brain = start_brain(tmp_path, dovecot, convert_workers=2)
    try:
        client = Client(brain)
        assert client.post("/mail/connect", connect_body(dovecot)).status_code == 201
        wait_until(lambda: account_state(client)["state"] == "idle", timeout=30, what="initial sync")
        got = {e["data"]["subject"]: e["data"] for e in client.events(RECEIVED)}
        assert sorted(got) == ["Plan", "Sent one", *sorted(f"filler {i}" for i in range(10))]
        assert got["filler 3"]["body_text"] == "filler" and got["filler 3"]["folders"] == ["Archive"]
        assert "conversion workers failed" not in brain.log_text()  # they took IMAP's pages as they are
        plan = got["Plan"]
        assert plan["folders"] == ["Projects/Alpha"] and got["Sent one"]["direction"] == "sent"
        (attachment,) = plan["attachments"]
        url = (f"{brain.api_url}/mail/messages/{quote(plan['message_id'], safe='')}"
               f"/attachments/{quote(attachment['id'], safe='')}")
        r = requests.get(url, headers=client.headers, timeout=30)
        assert r.status_code == 200, r.text
        assert r.content == pdf and r.headers["Content-Type"] == "application/pdf"
        assert 'filename="plan.pdf"' in r.headers["Content-Disposition"]
        assert all(not m["flags"] for m in dovecot.messages(ALICE, folder="Projects/Alpha").values())
    finally:
        brain.close()


WHEN = datetime.datetime(2025, 3, 4, 9, 15, tzinfo=datetime.timezone.utc)


def test_each_shape_of_message_arrives_with_exactly_this_content(tmp_path: Path, dovecot: Dovecot) -> None:
    """Against the real dovecot, the whole data of each event: a reply with alternatives, an
    inline image and an attachment; HTML only; KOI8-R; one sent; in their folders, with flags."""
    pdf, png = b"%PDF-1.4\n" + bytes(range(256)) * 4, b"\x89PNG\r\n\x1a\n" + bytes(100)
    dovecot.create_folder(ALICE, "Projects/Alpha")
    raws = {}
    raws["Re: The report"] = report = build_message(
        sender="Bob Builder <bob@example.test>", to=[f"Alice <{ALICE}>"], cc=["Carol <carol@example.test>"],
        subject="Re: The report", date=WHEN, message_id="<report@example.test>",
        headers={"In-Reply-To": "<ask@example.test>", "References": "<root@example.test> <ask@example.test>"},
        text="Here it is.\n\nOn Mon, 3 Mar 2025 at 09:00, Alice <alice@example.test> wrote:\n> Where is the report?",
        html='<p>Here it is. <img src="cid:c1"></p><blockquote>Where is the report?</blockquote>',
        attachments=[Part("Q1 report.pdf", "application/pdf", pdf)], inline=[Part("chart.png", "image/png", png, "c1")],
    )
    dovecot.append(ALICE, report, folder="Projects/Alpha", flags=[r"\Seen", r"\Flagged", "$Work"])
    raws["March news"] = news_raw = build_message(
        subject="March news", date=WHEN, message_id="<news@example.test>",
        html="<html><body><h1>March news</h1><p>Three <b>new</b> things:</p><ul><li>search</li><li>mail</li></ul>"
             "<script>track()</script></body></html>",
    )
    dovecot.append(ALICE, news_raw)
    raws["Привет"] = privet = build_message(
        sender="Иван <ivan@example.test>", to=[ALICE], subject="Привет", text="Привет из Москвы", charset="koi8-r",
        date=WHEN, message_id="<privet@example.test>",
    )
    dovecot.append(ALICE, privet, folder="Archive")
    raws["Sent one"] = sent = build_message(
        sender=f"Alice <{ALICE}>", to=["bob@example.test"], subject="Sent one", text="On my way.", date=WHEN,
        message_id="<sent@example.test>",
    )
    dovecot.append(ALICE, sent, folder="Sent")
    brain = start_brain(tmp_path, dovecot)
    try:
        client = Client(brain)
        assert client.post("/mail/connect", connect_body(dovecot)).status_code == 201
        wait_until(lambda: account_state(client)["state"] == "idle", timeout=30, what="initial sync")
        got = {e["data"]["subject"]: e["data"] for e in client.events(RECEIVED)}
        assert sorted(got) == ["March news", "Re: The report", "Sent one", "Привет"]
        for subject, data in got.items():
            assert data.pop("account") and data.pop("message_id").count(":") == 2
            assert data.pop("size") == len(raws[subject])  # RFC822.SIZE
        common = {"provider": "imap", "address": ALICE, "date": "2025-03-04T09:15:00.000Z", "bcc": [], "reply_to": [],
                  "truncated": False}
        nobody = {"name": "", "address": ALICE}
        assert got["Re: The report"] == {
            **common, "thread_id": "<root@example.test>", "internet_message_id": "<report@example.test>",
            "in_reply_to": "<ask@example.test>", "references": ["<root@example.test>", "<ask@example.test>"],
            "from": {"name": "Bob Builder", "address": "bob@example.test"}, "to": [{"name": "Alice", "address": ALICE}],
            "cc": [{"name": "Carol", "address": "carol@example.test"}], "subject": "Re: The report",
            "direction": "received", "folders": ["Projects/Alpha"], "labels": ["$Work"],
            "flags": {"read": True, "starred": True, "important": False}, "snippet": "Here it is.",
            "body_text": "Here it is.\n\nOn Mon, 3 Mar 2025 at 09:00, Alice <alice@example.test> wrote:\n> Where is the report?",
            "body_text_clean": "Here it is.",
            "attachments": [
                {"id": "1.2.2", "filename": "chart.png", "mime_type": "image/png", "size": len(png), "content_id": "c1",
                 "inline": True},
                {"id": "2", "filename": "Q1 report.pdf", "mime_type": "application/pdf", "size": len(pdf),
                 "content_id": None, "inline": False},
            ],
            "has_attachments": True,
        }
        news = "March news\n\nThree new things:\n\n  • search\n  • mail"
        assert got["March news"] == {
            **common, "thread_id": "<news@example.test>", "internet_message_id": "<news@example.test>",
            "in_reply_to": None, "references": [], "from": {"name": "Alice Example", "address": "alice@example.com"},
            "to": [{"name": "Ada", "address": "ada@example.com"}], "cc": [], "subject": "March news",
            "direction": "received", "folders": ["INBOX"], "labels": [],
            "flags": {"read": False, "starred": False, "important": False},
            "snippet": "March news Three new things: • search • mail", "body_text": news,
            "body_text_clean": "March news\n\nThree new things:\n\n• search\n• mail",  # the clean text is not indented
            "attachments": [], "has_attachments": False,
        }
        assert got["Привет"] == {
            **common, "thread_id": "<privet@example.test>", "internet_message_id": "<privet@example.test>",
            "in_reply_to": None, "references": [], "from": {"name": "Иван", "address": "ivan@example.test"},
            "to": [nobody], "cc": [], "subject": "Привет", "direction": "received", "folders": ["Archive"],
            "labels": [], "flags": {"read": False, "starred": False, "important": False}, "snippet": "Привет из Москвы",
            "body_text": "Привет из Москвы", "body_text_clean": "Привет из Москвы", "attachments": [],
            "has_attachments": False,
        }
        assert got["Sent one"] == {
            **common, "thread_id": "<sent@example.test>", "internet_message_id": "<sent@example.test>",
            "in_reply_to": None, "references": [], "from": {"name": "Alice", "address": ALICE},
            "to": [{"name": "", "address": "bob@example.test"}], "cc": [], "subject": "Sent one", "direction": "sent",
            "folders": ["Sent"], "labels": [], "flags": {"read": False, "starred": False, "important": False},
            "snippet": "On my way.", "body_text": "On my way.", "body_text_clean": "On my way.", "attachments": [],
            "has_attachments": False,
        }
        assert all(not m["flags"] for m in dovecot.messages(ALICE).values())  # nothing marked read by syncing
    finally:
        brain.close()

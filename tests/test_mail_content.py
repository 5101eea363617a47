"""Mail as knowledge, through the sync engine and the real Gmail provider against the local fake:
what each event holds for real-world-shaped messages (HTML only, alternatives, attachments,
inline images, other charsets), label names, direction, spam and trash, the user's choice of
labels, window and bodies, and the one-time backfill of messages synced before they had content.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from brain.mail.provider import ConvertOptions, SyncOptions
from brain.testing.fakes.gmail import FakeGmail
from brain.testing.fakes.mime import Part, build_message
from tests.test_mail_engine import USER, Harness, loopback  # noqa: F401 - autouse fixture: loopback only

PDF = b"%PDF-1.4\n" + bytes(range(256)) * 40
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 300
WHEN = datetime.datetime(2025, 3, 4, 9, 15, tzinfo=datetime.UTC)


@pytest.fixture
def fake() -> Iterator[FakeGmail]:
    yield from FakeGmail.running()


def harness_for(tmp_path: Path, fake: FakeGmail, **options: Any) -> Harness:
    return Harness(tmp_path, fake, options=SyncOptions(**options))


def received(h: Harness) -> dict[str, dict[str, Any]]:
    """message id -> data of its received event."""
    return {e["data"]["message_id"]: e["data"] for e in h.store.events if e["type"] == "mail.message.received"}


def test_each_shape_of_message_arrives_as_text_with_its_attachments(tmp_path: Path, fake: FakeGmail) -> None:
    h = harness_for(tmp_path, fake)
    html_only = fake.add_message(
        USER, subject="Newsletter", body=None, date=WHEN,
        html="<html><body><h1>March news</h1><p>Three <b>new</b> features:</p><ul><li>search</li><li>mail</li></ul>"
        "<script>track()</script></body></html>",
    )
    alternative = fake.add_message(
        USER, subject="Re: Lunch", body="Sounds good!\n\nOn Tue, Mar 4, 2025 at 10:15 AM Ada <ada@example.com> wrote:\n"
        "> Lunch on Thursday?", html="<p>Sounds <i>good</i>!</p><blockquote>Lunch on Thursday?</blockquote>",
    )
    with_files = fake.add_message(
        USER, subject="Report", body="The report is attached.", html='<p>The report <img src="cid:chart1"></p>',
        attachments=[Part("Q1 report.pdf", "application/pdf", PDF)], inline=[Part("chart.png", "image/png", PNG, "chart1")],
    )
    latin = fake.add_message(USER, subject="Grüße", body="Grüße aus Köln – bis bald", charset="windows-1252")
    russian = fake.add_message(USER, subject="Привет", body="Привет из Москвы", charset="koi8-r")
    japanese = fake.add_message(USER, subject="会議", body="明日の会議は十時からです。", charset="shift_jis")
    h.run()

    events = received(h)
    assert events[html_only]["body_text"] == "March news\n\nThree new features:\n\n  • search\n  • mail"
    assert events[html_only]["date"] == "2025-03-04T09:15:00.000Z"
    assert "body_html" not in events[html_only]  # [mail] keep_html is off
    assert events[alternative]["body_text"].startswith("Sounds good!\n\nOn Tue")  # the plain alternative
    assert events[alternative]["body_text_clean"] == "Sounds good!"  # without the quoted history
    files = events[with_files]
    assert files["body_text"] == "The report is attached."
    assert files["attachments"] == [
        {"id": "0.1.1", "filename": "chart.png", "mime_type": "image/png", "size": len(PNG), "content_id": "chart1",
         "inline": True},
        {"id": "1", "filename": "Q1 report.pdf", "mime_type": "application/pdf", "size": len(PDF), "content_id": None,
         "inline": False},
    ]
    assert files["has_attachments"] is True and events[alternative]["has_attachments"] is False
    assert (events[latin]["subject"], events[latin]["body_text"]) == ("Grüße", "Grüße aus Köln – bis bald")
    assert (events[russian]["subject"], events[russian]["body_text"]) == ("Привет", "Привет из Москвы")
    assert events[japanese]["body_text"] == "明日の会議は十時からです。"
    for data in events.values():
        assert data["truncated"] is False and data["direction"] == "received"


def test_html_is_kept_when_the_account_asks(tmp_path: Path, fake: FakeGmail) -> None:
    h = harness_for(tmp_path, fake, convert=ConvertOptions(keep_html=True))
    message = fake.add_message(USER, body=None, html="<p>Hello <b>there</b></p>")
    h.run()
    assert received(h)[message]["body_html"] == "<p>Hello <b>there</b></p>"


def test_label_names_direction_and_flags(tmp_path: Path, fake: FakeGmail) -> None:
    receipts = fake.add_label(USER, "Receipts")
    travel = fake.add_label(USER, "Travel/2025")
    h = harness_for(tmp_path, fake)
    bill = fake.add_message(USER, label_ids=["INBOX", receipts, travel, "STARRED"])
    sent = fake.add_message(USER, sender=f"Me <{USER}>", to="bob@example.com", label_ids=["SENT"])
    draft = fake.add_message(USER, sender=f"Me <{USER}>", label_ids=["DRAFT"])
    mine_unlabelled = fake.add_message(USER, sender=f"Me <{USER}>", label_ids=["INBOX"])
    h.run()
    events = received(h)
    assert events[bill]["labels"] == ["INBOX", "Receipts", "Travel/2025", "STARRED"]
    assert events[bill]["flags"] == {"read": True, "starred": True, "important": False}
    assert events[bill]["folders"] == []
    assert [events[m]["direction"] for m in (bill, sent, draft, mine_unlabelled)] == ["received", "sent", "draft", "sent"]
    assert [r.path for r in fake.requests].count("/gmail/v1/users/me/labels") == 1  # asked once, not per page


def test_spam_and_trash_stay_out_and_leaving_them_brings_a_message_back(tmp_path: Path, fake: FakeGmail) -> None:
    h = harness_for(tmp_path, fake)
    kept = fake.add_message(USER, subject="kept")
    fake.add_message(USER, subject="spam", label_ids=["SPAM"])
    fake.add_message(USER, subject="binned", label_ids=["TRASH"])
    h.run()
    assert list(received(h)) == [kept]
    listed = [r for r in fake.requests if r.path == "/gmail/v1/users/me/messages"]
    assert {r.query["includeSpamTrash"] for r in listed} == {"false"}

    fake.modify_labels(USER, kept, add=["TRASH"], remove=["INBOX"])
    h.run()
    assert [(e["type"], e["data"]["message_id"]) for e in h.store.events[1:]] == [("mail.message.deleted", kept)]
    fake.modify_labels(USER, kept, add=["INBOX"], remove=["TRASH"])
    h.run()
    last = h.store.events[-1]
    assert (last["type"], last["data"]["subject"], last["key"].endswith(":3")) == ("mail.message.received", "kept", True)

    everything = harness_for(tmp_path / "all", fake, exclude_spam_trash=False)
    everything.run()
    assert sorted(d["subject"] for d in received(everything).values()) == ["binned", "kept", "spam"]


def test_only_the_chosen_labels_and_window_are_synced(tmp_path: Path, fake: FakeGmail) -> None:
    receipts = fake.add_label(USER, "Receipts")
    fake.add_label(USER, "Travel")
    old_bill = fake.add_message(USER, label_ids=[receipts], date=datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC))
    bill = fake.add_message(USER, label_ids=["INBOX", receipts])
    sent = fake.add_message(USER, label_ids=["SENT"])
    fake.add_message(USER, label_ids=["INBOX"])
    since = datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC).timestamp()
    h = harness_for(tmp_path, fake, folders=("receipts", "SENT", "Travel", "No such label"), since=since)
    h.run()
    assert set(received(h)) == {bill, sent}
    assert old_bill not in received(h)

    fake.modify_labels(USER, bill, remove=[receipts])  # still in INBOX, but not in a chosen label
    h.run()
    assert (h.store.events[-1]["type"], h.store.events[-1]["data"]["message_id"]) == ("mail.message.deleted", bill)

    # A message older than the window that changes later (history brings it) stays out too.
    before = len(h.store.events)
    fake.modify_labels(USER, old_bill, add=["STARRED"])
    h.run()
    assert len(h.store.events) == before and old_bill not in received(h)


def test_without_bodies_the_headers_flags_and_attachments_still_come(tmp_path: Path, fake: FakeGmail) -> None:
    h = harness_for(tmp_path, fake, bodies=False)
    message = fake.add_message(USER, subject="Report", body="secret text", attachments=[Part("a.pdf", "application/pdf", PDF)])
    h.run()
    data = received(h)[message]
    assert (data["body_text"], data["body_text_clean"], data["subject"]) == ("", "", "Report")
    assert [a["filename"] for a in data["attachments"]] == ["a.pdf"] and data["has_attachments"] is True


def test_raw_format_gives_the_same_message(tmp_path: Path, fake: FakeGmail) -> None:
    raw = build_message(
        subject="Report", text="See attached.", html="<p>See attached.</p>",
        attachments=[Part("a.pdf", "application/pdf", PDF)], date=WHEN,
    )
    message = fake.add_message(USER, raw=raw, label_ids=["INBOX"])
    full = harness_for(tmp_path / "full", fake)
    full.run()
    as_raw = Harness(tmp_path / "raw", fake, message_format="raw")
    as_raw.run()
    from_full, from_raw = received(full)[message], received(as_raw)[message]
    assert [a["id"] for a in from_full["attachments"]] == ["1"]  # Gmail's part id
    assert [a["id"] for a in from_raw["attachments"]] == ["2"]  # the MIME part number
    for data in (from_full, from_raw):
        data.pop("account")
        data.pop("attachments")
    assert from_full == from_raw


def old_brain_state(h: Harness) -> None:
    """Make mail.db look as a brain from before message content left it: index states of labels
    only, and no content key on the account."""
    with h.db.unit():
        rows = h.db.db.execute_sql("SELECT message_id, state FROM messages").fetchall()
        for message_id, state in rows:
            labels = json.loads(state)["labels"]
            h.db.db.execute_sql(
                "UPDATE messages SET state = ? WHERE message_id = ?", (json.dumps({"labels": labels}), message_id)
            )
    h.db.update_account(h.account_id, content=None)


def test_messages_synced_before_content_are_backfilled_once(tmp_path: Path, fake: FakeGmail) -> None:
    h = Harness(tmp_path, fake, page_size=20)
    ids = fake.populate(USER, 50)
    h.run()
    old_brain_state(h)
    assert h.account.status(h.engine.content)["backfill"]["complete"] is False
    fake.modify_labels(USER, ids[0], add=["STARRED"])  # changed meanwhile: still one event
    fake.clear_requests()

    outcomes = h.run()

    assert [o.kind for o in outcomes] == ["more"] * 3 + ["done"]  # three listing pages, then incremental
    updates = [e for e in h.store.events if e["type"] == "mail.message.updated"]
    assert sorted(e["data"]["message_id"] for e in updates) == sorted(ids)
    for event in updates:
        assert event["data"]["body_text"] and event["key"].endswith(":2")
        assert event["data"]["added_labels"] == ([] if event["data"]["message_id"] != ids[0] else ["STARRED"])
    status = h.account.status(h.engine.content)
    assert status["backfill"] == {"complete": True, "running": False, "done": 50, "estimated_total": 50}
    assert h.account.content == h.engine.content
    assert json.loads(h.account.cursor)["history_id"] == str(fake.history_id(USER))

    before = len(h.store.events)
    h.run()
    assert len(h.store.events) == before  # once per account


def test_turning_bodies_on_backfills_what_was_synced_without(tmp_path: Path, fake: FakeGmail) -> None:
    h = harness_for(tmp_path, fake, bodies=False)
    message = fake.add_message(USER, body="now you see it")
    h.run()
    assert received(h)[message]["body_text"] == ""
    h.engine.provider.close()
    h.options = dataclasses.replace(h.options, bodies=True)
    h.engine = h.new_engine()
    h.run()
    (update,) = [e for e in h.store.events if e["type"] == "mail.message.updated"]
    assert update["data"]["body_text"] == "now you see it"

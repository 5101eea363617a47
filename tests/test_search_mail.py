"""Mail that mail sync really wrote is found by search (issue 16): the real `brain serve` syncing
from the local fake Gmail, its messages in the mail message model (docs/mail-model.md), then
searched over HTTP by their body text (converted from HTML), people, subject, labels, account and
attachments.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from brain.testing.fakes.gmail import FakeGmail
from brain.testing.fakes.mime import Part
from tests.support import BrainServer, wait_until
from tests.test_mail_server import GMAIL_USER, Client, mail_config

PDF = b"%PDF-1.4\n" + bytes(range(256)) * 8


@pytest.fixture
def gmail() -> Iterator[FakeGmail]:
    yield from FakeGmail.running()


def found(client: Client, q: str) -> list[dict[str, Any]]:
    r = client.get("/search", q=q, limit=50)
    assert r.status_code == 200, (q, r.text)
    results: list[dict[str, Any]] = r.json()["results"]
    return results


def test_synced_mail_is_searchable_by_its_content(tmp_path: Path, gmail: FakeGmail) -> None:
    housing = gmail.add_label(GMAIL_USER, "Housing")
    lease = gmail.add_message(
        GMAIL_USER, sender="Anna Müller <anna@example.com>", subject="Lease renewal", body=None,
        html="<html><body><p>The landlord wants the <b>signed</b> agreement back by Friday.</p></body></html>",
        attachments=[Part("lease-agreement.pdf", "application/pdf", PDF)], label_ids=["INBOX", housing],
    )
    lunch = gmail.add_message(
        GMAIL_USER, sender="Bob Stone <bob@stone.example>", subject="Lunch",
        body="Shall we have lunch on Thursday?\n\nOn Mon, Bob wrote:\n> the old quoted landlord story",
    )
    with BrainServer(tmp_path / "brain", config=mail_config(gmail)) as server:
        alice = Client(server)
        account = alice.connect("gmail", gmail.issue_refresh_token(GMAIL_USER))["account"]
        alice.wait_state(account, "idle")
        received = {e["data"]["message_id"]: e["id"] for e in alice.events("mail.message.received")}
        assert set(received) == {lease, lunch}

        def ids(q: str) -> list[int]:
            return [hit["event"]["id"] for hit in found(alice, q)]

        # The body as text (from the HTML), the people with diacritics folded, the subject.
        hits = found(alice, "landlord signed")
        assert [h["event"]["id"] for h in hits] == [received[lease]]
        assert "<mark>landlord</mark>" in hits[0]["highlights"]["body_text"]
        assert ids("from:muller") == ids("from:anna@example.com") == [received[lease]]
        assert ids("people:stone") == [received[lunch]]
        assert ids("subject:lunch thursday") == [received[lunch]]
        # The quoted history is part of body_text: the body is indexed once, whole.
        assert ids("story") == [received[lunch]]
        # Labels by name, the account, attachments by file name and has:.
        assert ids("label:housing") == [received[lease]]
        assert ids("housing") == []  # a label is no word of the text
        assert sorted(ids(f"account:{account}")) == sorted(received.values())
        assert ids("has:attachment") == ids("agreement pdf") == [received[lease]]
        assert ids("type:mail.* -lunch") == [received[lease]]

        # A message that arrives later is found at once; a deleted event is gone at once.
        late = gmail.add_message(GMAIL_USER, sender="Carla <carla@work.example>", subject="Offsite",
                                 body="The offsite moves to the lakeside hotel.")
        wait_until(lambda: ids("lakeside"), timeout=15, what="the new message to be searchable")
        late_id = ids("lakeside")[0]
        assert alice.get(f"/events/{late_id}").json()["data"]["message_id"] == late
        assert alice.get("/events", type="mail.*").status_code == 200
        r = requests.delete(f"{server.api_url}/events/{late_id}", headers=alice.headers, timeout=15)
        assert r.status_code == 200, r.text
        assert ids("lakeside") == []

        # Another user finds none of it.
        bob = Client(server)
        assert found(bob, "landlord") == [] and found(bob, f"account:{account}") == []

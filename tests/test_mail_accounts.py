"""Mail accounts over HTTP, end to end (the real `brain serve` against the local fakes): what the
user chooses to sync (at connect and with PATCH), syncing now, attachments on demand (capped,
cached and removed with the user, never another user's), revoking at disconnect, push
notifications (Gmail through Pub/Sub, Graph subscriptions) and the one-time backfill surviving
kill -9.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import sqlite3
import time
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import quote

import requests

from brain.testing.fakes.gmail import FakeGmail
from brain.testing.fakes.microsoft import FakeMicrosoft
from brain.testing.fakes.mime import Part
from tests.support import BrainServer, free_port, wait_until
from tests.test_auth_helpers import brain_cli
from tests.test_mail_server import GMAIL_USER, MS_USER, Client, gmail, mail_config, microsoft  # noqa: F401 - fixtures

PDF = b"%PDF-1.4\n" + bytes(range(256)) * 200
PNG = b"\x89PNG\r\n\x1a\n" + bytes(500)


def patch(client: Client, path: str, body: Any) -> requests.Response:
    return requests.patch(client.server.api_url + path, json=body, headers=client.headers, timeout=30)


def received(client: Client) -> dict[str, dict[str, Any]]:
    return {e["data"]["message_id"]: e["data"] for e in client.events("mail.message.received")}


def test_what_syncs_is_chosen_at_connect_and_changed_later(tmp_path: Path, gmail: FakeGmail) -> None:
    receipts = gmail.add_label(GMAIL_USER, "Receipts")
    bill = gmail.add_message(GMAIL_USER, subject="bill", body="pay me", label_ids=["INBOX", receipts])
    note = gmail.add_message(GMAIL_USER, subject="note", label_ids=["INBOX"])
    sent = gmail.add_message(GMAIL_USER, subject="sent", label_ids=["SENT"])
    gmail.add_message(GMAIL_USER, subject="spam", label_ids=["SPAM"])
    with BrainServer(tmp_path / "brain", config=mail_config(gmail)) as server:
        alice = Client(server)
        body = {"provider": "gmail", "refresh_token": gmail.issue_refresh_token(GMAIL_USER),
                "sync": {"folders": ["Receipts"], "bodies": False}}
        r = alice.post("/mail/connect", body)
        assert r.status_code == 201, r.text
        account = r.json()["account"]["account"]
        status = alice.wait_state(account, "idle")
        assert status["sync"] == {"folders": ["Receipts"], "exclude_spam_trash": True, "sync_window_days": None,
                                  "bodies": False, "keep_html": None}
        assert set(received(alice)) == {bill} and received(alice)[bill]["body_text"] == ""

        # Everything (but spam and trash), with bodies: a resync receives the rest, and the bill
        # (stored without its body) comes again whole, as an update.
        r = patch(alice, f"/mail/accounts/{account}", {"folders": None, "bodies": True})
        assert r.status_code == 200, r.text
        assert r.json()["account"]["sync"]["bodies"] is True
        wait_until(lambda: set(received(alice)) == {bill, note, sent} and alice.accounts()[account]["state"] == "idle",
                   timeout=30, what="the resync with every label")
        (update,) = alice.events("mail.message.updated")
        assert (update["data"]["message_id"], update["data"]["body_text"]) == (bill, "pay me")

        # Only what was sent: the resync reconciles the rest away.
        assert patch(alice, f"/mail/accounts/{account}", {"folders": ["SENT"]}).status_code == 200
        wait_until(lambda: len(alice.events("mail.message.deleted")) == 2, timeout=30, what="reconciled deletions")
        assert {e["data"]["message_id"] for e in alice.events("mail.message.deleted")} == {bill, note}
        assert all(e["data"]["reconciled"] for e in alice.events("mail.message.deleted"))
        assert alice.mailbox().keys() == {sent}
        counts = Counter(e["type"] for e in alice.events())
        assert counts == {"mail.message.received": 3, "mail.message.updated": 1, "mail.message.deleted": 2}

        # Bad input names the field; another user's account is not found.
        for bad, needle in (({"folders": "INBOX"}, "body.folders"), ({"bodys": True}, "bodys"),
                            ({"sync_window_days": 0}, "sync_window_days"), ([], "JSON object")):
            r = patch(alice, f"/mail/accounts/{account}", bad)
            assert r.status_code == 400 and needle in r.json()["message"], (bad, r.text)
        r = alice.post("/mail/connect", {"provider": "gmail", "refresh_token": "x", "sync": {"keep_html": "yes"}})
        assert r.status_code == 400 and "sync.keep_html" in r.json()["message"]
        bob = Client(server)
        assert patch(bob, f"/mail/accounts/{account}", {"bodies": False}).status_code == 404
        assert bob.post(f"/mail/accounts/{account}/sync", {}).status_code == 404


def test_the_servers_content_settings_and_the_accounts_own_choice_reach_the_events(
    tmp_path: Path, gmail: FakeGmail
) -> None:
    text = "Word " * 1000
    long = gmail.add_message(GMAIL_USER, subject="Long", body=text, html=f"<p>{text}</p>")
    config = mail_config(gmail)
    config["mail"].update(keep_html=True, max_text_bytes=2048)  # [mail]: HTML kept, 2 KiB a text field
    with BrainServer(tmp_path / "brain", config=config) as server:
        alice = Client(server)
        account = alice.connect("gmail", gmail.issue_refresh_token(GMAIL_USER))["account"]
        alice.wait_state(account, "idle")
        data = received(alice)[long]
        # The clean text is read from the cut text: no longer than it, so not cut itself.
        assert data["truncated"] is True and set(data["original_sizes"]) == {"body_text", "body_html"}
        assert all(size > 4000 for size in data["original_sizes"].values())
        for field in ("body_text", "body_text_clean", "body_html"):
            assert 2000 < len(data[field].encode()) <= 2048, field
        assert data["body_text"].startswith("Word Word") and data["body_html"].startswith("<p>Word Word")

        # The account's own choice wins over [mail] keep_html.
        assert patch(alice, f"/mail/accounts/{account}", {"keep_html": False}).status_code == 200
        alice.wait_state(account, "idle")
        short = gmail.add_message(GMAIL_USER, subject="Short", body="Just this.", html="<p>Just this.</p>")
        assert alice.post(f"/mail/accounts/{account}/sync", {}).status_code == 202
        wait_until(lambda: short in received(alice), timeout=15, what="the next message")
        assert "body_html" not in received(alice)[short] and received(alice)[short]["truncated"] is False


def test_sync_now_and_polling_that_slows_down_when_quiet(tmp_path: Path, gmail: FakeGmail) -> None:
    gmail.populate(GMAIL_USER, 3)
    config = mail_config(gmail)
    config["mail"] = {"sync_interval_seconds": 3600.0, "sync_interval_min_seconds": 600.0}
    with BrainServer(tmp_path / "brain", config=config) as server:
        alice = Client(server)
        account = alice.connect("gmail", gmail.issue_refresh_token(GMAIL_USER))["account"]
        alice.wait_state(account, "idle")
        # It found messages: the shortest wait.
        wait_until(lambda: alice.accounts()[account]["poll_interval_seconds"] == 600.0, timeout=15, what="the wait")
        fresh = gmail.add_message(GMAIL_USER, subject="now please")
        r = alice.post(f"/mail/accounts/{account}/sync", {})
        assert r.status_code == 202, r.text
        wait_until(lambda: fresh in received(alice), timeout=15, what="the asked-for sync")
        wait_until(lambda: alice.accounts()[account]["state"] == "idle", timeout=15, what="idle again")
        assert alice.post(f"/mail/accounts/{account}/sync", {}).status_code == 202
        wait_until(lambda: alice.accounts()[account]["poll_interval_seconds"] == 1200.0, timeout=15,
                   what="a quiet sync doubling the wait")
        assert alice.post("/mail/disconnect", {"account": account}).status_code == 200
        r = alice.post(f"/mail/accounts/{account}/sync", {})
        assert r.status_code == 409 and r.json()["code"] == "ACCOUNT_NOT_SYNCING"


def attachment_url(server: BrainServer, message: str, attachment: str) -> str:
    return f"{server.api_url}/mail/messages/{quote(message, safe='')}/attachments/{quote(attachment, safe='')}"


def test_attachments_on_demand_capped_cached_and_only_ones_own(tmp_path: Path, gmail: FakeGmail) -> None:
    message = gmail.add_message(
        GMAIL_USER, subject="Report", body="See attached.", html='<p>See <img src="cid:c1"></p>',
        attachments=[Part("Q1 résumé.pdf", "application/pdf", PDF)], inline=[Part("chart.png", "image/png", PNG, "c1")],
    )
    big = gmail.add_message(GMAIL_USER, subject="Big", attachments=[Part("big.bin", "application/octet-stream", bytes(70_000))])
    spare = gmail.add_message(GMAIL_USER, subject="Spare", attachments=[Part("s.bin", "application/octet-stream", bytes(900))])
    config = mail_config(gmail)
    config["mail"].update(max_attachment_bytes=65_536, cache_attachments=True)
    with BrainServer(tmp_path / "brain", config=config) as server:
        alice = Client(server)
        account = alice.connect("gmail", gmail.issue_refresh_token(GMAIL_USER))["account"]
        alice.wait_state(account, "idle")
        data = received(alice)[message]
        pdf = next(a for a in data["attachments"] if a["mime_type"] == "application/pdf")
        gmail.clear_requests()
        r = requests.get(attachment_url(server, message, pdf["id"]), headers=alice.headers, timeout=30)
        assert r.status_code == 200, r.text
        assert r.content == PDF and r.headers["Content-Type"] == "application/pdf"
        assert "Content-Length" not in r.headers  # Gmail's stated size is for the cap, not a byte count
        assert r.headers["Content-Disposition"] == (
            "attachment; filename=\"Q1 r_sum_.pdf\"; filename*=UTF-8''Q1%20r%C3%A9sum%C3%A9.pdf")
        assert r.headers["X-Content-Type-Options"] == "nosniff" and "sandbox" in r.headers["Content-Security-Policy"]
        assert gmail.request_count("/gmail/v1/users/me/messages/")  # fetched from the provider

        # Cached: the second download does not ask Gmail; the cache is counted, content-addressed.
        gmail.clear_requests()
        again = requests.get(attachment_url(server, message, pdf["id"]), headers=alice.headers, timeout=30)
        assert again.content == PDF and gmail.request_count(f"/gmail/v1/users/me/messages/{message}") == 0
        assert again.headers["Content-Length"] == str(len(PDF))  # the cached copy's length is known
        cache = requests.get(server.api_url + "/mail/status", headers=alice.headers, timeout=10).json()["attachment_cache"]
        assert cache == {"files": 1, "bytes": len(PDF), "limit_bytes": 1_073_741_824}
        kept = server.data_dir / "users" / alice.user_id / "attachments" / hashlib.sha256(PDF).hexdigest()
        assert kept.read_bytes() == PDF

        png = next(a for a in data["attachments"] if a["inline"])
        r = requests.get(attachment_url(server, message, png["id"]), headers=alice.headers, timeout=30)
        assert (r.status_code, r.content, r.headers["Content-Type"]) == (200, PNG, "image/png")

        # Too big, unknown, not one's own.
        (large,) = received(alice)[big]["attachments"]
        r = requests.get(attachment_url(server, big, large["id"]), headers=alice.headers, timeout=30)
        assert r.status_code == 413 and "65536" in r.json()["message"]
        assert gmail.request_count(f"/gmail/v1/users/me/messages/{big}/attachments/") == 0  # refused by its size
        # The provider failing while the content is fetched: its error, not a 500.
        (never_cached,) = received(alice)[spare]["attachments"]
        for status in (503, 404):
            gmail.fail_next(1, status=status, path_prefix=f"/gmail/v1/users/me/messages/{spare}/attachments/")
            r = requests.get(attachment_url(server, spare, never_cached["id"]), headers=alice.headers, timeout=30)
            assert r.status_code == status, r.text
            assert gmail.request_count(f"/gmail/v1/users/me/messages/{spare}/attachments/") == 1
            gmail.clear_requests()
        r = requests.get(attachment_url(server, message, "7.7"), headers=alice.headers, timeout=30)
        assert r.status_code == 404 and r.json()["code"] == "ATTACHMENT_GONE"
        r = requests.get(attachment_url(server, "no-such-message", "1"), headers=alice.headers, timeout=30)
        assert r.status_code == 404 and r.json()["code"] == "MESSAGE_NOT_FOUND"
        bob = Client(server)
        r = requests.get(attachment_url(server, message, pdf["id"]), headers=bob.headers, timeout=30)
        assert r.status_code == 404 and r.json()["code"] == "MESSAGE_NOT_FOUND"
        assert requests.get(attachment_url(server, message, pdf["id"]), timeout=30).status_code == 401


def test_an_attachment_whose_stated_size_is_not_its_length_still_downloads_whole(
    tmp_path: Path, microsoft: FakeMicrosoft
) -> None:
    message = microsoft.add_message(MS_USER, subject="Report", attachments=[Part("report.pdf", "application/pdf", PDF)])
    with microsoft.lock:  # Graph's size is the attachment's in the store, not the bytes of $value
        microsoft._user(MS_USER).messages[message].attachments[0]["size"] = len(PDF) + 345  # noqa: SLF001
    with BrainServer(tmp_path / "brain", config=mail_config(microsoft=microsoft)) as server:
        alice = Client(server)
        account = alice.connect("outlook", microsoft.issue_refresh_token(MS_USER))["account"]
        alice.wait_state(account, "idle")
        (attachment,) = received(alice)[message]["attachments"]
        assert attachment["size"] == len(PDF) + 345  # the model says what Graph says
        r = requests.get(attachment_url(server, message, attachment["id"]), headers=alice.headers, timeout=10)
        assert r.status_code == 200 and r.content == PDF
        assert "Content-Length" not in r.headers and r.headers["Content-Type"] == "application/pdf"


def test_the_attachment_cache_keeps_to_the_users_quota(tmp_path: Path, gmail: FakeGmail) -> None:
    report = gmail.add_message(GMAIL_USER, subject="Report", attachments=[Part("report.pdf", "application/pdf", PDF)])
    photo = gmail.add_message(GMAIL_USER, subject="Photo", attachments=[Part("photo.png", "image/png", PNG * 60)])
    copy = gmail.add_message(GMAIL_USER, subject="Again", attachments=[Part("same.pdf", "application/pdf", PDF)])
    config = mail_config(gmail)
    config["mail"].update(cache_attachments=True, attachment_cache_bytes=len(PDF) + len(PNG) * 30)
    with BrainServer(tmp_path / "brain", config=config) as server:
        alice = Client(server)
        account = alice.connect("gmail", gmail.issue_refresh_token(GMAIL_USER))["account"]
        alice.wait_state(account, "idle")
        first = {mid: data["attachments"][0]["id"] for mid, data in received(alice).items()}

        def download(message: str) -> bytes:
            r = requests.get(attachment_url(server, message, first[message]), headers=alice.headers, timeout=30)
            assert r.status_code == 200, r.text
            return r.content

        def cache() -> dict[str, int]:
            return alice.get("/mail/status").json()["attachment_cache"]

        assert download(report) == PDF
        # Over the quota: served whole all the same, but not kept, so the next time asks Gmail again.
        assert download(photo) == PNG * 60 and download(photo) == PNG * 60
        assert gmail.request_count(f"/gmail/v1/users/me/messages/{photo}") >= 2
        assert cache() == {"files": 1, "bytes": len(PDF), "limit_bytes": len(PDF) + len(PNG) * 30}
        assert [p.name for p in (server.data_dir / "users" / alice.user_id / "attachments").iterdir()] == [
            hashlib.sha256(PDF).hexdigest()]
        # Content already kept takes no more room: the same bytes in another message are kept.
        assert download(copy) == PDF
        gmail.clear_requests()
        assert download(copy) == PDF and gmail.request_count(f"/gmail/v1/users/me/messages/{copy}") == 0
        assert cache()["files"] == 1

        # Removed with the user: the files and their index rows in mail.db.
        cached = server.data_dir / "users" / alice.user_id / "attachments"
        assert cache_rows(server, alice.user_id) == 2 and cached.is_dir()
        out = brain_cli(server, "users", "delete", alice.user_id, "--json")
        assert out.returncode == 0, out.stderr
        assert not cached.exists() and cache_rows(server, alice.user_id) == 0


def cache_rows(server: BrainServer, user_id: str) -> int:
    """Rows of the user's attachment cache index in mail.db."""
    with sqlite3.connect(f"file:{server.data_dir / 'mail.db'}?mode=ro", uri=True) as db:
        return int(db.execute("SELECT count(*) FROM attachment_cache WHERE user_id = ?", (user_id,)).fetchone()[0])


def test_disconnect_says_whether_the_grant_was_revoked(tmp_path: Path, gmail: FakeGmail, microsoft: FakeMicrosoft) -> None:
    gmail.populate(GMAIL_USER, 2)
    microsoft.populate(MS_USER, 2)
    with BrainServer(tmp_path / "brain", config=mail_config(gmail, microsoft)) as server:
        alice = Client(server)
        google = alice.connect("gmail", gmail.issue_refresh_token(GMAIL_USER))["account"]
        outlook = alice.connect("outlook", microsoft.issue_refresh_token(MS_USER))["account"]
        alice.wait_state(google, "idle")
        alice.wait_state(outlook, "idle")
        r = alice.post("/mail/disconnect", {"account": google})
        assert r.status_code == 200, r.text
        assert r.json()["revocation"] == {"revoked": True, "detail": "Google revoked brain's access"}
        assert gmail.request_count("/revoke") == 1
        r = alice.post("/mail/disconnect", {"account": outlook})
        revocation = r.json()["revocation"]
        assert revocation["revoked"] is False and "myapps.microsoft.com" in revocation["detail"]
        assert {a["state"] for a in alice.accounts().values()} == {"disconnected"}


def push_config(gmail: FakeGmail | None = None, microsoft: FakeMicrosoft | None = None) -> tuple[int, dict[str, Any]]:
    """A config with push on (public_url: brain's own API port) and polls an hour apart."""
    port = free_port()
    config = mail_config(gmail, microsoft)
    config["mail"] = {"sync_interval_seconds": 3600.0, "retry_base_seconds": 0.2,
                      "public_url": f"http://127.0.0.1:{port}"}
    if gmail is not None:
        config["plugins"]["gmail"].update(pubsub_topic="projects/brain-test/topics/gmail", push_token="t0ken-of-the-sub")
    return port, config


def test_gmail_push_through_pub_sub_brings_new_mail_at_once(tmp_path: Path, gmail: FakeGmail) -> None:
    gmail.populate(GMAIL_USER, 3)
    port, config = push_config(gmail)
    with BrainServer(tmp_path / "brain", config=config, api_port=port) as server:
        gmail.push_endpoint = f"{server.api_url}/mail/push/gmail?token=t0ken-of-the-sub"
        alice = Client(server)
        account = alice.connect("gmail", gmail.issue_refresh_token(GMAIL_USER))["account"]
        alice.wait_state(account, "idle")
        wait_until(lambda: alice.accounts()[account]["poll_interval_seconds"] == 1800.0, timeout=15,
                   what="polls only as often as push_poll_seconds, once the watch is on")
        assert gmail.request_count("/gmail/v1/users/me/watch", method="POST") == 1
        assert alice.accounts()[account]["push"]["active"] and alice.accounts()[account]["push"]["expires_at"]

        fresh = gmail.add_message(GMAIL_USER, subject="pushed")
        wait_until(lambda: fresh in received(alice), timeout=15, what="the pushed message")
        wait_until(lambda: gmail.deliveries and gmail.deliveries[-1][1] == 204, timeout=10, what="Pub/Sub's ack")

        # A push without the subscription's token is refused and syncs nothing.
        envelope = {"message": {"data": "eyJlbWFpbEFkZHJlc3MiOiAiYWRhQGV4YW1wbGUuY29tIn0="}}
        r = requests.post(f"{server.api_url}/mail/push/gmail?token=guess", json=envelope, timeout=10)
        assert r.status_code == 403
        assert requests.post(f"{server.api_url}/mail/push/nope", json={}, timeout=10).status_code == 404

        # Close to its end (Gmail's watch lasts 7 days), the next sync renews it: users.watch again.
        with sqlite3.connect(server.data_dir / "mail.db") as db:
            push = json.loads(db.execute("SELECT push FROM accounts WHERE id = ?", (account,)).fetchone()[0])
            push["since"], push["expires_at"] = time.time() - 6 * 86400, time.time() + 3600
            db.execute("UPDATE accounts SET push = ? WHERE id = ?", (json.dumps(push), account))
        assert alice.post(f"/mail/accounts/{account}/sync", {}).status_code == 202
        wait_until(lambda: gmail.request_count("/gmail/v1/users/me/watch", method="POST") == 2, timeout=15,
                   what="the renewal")
        wait_until(lambda: datetime.datetime.fromisoformat(alice.accounts()[account]["push"]["expires_at"]).timestamp()
                   > time.time() + 5 * 86400, timeout=15, what="the renewed expiry in /mail/status")

        # Disconnecting stops the watch.
        assert alice.post("/mail/disconnect", {"account": account}).status_code == 200
        assert gmail.request_count("/gmail/v1/users/me/stop", method="POST") == 1


def test_graph_subscription_validated_notified_renewed(tmp_path: Path, microsoft: FakeMicrosoft) -> None:
    microsoft.populate(MS_USER, 3)
    port, config = push_config(microsoft=microsoft)
    with BrainServer(tmp_path / "brain", config=config, api_port=port) as server:
        alice = Client(server)
        account = alice.connect("outlook", microsoft.issue_refresh_token(MS_USER))["account"]
        alice.wait_state(account, "idle")
        wait_until(lambda: microsoft.subscriptions, timeout=15, what="the subscription (after its validation)")
        (subscription,) = microsoft.subscriptions.values()
        assert subscription["notificationUrl"] == f"{server.api_url}/mail/push/outlook"
        assert subscription["resource"] == "me/messages" and len(subscription["clientState"]) >= 32
        assert microsoft.deliveries[0][1] == 200  # the validation handshake

        fresh = microsoft.add_message(MS_USER, folder="archive", subject="pushed")
        wait_until(lambda: fresh in received(alice), timeout=15, what="the notified message")

        # A notification with another clientState syncs nothing.
        before = microsoft.request_count("/v1.0/me/mailFolders/")
        forged = {"value": [{"subscriptionId": subscription["id"], "clientState": "forged", "changeType": "created"}]}
        assert requests.post(f"{server.api_url}/mail/push/outlook", json=forged, timeout=10).status_code == 202
        time.sleep(1.5)
        assert microsoft.request_count("/v1.0/me/mailFolders/") == before

        # Close to its end, the next sync renews it (PATCH), keeping the same subscription.
        with sqlite3.connect(server.data_dir / "mail.db") as db:
            push = json.loads(db.execute("SELECT push FROM accounts WHERE id = ?", (account,)).fetchone()[0])
            push["since"], push["expires_at"] = time.time() - 3 * 86400, time.time() + 60
            db.execute("UPDATE accounts SET push = ? WHERE id = ?", (json.dumps(push), account))
        assert alice.post(f"/mail/accounts/{account}/sync", {}).status_code == 202
        wait_until(lambda: microsoft.request_count(f"/v1.0/subscriptions/{subscription['id']}", method="PATCH") == 1,
                   timeout=15, what="the renewal")
        assert list(microsoft.subscriptions) == [subscription["id"]]
        assert alice.post("/mail/disconnect", {"account": account}).status_code == 200
        assert microsoft.subscriptions == {}


def make_old(data_dir: Path) -> None:
    """mail.db as a brain from before message content left it: index states of labels only, no
    content key on the accounts."""
    with sqlite3.connect(data_dir / "mail.db") as db:
        for account, message, state in db.execute("SELECT account_id, message_id, state FROM messages").fetchall():
            labels = json.loads(state)["labels"]
            db.execute("UPDATE messages SET state = ? WHERE account_id = ? AND message_id = ?",
                       (json.dumps({"labels": labels}), account, message))
        db.execute("UPDATE accounts SET content = NULL")


def test_backfill_survives_kill_9_with_every_message_once_with_content(tmp_path: Path, gmail: FakeGmail) -> None:
    ids = gmail.populate(GMAIL_USER, 240)
    server = BrainServer(tmp_path / "brain", config=mail_config(gmail, page_size=20))
    with server:
        alice = Client(server)
        account = alice.connect("gmail", gmail.issue_refresh_token(GMAIL_USER))["account"]
        alice.wait_state(account, "idle")
    make_old(server.data_dir)
    gmail.delay(0.15, path_prefix="/batch")  # slow enough to be killed half way
    server.start()
    status = alice.accounts()[account]
    assert status["backfill"]["complete"] is False
    wait_until(lambda: alice.accounts()[account]["backfill"]["done"] >= 60, timeout=60, interval=0.02,
               what="a quarter backfilled")
    assert alice.accounts()[account]["backfill"]["running"]
    server.kill()
    gmail.clear_faults()
    server.start()
    wait_until(lambda: alice.accounts()[account]["backfill"]["complete"], timeout=60, what="the backfill to finish")
    status = alice.wait_state(account, "idle")
    assert status["backfill"]["done"] >= 240 and status["messages_synced"] == 240

    updates = alice.events("mail.message.updated")
    per_message = Counter(e["data"]["message_id"] for e in updates)
    assert set(per_message) == set(ids) and set(per_message.values()) == {1}  # every message once
    assert all(e["data"]["body_text"] and e["data"]["direction"] == "received" for e in updates)  # with content
    assert Counter(e["type"] for e in alice.events()) == {"mail.message.received": 240, "mail.message.updated": 240}
    wait_until(lambda: alice.jetstream_counts() == {"mail.message.received": 240, "mail.message.updated": 240},
               timeout=30, what="JetStream to carry each event once")
    server.close()


def test_outlook_ids_from_before_immutable_ids_are_translated_not_duplicated(
    tmp_path: Path, microsoft: FakeMicrosoft
) -> None:
    inbox = microsoft.populate(MS_USER, 12)
    archived = microsoft.add_message(MS_USER, folder="archive", subject="never seen by the old brain")
    server = BrainServer(tmp_path / "brain", config=mail_config(microsoft=microsoft))
    with server:
        alice = Client(server)
        account = alice.connect("outlook", microsoft.issue_refresh_token(MS_USER))["account"]
        alice.wait_state(account, "idle")
    # What a brain before this change left: the inbox only, under default ids, a one-folder cursor.
    old_ids = {mid: microsoft.default_id(MS_USER, mid) for mid in inbox}
    with sqlite3.connect(server.data_dir / "mail.db") as db:
        db.execute("DELETE FROM messages WHERE message_id = ?", (archived,))
        for mid, old in old_ids.items():
            db.execute("UPDATE messages SET message_id = ?, state = ? WHERE message_id = ?",
                       (old, json.dumps({"labels": ["INBOX"]}), mid))
        link = f"{microsoft.graph_url}/me/mailFolders/inbox/messages/delta?$deltatoken=from-the-old-brain"
        db.execute("UPDATE accounts SET content = NULL, id_scheme = NULL, cursor = ?", (json.dumps({"link": link}),))
    with server:
        wait_until(lambda: alice.accounts()[account]["state"] == "idle"
                   and len(alice.events("mail.message.updated")) >= len(inbox), timeout=60, what="translation and resync")
        updates = {e["data"]["message_id"]: e["data"] for e in alice.events("mail.message.updated")}
        assert set(updates) == set(inbox)
        for mid, old in old_ids.items():
            assert updates[mid]["previous_message_id"] == old and updates[mid]["body_text"]
        assert not alice.events("mail.message.deleted")  # nothing lost to the change of ids
        received_ids = [e["data"]["message_id"] for e in alice.events("mail.message.received")]
        assert sorted(received_ids) == sorted([*inbox, archived])  # no duplicate
        assert alice.accounts()[account]["backfill"]["complete"]

"""Webhooks over HTTP against a local receiver: signed as documented, retried after failures,
nothing lost across a kill -9, disabled after failing too long, and held to the address policy.

The receiver checks every signature twice: with the algorithm as the docs state it (HMAC-SHA256
over `{webhook-id}.{webhook-timestamp}.{body}`, keyed with the bytes after `whsec_`), and with
the Standard Webhooks reference library (`standardwebhooks`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jsonschema
import pytest
import requests
import standardwebhooks

from brain.webhooks.db import ACTIVE, Endpoint, WebhookDb
from brain.webhooks.queue import message_id
from tests.support import BrainServer, wait_until
from tests.test_auth_helpers import NO_LIMITS, PASSWORD, bearer, new_user
from tests.test_reliability_helpers import wait_api_ready

LOCAL = {"allowed_networks": ["127.0.0.0/8"], "allow_http": True, "retry_base_seconds": 0.2, "retry_max_seconds": 1.0}


def documented_signature(secret: str, headers: dict[str, str], body: bytes) -> str:
    """The signature the README promises, computed here from its words alone."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def documented_delivery_errors(spec: dict[str, Any], headers: dict[str, str], body: Any) -> list[str]:
    """What in a delivery (headers by lower-case name, JSON body) /openapi.json's `webhooks.event` does not allow."""
    operation = spec["webhooks"]["event"]["post"]
    schema = operation["requestBody"]["content"]["application/json"]["schema"]
    errors = [e.message for e in jsonschema.Draft202012Validator({**schema, "components": spec["components"]}).iter_errors(body)]
    for parameter in operation["parameters"]:
        value = headers.get(parameter["name"].lower())
        if value is None:
            errors += [f"{parameter['name']}: missing"] if parameter.get("required") else []
            continue
        errors += [f"{parameter['name']}: {e.message}" for e in jsonschema.Draft202012Validator(parameter["schema"]).iter_errors(value)]
    return errors


def test_the_documented_delivery_check_can_fail() -> None:
    spec = {"components": {"schemas": {"Event": {"type": "object", "required": ["id"]}, "WebhookPayload": {
        "type": "object", "required": ["type"], "properties": {"data": {"$ref": "#/components/schemas/Event"}}}}},
        "webhooks": {"event": {"post": {
            "parameters": [{"name": "webhook-id", "in": "header", "required": True, "schema": {"pattern": "^msg_"}}],
            "requestBody": {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/WebhookPayload"}}}},
        }}}}
    assert documented_delivery_errors(spec, {"webhook-id": "msg_1"}, {"type": "t", "data": {"id": 1}}) == []
    assert len(documented_delivery_errors(spec, {"webhook-id": "nope"}, {"data": {}})) == 3
    assert documented_delivery_errors(spec, {}, {"type": "t"}) == ["webhook-id: missing"]


class Receiver:
    """A local HTTP endpoint: records each delivery; answers with what `answer(n)` says for the n-th."""

    def __init__(self, answer: Callable[[int], int] = lambda _n: 200, delay: float = 0.0) -> None:
        self.answer = answer
        self.delay = delay
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with receiver.lock:
                    receiver.received.append(({k.lower(): v for k, v in self.headers.items()}, body))
                    n = len(receiver.received)
                if receiver.delay:
                    time.sleep(receiver.delay)
                status = receiver.answer(n)
                self.send_response(status)
                if status == 503:
                    self.send_header("Retry-After", "1")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}/hook"

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def deliveries(self) -> list[tuple[dict[str, str], dict[str, Any]]]:
        with self.lock:
            return [(headers, json.loads(body)) for headers, body in self.received]

    def event_ids(self) -> set[int]:
        return {body["data"]["id"] for _, body in self.deliveries()}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrainServer]:
    s = BrainServer(tmp_path_factory.mktemp("webhooks") / "brain", config={"auth": NO_LIMITS, "webhooks": LOCAL})
    with s:
        yield s


class User:
    def __init__(self, server: BrainServer) -> None:
        body = new_user(server)
        self.id, self.jwt, self.session = body["user"]["id"], body["jwt"], body["token"]
        self.server = server

    def call(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        return requests.request(method, f"{self.server.api_url}{path}", headers=bearer(self.jwt), timeout=15, **kwargs)

    def hook(self, url: str, **body: Any) -> dict[str, Any]:
        r = self.call("POST", "/webhooks", json={"url": url, **body})
        assert r.status_code == 201, r.text
        return r.json()

    def post(self, events: Any) -> Any:
        r = self.call("POST", "/events", json=events)
        assert r.status_code == 201, r.text
        return r.json()


def test_deliveries_are_signed_as_documented_and_carry_only_wanted_events(server: BrainServer) -> None:
    alice = User(server)
    before = alice.post({"type": "note.created", "data": {"n": 0}})  # before the webhook: not sent
    with Receiver() as receiver:
        own_secret = "whsec_" + base64.b64encode(b"k" * 32).decode()
        generated = alice.hook(receiver.url, types=["note.*", "task.done"])
        chosen = alice.hook(receiver.url.replace("/hook", "/other"), secret=own_secret)
        assert generated["secret"].startswith("whsec_") and chosen["secret"] == own_secret
        assert generated["types"] == ["task.done", "note.*"] and chosen["types"] == []
        posted = alice.post([{"type": t, "data": {"n": i}} for i, t in enumerate(["note.created", "task.done", "other.x"])])
        spec = requests.get(f"{server.api_url}/openapi.json", timeout=10).json()
        ids = [e["id"] for e in posted["events"]]
        wait_until(lambda: len(receiver.received) >= 5, what="5 deliveries")
        time.sleep(0.5)  # and no more than that
        received = receiver.deliveries()
        assert len(received) == 5
        with receiver.lock:
            raw = list(receiver.received)
        by_hook: dict[str, set[int]] = {"generated": set(), "chosen": set()}
        for (headers, body_bytes), (_, body) in zip(raw, received):
            secret = None
            for candidate in (generated["secret"], own_secret):
                if headers["webhook-signature"] == documented_signature(candidate, headers, body_bytes):
                    secret = candidate
            assert secret is not None, "no secret makes the documented signature"
            standardwebhooks.Webhook(secret).verify(body_bytes, headers)  # the reference library agrees
            assert headers["content-type"] == "application/json"
            assert headers["webhook-id"].startswith("msg_")
            assert abs(int(headers["webhook-timestamp"]) - time.time()) < 60
            assert set(body) == {"type", "timestamp", "data"} and body["type"] == body["data"]["type"]
            assert set(body["data"]) == {"id", "type", "data", "created_at"}
            assert documented_delivery_errors(spec, headers, body) == []
            by_hook["generated" if secret == generated["secret"] else "chosen"].add(body["data"]["id"])
        assert by_hook == {"generated": set(ids[:2]), "chosen": set(ids)}
        assert before["id"] not in receiver.event_ids()


def test_failed_deliveries_are_retried_with_the_same_id_until_they_succeed(server: BrainServer) -> None:
    alice = User(server)
    with Receiver(answer=lambda n: 500 if n <= 3 else 200) as receiver:
        hook = alice.hook(receiver.url)
        event = alice.post({"type": "note.created", "data": {}})
        wait_until(lambda: len(receiver.received) >= 4, timeout=30, what="a fourth attempt")
        deliveries = receiver.deliveries()
        assert {h["webhook-id"] for h, _ in deliveries} == {deliveries[0][0]["webhook-id"]}
        assert all(body["data"]["id"] == event["id"] for _, body in deliveries)
        [shown] = alice.call("GET", f"/webhooks/{hook['id']}/deliveries").json()["deliveries"]
        assert shown["id"] == deliveries[0][0]["webhook-id"] and shown["status"] == "delivered"
        assert shown["attempts"] == 4 and shown["last_status"] == 200
        assert [a["status"] for a in shown["attempt_log"]] == [200, 500, 500, 500]
        # Backoff grew between the attempts (base 0.2 s, doubling, jittered by 20 %).
        times = [time.mktime(time.strptime(a["at"][:19], "%Y-%m-%dT%H:%M:%S")) + float(a["at"][19:-1] or 0)
                 for a in reversed(shown["attempt_log"])]
        gaps = [b - a for a, b in zip(times, times[1:])]
        assert gaps[2] > gaps[0], gaps
        state = alice.call("GET", f"/webhooks/{hook['id']}").json()
        assert state["state"] == "active" and state["failing_since"] is None


def test_nothing_is_lost_across_a_kill_9(make_server: Any) -> None:
    with Receiver(answer=lambda n: 500 if n % 5 == 0 else 200, delay=0.02) as receiver:
        server: BrainServer = make_server(config={"auth": NO_LIMITS, "webhooks": LOCAL}).start()
        alice = User(server)
        alice.hook(receiver.url)
        stop = threading.Event()
        written: list[int] = []

        def write() -> None:
            with requests.Session() as http:
                while not stop.is_set():
                    try:
                        r = http.post(f"{server.api_url}/events", headers=bearer(alice.jwt), timeout=5,
                                      json=[{"type": "note.created", "data": {"k": k}} for k in range(3)])
                    except requests.RequestException:
                        return
                    if r.status_code == 201:
                        written.extend(e["id"] for e in r.json()["events"])

        writers = [threading.Thread(target=write) for _ in range(3)]
        for t in writers:
            t.start()
        wait_until(lambda: len(receiver.received) >= 30, timeout=30, what="deliveries under way")
        server.kill()  # kill -9 while events are committed, queued and in flight
        stop.set()
        for t in writers:
            t.join()
        delivered_before = receiver.event_ids()
        assert written and not set(written) <= delivered_before, "nothing was pending at the kill"
        server.start()
        # Ready is logged before the API has the issuer's keys: a request meanwhile is a 503 (seen
        # in a loaded CI run, where the body had no "events").
        wait_api_ready(server)
        r = requests.get(f"{server.api_url}/events", params={"limit": 1000}, headers=bearer(alice.jwt), timeout=10)
        assert r.status_code == 200, (r.status_code, r.text)
        stored = [e["id"] for e in r.json()["events"]]
        assert set(written) <= set(stored)
        wait_until(lambda: receiver.event_ids() >= set(stored), timeout=60, what="every stored event delivered")
        assert receiver.event_ids() == set(stored)
        # Commits whose word never reached the queue (the process died right after them) are read
        # from the commit log by the cursor: written here straight into the store, brain down.
        server.kill()
        with sqlite3.connect(server.data_dir / "users" / alice.id / "events.db") as db:
            for k in range(5):
                db.execute("INSERT INTO events (type, data, created_at) VALUES ('note.created', ?, ?)",
                           (json.dumps({"late": k}), "2026-01-01T00:00:00.000000Z"))
            late = [row[0] for row in db.execute("SELECT id FROM events ORDER BY id DESC LIMIT 5")]
        server.start()
        wait_until(lambda: receiver.event_ids() >= set(late), timeout=30, what="the unannounced commits delivered")
        server.stop()


def test_an_endpoint_failing_too_long_is_disabled_and_the_user_is_told(make_server: Any) -> None:
    # 0.00005 days: about four seconds of failures.
    config = {"auth": NO_LIMITS, "webhooks": {**LOCAL, "disable_after_days": 0.00005}}
    with Receiver(answer=lambda _n: 503) as receiver:
        server: BrainServer = make_server(config=config).start()
        alice = User(server)
        hook = alice.hook(receiver.url, types=["note.*"])
        alice.post([{"type": "note.created", "data": {"i": i}} for i in range(3)])

        def disabled() -> dict[str, Any] | None:
            found = alice.call("GET", f"/webhooks/{hook['id']}").json()
            return found if found["state"] == "disabled" else None

        found = wait_until(disabled, timeout=40, what="the endpoint disabled")
        assert found["failing_since"] and found["disabled_at"] and "HTTP 503" in found["disabled_reason"]
        events = alice.call("GET", "/events", params={"type": "webhook.disabled"}).json()["events"]
        assert len(events) == 1 and events[0]["data"]["webhook_id"] == hook["id"]
        assert events[0]["data"]["deliveries_failed"] >= 1
        deliveries = alice.call("GET", f"/webhooks/{hook['id']}/deliveries").json()["deliveries"]
        assert {d["status"] for d in deliveries} == {"failed"}
        # The Retry-After of the 503 (1 s) was respected: attempts at least that far apart.
        log = sorted(a["at"] for d in deliveries for a in d["attempt_log"])
        assert len(log) <= 8, log
        # Only brain writes webhook.*.
        r = alice.call("POST", "/events", json={"type": "webhook.disabled", "data": {}})
        assert r.status_code == 403 and r.json()["code"] == "RESERVED_EVENT_TYPE"
        # A disabled endpoint gets nothing more.
        count = len(receiver.received)
        alice.post({"type": "note.created", "data": {}})
        time.sleep(1.5)
        assert len(receiver.received) == count
        server.stop()


@pytest.mark.parametrize(("url", "says"), [
    ("https://127.0.0.1:9/hook", "ADDRESS_REFUSED"),
    ("https://localhost:9/hook", "ADDRESS_REFUSED"),
    ("https://[::ffff:127.0.0.1]:9/hook", "ADDRESS_REFUSED"),
    ("https://10.1.2.3/hook", "ADDRESS_REFUSED"),
    ("https://169.254.169.254/latest/meta-data", "ADDRESS_REFUSED"),
    ("https://[::1]/hook", "ADDRESS_REFUSED"),
    ("http://example.com/hook", "allow_http"),
    ("https://user:pw@example.com/hook", "user:password"),
    ("ftp://example.com/hook", "https"),
    ("https://no-such-host.invalid/hook", "does not resolve"),
    ("not a url", "url"),
])
def test_targets_are_checked_like_imap_hosts(policy_server: BrainServer, url: str, says: str) -> None:
    alice = User(policy_server)
    r = alice.call("POST", "/webhooks", json={"url": url})
    assert r.status_code == 400, r.text
    assert says in r.text


@pytest.fixture(scope="module")
def policy_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrainServer]:
    """A server with the default policy: public https targets only."""
    s = BrainServer(tmp_path_factory.mktemp("policy") / "brain", config={"auth": NO_LIMITS})
    with s:
        yield s


def test_the_policy_holds_at_every_attempt_not_only_at_registration(make_server: Any) -> None:
    with Receiver() as receiver:
        server: BrainServer = make_server(config={"auth": NO_LIMITS, "webhooks": LOCAL}).start()
        alice = User(server)
        hook = alice.hook(receiver.url)
        server.stop()
        # The operator withdraws loopback from the allowed networks; the endpoint stays registered.
        server.config["webhooks"] = {**LOCAL, "allowed_networks": []}
        server.start()
        alice.post({"type": "note.created", "data": {}})

        def refused() -> list[dict[str, Any]]:
            deliveries = alice.call("GET", f"/webhooks/{hook['id']}/deliveries").json()["deliveries"]
            return [d for d in deliveries if d["last_error"] and "refused" in d["last_error"]]

        wait_until(refused, timeout=20, what="an attempt refused by the policy")
        assert receiver.received == []
        server.stop()


def test_bad_input_is_400_naming_the_field(server: BrainServer) -> None:
    alice = User(server)
    with Receiver() as receiver:
        cases = [
            ({"url": receiver.url, "types": "note.*"}, "types"),
            ({"url": receiver.url, "types": ["bad type"]}, "types"),
            ({"url": receiver.url, "secret": "nope"}, "secret"),
            ({"url": receiver.url, "secret": "whsec_" + base64.b64encode(b"short").decode()}, "secret"),
            ({"url": receiver.url, "extra": 1}, "extra"),
            ({"types": []}, "url"),
            ([], "body"),
        ]
        for body, field in cases:
            r = alice.call("POST", "/webhooks", json=body)
            assert r.status_code == 400 and r.json()["message"].startswith(field), (body, r.text)
        r = alice.call("GET", "/webhooks/nope/deliveries", params={"status": "weird"})
        assert r.status_code == 400
        for _ in range(10):
            alice.hook(receiver.url)
        r = alice.call("POST", "/webhooks", json={"url": receiver.url})
        assert r.status_code == 422 and r.json()["code"] == "TOO_MANY_WEBHOOKS"


def test_a_user_sees_and_touches_only_their_own_webhooks(server: BrainServer) -> None:
    alice, bob = User(server), User(server)
    with Receiver() as receiver:
        hook = alice.hook(receiver.url)
        assert bob.call("GET", "/webhooks").json() == {"webhooks": []}
        for method, path in (("GET", f"/webhooks/{hook['id']}"), ("DELETE", f"/webhooks/{hook['id']}"),
                             ("GET", f"/webhooks/{hook['id']}/deliveries")):
            r = bob.call(method, path)
            assert r.status_code == 404 and r.json()["code"] == "NOT_FOUND", (method, path, r.text)
        # Bob's events never reach Alice's endpoint.
        bob.post({"type": "note.created", "data": {"bob": True}})
        mine = alice.post({"type": "note.created", "data": {"alice": True}})
        wait_until(lambda: receiver.received, what="Alice's delivery")
        time.sleep(0.5)
        assert [body["data"]["id"] for _, body in receiver.deliveries()] == [mine["id"]]
        assert "secret" not in alice.call("GET", f"/webhooks/{hook['id']}").json()
        # Deleting it stops deliveries.
        assert alice.call("DELETE", f"/webhooks/{hook['id']}").status_code == 204
        assert alice.call("GET", f"/webhooks/{hook['id']}").status_code == 404
        alice.post({"type": "note.created", "data": {}})
        time.sleep(1.0)
        assert len(receiver.received) == 1


def test_deleting_the_account_deletes_its_webhooks(server: BrainServer) -> None:
    alice = User(server)
    with Receiver() as receiver:
        alice.hook(receiver.url)
        r = requests.post(f"{server.auth_url}/api/auth/delete-user", json={"password": PASSWORD},
                          headers=bearer(alice.session), timeout=30)
        assert r.status_code == 200, r.text

        def purged() -> bool:
            with sqlite3.connect(server.data_dir / "webhooks.db") as db:
                return db.execute("SELECT count(*) FROM endpoints WHERE user_id = ?", (alice.id,)).fetchone()[0] == 0

        wait_until(purged, timeout=20, what="the user's webhooks purged")


def test_a_moved_endpoint_resumes_before_what_was_still_pending(tmp_path: Any) -> None:
    # Cluster mode (brain.webhooks.directory): the record a node puts says where the next node
    # resumes — the cursor, or before the oldest delivery still pending — and adopting it never
    # moves a cursor forward; the ids of the deliveries it queues again are those of the first.
    old = WebhookDb(tmp_path / "old.db")
    hook = Endpoint("wh_1", "u1", "https://example.com/h", "[]", b"sealed", 10, 0.0, ACTIVE, 0, None, None, None, None)
    old.add_endpoint(hook)
    old.enqueue("u1", [(message_id("wh_1", seq), "wh_1", seq, "t", b"{}") for seq in (11, 12, 13)], 13, 0.0)
    assert old.resume_points() == {"u1": 10}
    (first,) = old.due(1e12, 1, [], {}, 1)
    old.record(first.id, 1.0, 200, None, 1.0, delivered=True)
    assert old.resume_points() == {"u1": 11}
    new = WebhookDb(tmp_path / "new.db")
    new.add_endpoint(hook._replace(id="wh_2", after_seq=15))  # made on the new node, cursor at 15
    assert new.adopt_endpoints([hook], old.resume_points()) == 1
    assert new.cursor("u1") == 11 and {e.id for e in new.endpoints_of("u1")} == {"wh_1", "wh_2"}
    assert new.adopt_endpoints([hook], {"u1": 13}) == 0 and new.cursor("u1") == 11
    assert message_id("wh_1", 12) == message_id("wh_1", 12) != message_id("wh_1", 13) != message_id("wh_2", 13)

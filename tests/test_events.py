"""Events over HTTP with real users: the auth role signs them up, the API role stores their events.

One `brain serve` (both roles, embedded NATS) for the module; users come from
POST /api/auth/sign-up/email and use the `jwt` of the response, as a client would.
"""

from __future__ import annotations

import base64
import concurrent.futures
import hashlib
import hmac
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from brain.api import events as events_module
from brain.api.events import CursorSigner
from brain.errors import BadRequest
from tests.support import BrainServer
from tests.test_auth_helpers import NO_LIMITS, bearer, new_user

MAX_EVENT_BYTES = 4096
MAX_BATCH = 50


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrainServer]:
    s = BrainServer(
        tmp_path_factory.mktemp("events") / "brain",
        config={"auth": NO_LIMITS, "api": {"max_event_bytes": MAX_EVENT_BYTES, "max_batch": MAX_BATCH}},
    )
    with s:
        yield s


class Client:
    """A signed-up user talking to the API role."""

    def __init__(self, server: BrainServer) -> None:
        self.body = body = new_user(server)
        self.id: str = body["user"]["id"]
        self.jwt: str = body["jwt"]
        self.url = server.api_url
        self.session = requests.Session()
        self.session.headers.update(bearer(self.jwt))

    def post(self, body: Any, **kwargs: Any) -> requests.Response:
        if not isinstance(body, (str, bytes)):
            kwargs.setdefault("json", body)
        else:
            kwargs.setdefault("data", body)
            kwargs.setdefault("headers", {}).setdefault("Content-Type", "application/json")
        return self.session.post(f"{self.url}/events", timeout=10, **kwargs)

    def get(self, **params: Any) -> requests.Response:
        return self.session.get(f"{self.url}/events", params=params, timeout=10)

    def all_events(self, **params: Any) -> list[dict[str, Any]]:
        """Every page of GET /events, following next_cursor."""
        out: list[dict[str, Any]] = []
        cursor = None
        for _ in range(1000):
            r = self.get(**params, **({"cursor": cursor} if cursor else {}))
            assert r.status_code == 200, r.text
            page = r.json()
            out.extend(page["events"])
            cursor = page["next_cursor"]
            if cursor is None:
                return out
        raise AssertionError("paging did not end")


@pytest.fixture(scope="module")
def alice(server: BrainServer) -> Client:
    return Client(server)


@pytest.fixture(scope="module")
def bob(server: BrainServer) -> Client:
    return Client(server)


def test_post_then_get_returns_the_stored_event(alice: Client) -> None:
    r = alice.post({"type": "note.created", "data": {"text": "hello", "tags": ["a"], "n": 1.5}})
    assert r.status_code == 201, r.text
    event = r.json()
    assert set(event) == {"id", "type", "data", "created_at"}
    assert event["type"] == "note.created" and event["data"] == {"text": "hello", "tags": ["a"], "n": 1.5}
    assert event["created_at"].endswith("Z")
    listed = alice.get(type="note.created").json()["events"]
    assert listed[0] == event
    # Any JSON value is data; created_at is normalised to UTC.
    for data in (None, 0, "text", [1, {"a": None}], {"unicode": "h\u00e9llo \u2603 \U0001f600"}):
        r = alice.post({"type": "value.kind", "data": data, "created_at": "2024-05-01T12:00:00+02:00"})
        assert r.status_code == 201, r.text
        assert r.json()["data"] == data and r.json()["created_at"] == "2024-05-01T10:00:00.000000Z"
    r = alice.post({"type": "value.kind", "data": 1, "created_at": 0})
    assert r.json()["created_at"] == "1970-01-01T00:00:00.000000Z"


@pytest.mark.parametrize(
    "body, status, field",
    [
        ({"data": 1}, 400, "type"),
        ({"type": "", "data": 1}, 400, "type"),
        ({"type": 5, "data": 1}, 400, "type"),
        ({"type": "has space", "data": 1}, 400, "type"),
        ({"type": "wild.*", "data": 1}, 400, "type"),
        ({"type": "wild.>", "data": 1}, 400, "type"),
        ({"type": "dots..double", "data": 1}, 400, "type"),
        ({"type": ".leading", "data": 1}, 400, "type"),
        ({"type": "trailing.", "data": 1}, 400, "type"),
        ({"type": "x" * 129, "data": 1}, 400, "type"),
        ({"type": "caf\u00e9", "data": 1}, 400, "type"),
        ({"type": "ok"}, 400, "data"),
        ({"type": "ok", "data": "x" * MAX_EVENT_BYTES}, 413, "data"),
        ({"type": "ok", "data": 1, "created_at": "yesterday"}, 400, "created_at"),
        ({"type": "ok", "data": 1, "created_at": "2024-05-01T12:00:00"}, 400, "created_at"),
        ({"type": "ok", "data": 1, "created_at": True}, 400, "created_at"),
        ({"type": "ok", "data": 1, "created_at": 1e300}, 400, "created_at"),
        ({"type": "ok", "data": 1, "extra": 2}, 400, "extra"),
        ({"type": "ok", "data": 1, "key": "mine"}, 400, "key"),
        ("[]", 400, "body"),
        ('"just a string"', 400, "body"),
        ("42", 400, "body"),
        ("null", 400, "body"),
        ('{"type": "ok", "data": NaN}', 400, "JSON"),
        ('{"type": "ok", "data": 1e400}', 400, "data"),
        ('{"type": "ok", "data": "\\ud800"}', 400, "data"),
        ('{"type": "ok", "data": ' + "[" * 5000 + "]" * 5000 + "}", 400, "nested"),
        ('{"type": "ok", "data": 1', 400, "JSON"),
        ("", 400, "empty"),
        ([{"type": "ok", "data": 1}] * (MAX_BATCH + 1), 413, "body"),
        ([{"type": "ok", "data": 1}, {"type": "bad type", "data": 1}], 400, "[1].type"),
        ([{"type": "ok", "data": 1}, "nope"], 400, "[1]"),
    ],
)
def test_invalid_events_are_4xx_naming_the_field(alice: Client, body: Any, status: int, field: str) -> None:
    before = len(alice.all_events(type="ok"))
    r = alice.post(body)
    assert r.status_code == status, r.text
    assert field in r.json()["message"], r.json()
    assert len(alice.all_events(type="ok")) == before  # nothing half-written


def test_content_type_and_body_size(alice: Client, server: BrainServer) -> None:
    r = alice.session.post(f"{alice.url}/events", data='{"type":"ok","data":1}', headers={"Content-Type": "text/html"}, timeout=10)
    assert r.status_code == 415 and r.json()["code"] == "UNSUPPORTED_MEDIA_TYPE"
    r = alice.post(b'{"type":"ok","data":"' + b"x" * 1_100_000 + b'"}')
    assert r.status_code == 413


def test_batch_is_stored_atomically_in_order(alice: Client) -> None:
    r = alice.post([{"type": "batch.item", "data": i} for i in range(10)])
    assert r.status_code == 201, r.text
    stored = r.json()["events"]
    assert [e["data"] for e in stored] == list(range(10))
    ids = [e["id"] for e in stored]
    assert ids == sorted(ids) and len(set(ids)) == 10
    # One bad element: nothing of the batch is stored.
    before = alice.all_events(type="batch.item")
    r = alice.post([{"type": "batch.item", "data": 99}, {"type": "batch.item"}])
    assert r.status_code == 400 and "[1].data" in r.json()["message"]
    assert alice.all_events(type="batch.item") == before


def test_idempotency_key_returns_the_first_result(alice: Client) -> None:
    body = {"type": "payment.made", "data": {"amount": 10}}
    first = alice.post(body, headers={"Idempotency-Key": "pay-1"})
    assert first.status_code == 201 and "Idempotent-Replayed" not in first.headers
    again = alice.post(body, headers={"Idempotency-Key": "pay-1"})
    assert again.status_code == 201 and again.headers["Idempotent-Replayed"] == "true"
    assert again.json() == first.json()
    assert len(alice.all_events(type="payment.made")) == 1
    # The same key for a different request is refused, and stores nothing.
    r = alice.post({"type": "payment.made", "data": {"amount": 99}}, headers={"Idempotency-Key": "pay-1"})
    assert r.status_code == 422 and r.json()["code"] == "IDEMPOTENCY_KEY_REUSED"
    # Batches: a retry returns the same events; a changed retry is refused.
    batch = [{"type": "payment.made", "data": {"amount": i}} for i in (1, 2, 3)]
    b1 = alice.post(batch, headers={"Idempotency-Key": "batch-1"})
    b2 = alice.post(batch, headers={"Idempotency-Key": "batch-1"})
    assert b1.status_code == b2.status_code == 201 and b1.json() == b2.json()
    r = alice.post(batch + [{"type": "payment.made", "data": {"amount": 4}}], headers={"Idempotency-Key": "batch-1"})
    assert r.status_code == 422
    assert len(alice.all_events(type="payment.made")) == 4
    # Bad keys are named.
    for key in ("", "x" * 201, "tab\there"):
        r = alice.post(body, headers={"Idempotency-Key": key})
        assert r.status_code == 400 and "Idempotency-Key" in r.json()["message"], (key, r.text)


def test_concurrent_retries_with_one_key_store_one_event(server: BrainServer) -> None:
    user = Client(server)
    body = {"type": "order.placed", "data": {"sku": "A1"}}

    def post(_: int) -> dict[str, Any]:
        r = requests.post(
            f"{server.api_url}/events", json=body,
            headers={**bearer(user.jwt), "Idempotency-Key": "order-7"}, timeout=10,
        )
        assert r.status_code == 201, r.text
        return r.json()

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(post, range(24)))
    assert len({json.dumps(r, sort_keys=True) for r in results}) == 1
    assert len(user.all_events(type="order.placed")) == 1


def test_concurrent_writes_of_one_user_all_commit(server: BrainServer) -> None:
    user = Client(server)

    def post(i: int) -> int:
        r = requests.post(f"{server.api_url}/events", json={"type": "burst", "data": i}, headers=bearer(user.jwt), timeout=10)
        assert r.status_code == 201, r.text
        return r.json()["id"]

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        ids = list(pool.map(post, range(200)))
    assert len(set(ids)) == 200
    assert sorted(e["data"] for e in user.all_events(type="burst")) == list(range(200))


def test_paging_newest_first_with_filters(server: BrainServer) -> None:
    user = Client(server)
    for i in range(25):
        created = f"2024-01-01T00:00:{i:02d}Z"
        assert user.post({"type": "page.a" if i % 2 else "page.b", "data": i, "created_at": created}).status_code == 201
    page = user.get(limit=10).json()
    assert [e["data"] for e in page["events"]] == list(range(24, 14, -1))
    assert page["next_cursor"]
    everything = user.all_events(limit=7)
    assert [e["data"] for e in everything] == list(range(24, -1, -1))
    assert [e["data"] for e in user.all_events(type="page.a", limit=4)] == list(range(23, 0, -2))
    window = user.all_events(since="2024-01-01T00:00:05Z", until="2024-01-01T00:00:10Z")
    assert [e["data"] for e in window] == [9, 8, 7, 6, 5]
    # Epoch seconds and an unencoded '+' offset (arrives as a space) work too.
    assert len(user.all_events(since=str(1704067205), until="2024-01-01T01:00:10+01:00")) == 5
    # Equal created_at: ties broken by id, none lost across pages.
    for i in range(5):
        user.post({"type": "tie", "data": i, "created_at": "2024-02-01T00:00:00Z"})
    assert [e["data"] for e in user.all_events(type="tie", limit=2)] == [4, 3, 2, 1, 0]
    assert user.get(limit=10, type="no.such").json() == {"events": [], "next_cursor": None}


@pytest.mark.parametrize(
    "params, field",
    [
        ({"limit": "0"}, "limit"),
        ({"limit": "1001"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"limit": "-5"}, "limit"),
        ({"type": "bad type"}, "type"),
        ({"since": "soon"}, "since"),
        ({"until": "2024-01-01T00:00:00"}, "until"),
        ({"cursor": "garbage"}, "cursor"),
        ({"cursor": "a" * 500}, "cursor"),
        ({"cursor": "\u00e9t\u00e9.x"}, "cursor"),
        ({"type": "mail.**"}, "type"),
        ({"type": ",".join(f"t{i}" for i in range(21))}, "type"),
    ],
)
def test_bad_query_parameters_are_400(alice: Client, params: dict[str, Any], field: str) -> None:
    r = alice.get(**params)
    assert r.status_code == 400, r.text
    assert field in r.json()["message"]


def test_cursors_are_signed_and_bound_to_their_user(alice: Client, bob: Client) -> None:
    for i in range(3):
        alice.post({"type": "cursor.test", "data": i})
        bob.post({"type": "cursor.test", "data": i})
    cursor = alice.get(type="cursor.test", limit=1).json()["next_cursor"]
    assert alice.get(type="cursor.test", limit=1, cursor=cursor).status_code == 200
    # Another user cannot use it, and no edit of it survives the signature check.
    r = bob.get(type="cursor.test", limit=1, cursor=cursor)
    assert r.status_code == 400 and "cursor" in r.json()["message"]
    body, mac = cursor.split(".")
    flipped = body[:-1] + ("A" if body[-1] != "A" else "B")
    for forged in (f"{flipped}.{mac}", f"{body}.{mac[:-1]}", body, f"{body}.", f".{mac}"):
        assert alice.get(type="cursor.test", cursor=forged).status_code == 400, forged


def test_two_users_never_see_each_other(server: BrainServer, alice: Client, bob: Client) -> None:
    secret = alice.post({"type": "secret.note", "data": {"owner": alice.id}}).json()
    bob.post({"type": "secret.note", "data": {"owner": bob.id}})
    tricks: list[tuple[str, str, dict[str, Any]]] = [
        ("GET", "/events", {"params": {"user_id": alice.id}}),
        ("GET", "/events", {"params": {"sub": alice.id, "type": "secret.note"}}),
        ("GET", "/events", {"headers": {"X-User-Id": alice.id}}),
        ("GET", f"/events/{alice.id}", {}),
        ("GET", f"/users/{alice.id}/events", {}),
        ("GET", f"/events/{secret['id']}", {}),
        ("GET", f"/../users/{alice.id}/events.db", {}),
        ("GET", f"/events/..%2F..%2Fusers%2F{alice.id}%2Fevents.db", {}),
        ("GET", f"/%2e%2e/users/{alice.id}/events.db", {}),
        ("GET", "/events", {"params": {"cursor": alice.get(limit=1).json()["next_cursor"] or "x.y"}}),
    ]
    for method, path, kwargs in tricks:
        headers = {**bearer(bob.jwt), **kwargs.pop("headers", {})}
        r = requests.request(method, server.api_url + path, headers=headers, timeout=10, **kwargs)
        assert alice.id not in r.text, (path, r.status_code, r.text[:300])
        assert r.status_code in (200, 400, 404, 405), (path, r.status_code)
    assert all(e["data"]["owner"] == bob.id for e in bob.all_events(type="secret.note"))
    assert all(e["data"]["owner"] == alice.id for e in alice.all_events(type="secret.note"))
    # A batch from bob cannot name alice either: the store comes from the token alone.
    r = bob.post([{"type": "secret.note", "data": {"owner": bob.id, "user_id": alice.id}}])
    assert r.status_code == 201
    assert len(alice.all_events(type="secret.note")) == 1


def test_files_land_in_one_database_per_user(server: BrainServer, alice: Client, bob: Client) -> None:
    alice.post({"type": "layout", "data": 1})
    bob.post({"type": "layout", "data": 2})
    users = server.data_dir / "users"
    for user, value in ((alice, 1), (bob, 2)):
        path = users / user.id / "events.db"
        assert path.is_file()
        assert oct(path.stat().st_mode & 0o777) == "0o600"
        assert oct(path.parent.stat().st_mode & 0o777) == "0o700"
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
            assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            rows = db.execute("SELECT data FROM events WHERE type = 'layout'").fetchall()
            assert rows == [(str(value),)]
            indexes = {row[1] for row in db.execute("PRAGMA index_list(events)")}
            assert {"events_created_at", "events_type_created_at"} <= indexes
    # Nothing but user directories (named by valid ids) with their database files.
    for entry in users.iterdir():
        assert entry.is_dir() and len(entry.name) == 32, entry
        assert {p.name for p in entry.iterdir()} <= {"events.db", "events.db-wal", "events.db-shm"}


def test_now_timestamp_is_format_time_of_now(monkeypatch: pytest.MonkeyPatch) -> None:
    """The cached-second clock reads like format_time(now), across second boundaries too."""
    import datetime as dt

    from brain.api import events

    before = events.format_time(dt.datetime.now(dt.timezone.utc))
    now = events.now_timestamp()
    after = events.format_time(dt.datetime.now(dt.timezone.utc))
    assert before <= now <= after and events._TIME_RE.fullmatch(now)
    for ns in (1_700_000_000_999_999_000, 1_700_000_001_000_000_000, 1_700_000_001_000_001_999, 1_699_999_999_500_000_000):
        monkeypatch.setattr(events, "steady_time_ns", lambda ns=ns: ns)
        moment = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(microseconds=ns // 1000)
        assert events.now_timestamp() == events.format_time(moment)


def test_cursors_made_again_are_the_same_bytes_and_stay_bound_to_their_user() -> None:
    """CursorSigner remembers the cursors it made (a page polled hands out the same one): made
    again, a cursor is the same string as the HMAC-SHA256 of its JSON position says, and one
    user's is never another's."""
    signer = CursorSigner(b"s" * 32)
    key = hmac.new(b"s" * 32, b"brain.api.events.cursor", hashlib.sha256).digest()

    def b64(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    def expected(user: str, created_at: str, event_id: int) -> str:
        body = b64(json.dumps([created_at, event_id], separators=(",", ":")).encode())
        return f"{body}.{b64(hmac.new(key, f'{user}{chr(0)}{body}'.encode(), hashlib.sha256).digest()[:18])}"

    at = "2024-05-06T07:08:09.123456Z"
    for _ in range(2):
        assert signer.make("alice", at, 7) == expected("alice", at, 7)
        assert signer.make("bob", at, 7) == expected("bob", at, 7) != expected("alice", at, 7)
    assert signer.read("alice", signer.make("alice", at, 7)) == (at, 7)
    with pytest.raises(BadRequest):
        signer.read("bob", signer.make("alice", at, 7))
    for i in range(events_module._MADE_CURSORS + 10):
        signer.make("carol", at, i + 1)
    assert len(signer._made) <= events_module._MADE_CURSORS
    assert signer.make("carol", at, 3) == expected("carol", at, 3)

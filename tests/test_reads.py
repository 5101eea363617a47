"""Reads served from each event's stored JSON (brain.api.pages), over HTTP against a real server.

A page is SQLite's concatenation of the `rendered` texts written at commit, so these tests hold
it to what brain rendered before: the page of GET /events is, byte for byte, the events as
POST /events answered them (Python's rendering of the stored event), in (created_at, id) order
newest first, for a corpus of unicode, nested data, numbers beyond 2^53 and awkward times. And:
ETags and 304s; a store written before the column existed reads the same and gets its rows
rendered; bytes that are not UTF-8 in a damaged store never reach a client.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from brain.api.pages import RENDER_INLINE_MAX
from tests.search_support import write_v2_store
from tests.support import BrainServer, wait_until
from tests.test_auth_helpers import NO_LIMITS, bearer, new_user

# Every kind of JSON value and text a client may send, with the times that stress the stored format.
CORPUS: list[dict[str, Any]] = [
    {"type": "note", "data": {"text": "plain ascii"}},
    {"type": "note", "data": {"text": "é ß 漢字 😀 \u200d\u2028\u2029 \U0010ffff", "rtl": "שלום"}},
    {"type": "note", "data": {"quote": 'say "hi"\\ then\n\t\r\b\f', "nul": "a\u0000b", "ctl": "\u001f\u007f"}},
    {"type": "note", "data": {"big": 2**53 + 1, "bigger": -(2**80), "huge": 10**40, "float": 0.1, "tiny": 1e-7,
                              "large": 1.5e300, "zero": -0.0, "int_float": 3.0}},
    {"type": "nested.deep", "data": {"a": [1, [2, [3, [4, {"b": {"c": [None, True, False, {}, []]}}]]]]}},
    {"type": "scalar", "data": "just a string"},
    {"type": "scalar", "data": 12345678901234567890123},
    {"type": "scalar", "data": None},
    {"type": "scalar", "data": [], "created_at": "1970-01-01T00:00:00Z"},
    {"type": "scalar", "data": {}, "created_at": 0},
    {"type": "time.edge", "data": {"k": "epoch negative"}, "created_at": -1.5},
    {"type": "time.edge", "data": {"k": "far future"}, "created_at": "9999-12-31T23:59:59.999999Z"},
    {"type": "time.edge", "data": {"k": "offset east"}, "created_at": "2024-02-29T23:30:00+14:00"},
    {"type": "time.edge", "data": {"k": "offset west"}, "created_at": "2024-02-29T23:30:00-12:00"},
    {"type": "time.edge", "data": {"k": "fraction"}, "created_at": "2024-06-01T12:00:00.5+00:00"},
    {"type": "time.edge", "data": {"k": "epoch float"}, "created_at": 1717243200.123456},
]
# Events sharing one created_at: the order among them is by id, and cursors must cut inside them.
TIE = "2023-05-05T05:05:05.050505Z"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrainServer]:
    with BrainServer(tmp_path_factory.mktemp("reads") / "brain", config={"auth": NO_LIMITS}) as s:
        yield s


class Reader:
    """A signed-up user; what POST /events answered for each event, raw."""

    def __init__(self, server: BrainServer) -> None:
        body = new_user(server)
        self.id: str = body["user"]["id"]
        self.url = server.api_url
        self.session = requests.Session()
        self.session.headers.update(bearer(body["jwt"]))
        self.posted: list[bytes] = []

    def post(self, body: Any) -> None:
        r = self.session.post(f"{self.url}/events", json=body, timeout=10)
        assert r.status_code == 201, r.text
        if isinstance(body, list):
            # The batch answer is {"events":[e1,e2,...]}: each event as the single POST renders it.
            inner = r.content[len(b'{"events":['):-len(b"]}")]
            self.posted.extend(_split_events(inner))
        else:
            self.posted.append(r.content)

    def get(self, headers: dict[str, str] | None = None, **params: Any) -> requests.Response:
        return self.session.get(f"{self.url}/events", params=params, headers=headers, timeout=10)

    def expected(self, keep: Any = lambda _e: True) -> list[bytes]:
        """The posted events that pass `keep`, newest first as GET /events orders them."""
        chosen = [raw for raw in self.posted if keep(json.loads(raw))]
        return sorted(chosen, key=lambda raw: (json.loads(raw)["created_at"], json.loads(raw)["id"]), reverse=True)


def _split_events(inner: bytes) -> list[bytes]:
    """Cut `{..},{..}` into its objects by parsing (a comma inside data must not cut)."""
    decoder = json.JSONDecoder()
    text, out, at = inner.decode(), [], 0
    while at < len(text):
        _, end = decoder.raw_decode(text, at)
        out.append(text[at:end].encode())
        at = end + 1
    return out


def pages(reader: Reader, **params: Any) -> Iterator[requests.Response]:
    """Every page of GET /events with these parameters, following next_cursor."""
    cursor = None
    for _ in range(500):
        r = reader.get(**params, **({"cursor": cursor} if cursor else {}))
        assert r.status_code == 200, r.text
        yield r
        cursor = r.json()["next_cursor"]
        if cursor is None:
            return
    raise AssertionError("paging did not end")


def assert_pages(reader: Reader, expected: list[bytes], limit: int, **params: Any) -> None:
    """The pages are, byte for byte, the expected events `limit` at a time, then the end."""
    got: list[bytes] = []
    seen = 0
    for r in pages(reader, limit=limit, **params):
        body = r.content
        body.decode("utf-8")  # strict: only UTF-8 reaches a client
        page = expected[seen:seen + limit]
        prefix = b'{"events":[' + b",".join(page) + b'],"next_cursor":'
        assert body.startswith(prefix), (body[:300], prefix[:300])
        cursor = r.json()["next_cursor"]
        assert body == prefix + (b"null" if cursor is None else json.dumps(cursor).encode()) + b"}"
        got.extend(page)
        seen += len(page)
        assert (cursor is None) == (seen == len(expected)), (seen, len(expected))
    assert got == expected


@pytest.fixture(scope="module")
def corpus_reader(server: BrainServer) -> Reader:
    reader = Reader(server)
    for event in CORPUS:
        reader.post(event)
    reader.post(CORPUS)  # the same again as one batch (one transaction)
    reader.post([{"type": "tie", "data": {"i": i}, "created_at": TIE} for i in range(7)])
    return reader


@pytest.mark.parametrize("limit", [1, 3, 7, 100])
def test_pages_are_the_events_as_posted_byte_for_byte(corpus_reader: Reader, limit: int) -> None:
    expected = corpus_reader.expected()
    assert len(expected) == 2 * len(CORPUS) + 7
    assert_pages(corpus_reader, expected, limit)
    # Parsed, too: every value as it was sent, big integers exactly.
    first = json.loads(corpus_reader.get(limit=100).content)["events"]
    sent = {json.dumps(e["data"], sort_keys=True) for e in CORPUS}
    assert {json.dumps(e["data"], sort_keys=True) for e in first if e["type"] != "tie"} == sent
    big = next(e for e in first if isinstance(e["data"], dict) and "big" in e["data"])["data"]
    assert big["big"] == 2**53 + 1 and big["bigger"] == -(2**80) and big["huge"] == 10**40


def test_filtered_pages_are_the_matching_events(corpus_reader: Reader) -> None:
    assert_pages(corpus_reader, corpus_reader.expected(lambda e: e["type"] == "time.edge"), 4, type="time.edge")
    assert_pages(corpus_reader, corpus_reader.expected(lambda e: e["type"] == "tie"), 3, type="tie")
    since, until = "1970-01-01T00:00:00Z", "2024-03-01T00:00:00Z"
    assert_pages(
        corpus_reader,
        corpus_reader.expected(lambda e: "1970-01-01T00:00:00.000000Z" <= e["created_at"] < "2024-03-01T00:00:00.000000Z"),
        5, since=since, until=until,
    )


def test_empty_pages(server: BrainServer, corpus_reader: Reader) -> None:
    fresh = Reader(server)
    for r in (fresh.get(), fresh.get(limit=1), corpus_reader.get(type="never.posted"),
              corpus_reader.get(until="1900-01-01T00:00:00Z")):
        assert r.status_code == 200
        assert r.content == b'{"events":[],"next_cursor":null}'
    # A full page that is also the last: no cursor to a page that would be empty.
    ties = corpus_reader.get(type="tie", limit=7)
    assert ties.json()["next_cursor"] is None and len(ties.json()["events"]) == 7


def test_etag_and_if_none_match(server: BrainServer) -> None:
    reader = Reader(server)
    for i in range(5):
        reader.post({"type": "etag", "data": {"i": i}})
    first = reader.get(limit=2)
    etag = first.headers["ETag"]
    assert etag.startswith('"') and etag.endswith('"') and first.headers["Cache-Control"] == "private, no-cache"
    for header in (etag, f"W/{etag}", f'"nope", {etag}', "*"):
        again = reader.get(limit=2, headers={"If-None-Match": header})
        assert again.status_code == 304, header
        assert again.content == b"" and again.headers["ETag"] == etag
    assert reader.get(limit=2, headers={"If-None-Match": '"other"'}).status_code == 200
    # Another page, another user's page, and the same page after a write: other tags.
    second = reader.get(limit=2, cursor=first.json()["next_cursor"])
    assert second.headers["ETag"] != etag
    assert reader.get(limit=2, cursor=first.json()["next_cursor"], headers={"If-None-Match": etag}).status_code == 200
    other = Reader(server)
    other.post({"type": "etag", "data": {"i": 4}})
    assert other.get(limit=2).headers["ETag"] != etag
    reader.post({"type": "etag", "data": {"i": 5}})
    after = reader.get(limit=2, headers={"If-None-Match": etag})
    assert after.status_code == 200 and after.headers["ETag"] != etag
    assert [e["data"]["i"] for e in after.json()["events"]] == [5, 4]


def _restart(server: BrainServer) -> None:
    server.start()
    wait_until(lambda: server.health()["jwks"]["loaded"], timeout=15, what="the API to load the signing keys")


def _rendered(event_id: int, etype: str, data: str, created_at: str) -> bytes:
    # What StoredEvent.json() makes: the public shape with the stored data text as it is.
    return f'{{"id":{event_id},"type":"{etype}","data":{data},"created_at":"{created_at}"}}'.encode()


def test_a_store_written_before_the_column_reads_the_same_and_is_rendered(make_server: Any) -> None:
    server: BrainServer = make_server("old", config={"auth": NO_LIMITS})
    server.start()
    body = new_user(server)
    user_id, token = body["user"]["id"], body["jwt"]
    server.stop()
    count = 5000  # more than one backfill step
    # Every 100th row longer than RENDER_INLINE_MAX: a read renders it, the backfill leaves it.
    rows = [("old.kind", json.dumps({"n": i, "t": "ü" * (RENDER_INLINE_MAX if i % 100 == 7 else 1)},
                                    separators=(",", ":"), ensure_ascii=False),
             f"2022-01-01T00:00:{i % 60:02d}.{i:06d}Z") for i in range(count)]
    long_ids = {i + 1 for i in range(count) if i % 100 == 7}
    path = write_v2_store(server.data_dir, user_id, rows)
    expected = sorted(
        (_rendered(i + 1, *row) for i, row in enumerate(rows)),
        key=lambda raw: (json.loads(raw)["created_at"], json.loads(raw)["id"]),
        reverse=True,
    )
    _restart(server)
    reader = Reader.__new__(Reader)
    reader.url, reader.session, reader.posted = server.api_url, requests.Session(), []
    reader.session.headers.update(bearer(token))
    first = reader.get(limit=100)
    assert first.content.startswith(b'{"events":[' + b",".join(expected[:100]) + b'],"next_cursor":"')

    def backfilled() -> bool:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
            return db.execute("SELECT count(*) FROM events WHERE rendered IS NULL").fetchone()[0] == len(long_ids)

    wait_until(backfilled, timeout=30, what="the old rows to be rendered")
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        stored = db.execute("SELECT id, CAST(rendered AS BLOB) FROM events ORDER BY created_at DESC, id DESC").fetchall()
        indexes = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert [raw for event_id, raw in stored if event_id not in long_ids] == \
        [raw for raw in expected if json.loads(raw)["id"] not in long_ids]
    assert {event_id for event_id, raw in stored if raw is None} == long_ids
    # The index of rows to render holds none of the long ones (the old index held every row without its JSON).
    assert "events_to_render" in indexes and "events_unrendered" not in indexes
    assert_pages(reader, expected, 1000)
    # New writes to the old store carry their JSON from the start, and page with the old rows.
    r = reader.session.post(f"{server.api_url}/events", json={"type": "new.kind", "data": [1]}, timeout=10)
    assert r.status_code == 201 and r.json()["id"] == count + 1
    assert reader.get(limit=1).content == b'{"events":[' + r.content + b'],"next_cursor":' + \
        json.dumps(reader.get(limit=1).json()["next_cursor"]).encode() + b"}"


def test_an_event_with_long_data_is_stored_without_its_json_and_reads_the_same(server: BrainServer) -> None:
    """Data over RENDER_INLINE_MAX characters (a mail with its body) keeps no copy of its JSON:
    the page renders it as it reads, byte for byte what POST /events answered, beside events
    that keep theirs; at the limit an event still keeps its copy."""
    reader = Reader(server)
    text = "a" * (RENDER_INLINE_MAX - len('{"t":""}'))  # data of exactly RENDER_INLINE_MAX characters
    bodies = [
        {"type": "note", "data": {"t": text}},
        {"type": "note.long", "data": {"t": text + "x", "q": 'say "hi"\n', "n": 2**60}},
        {"type": "note", "data": {"t": "short"}},
        {"type": "note.long", "data": {"body_text": "ß 漢字 😀 " * 1500}},
    ]
    for body in bodies:
        reader.post(body)
    expected = reader.expected()
    assert_pages(reader, expected, 2)
    with sqlite3.connect(f"file:{server.data_dir / 'users' / reader.id / 'events.db'}?mode=ro", uri=True) as db:
        stored = dict(db.execute("SELECT id, CAST(rendered AS BLOB) FROM events"))
    ids = [json.loads(raw)["id"] for raw in reader.posted]
    assert [stored[i] is not None for i in ids] == [True, False, True, False]
    assert stored[ids[0]] == reader.posted[0] and stored[ids[2]] == reader.posted[2]


def test_bytes_that_are_not_utf8_never_reach_a_client(make_server: Any) -> None:
    server: BrainServer = make_server("damaged", config={"auth": NO_LIMITS})
    server.start()
    body = new_user(server)
    user_id, token = body["user"]["id"], body["jwt"]
    requests.post(f"{server.api_url}/events", json={"type": "fine", "data": {"s": "ok ✓"}},
                  headers=bearer(token), timeout=10).raise_for_status()
    server.stop()
    path = server.data_dir / "users" / user_id / "events.db"
    db = sqlite3.connect(path, isolation_level=None)
    try:
        # A damaged row (a disk error, a foreign writer): a lone 0xff and a cut UTF-8 sequence in its text.
        db.execute(
            "INSERT INTO events (type, data, created_at) VALUES ('damaged', CAST(? AS TEXT), '2030-01-01T00:00:00.000000Z')",
            (b'{"s":"\xff and \xe2\x9c"}',),
        )
        db.execute("DELETE FROM outbox")
    finally:
        db.close()
    _restart(server)
    r = requests.get(f"{server.api_url}/events", headers=bearer(token), timeout=10)
    assert r.status_code == 200, r.text
    text = r.content.decode("utf-8")  # strict
    events = json.loads(text)["events"]
    assert events[0]["type"] == "damaged" and events[0]["data"]["s"] == "\ufffd and \ufffd"
    assert events[1]["data"] == {"s": "ok ✓"}
    # The search index takes the damaged row too (it was written behind the index's back, so it
    # is in the live tail the store indexes as it opens), and a search finds it.
    r = requests.get(f"{server.api_url}/search", params={"q": "and"}, headers=bearer(token), timeout=10)
    assert r.status_code == 200, r.text
    assert [hit["event"]["type"] for hit in r.json()["results"]] == ["damaged"]
    assert "restarting" not in server.log_text() and "Traceback" not in server.log_text()

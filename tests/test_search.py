"""Search and the retrieval routes over HTTP, against a real `brain serve` (issue 16).

One server for the module, with the `mailwriter` test plugin (tests/plugins/mail_writer_plugin.py)
so that mail events reach a store the way mail sync writes them, and a small
`search.rank_window` so paging crosses from one ranked window to the next. Each test signs up
users of its own.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from tests.search_corpus import CORPUS, CREATED_AT, RELEVANCE
from tests.search_support import index_counts, write_v2_store
from tests.support import METRICS_TOKEN, REPO, BrainServer, wait_until
from tests.test_auth_helpers import NO_LIMITS, bearer
from tests.test_events import Client as EventsClient
from tests.test_jetstream import stream_messages
from tests.test_metrics import scrape, value

SAMPLE_DIST = REPO / "tests" / "plugins" / "sample_dist"
RANK_WINDOW = 25
PLUGIN_ENV = {"PYTHONPATH": os.pathsep.join([str(SAMPLE_DIST), str(REPO)])}
PLUGINS = {"enabled": ["gmail", "outlook", "mailwriter"]}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrainServer]:
    s = BrainServer(
        tmp_path_factory.mktemp("search") / "brain",
        config={"auth": NO_LIMITS, "plugins": PLUGINS, "search": {"rank_window": RANK_WINDOW}},
        env=PLUGIN_ENV,
    )
    with s:
        yield s


class Client(EventsClient):
    """A signed-up user of the API role, with the retrieval routes."""

    def __init__(self, server: BrainServer) -> None:
        super().__init__(server)
        self.http = self.session
        self.session_token = self.body["token"]

    def post(self, events: Any, **kwargs: Any) -> Any:
        r = super().post(events, **kwargs)
        assert r.status_code == 201, r.text
        return r.json()

    def server_write(self, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Events written as mail sync writes them (mail.* allowed)."""
        r = self.http.post(f"{self.url}/test/server-events", json=events, timeout=15)
        assert r.status_code == 201, r.text
        stored: list[dict[str, Any]] = r.json()["events"]
        return stored

    def search(self, q: str, **params: Any) -> requests.Response:
        return self.http.get(f"{self.url}/search", params={"q": q, **params}, timeout=15)

    def hits(self, q: str, **params: Any) -> list[dict[str, Any]]:
        r = self.search(q, **params)
        assert r.status_code == 200, (q, r.text)
        results: list[dict[str, Any]] = r.json()["results"]
        return results

    def fetch(self, path: str, **params: Any) -> requests.Response:
        return self.http.get(f"{self.url}{path}", params=params, timeout=15)

    def delete(self, path: str, **params: Any) -> requests.Response:
        return self.http.delete(f"{self.url}{path}", params=params, timeout=15)


def load_corpus(client: Client) -> dict[int, str]:
    """The fixed corpus in the user's store, in its order; event id -> key."""
    ids: dict[int, str] = {}
    for doc in CORPUS:
        event = {"type": doc["type"], "data": doc["data"], "created_at": CREATED_AT}
        if doc["type"].startswith("mail."):
            stored = client.server_write([event])[0]
        else:
            stored = client.post(event)
        ids[stored["id"]] = doc["key"]
    return ids


@pytest.fixture(scope="module")
def corpus_user(server: BrainServer) -> tuple[Client, dict[int, str]]:
    client = Client(server)
    return client, load_corpus(client)


def keys(client: Client, ids: dict[int, str], q: str, **params: Any) -> list[str]:
    return [ids[hit["event"]["id"]] for hit in client.hits(q, limit=50, **params)]


# -- relevance and highlights ------------------------------------------------------------------


@pytest.mark.parametrize("q", list(RELEVANCE))
def test_relevance_top_three_on_a_fixed_corpus(corpus_user: tuple[Client, dict[int, str]], q: str) -> None:
    client, ids = corpus_user
    expected = RELEVANCE[q]
    found = keys(client, ids, q)
    assert found[: len(expected)] == expected, found
    if len(expected) < 3:  # nothing else matches
        assert len(found) == len(expected), found


def test_scores_are_best_first_and_recency_breaks_ties(server: BrainServer) -> None:
    client = Client(server)
    client.post([{"type": "note", "data": {"text": f"unrelated note {i}"}} for i in range(8)])
    best = client.post({"type": "note", "data": {"text": "zebra zebra"}, "created_at": "2020-01-01T00:00:00Z"})
    older = client.post({"type": "note", "data": {"text": "quarterly zebra report"}, "created_at": "2020-01-01T00:00:00Z"})
    newer = client.post({"type": "note", "data": {"text": "quarterly zebra report"}})
    hits = client.hits("zebra")
    assert [h["event"]["id"] for h in hits] == [best["id"], newer["id"], older["id"]]
    # The recency factor of the default settings: up to 1.2 for an event of today.
    assert hits[0]["score"] > hits[1]["score"] > hits[2]["score"] > 0
    assert 1.15 < hits[1]["score"] / hits[2]["score"] < 1.2001


def test_highlights_mark_the_words_in_the_fields_they_matched(corpus_user: tuple[Client, dict[int, str]]) -> None:
    client, ids = corpus_user
    by_key = {ids[h["event"]["id"]]: h for h in client.hits('"lease agreement"')}
    marks = by_key["lease-mail"]["highlights"]
    assert marks["subject"] == "Your <mark>lease agreement</mark> for renewal"
    assert "<mark>lease agreement</mark>" in marks["body_text"]
    # A field filter marks only its own field; a prefix marks whole words; folding keeps the original text.
    hits = {ids[h["event"]["id"]]: h["highlights"] for h in client.hits("from:muller budget")}
    assert hits["anna-budget"]["from.name"] == "Anna <mark>Müller</mark>"
    assert hits["anna-budget"]["subject"] == "Holiday <mark>budget</mark>"
    assert "to.name" not in hits["anna-budget"]
    hits = {ids[h["event"]["id"]]: h["highlights"] for h in client.hits("recip*")}
    assert hits["recipes"]["title"] == "<mark>Recipes</mark> to try"
    hits = {ids[h["event"]["id"]]: h["highlights"] for h in client.hits("cafe")}
    assert hits["cafe"]["title"] == "<mark>Café</mark> Linde"


def test_highlights_are_escaped_and_cut_around_the_match(server: BrainServer) -> None:
    client = Client(server)
    text = "filler " * 80 + "<b>unusual</b> & needle here " + "tail " * 80
    client.post({"type": "note", "data": {"text": text}})
    (hit,) = client.hits("needle")
    snippet = hit["highlights"]["text"]
    assert "&lt;b&gt;unusual&lt;/b&gt; &amp; <mark>needle</mark> here" in snippet
    assert snippet.startswith("…") and snippet.endswith("…") and len(snippet) < 300
    assert "<b>" not in snippet


# -- filters ---------------------------------------------------------------------------------


FILTERS = {
    "from:anna": {"anna-lease", "anna-budget", "anna-dinner", "anna-weekend"},
    "from:greenfield.example": {"lease-mail", "landlord-heating"},
    "to:work.example": {"apollo-deadline", "apollo-review", "work-offsite", "carla-dinner"},
    "subject:invoice": {"invoice-1", "invoice-2", "invoice-3"},
    "title:recipe": {"sourdough"},
    "label:work": {"apollo-deadline", "apollo-review", "work-offsite", "carla-dinner"},
    "labels:work -deadline": {"work-offsite", "carla-dinner"},
    "account:acc_work": {"apollo-deadline", "apollo-review", "work-offsite", "carla-dinner"},
    "account:acc_work dinner": {"carla-dinner", "work-offsite"},
    "has:attachment": {"lease-mail", "tax-advisor", "invoice-1", "invoice-3", "flight-booked", "kitchen-quote"},
    "type:note.created sourdough": {"sourdough", "recipes"},
    "type:mail.* recipe": {"bob-recipe", "newsletter"},
    "type:mail.message.received recipe": {"bob-recipe", "newsletter"},
    "type:mail* recipe": {"bob-recipe", "newsletter"},
    "type:note.* lemon": {"recipes"},
    "-type:mail.* lemon": {"recipes"},
    "body:deadline": {"apollo-deadline", "apollo-review", "apollo-note", "newsletter"},
    "people:okafor": set(),
    "people:stone": {"bob-recipe", "bob-birthday"},
    "from:(anna OR bob) saturday": {"anna-weekend", "bob-birthday"},
    'subject:"lease agreement"': {"lease-mail"},
    "attachments:boarding": {"flight-booked"},
    "NOT cancelled flight": {"flight-booked", "paris-trip", "rebooking"},
    "flight AND rome": {"flight-booked"},
}


@pytest.mark.parametrize("q", list(FILTERS))
def test_every_filter(corpus_user: tuple[Client, dict[int, str]], q: str) -> None:
    client, ids = corpus_user
    assert set(keys(client, ids, q)) == FILTERS[q]


def test_since_and_until_bound_created_at(server: BrainServer) -> None:
    client = Client(server)
    for year in (2021, 2022, 2023, 2024):
        client.post({"type": "note", "data": {"text": f"walrus sighting {year}"}, "created_at": f"{year}-06-01T00:00:00Z"})
    years = lambda **p: sorted(int(h["event"]["data"]["text"][-4:]) for h in client.hits("walrus", **p))  # noqa: E731
    assert years() == [2021, 2022, 2023, 2024]
    assert years(since="2022-06-01T00:00:00Z") == [2022, 2023, 2024]
    assert years(until="2023-06-01T00:00:00Z") == [2021, 2022]
    assert years(since="2022-01-01T00:00:00+02:00", until="2024-01-01T00:00:00Z") == [2022, 2023]


def test_mail_written_live_is_found_at_once(server: BrainServer) -> None:
    client = Client(server)
    event = next(d for d in CORPUS if d["key"] == "flight-booked")
    stored = client.server_write([{"type": event["type"], "data": event["data"]}])[0]
    (hit,) = client.hits("from:skyjet trastevere OR boarding")
    assert hit["event"]["id"] == stored["id"]


# -- GET /events: type prefixes and several types -------------------------------------------


def test_get_events_takes_type_prefixes_and_several_types(server: BrainServer) -> None:
    client = Client(server)
    for etype in ("note.created", "note.updated", "notebook.opened", "task.done", "mail.message.received"):
        if etype.startswith("mail."):
            client.server_write([{"type": etype, "data": {"subject": "x"}}])
        else:
            client.post({"type": etype, "data": {}})

    def types(**params: Any) -> list[str]:
        r = client.fetch("/events", **params)
        assert r.status_code == 200, r.text
        return sorted(e["type"] for e in r.json()["events"])

    assert types(type="note.*") == ["note.created", "note.updated"]
    assert types(type="note*") == ["note.created", "note.updated", "notebook.opened"]
    assert types(type="mail.*") == ["mail.message.received"]
    assert types(type="task.done,note.updated") == ["note.updated", "task.done"]
    assert types(type=["task.done", "mail.*"]) == ["mail.message.received", "task.done"]
    assert types(type="note.created") == ["note.created"]
    # `*` alone is every type, as on the event stream and in webhooks.
    assert types(type="*") == types() == sorted(["note.created", "note.updated", "notebook.opened", "task.done",
                                                 "mail.message.received"])
    for bad in (".*", "note..*", "no te", "mail.**", ",".join(f"t{i}" for i in range(21))):
        r = client.fetch("/events", type=bad)
        assert r.status_code == 400 and r.json()["message"].startswith("type:"), (bad, r.text)


# -- paging ----------------------------------------------------------------------------------


def _page_all(client: Client, q: str, limit: int, between: Any = None) -> list[int]:
    seen: list[int] = []
    cursor = None
    for _ in range(500):
        r = client.search(q, limit=limit, **({"cursor": cursor} if cursor else {}))
        assert r.status_code == 200, r.text
        body = r.json()
        seen.extend(h["event"]["id"] for h in body["results"])
        if between is not None:
            between()
        cursor = body["next_cursor"]
        if cursor is None:
            return seen
    raise AssertionError("paging did not end")


def test_cursor_paging_has_no_gaps_or_repeats_while_writes_continue(server: BrainServer) -> None:
    client = Client(server)
    # Scores differ (how often the word appears, how long the note is) and the matches span
    # several ranked windows (RANK_WINDOW).
    batch = [{"type": "note", "data": {"text": " ".join(["otter"] * (1 + i % 5) + ["river"] * (i % 7))}} for i in range(90)]
    existing = {e["id"] for e in client.post(batch)["events"]}
    stop = threading.Event()
    written: list[int] = []

    def writer() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            written.append(client.post({"type": "note", "data": {"text": f"otter otter late {n}"}})["id"])
            if n % 5 == 0:
                client.delete(f"/events/{written[-1]}")

    thread = threading.Thread(target=writer)

    def after_each_page() -> None:
        if not thread.is_alive() and not stop.is_set():
            thread.start()  # from the first page on: the matches of the first page are the set
        time.sleep(0.02)

    try:
        seen = _page_all(client, "otter", limit=7, between=after_each_page)
    finally:
        stop.set()
        if thread.ident is not None:
            thread.join()
    assert len(seen) == len(set(seen)), "an event came twice"
    assert set(seen) == existing, "the pages are not exactly the events that matched at the first page"
    assert written, "no writes happened while paging"


def test_paging_resumes_after_the_ranked_snapshot_is_gone(make_server: Any) -> None:
    server = make_server(config={"auth": NO_LIMITS, "search": {"rank_window": 10, "cursor_seconds": 0.5}})
    server.start()
    client = Client(server)
    batch = [{"type": "note", "data": {"text": " ".join(["heron"] * (1 + i) + ["pad"] * i)}} for i in range(30)]
    existing = {e["id"] for e in client.post(batch)["events"]}
    seen = _page_all(client, "heron", limit=4, between=lambda: time.sleep(0.6))
    assert sorted(seen) == sorted(existing)


def test_cursors_are_bound_to_the_user_and_the_query(corpus_user: tuple[Client, dict[int, str]], server: BrainServer) -> None:
    client, _ = corpus_user
    other = Client(server)
    body = client.search("lease OR flight OR anna", limit=2).json()
    cursor = body["next_cursor"]
    assert cursor
    for who, q, code in ((other, "lease OR flight OR anna", 400), (client, "lease", 400), (client, "lease OR flight OR anna", 200)):
        r = who.search(q, limit=2, cursor=cursor)
        assert r.status_code == code, r.text
    events_cursor = client.fetch("/events", limit=1).json()["next_cursor"]
    assert client.search("lease", cursor=events_cursor).status_code == 400
    assert client.fetch("/events", cursor=cursor).status_code == 400


# -- deletion, the changes feed, the sequence -----------------------------------------------------


def test_delete_removes_from_search_at_once_and_publishes_a_tombstone(server: BrainServer) -> None:
    client = Client(server)
    keep = client.post({"type": "note", "data": {"text": "platypus keep"}})
    gone = client.post({"type": "note", "data": {"text": "platypus gone"}})
    assert {h["event"]["id"] for h in client.hits("platypus")} == {keep["id"], gone["id"]}
    r = client.delete(f"/events/{gone['id']}")
    assert r.status_code == 200 and r.json() == {"deleted": 1, "ids": [gone["id"]]}
    assert [h["event"]["id"] for h in client.hits("platypus")] == [keep["id"]]
    assert client.hits("gone") == []
    assert client.fetch(f"/events/{gone['id']}").status_code == 404
    assert client.delete(f"/events/{gone['id']}").status_code == 404
    assert client.fetch(f"/events/{keep['id']}").json() == keep
    # The feed no longer has the event, only the tombstone that says it went.
    changes = client.fetch("/events/changes", after=keep["id"]).json()["events"]
    assert [c["type"] for c in changes] == ["event.deleted"]
    tombstone = changes[-1]
    assert tombstone["data"] == {"id": gone["id"], "type": "note", "created_at": gone["created_at"]}
    nats_url = server.nats_url()
    subjects = wait_until(
        lambda: [m for m in stream_messages(nats_url, f"brain.events.{client.id}.event.deleted")] or None,
        timeout=15, what="the tombstone on JetStream",
    )
    payload = json.loads(subjects[0].data)
    assert payload["id"] == tombstone["id"] and payload["data"]["id"] == gone["id"]


def test_bulk_delete_by_type_and_until(server: BrainServer) -> None:
    client = Client(server)
    client.post([{"type": "log.debug", "data": {"text": f"gecko {i}"}, "created_at": f"202{i}-01-01T00:00:00Z"}
                 for i in range(5)])
    client.post({"type": "note", "data": {"text": "gecko note"}})
    assert client.delete("/events").status_code == 400
    r = client.delete("/events", type="log.*", until="2023-01-01T00:00:00Z")
    assert r.status_code == 200 and r.json() == {"deleted": 3}
    left = sorted(h["event"]["data"]["text"] for h in client.hits("gecko"))
    assert left == ["gecko 3", "gecko 4", "gecko note"]
    assert client.delete("/events", type="log.debug").json() == {"deleted": 2}
    assert [h["event"]["type"] for h in client.hits("gecko")] == ["note"]


def test_the_changes_feed_is_in_commit_order_and_numbers_are_never_reused(server: BrainServer) -> None:
    client = Client(server)
    first = client.post({"type": "note", "data": {"n": 1}})
    backdated = client.post({"type": "email.like", "data": {"n": 2}, "created_at": "2001-01-01T00:00:00Z"})
    newest = client.post({"type": "note", "data": {"n": 3}})
    feed = client.fetch("/events/changes", after=first["id"] - 1).json()
    assert [e["id"] for e in feed["events"]] == [first["id"], backdated["id"], newest["id"]]
    assert feed["next_after"] == newest["id"] and feed["has_more"] is False
    # Deleting the newest event must not hand its number (or its tombstone's) to the next one.
    client.delete(f"/events/{newest['id']}")
    after = client.post({"type": "note", "data": {"n": 4}})
    feed = client.fetch("/events/changes", after=newest["id"]).json()["events"]
    tombstone_seq = feed[0]["id"]
    assert feed[0]["type"] == "event.deleted" and tombstone_seq > newest["id"]
    assert after["id"] > tombstone_seq and feed[1]["id"] == after["id"]
    # Paging the feed: limit and has_more.
    page = client.fetch("/events/changes", after=0, limit=2).json()
    assert len(page["events"]) == 2 and page["has_more"] is True
    rest = client.fetch("/events/changes", after=page["next_after"]).json()["events"]
    assert [e["id"] for e in page["events"] + rest] == sorted(e["id"] for e in page["events"] + rest)
    for bad in ({"after": "-1"}, {"after": "x"}, {"limit": "0"}, {"after": str(2**63)}):
        assert client.fetch("/events/changes", **bad).status_code == 400, bad


def test_event_by_id(server: BrainServer) -> None:
    client = Client(server)
    event = client.post({"type": "note", "data": {"text": "hello"}})
    assert client.fetch(f"/events/{event['id']}").json() == event
    for missing in ("999999", "0", "99999999999999999999999"):
        r = client.fetch(f"/events/{missing}")
        assert r.status_code == 404 and r.json()["code"] == "NOT_FOUND", (missing, r.text)
    assert client.fetch("/events/abc").status_code == 404


def test_me_stats(server: BrainServer) -> None:
    client = Client(server)
    client.post([{"type": "note", "data": {"text": "x"}}, {"type": "note", "data": {"text": "y"}}, {"type": "task", "data": {}}])
    stats = client.fetch("/me/stats").json()
    assert stats["events"] == 3 and stats["by_type"] == {"note": 2, "task": 1}
    assert stats["index"] == {"state": "ready", "documents": 3, "pending": 0}
    assert stats["sequence"] == 3 and stats["bytes"] > 0
    assert stats["quota"]["max_events_per_minute"] == 60_000


# -- isolation -------------------------------------------------------------------------------


def test_another_users_events_never_appear(server: BrainServer, corpus_user: tuple[Client, dict[int, str]]) -> None:
    owner, ids = corpus_user
    intruder = Client(server)
    mine = intruder.post({"type": "note", "data": {"text": "intruder's own note"}})
    tricks = [
        "lease", "anna", "from:anna", "type:mail.*", "type:note*", "has:attachment", "account:acc_personal",
        '"lease" OR "dentist" OR "sourdough"', "le*", "*", "(lease)", 'lease" OR "1"="1', "{subject people body}: lease",
        "tags: lease", "rowid:1", "search:lease", "NEAR(lease anna)", "lease*", "user_id:" + owner.id, owner.id,
        "subject:lease OR body:lease OR people:anna", "-nothing lease", "x OR lease", "'; DROP TABLE events; --",
        "meta:lease", "{meta}: lease", "f0:lease", "{f0 f1 f2}: lease", "- {meta} : lease", "search_fields:subject",
    ]
    for q in tricks:
        r = intruder.search(q, limit=100)
        assert r.status_code in (200, 400), (q, r.text)
        if r.status_code == 200:
            assert all(h["event"]["id"] == mine["id"] for h in r.json()["results"]), q
    # Ids are per user: the intruder's /events/{id} is its own event or nothing.
    for event_id in list(ids)[:5]:
        r = intruder.fetch(f"/events/{event_id}")
        assert r.status_code == 404 or r.json()["data"] == mine["data"], r.text
        assert intruder.delete(f"/events/{event_id}").status_code in (200, 404)
    assert {e["id"] for e in intruder.fetch("/events/changes").json()["events"] if e["type"] != "event.deleted"} <= {mine["id"]}
    stats = intruder.fetch("/me/stats").json()
    assert stats["events"] <= 1
    # The owner's events are all still there.
    assert len(owner.fetch("/events", limit=1000).json()["events"]) == len(ids)
    owner_cursor = owner.search("lease OR flight", limit=1).json()["next_cursor"]
    assert intruder.search("lease OR flight", limit=1, cursor=owner_cursor).status_code == 400


def test_api_keys_need_the_right_scope(server: BrainServer) -> None:
    client = Client(server)
    client.post({"type": "note", "data": {"text": "ibis"}})

    def key(**permissions: list[str]) -> str:
        r = requests.post(f"{server.auth_url}/api/auth/api-key/create", json={"name": "k", "permissions": permissions},
                          headers=bearer(client.session_token), timeout=15)
        assert r.status_code == 200, r.text
        return str(r.json()["key"])

    search_only, reader, writer = key(search=["read"]), key(events=["read"]), key(events=["write"])

    def status(k: str, method: str, path: str, **params: Any) -> int:
        return requests.request(method, f"{server.api_url}{path}", params=params, headers={"x-api-key": k}, timeout=15).status_code

    assert status(search_only, "GET", "/search", q="ibis") == 200
    assert status(reader, "GET", "/search", q="ibis") == 403
    assert status(search_only, "GET", "/events/1") == 403
    assert status(reader, "GET", "/events/1") == 200
    assert status(reader, "GET", "/events/changes") == 200
    assert status(reader, "GET", "/me/stats") == 200
    assert status(reader, "DELETE", "/events/1") == 403
    assert status(writer, "DELETE", "/events/1") == 200


# -- bad queries -----------------------------------------------------------------------------


BAD_QUERIES = {
    '"unterminated': 1, "lease (": 7, "lease )": 7, "OR lease": 1, "lease OR": 7, "lease AND": 7, "*": 1,
    "a*": 1, "-lease": 1, "NOT lease": 1, "from:": 1, "has:pdf": 5, "type:a..b": 6, "x\x00y": 2,
    "((((((((((((((((((((x))))))))))))))))))))": 17, "-a OR b": 4,
}


@pytest.mark.parametrize("q", list(BAD_QUERIES))
def test_a_query_the_language_refuses_is_400_naming_the_position(corpus_user: tuple[Client, dict[int, str]], q: str) -> None:
    client, _ = corpus_user
    r = client.search(q)
    assert r.status_code == 400, r.text
    body = r.json()
    assert body["code"] == "INVALID_QUERY" and body["position"] == BAD_QUERIES[q], body
    assert f"at position {BAD_QUERIES[q]}" in body["message"]


def test_odd_queries_are_never_a_5xx(corpus_user: tuple[Client, dict[int, str]]) -> None:
    client, _ = corpus_user
    odd = ['"', '""', "()", "(", ")", "NEAR", "NEAR(a b, 2)", "{body}: x", "subject : x", "^lease", "lease +x", "* *",
           "**", "-", "--", "a -", "\u00a0", "x" * 10_000, "é" * 900, "lease " * 200, "\U0001f600", "type:", "type:*",
           "type:.*", "has:", ":", "a:b:c", "\x7f", "NOT", "AND", "OR", "AND OR NOT", "(a OR)", "field.name:x",
           "lease\tagreement", "lease\nagreement", "%", "'", "\\", '"a" "b"', "a:(b", "a:(b OR c)"]
    for q in odd:
        r = client.search(q)
        assert r.status_code in (200, 400), (q, r.status_code, r.text[:200])
        assert isinstance(r.json(), dict)
    r = client.search("x", limit=0)
    assert r.status_code == 400 and r.json()["message"].startswith("limit")
    r = client.http.get(f"{client.url}/search", timeout=15)
    assert r.status_code == 400 and r.json()["message"].startswith("q:")


# -- quotas ----------------------------------------------------------------------------------


def test_write_quotas_answer_429_and_507_with_retry_after(make_server: Any) -> None:
    server = make_server(config={"auth": NO_LIMITS, "api": {"max_events_per_minute": 5, "max_user_bytes": 250_000}})
    server.start()
    client = Client(server)
    client.post([{"type": "note", "data": {"n": i}} for i in range(5)])
    r = client.http.post(f"{client.url}/events", json={"type": "note", "data": {}}, timeout=15)
    assert r.status_code == 429 and r.json()["code"] == "EVENT_QUOTA_EXCEEDED"
    assert 1 <= int(r.headers["Retry-After"]) <= 13
    r = client.http.post(f"{client.url}/events", json=[{"type": "note", "data": {}}] * 6, timeout=15)
    assert r.status_code == 413, r.text

    other = Client(server)
    # Near api.max_event_bytes each: a few fill the quota, within the 5 a minute.
    payload = {"type": "note", "data": {"text": "capybara " * 7000}}
    statuses = []
    for _ in range(60):
        r = other.http.post(f"{client.url}/events", json=payload, timeout=15)
        statuses.append(r.status_code)
        if r.status_code == 429:
            time.sleep(int(r.headers["Retry-After"]))
        if r.status_code == 507:
            break
    assert statuses[-1] == 507, statuses
    assert r.json()["code"] == "INSUFFICIENT_STORAGE" and int(r.headers["Retry-After"]) > 0
    assert other.fetch("/me/stats").json()["bytes"] >= 250_000
    # Reading and deleting still work on a full store.
    first = other.fetch("/events", limit=1).json()["events"][0]
    assert other.delete(f"/events/{first['id']}").status_code == 200


# -- stores from before the index, and the index turned off ----------------------------------------


def test_a_store_from_before_the_index_is_upgraded_and_backfilled(make_server: Any, tmp_path: Any) -> None:
    server = make_server(config={"auth": NO_LIMITS})
    server.start()
    client = Client(server)
    rows = [("note.created", json.dumps({"title": f"old note {i}", "text": "marmot" if i % 3 == 0 else "other"}),
             f"2024-01-{1 + i % 28:02d}T00:00:00.000000Z") for i in range(3000)]
    mail = next(d for d in CORPUS if d["key"] == "kitchen-quote")
    rows.append((mail["type"], json.dumps(mail["data"]), "2024-02-01T00:00:00.000000Z"))
    write_v2_store(server.data_dir, client.id, rows)
    stats = client.fetch("/me/stats").json()  # opens the store: schema 2 -> 3, backfill starts
    assert stats["events"] == 3001
    wait_until(lambda: client.fetch("/me/stats").json()["index"]["state"] == "ready", timeout=60, what="the backfill")
    assert client.fetch("/me/stats").json()["index"]["documents"] == 3001
    assert len(_page_all(client, "marmot", limit=100)) == 1000
    assert [h["event"]["id"] for h in client.hits("type:mail.* cabinets")] == [3001]
    # The old events keep their ids; new ones follow them.
    assert client.fetch("/events/1").json()["data"]["title"] == "old note 0"
    assert client.post({"type": "note", "data": {"text": "marmot new"}})["id"] == 3002
    figures = server.health()["search"]
    assert figures["backfilled_events"] == 3001 and figures["backfilled_stores"] == 1


def _index_file(server: BrainServer) -> tuple[int, int, int, str]:
    """(events, FTS5 rows, the live tail's first id, FTS5 integrity check) of the one store."""
    (path,) = (server.data_dir / "users").glob("*/events.db")
    counts = index_counts(path)
    return counts.events, counts.rows, counts.tail, counts.check


def test_writes_leave_the_index_to_the_tail_and_a_crash_leaves_no_gap(make_server: Any) -> None:
    # A day's delay: the tail waits for a search, for 256 events, or for the store to reopen.
    server = make_server(config={"auth": NO_LIMITS, "search": {"index_delay_seconds": 86400}})
    server.start()
    client = Client(server)
    first = [client.post({"type": "note", "data": {"text": f"numbat {i}"}})["id"] for i in range(3)]
    assert _index_file(server) == (3, 0, first[0], "ok")  # written, not indexed: the file says so
    # A search indexes the tail first: it never misses an event written before it.
    assert sorted(h["event"]["id"] for h in client.hits("numbat")) == first
    assert _index_file(server) == (3, 3, first[-1] + 1, "ok")
    later = [client.post({"type": "note", "data": {"text": f"numbat later {i}"}})["id"] for i in range(2)]
    # Deleting an event of the tail (not indexed) and an indexed one: each leaves no row behind.
    assert client.delete(f"/events/{later[0]}").status_code == 200
    assert client.delete(f"/events/{first[0]}").status_code == 200
    assert _index_file(server) == (3, 2, first[-1] + 1, "ok")
    server.kill()
    server.start()
    # Opening the store indexes what the crash left in the tail. (Just after a start the API may
    # answer 503 "signing keys are not loaded yet", Retry-After 2: seen under load.)
    wait_until(lambda: client.fetch("/events").status_code == 200, timeout=30, what="GET /events after the restart")
    wait_until(lambda: _index_file(server) == (3, 3, later[-1] + 1, "ok"), timeout=15, what="the tail indexed on open")
    assert sorted(h["event"]["id"] for h in client.hits("numbat")) == [*first[1:], later[1]]
    assert client.fetch("/me/stats").json()["index"] == {"state": "ready", "documents": 3, "pending": 0}


def test_writes_and_searches_go_on_while_the_backfill_runs(make_server: Any) -> None:
    server = make_server(config={"auth": NO_LIMITS, "metrics": {"token": METRICS_TOKEN}})
    server.start()
    client = Client(server)
    old = 60_000
    write_v2_store(server.data_dir, client.id, (
        ("note.created", json.dumps({"title": f"old note {i}", "text": "wombat" if i % 10 == 0 else "other"}),
         "2024-01-01T00:00:00.000000Z") for i in range(old)))
    stats = client.fetch("/me/stats").json()  # opens the store: the backfill starts
    assert stats["index"]["state"] == "backfilling" and stats["index"]["pending"] > 0, stats
    # Progress is in the metrics and in /health while it runs.
    samples = scrape(f"{server.api_url}/metrics", {"Authorization": f"Bearer {METRICS_TOKEN}"})
    assert value(samples, "brain_search_backfill_stores") == 1
    assert value(samples, "brain_search_backfill_pending_events") > 0
    assert server.health()["search"]["backfilling_stores"] == 1
    # A write is not held up by the backfill and is found at once; answers say they are partial.
    fresh = client.post({"type": "note", "data": {"text": "wombat fresh"}})
    r = client.search("fresh")
    assert r.status_code == 200 and r.json()["partial"] is True
    assert [h["event"]["id"] for h in r.json()["results"]] == [fresh["id"]]
    wait_until(lambda: client.fetch("/me/stats").json()["index"]["state"] == "ready", timeout=120, what="the backfill")
    assert client.fetch("/me/stats").json()["index"]["documents"] == old + 1
    r = client.search("wombat", limit=1)
    assert r.json()["partial"] is False and r.json()["results"][0]["event"]["id"] == fresh["id"]
    samples = scrape(f"{server.api_url}/metrics", {"Authorization": f"Bearer {METRICS_TOKEN}"})
    assert value(samples, "brain_search_backfill_stores") == 0
    assert value(samples, "brain_search_backfilled_events_total") == old


def test_with_the_index_off_search_is_503_and_turned_on_it_is_rebuilt(make_server: Any) -> None:
    server = make_server(config={"auth": NO_LIMITS, "search": {"index": False}})
    server.start()
    client = Client(server)
    client.post([{"type": "note", "data": {"text": f"quokka {i}"}} for i in range(20)])
    r = client.search("quokka")
    assert r.status_code == 503 and "Retry-After" in r.headers
    assert client.fetch("/me/stats").json()["index"] == {"state": "disabled"}
    assert client.delete("/events/1").status_code == 200
    server.stop()
    server.config["search"] = {"index": True}
    server.start()

    def rebuilt() -> bool:
        r = client.fetch("/me/stats")
        return r.status_code == 200 and r.json()["index"]["state"] == "ready"

    wait_until(rebuilt, timeout=30, what="the index rebuilt")
    assert len(client.hits("quokka", limit=100)) == 19


def test_an_index_of_another_version_is_dropped_and_built_again_with_the_prefix_index(make_server: Any) -> None:
    # An index built by VERSION 1 (no prefix index) is emptied, and its table made anew: a
    # 'delete-all' would have kept the old definition, and with it the merge of every word a
    # 3-letter prefix expands to.
    import sqlite3

    server = make_server(config={"auth": NO_LIMITS})
    server.start()
    client = Client(server)
    client.post([{"type": "note", "data": {"text": f"wombat{i} burrow"}} for i in range(30)])
    assert len(client.hits("wom*", limit=100)) == 30
    server.stop()
    (path,) = (server.data_dir / "users").glob("*/events.db")
    db = sqlite3.connect(path, isolation_level=None)
    try:
        old = db.execute("SELECT sql FROM sqlite_master WHERE name = 'search'").fetchone()[0]
        assert "prefix='3'" in old
        version_1 = old.replace("prefix='3',", "")
        db.executescript(f"BEGIN; DROP TABLE search; {version_1};"
                         "INSERT INTO search (search, rank) VALUES ('automerge', 0);"
                         "UPDATE search_state SET version = 1; COMMIT;")
    finally:
        db.close()
    server.start()

    def rebuilt() -> bool:
        r = client.fetch("/me/stats")
        assert r.status_code in (200, 503), r.text  # 503 + Retry-After while the store opens, never a 500
        return r.status_code == 200 and r.json()["index"]["state"] == "ready"

    wait_until(rebuilt, timeout=30, what="the index rebuilt")
    assert len(client.hits("wom*", limit=100)) == 30
    assert len(client.hits("wombat7", limit=100)) == 1
    db = sqlite3.connect(path)
    try:
        assert "prefix='3'" in db.execute("SELECT sql FROM sqlite_master WHERE name = 'search'").fetchone()[0]
        assert db.execute("SELECT version FROM search_state").fetchone()[0] == 2
        db.execute("INSERT INTO search (search, rank) VALUES ('integrity-check', 0)")  # raises if not
    finally:
        db.close()
    assert "rebuilding it in the background" in server.log_text()

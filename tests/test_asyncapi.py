"""The event stream's AsyncAPI document is the contract of what reaches JetStream.

A real `brain serve` (embedded nats-server) writes events of every kind it has: posted by a
client (one with an Idempotency-Key), synced from the local fake Gmail (received, updated,
deleted), the tombstone of a deleted event (event.deleted), and a `webhook.disabled` after an
endpoint failed too long. Every message read back from the stream with nats-py must match a
channel of GET /asyncapi.json by its subject, and that channel's message by its headers and
payload (jsonschema over the document's own components).
The document itself is read by the AsyncAPI Initiative's parser (@asyncapi/parser, run by node).
"""

from __future__ import annotations

import copy
import datetime
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import referencing
import requests
from referencing.jsonschema import DRAFT7

from brain.api.asyncapi import build_asyncapi
from brain.api.events import TOMBSTONE_TYPE, ReservedTypes
from brain.mail.engine import DELETED, RECEIVED, UPDATED
from brain.runtime import Runtime
from brain.testing.fakes.gmail import FakeGmail
from brain.webhooks.queue import DISABLED_EVENT
from clients.generate import ASYNCAPI, current_spec, default_settings
from tests.js_packages import ensure_installed
from tests.support import BrainServer, wait_until
from tests.test_auth_helpers import NO_LIMITS
from tests.test_jetstream import stream_messages
from tests.test_mail_server import GMAIL_USER, Client, mail_config
from tests.test_webhooks import LOCAL, Receiver

PARSER_DIR = Path(__file__).parent / "asyncapi"
DOCUMENT = "urn:brain:asyncapi"

# The AsyncAPI Schema format is JSON Schema draft-07's superset; `date-time` is checked here
# (jsonschema checks it only with an optional package).
FORMATS = jsonschema.FormatChecker()


@FORMATS.checks("date-time", raises=ValueError)
def _date_time(value: object) -> bool:
    return not isinstance(value, str) or datetime.datetime.fromisoformat(value).tzinfo is not None


@pytest.fixture
def gmail() -> Any:
    yield from FakeGmail.running()


def parse_with_asyncapi_parser(document: dict[str, Any], tmp_path: Path) -> tuple[int, dict[str, Any]]:
    """@asyncapi/parser's verdict on the document: (exit code, {parsed, diagnostics})."""
    ensure_installed(PARSER_DIR, ("@asyncapi/parser/package.json",))
    path = tmp_path / "asyncapi.json"
    path.write_text(json.dumps(document))
    done = subprocess.run(["node", "validate.mjs", str(path)], cwd=PARSER_DIR, capture_output=True, text=True, timeout=120)
    assert done.stdout, done.stderr
    return done.returncode, json.loads(done.stdout)


class StreamContract:
    """Matches JetStream messages to the document's channels and checks them against its schemas."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document
        self.registry = referencing.Registry().with_resource(DOCUMENT, DRAFT7.create_resource(document))
        self.channels = {name: self._address_re(channel) for name, channel in document["channels"].items()}

    @staticmethod
    def _address_re(channel: dict[str, Any]) -> re.Pattern[str]:
        # Each parameter fills at least one subject token; `type` may span several.
        pattern = ""
        for literal, parameter in re.findall(r"([^{]*)(?:\{([^}]+)\})?", channel["address"]):
            pattern += re.escape(literal)
            if parameter:
                pattern += rf"(?P<{parameter}>[^.]+(?:\.[^.]+)*)" if parameter == "type" else rf"(?P<{parameter}>[^.]+)"
        return re.compile(pattern)

    def errors(self, pointer: str, instance: Any) -> list[str]:
        """What is wrong with instance against the schema at pointer of the document."""
        validator = jsonschema.Draft7Validator({"$ref": f"{DOCUMENT}#{pointer}"}, registry=self.registry,
                                               format_checker=FORMATS)
        return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(instance)]

    def check(self, subject: str, headers: dict[str, str], payload: Any) -> list[str]:
        """The channels the message belongs to; an AssertionError if it matches none or breaks one."""
        matched = []
        for name, address in self.channels.items():
            found = address.fullmatch(subject)
            if found is None:
                continue
            matched.append(name)
            params = found.groupdict()
            assert params["user_id"] == payload["user_id"] == headers["Brain-User-Id"], (subject, payload)
            assert params.get("type", payload["type"]) == payload["type"], (subject, payload)
            problems = []
            for ref in self.document["channels"][name]["messages"].values():
                pointer = ref["$ref"].removeprefix("#")
                wrong = self.errors(pointer + "/headers", headers) + self.errors(pointer + "/payload", payload)
                if not wrong:
                    break
                problems.append(f"{pointer}: {wrong}")
            else:
                raise AssertionError(f"{subject} fits no message of channel {name}: {problems}")
        assert matched, f"{subject} matches no channel of the document"
        return matched


def jetstream_messages(url: str, subject: str) -> list[tuple[str, dict[str, str], Any]]:
    """(subject, headers, payload) of every message of BRAIN_EVENTS on subject, by a fresh consumer."""
    return [(m.subject, dict(m.headers or {}), json.loads(m.data)) for m in stream_messages(url, subject)]


def test_every_published_message_matches_the_asyncapi_document(tmp_path: Path, gmail: FakeGmail) -> None:
    message_ids = gmail.populate(GMAIL_USER, 3)
    # An endpoint failing for about four seconds is disabled (webhook.disabled).
    config = {**mail_config(gmail), "auth": NO_LIMITS, "webhooks": {**LOCAL, "disable_after_days": 0.00005}}
    with Receiver(answer=lambda _n: 503) as receiver, BrainServer(tmp_path / "brain", config=config) as server:
        alice = Client(server)
        document = requests.get(server.api_url + "/asyncapi.json", timeout=10).json()
        contract = StreamContract(document)

        hook = alice.post("/webhooks", {"url": receiver.url, "types": ["note.*"]})
        assert hook.status_code == 201, hook.text
        r = requests.post(server.api_url + "/events", json={"type": "note.created", "data": {"text": "h\u00e9llo"}},
                          headers={**alice.headers, "Idempotency-Key": "key with spaces/and:colons"}, timeout=10)
        assert r.status_code == 201, r.text
        r = alice.post("/events", [{"type": "task.done", "data": None}, {"type": "a-b_c.D-9", "data": [1, "two"]},
                                   {"type": "note.created", "data": "x", "created_at": 0}])
        assert r.status_code == 201, r.text
        gone = r.json()["events"][0]["id"]
        r = requests.delete(f"{server.api_url}/events/{gone}", headers=alice.headers, timeout=10)
        assert r.status_code == 200, r.text  # its tombstone: an event.deleted

        account = alice.connect("gmail", gmail.issue_refresh_token(GMAIL_USER))
        alice.wait_state(account["account"], "idle")
        gmail.modify_labels(GMAIL_USER, message_ids[0], add=["STARRED"])
        gmail.delete_message(GMAIL_USER, message_ids[1])
        wait_until(lambda: {UPDATED, DELETED} <= {e["type"] for e in alice.events()}, timeout=30, what="incremental sync")
        wait_until(lambda: alice.events(DISABLED_EVENT), timeout=40, what="the endpoint disabled")

        stored = {e["id"] for e in alice.events()}
        url = server.nats_url()

        def published() -> list[tuple[str, dict[str, str], Any]] | None:
            found = jetstream_messages(url, f"brain.events.{alice.user_id}.>")
            ids = {p["id"] for _, _, p in found}
            return found if stored <= ids and any(p["type"] == TOMBSTONE_TYPE for _, _, p in found) else None

        messages = wait_until(published, timeout=20, what="every event and the tombstone on JetStream")

        used: set[str] = set()
        for subject, headers, payload in messages:
            used.update(contract.check(subject, headers, payload))
        tombstones = [p for _, _, p in messages if p["type"] == TOMBSTONE_TYPE]
        assert [t["data"]["id"] for t in tombstones] == [gone]
        assert {p["id"] for _, _, p in messages} - {gone, tombstones[0]["id"]} == stored
        assert any("Brain-Event-Key" in headers for _, headers, _ in messages)
        # Every channel of the document was seen on the stream.
        assert used == set(document["channels"]), set(document["channels"]) - used

        # The check can fail: a payload the document does not allow is refused, by its schema.
        strict = copy.deepcopy(document)
        strict["components"]["schemas"][DISABLED_EVENT]["properties"]["deliveries_failed"] = {"type": "string"}
        disabled = next(m for m in messages if m[2]["type"] == DISABLED_EVENT)
        with pytest.raises(AssertionError, match="deliveries_failed"):
            StreamContract(strict).check(*disabled)

        code, verdict = parse_with_asyncapi_parser(document, tmp_path)
        assert code == 0 and verdict["parsed"], verdict
        assert [d for d in verdict["diagnostics"] if d["severity"] <= 1] == [], verdict


def test_the_parser_refuses_a_document_that_is_not_asyncapi_3(tmp_path: Path) -> None:
    document = json.loads(ASYNCAPI.read_text())
    broken = copy.deepcopy(document)
    broken["operations"]["receive.events"]["action"] = "subscribe"  # AsyncAPI 2's word
    del broken["channels"]["events"]["address"]
    code, verdict = parse_with_asyncapi_parser(broken, tmp_path)
    assert code == 1, verdict
    assert any(d["path"].startswith("operations/receive.events") for d in verdict["diagnostics"]), verdict


def test_every_event_type_the_server_writes_has_a_channel_and_a_schema(tmp_path: Path) -> None:
    spec = current_spec()
    settings = default_settings(tmp_path)
    document = build_asyncapi(spec, settings.nats)
    typed = {name for name in document["channels"] if name != "events"}
    assert {TOMBSTONE_TYPE, RECEIVED, UPDATED, DELETED, DISABLED_EVENT} <= typed
    # Every namespace only the server may write (mail, webhook, event.deleted) has the schemas of its
    # types, and every typed channel is of such a namespace.
    namespaces = ReservedTypes.from_plugins(Runtime(settings).pm).namespaces
    assert namespaces == {TOMBSTONE_TYPE, "mail", "webhook"}

    def under(name: str, namespace: str) -> bool:
        return name == namespace or name.startswith(namespace + ".")

    assert all(any(under(name, namespace) for name in typed) for namespace in namespaces)
    assert all(any(under(name, namespace) for namespace in namespaces) for name in typed)
    for name in typed:
        assert document["channels"][name]["messages"][name] == {"$ref": f"#/components/messages/{name}"}
        payload = document["components"]["messages"][name]["payload"]
        assert payload["properties"]["data"] == {"$ref": f"#/components/schemas/{name}"}
        assert document["components"]["schemas"][name] == spec["components"]["schemas"][name]

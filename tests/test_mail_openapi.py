"""The mail routes answer what /openapi.json says they answer: every status is one the operation
describes, every body has a described media type, and every JSON body validates against its
schema with no field the schema leaves out (a client generated from the document sees all of
it). Driven over HTTP against the real `brain serve` and the local fake Gmail, successes and
failures alike.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jsonschema
import pytest
import requests
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from brain.testing.fakes.gmail import FakeGmail
from brain.testing.fakes.mime import Part
from tests.support import BrainServer
from tests.test_mail_accounts import PDF, push_config
from tests.test_mail_server import GMAIL_USER, Client

SPEC_URI = "urn:brain:openapi"


@pytest.fixture
def gmail() -> Iterator[FakeGmail]:
    yield from FakeGmail.running()


def closed(schema: Any) -> Any:
    """``schema`` with every object that lists its properties closed to any other property."""
    if isinstance(schema, list):
        return [closed(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: closed(value) for key, value in schema.items()}
    # A schema that refines what it composes (allOf: the Error schema with its code values) stays open:
    # closed, it would refuse the composed schema's own properties.
    if "properties" in out and not {"additionalProperties", "patternProperties", "allOf"} & set(out):
        out["additionalProperties"] = False
    return out


class Described:
    """The answers of the served /openapi.json, checked against what the routes really send."""

    def __init__(self, server: BrainServer) -> None:
        spec = requests.get(f"{server.api_url}/openapi.json", timeout=10).json()
        # Closed throughout: a $ref from a response lands on a closed component too.
        self.spec = closed(spec)
        self.registry = Registry().with_resource(SPEC_URI, Resource.from_contents(self.spec, DRAFT202012))
        self.checked: set[tuple[str, str, int]] = set()

    def check(self, method: str, template: str, response: requests.Response) -> requests.Response:
        """Fail unless ``response`` is one the operation ``method template`` describes."""
        where = f"{method.upper()} {template} -> {response.status_code}"
        operation = self.spec["paths"][template][method]
        described = operation["responses"].get(str(response.status_code))
        assert described is not None, f"{where}: a status /openapi.json does not describe ({response.text[:200]})"
        self.checked.add((method, template, response.status_code))
        media_type = response.headers.get("Content-Type", "").split(";")[0].strip().lower()
        content = described.get("content", {})
        if not response.content:
            return response
        assert content, f"{where}: a {media_type} body where /openapi.json describes none"
        key = next((k for k in content if k in (media_type, "*/*") or k == media_type.split("/")[0] + "/*"), None)
        assert key is not None, f"{where}: {media_type} is not among the described {sorted(content)}"
        if media_type == "application/json":
            pointer = "/".join(part.replace("~", "~0").replace("/", "~1") for part in
                               ("paths", template, method, "responses", str(response.status_code), "content", key, "schema"))
            validator = jsonschema.Draft202012Validator({"$ref": f"{SPEC_URI}#/{pointer}"}, registry=self.registry)
            errors = sorted(validator.iter_errors(response.json()), key=lambda e: list(e.absolute_path))
            assert not errors, f"{where}: " + "; ".join(
                f"{'/'.join(map(str, e.absolute_path)) or '(body)'}: {e.message}" for e in errors[:5]
            )
        return response


def test_every_mail_answer_is_the_one_the_document_describes(tmp_path: Path, gmail: FakeGmail) -> None:
    message = gmail.add_message(GMAIL_USER, subject="Report", body="See attached.",
                                attachments=[Part("report.pdf", "application/pdf", PDF)])
    port, config = push_config(gmail)
    with BrainServer(tmp_path / "brain", config=config, api_port=port) as server:
        doc = Described(server)
        alice, bob = Client(server), Client(server)
        api = server.api_url

        def call(client: Client | None, method: str, template: str, path: str, **kwargs: Any) -> requests.Response:
            headers = client.headers if client is not None else {}
            return doc.check(method, template, requests.request(method, api + path, headers=headers, timeout=30, **kwargs))

        token = gmail.issue_refresh_token(GMAIL_USER)
        authorize = call(alice, "post", "/mail/connect", "/mail/connect", json={"provider": "gmail"})
        assert authorize.status_code == 200
        created = call(alice, "post", "/mail/connect", "/mail/connect", json={"provider": "gmail", "refresh_token": token})
        assert created.status_code == 201
        account = created.json()["account"]["account"]
        assert call(alice, "post", "/mail/connect", "/mail/connect",
                    json={"provider": "gmail", "refresh_token": token}).status_code == 200  # reconnected
        for bad in ({"provider": "carrier-pigeon"}, {"provider": "gmail", "sync": {"bodies": "yes"}}, []):
            assert call(alice, "post", "/mail/connect", "/mail/connect", json=bad).status_code == 400
        assert call(None, "post", "/mail/connect", "/mail/connect", json={"provider": "gmail"}).status_code == 401
        alice.wait_state(account, "idle")

        status = call(alice, "get", "/mail/status", "/mail/status")
        assert [a["account"] for a in status.json()["accounts"]] == [account]
        assert call(None, "get", "/mail/status", "/mail/status").status_code == 401

        one = "/mail/accounts/{account}"
        assert call(alice, "patch", one, f"/mail/accounts/{account}", json={"sync_window_days": 365}).status_code == 200
        assert call(alice, "patch", one, f"/mail/accounts/{account}", json={"folders": "INBOX"}).status_code == 400
        assert call(bob, "patch", one, f"/mail/accounts/{account}", json={"bodies": False}).status_code == 404
        alice.wait_state(account, "idle")

        now = "/mail/accounts/{account}/sync"
        assert call(alice, "post", now, f"/mail/accounts/{account}/sync", json={}).status_code == 202
        assert call(bob, "post", now, f"/mail/accounts/{account}/sync", json={}).status_code == 404

        (attachment,) = next(e for e in alice.events("mail.message.received") if e["data"]["message_id"] == message)["data"]["attachments"]
        download = "/mail/messages/{message}/attachments/{attachment}"
        path = f"/mail/messages/{quote(message, safe='')}/attachments/{quote(attachment['id'], safe='')}"
        got = call(alice, "get", download, path)
        assert got.status_code == 200 and hashlib.sha256(got.content).digest() == hashlib.sha256(PDF).digest()
        assert got.headers["Content-Type"].startswith("application/pdf")
        assert call(bob, "get", download, path).status_code == 404
        assert call(alice, "get", download, f"/mail/messages/nope/attachments/{quote(attachment['id'], safe='')}").status_code == 404

        callback = "/mail/oauth/callback"
        assert call(alice, "get", callback, callback, params={"state": "forged", "code": "c"}).status_code == 400
        assert call(None, "get", callback, callback, params={"state": "forged", "code": "c"},
                    allow_redirects=False).status_code == 302
        assert call(None, "get", "/mail/oauth/start", "/mail/oauth/start", params={"flow": "forged"},
                    allow_redirects=False).status_code == 302
        assert call(None, "get", "/mail/oauth/result", "/mail/oauth/result", params={"status": "connected"}).status_code == 200

        push = "/mail/push/{provider}"
        assert call(None, "post", push, "/mail/push/gmail?token=wrong", json={}).status_code == 403
        assert call(None, "post", push, "/mail/push/gmail?token=t0ken-of-the-sub", json={}).status_code == 204
        assert call(None, "post", push, "/mail/push/carrier-pigeon", json={}).status_code == 404
        assert call(None, "post", push, "/mail/push/gmail", data=b"x" * 300_000).status_code == 413

        assert call(alice, "post", "/mail/disconnect", "/mail/disconnect", json={"account": account}).status_code == 200
        assert call(alice, "post", "/mail/disconnect", "/mail/disconnect", json={"account": "nope"}).status_code == 404
        assert call(alice, "post", "/mail/disconnect", "/mail/disconnect", json={}).status_code == 400
        assert call(alice, "post", now, f"/mail/accounts/{account}/sync", json={}).status_code == 409

    # Every mail operation was driven at least once, so none escapes the check.
    mail_operations = {(m, p) for p, item in doc.spec["paths"].items() if p.startswith("/mail/") for m in item
                       if m in ("get", "post", "patch", "put", "delete")}
    assert mail_operations == {(m, p) for m, p, _ in doc.checked}

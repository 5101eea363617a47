"""The MCP door (/mcp), driven by the official MCP Python SDK's client over Streamable HTTP against
the real server process: the handshake, every tool, errors as MCP errors, credentials (JWTs and
API keys with scopes), sessions, and one user never reaching another's data."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import httpx2
import pytest
import requests
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from brain.agents.tools import MIRRORED
from tests.support import REPO, BrainServer, assert_declared
from tests.test_auth_helpers import NO_LIMITS, bearer, new_user

T = TypeVar("T")
ACCEPT = {"Accept": "application/json, text/event-stream"}


# The `mailwriter` test plugin (tests/plugins/mail_writer_plugin.py) writes mail events as mail sync does.
PLUGINS = {"enabled": ["gmail", "outlook", "mailwriter"]}
PLUGIN_ENV = {"PYTHONPATH": os.pathsep.join([str(REPO / "tests" / "plugins" / "sample_dist"), str(REPO)])}
MAX_RESULT_CHARS = 8192


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    config = {"auth": NO_LIMITS, "plugins": PLUGINS, "mcp": {"max_result_chars": MAX_RESULT_CHARS}}
    with BrainServer(Path(tmp_path_factory.mktemp("mcp")) / "brain", config=config, env=PLUGIN_ENV) as running:
        yield running


@pytest.fixture(scope="module")
def spec(server: BrainServer) -> dict[str, Any]:
    """The OpenAPI document the server serves."""
    return dict(requests.get(f"{server.api_url}/openapi.json", timeout=15).json())


@asynccontextmanager
async def mcp_session(server: BrainServer, credential: str, header: str = "Authorization") -> AsyncIterator[ClientSession]:
    """An initialized SDK session on /mcp, sending the credential as a bearer token (or x-api-key)."""
    value = f"Bearer {credential}" if header == "Authorization" else credential
    async with httpx2.AsyncClient(headers={header: value}, timeout=30) as http:
        async with streamable_http_client(f"{server.api_url}/mcp", http_client=http) as (read, write):
            async with ClientSession(read, write) as session:
                await session.initialize()
                yield session


def run(server: BrainServer, credential: str, work: Callable[[ClientSession], Awaitable[T]], **kw: Any) -> T:
    """Open a session, do `work` in it, close it (DELETE), all on a fresh event loop."""

    async def main() -> T:
        async with mcp_session(server, credential, **kw) as session:
            return await work(session)

    return asyncio.run(main())


def rpc(server: BrainServer, token: str | None, message: Any, *, session: str | None = None,
        headers: dict[str, str] | None = None, raw: bytes | None = None) -> requests.Response:
    """One raw POST /mcp."""
    sent = {**ACCEPT, "Content-Type": "application/json", **(bearer(token) if token else {}), **(headers or {})}
    if session is not None:
        sent["Mcp-Session-Id"] = session
    data = raw if raw is not None else json.dumps(message).encode()
    return requests.post(f"{server.api_url}/mcp", data=data, headers=sent, timeout=15)


def initialize(server: BrainServer, token: str, version: str = "2025-11-25") -> requests.Response:
    return rpc(server, token, {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": version, "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}}})


def opened(server: BrainServer, token: str) -> str:
    r = initialize(server, token)
    assert r.status_code == 200, r.text
    return r.headers["Mcp-Session-Id"]


def api_key(server: BrainServer, token: str, permissions: dict[str, list[str]]) -> str:
    r = requests.post(f"{server.auth_url}/api/auth/api-key/create", json={"name": "agent", "permissions": permissions},
                      headers=bearer(token), timeout=15)
    assert r.status_code == 200, r.text
    return str(r.json()["key"])


# --- the handshake and the tools -----------------------------------------------------------------------


def test_initialize_negotiates_and_lists_the_tools_with_schemas_and_annotations(server: BrainServer) -> None:
    user = new_user(server)

    async def work(session: ClientSession) -> Any:
        return session.initialize_result, await session.list_tools()

    init, listed = run(server, user["jwt"], work)
    assert init.protocol_version == "2025-11-25"
    assert init.server_info.name == "brain" and init.capabilities.tools is not None
    tools = {tool.name: tool for tool in listed.tools}
    assert set(tools) == {"search", "get_event", "list_events", "add_note", "add_event", "get_mail_thread",
                          "mail_accounts"}
    for tool in tools.values():
        assert tool.input_schema["type"] == "object" and tool.output_schema["type"] == "object"
        assert tool.description and tool.annotations is not None
        assert tool.annotations.destructive_hint is False and tool.annotations.open_world_hint is False
    assert tools["list_events"].annotations.read_only_hint is True
    assert tools["mail_accounts"].annotations.read_only_hint is True
    assert tools["search"].annotations.read_only_hint is True and tools["get_event"].annotations.read_only_hint is True
    assert tools["get_mail_thread"].annotations.read_only_hint is True
    assert tools["add_note"].annotations.read_only_hint is False
    assert tools["add_event"].annotations.read_only_hint is False


def test_tools_take_what_the_rest_operations_they_mirror_take(server: BrainServer, spec: dict[str, Any]) -> None:
    """A tool that does what a REST operation does takes that operation's parameters and body, as the
    served /openapi.json states them (brain.agents.tools.MIRRORED): no second, drifting copy."""
    token = new_user(server)["jwt"]
    listed = rpc(server, token, {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}, session=opened(server, token))
    tools = {tool["name"]: tool["inputSchema"] for tool in listed.json()["result"]["tools"]}
    operations = {op["operationId"]: op for item in spec["paths"].values() for op in item.values()
                  if isinstance(op, dict) and "operationId" in op}
    new_event = spec["components"]["schemas"]["NewEvent"]
    for tool, (operation_id, renamed) in MIRRORED.items():
        expected = {}
        for parameter in operations[operation_id].get("parameters", ()):
            name = renamed.get(parameter["name"], parameter["name"] if parameter["in"] in ("query", "path") else None)
            if name is not None:
                expected[name] = {**parameter["schema"], **({"description": parameter["description"]}
                                                            if "description" in parameter else {})}
        if tool == "add_event":
            expected.update(new_event["properties"])
        taken = tools[tool]["properties"]
        assert {name: taken[name] for name in expected if name in taken} == expected, tool
        own = {"text", "title", "tags"} if tool == "add_note" else set()
        assert set(taken) == set(expected) | own, tool
        assert tools[tool]["additionalProperties"] is False
    assert set(new_event["required"]) <= set(tools["add_event"]["required"])
    assert tools["search"]["required"] == ["q"] and tools["get_event"]["required"] == ["id"]


def test_an_older_client_gets_its_version_and_an_unknown_version_the_newest(server: BrainServer) -> None:
    token = new_user(server)["jwt"]
    old = initialize(server, token, "2025-03-26")
    assert old.status_code == 200 and old.json()["result"]["protocolVersion"] == "2025-03-26"
    unknown = initialize(server, token, "1999-01-01")
    assert unknown.status_code == 200 and unknown.json()["result"]["protocolVersion"] == "2025-11-25"
    # Later requests must carry the negotiated version when they send one.
    session = old.headers["Mcp-Session-Id"]
    ping = {"jsonrpc": "2.0", "id": 2, "method": "ping"}
    assert rpc(server, token, ping, session=session, headers={"MCP-Protocol-Version": "2025-03-26"}).status_code == 200
    wrong = rpc(server, token, ping, session=session, headers={"MCP-Protocol-Version": "2025-11-25"})
    assert wrong.status_code == 400 and "MCP-Protocol-Version" in wrong.json()["error"]["message"]


def test_add_note_add_event_and_list_events_round_trip_with_paging_and_idempotency(server: BrainServer) -> None:
    user = new_user(server)

    async def work(session: ClientSession) -> dict[str, Any]:
        out: dict[str, Any] = {}
        note = await session.call_tool("add_note", {"text": "buy oat milk", "title": "shopping", "tags": ["home"],
                                                    "idempotency_key": "note-1"})
        again = await session.call_tool("add_note", {"text": "buy oat milk", "title": "shopping", "tags": ["home"],
                                                     "idempotency_key": "note-1"})
        event = await session.call_tool("add_event", {"type": "task.completed", "data": {"task": "taxes"},
                                                      "created_at": "2026-01-02T03:04:05Z"})
        out["note"], out["again"], out["event"] = note, again, event
        first = await session.call_tool("list_events", {"limit": 1})
        second = await session.call_tool("list_events", {"limit": 1, "cursor": first.structured_content["next_cursor"]})
        out["pages"] = [first.structured_content, second.structured_content]
        out["tasks"] = (await session.call_tool("list_events", {"type": "task.completed"})).structured_content
        out["old"] = (await session.call_tool("list_events", {"until": "2026-06-01T00:00:00Z"})).structured_content
        return out

    out = run(server, user["jwt"], work)
    note = out["note"].structured_content
    assert out["note"].is_error is False and note["replayed"] is False
    assert note["event"]["type"] == "note.created"
    assert note["event"]["data"] == {"text": "buy oat milk", "title": "shopping", "tags": ["home"]}
    assert json.loads(out["note"].content[0].text) == note  # the text block carries the same JSON
    assert out["again"].structured_content == {"event": note["event"], "replayed": True}
    assert out["event"].structured_content["event"]["created_at"] == "2026-01-02T03:04:05.000000Z"
    first, second = out["pages"]
    assert [e["id"] for e in first["events"]] == [note["event"]["id"]] and first["next_cursor"]
    assert [e["type"] for e in second["events"]] == ["task.completed"] and second["next_cursor"] is None
    assert [e["data"] for e in out["tasks"]["events"]] == [{"task": "taxes"}]
    assert [e["type"] for e in out["old"]["events"]] == ["task.completed"]
    # The REST API sees the same events.
    rest = requests.get(f"{server.api_url}/events", headers=bearer(user["jwt"]), timeout=15).json()
    assert {e["id"] for e in rest["events"]} == {note["event"]["id"], out["event"].structured_content["event"]["id"]}


def test_mail_accounts_lists_the_users_accounts(server: BrainServer) -> None:
    user = new_user(server)

    async def work(session: ClientSession) -> Any:
        return await session.call_tool("mail_accounts", {})

    result = run(server, user["jwt"], work)
    assert result.is_error is False and result.structured_content == {"accounts": []}


def test_a_page_stops_at_the_result_size_cap_and_writes_share_the_rest_apis_quota(tmp_path: Path) -> None:
    config = {"auth": NO_LIMITS, "mcp": {"max_result_chars": 4096}, "api": {"max_events_per_minute": 5}}
    with BrainServer(tmp_path / "brain", config=config) as small:
        user = new_user(small)
        big = "x" * 1500
        for i in range(4):
            r = requests.post(f"{small.api_url}/events", json={"type": "note.created", "data": {"i": i, "text": big}},
                              headers=bearer(user["jwt"]), timeout=15)
            assert r.status_code == 201, r.text

        async def work(session: ClientSession) -> list[dict[str, Any]]:
            pages, cursor = [], None
            while True:
                args: dict[str, Any] = {"limit": 100, **({"cursor": cursor} if cursor else {})}
                page = (await session.call_tool("list_events", args)).structured_content
                pages.append(page)
                cursor = page["next_cursor"]
                if cursor is None:
                    return pages

        pages = run(small, user["jwt"], work)

        async def write(session: ClientSession) -> Any:
            return [await session.call_tool("add_note", {"text": f"n{i}"}) for i in range(2)]

        # Four events came through REST; the quota of five a minute leaves one for the MCP door.
        written, refused = run(small, user["jwt"], write)
    assert [len(p["events"]) for p in pages] == [2, 2]
    assert [e["data"]["i"] for p in pages for e in p["events"]] == [3, 2, 1, 0]
    assert written.is_error is False
    assert refused.is_error is True and "more than 5 events a minute" in refused.content[0].text
    assert "retry after" in refused.content[0].text


# --- errors are MCP errors, never a 500 -----------------------------------------------------------------


@pytest.mark.parametrize(("tool", "arguments", "says"), [
    ("list_events", {"limit": 0}, "limit: must be an integer from 1 to"),
    ("list_events", {"limit": "ten"}, "limit: must be an integer"),
    ("list_events", {"since": "yesterday"}, "since: not an RFC 3339 time"),
    ("list_events", {"cursor": "forged.cursor"}, "cursor: not a cursor issued to this user"),
    ("list_events", {"type": "bad type!"}, "type: must be dotted name tokens"),
    ("list_events", {"colour": "red"}, "colour: unknown argument"),
    ("add_note", {}, "text: required"),
    ("add_note", {"text": ""}, "text: must not be empty"),
    ("add_note", {"text": "x", "tags": [1]}, "tags[0]: must be a string"),
    ("add_event", {"type": "mail.message.received", "data": {}}, "reserved for events the server writes"),
    ("add_event", {"type": "x"}, "data: required"),
    ("add_event", {"type": "x", "data": 1, "created_at": "soon"}, "created_at: not an RFC 3339 time"),
])
def test_bad_arguments_are_tool_errors_naming_the_argument(server: BrainServer, tool: str, arguments: dict[str, Any],
                                                           says: str) -> None:
    user = new_user(server)

    async def work(session: ClientSession) -> Any:
        return await session.call_tool(tool, arguments)

    result = run(server, user["jwt"], work)
    assert result.is_error is True
    assert says in result.content[0].text, result.content[0].text
    assert "brain.agents.audit: mcp tool=" + tool in server.log_text()


def test_an_unknown_tool_or_method_is_a_json_rpc_error(server: BrainServer) -> None:
    token = new_user(server)["jwt"]

    async def work(session: ClientSession) -> MCPError:
        with pytest.raises(MCPError) as caught:
            await session.call_tool("rm_rf", {})
        return caught.value

    error = run(server, token, work)
    assert error.code == -32602 and "unknown tool 'rm_rf'" in error.error.message
    session = opened(server, token)
    r = rpc(server, token, {"jsonrpc": "2.0", "id": 7, "method": "sampling/createMessage", "params": {}}, session=session)
    assert r.status_code == 200 and r.json() == {"jsonrpc": "2.0", "id": 7, "error": {
        "code": -32601, "message": "method 'sampling/createMessage' is not offered by this server"}}


@pytest.mark.parametrize(("body", "status", "code"), [
    (b"{not json", 400, -32700),
    (b"[]", 400, -32600),
    (b'[{"jsonrpc": "2.0", "id": 1, "method": "ping"}]', 400, -32600),
    (b'{"id": 1, "method": "ping"}', 400, -32600),
    (b'{"jsonrpc": "2.0", "id": true, "method": "ping"}', 400, -32600),
    (b'{"jsonrpc": "2.0", "id": 1, "method": 5}', 400, -32600),
    (b'{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": []}', 400, -32602),
    (b'{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "add_note", "arguments": []}}', 200, None),
    (b'{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "add_note", "arguments": {"\\udc80": 1}}}',
     200, None),
])
def test_malformed_messages_get_json_rpc_errors_not_500(server: BrainServer, spec: dict[str, Any], body: bytes,
                                                        status: int, code: int | None) -> None:
    token = new_user(server)["jwt"]
    r = rpc(server, token, None, raw=body, session=opened(server, token))
    assert r.status_code == status, r.text
    assert_declared(spec, r)
    answer = r.json()
    if code is None:
        assert answer["result"]["isError"] is True
    else:
        assert answer["error"]["code"] == code and answer["error"]["message"]


# --- credentials, sessions, isolation -------------------------------------------------------------------


def test_no_token_or_a_bad_one_is_refused_with_401(server: BrainServer, spec: dict[str, Any]) -> None:
    token = new_user(server)["jwt"]
    for credential in (None, "not-a-jwt", token[:-4] + "AAAA"):
        r = initialize(server, credential) if credential else rpc(server, None, {"jsonrpc": "2.0", "id": 1, "method": "ping"})
        assert r.status_code == 401, r.text
        assert r.headers["WWW-Authenticate"].startswith("Bearer")
        assert_declared(spec, r)

    async def work(session: ClientSession) -> None:
        raise AssertionError("initialized with a bad token")

    with pytest.raises(Exception) as caught:
        run(server, "not-a-jwt", work)
    assert "401" in repr(caught.value) or "error" in repr(caught.value).lower()


def test_a_session_needs_its_id_ends_with_delete_and_belongs_to_its_user(server: BrainServer,
                                                                        spec: dict[str, Any]) -> None:
    ada, bob = new_user(server)["jwt"], new_user(server)["jwt"]
    ping = {"jsonrpc": "2.0", "id": 2, "method": "ping"}
    session = opened(server, ada)
    answers = [rpc(server, ada, ping)]  # no session id
    assert answers[-1].status_code == 400
    answers.append(rpc(server, ada, ping, session=session + "x"))
    assert answers[-1].status_code == 404
    answers.append(rpc(server, ada, ping, session=session))
    assert answers[-1].json()["result"] == {}
    # Bob cannot use Ada's session (nor learn that it exists).
    answers.append(rpc(server, bob, ping, session=session))
    assert answers[-1].status_code == 404
    notification = {"jsonrpc": "2.0", "method": "notifications/initialized"}
    answers.append(rpc(server, ada, notification, session=session))
    assert answers[-1].status_code == 202
    answers.append(rpc(server, ada, ping, session=session, headers={"MCP-Protocol-Version": "2025-03-26"}))
    assert answers[-1].status_code == 400  # not the session's version
    answers.append(rpc(server, ada, ping, session=session, headers={"Origin": "https://elsewhere.example"}))
    assert answers[-1].status_code == 403
    answers.append(rpc(server, ada, ping, session=session, headers={"Accept": "text/html"}))
    assert answers[-1].status_code == 406
    answers.append(requests.delete(f"{server.api_url}/mcp", headers={**bearer(ada), "Mcp-Session-Id": session},
                                   timeout=15))
    assert answers[-1].status_code == 204
    answers.append(rpc(server, ada, ping, session=session))
    assert answers[-1].status_code == 404
    answers.append(requests.delete(f"{server.api_url}/mcp", headers={**bearer(ada), "Mcp-Session-Id": session},
                                   timeout=15))
    assert answers[-1].status_code == 404
    answers.append(requests.get(f"{server.api_url}/mcp", headers={**bearer(ada), **ACCEPT}, timeout=15))
    assert answers[-1].status_code == 405
    # Each answer is one the OpenAPI document's description of the transport declares.
    for answer in answers:
        assert_declared(spec, answer)


def test_a_session_expires(tmp_path: Path) -> None:
    with BrainServer(tmp_path / "brain", config={"auth": NO_LIMITS, "mcp": {"session_seconds": 1}}) as short:
        token = new_user(short)["jwt"]
        session = opened(short, token)
        ping = {"jsonrpc": "2.0", "id": 2, "method": "ping"}
        assert rpc(short, token, ping, session=session).status_code == 200
        time.sleep(1.2)
        gone = rpc(short, token, ping, session=session)
        assert gone.status_code == 404 and "initialize again" in gone.json()["error"]["message"]
        assert rpc(short, token, ping, session=opened(short, token)).status_code == 200


def test_another_users_events_and_cursors_are_never_reachable(server: BrainServer) -> None:
    ada, bob = new_user(server), new_user(server)
    for i in range(3):
        requests.post(f"{server.api_url}/events", json={"type": "note.created", "data": {"secret": f"ada-{i}"}},
                      headers=bearer(ada["jwt"]), timeout=15).raise_for_status()

    async def ada_page(session: ClientSession) -> dict[str, Any]:
        return (await session.call_tool("list_events", {"limit": 1})).structured_content

    cursor = run(server, ada["jwt"], ada_page)["next_cursor"]

    async def bob_work(session: ClientSession) -> Any:
        mine = await session.call_tool("list_events", {})
        stolen = await session.call_tool("list_events", {"cursor": cursor})
        return mine, stolen

    mine, stolen = run(server, bob["jwt"], bob_work)
    assert mine.structured_content == {"events": [], "next_cursor": None}
    assert stolen.is_error is True and "not a cursor issued to this user" in stolen.content[0].text
    assert "ada-" not in server.log_text()


def test_api_keys_see_and_call_only_the_tools_their_scopes_allow(server: BrainServer) -> None:
    user = new_user(server)
    reader = api_key(server, user["token"], {"events": ["read"]})
    writer = api_key(server, user["token"], {"events": ["read", "write"]})

    async def as_reader(session: ClientSession) -> Any:
        listed = [tool.name for tool in (await session.list_tools()).tools]
        return listed, await session.call_tool("add_note", {"text": "from a reader"}), await session.call_tool(
            "list_events", {})

    listed, refused, read = run(server, reader, as_reader)
    assert listed == ["get_event", "list_events"]
    assert refused.is_error is True and "lacks the scope 'events:write'" in refused.content[0].text
    assert read.is_error is False and read.structured_content["events"] == []

    async def as_writer(session: ClientSession) -> Any:
        return await session.call_tool("add_note", {"text": "from a writer"})

    # x-api-key works as well as Authorization: Bearer.
    written = run(server, writer, as_writer, header="x-api-key")
    assert written.is_error is False and written.structured_content["event"]["data"] == {"text": "from a writer"}
    audit = [line for line in server.log_text().splitlines() if "brain.agents.audit" in line]
    assert any(f"tool=add_note user={user['user']['id']} outcome=INSUFFICIENT_SCOPE" in line for line in audit)
    assert not any("from a" in line for line in audit)  # what was written is never logged


def test_a_page_from_another_origin_is_refused(server: BrainServer) -> None:
    token = new_user(server)["jwt"]
    r = rpc(server, token, {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {}},
            headers={"Origin": "http://evil.example"})
    assert r.status_code == 403 and "not allowed" in r.json()["error"]["message"]
    assert initialize(server, token).status_code == 200


def test_the_protected_resource_document_points_at_the_auth_role(server: BrainServer) -> None:
    for path in ("/.well-known/oauth-protected-resource", "/.well-known/oauth-protected-resource/mcp"):
        r = requests.get(f"{server.api_url}{path}", timeout=15)
        assert r.status_code == 200, r.text
        doc = r.json()
        assert doc["resource"] == f"{server.api_url}/mcp"
        assert doc["authorization_servers"] == [server.auth_url]
        assert doc["bearer_methods_supported"] == ["header"] and "events:read" in doc["scopes_supported"]


# --- search, single events, mail threads and resources -------------------------------------------------


def server_write(server: BrainServer, token: str, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Events written as mail sync writes them (the mailwriter test plugin), mail.* included."""
    r = requests.post(f"{server.api_url}/test/server-events", json=events, headers=bearer(token), timeout=15)
    assert r.status_code == 201, r.text
    return list(r.json()["events"])


def mail(thread: str, message: str, subject: str, body: str, date: str, **extra: Any) -> dict[str, Any]:
    return {"type": "mail.message.received", "data": {
        "account": "acc_1", "provider": "gmail", "address": "me@home.example", "message_id": message,
        "thread_id": thread, "from": {"name": "Anna", "address": "anna@example.com"},
        "to": [{"name": "Me", "address": "me@home.example"}], "cc": [], "subject": subject, "date": date,
        "direction": "received", "folders": [], "labels": ["INBOX"], "flags": {"read": False},
        "body_text": body + "\n\nOn Monday, Bob wrote:\n> the quoted part", "body_text_clean": body,
        "attachments": [], "has_attachments": False, "truncated": False, **extra}}


def test_search_finds_notes_and_get_event_and_the_event_resource_read_them(server: BrainServer) -> None:
    user = new_user(server)
    note = requests.post(f"{server.api_url}/events", json={"type": "note.created", "data": {
        "title": "Dentist", "text": "Dentist on Thursday at nine, Dr. Okafor"}}, headers=bearer(user["jwt"]), timeout=15).json()
    [message] = server_write(server, user["jwt"], [mail("thr-9", "m-9", "Your dental appointment",
                                                        "Reminder: the dentist expects you on Thursday.", "2026-01-05T10:00:00Z")])

    async def work(session: ClientSession) -> dict[str, Any]:
        out: dict[str, Any] = {}
        out["found"] = (await session.call_tool("search", {"q": "dentist", "limit": 10})).structured_content
        out["mail"] = (await session.call_tool("search", {"q": "type:mail.* dentist"})).structured_content
        out["none"] = (await session.call_tool("search", {"q": "zeppelin"})).structured_content
        out["bad"] = await session.call_tool("search", {"q": '"unclosed'})
        out["event"] = (await session.call_tool("get_event", {"id": note["id"]})).structured_content
        out["missing"] = await session.call_tool("get_event", {"id": 10**9})
        out["resource"] = await session.read_resource(f"brain://events/{note['id']}")
        out["templates"] = await session.list_resource_templates()
        for uri in ("brain://events/999999", "brain://nothing/1", "brain://events/abc"):
            with pytest.raises(MCPError) as caught:
                await session.read_resource(uri)
            out[uri] = caught.value
        return out

    out = run(server, user["jwt"], work)
    found = out["found"]
    assert {r["id"] for r in found["results"]} == {note["id"], message["id"]} and found["next_cursor"] is None
    by_id = {r["id"]: r for r in found["results"]}
    assert by_id[message["id"]]["type"] == "mail.message.received" and by_id[note["id"]]["type"] == "note.created"
    assert set(by_id[note["id"]]) == {"id", "type", "created_at", "score", "highlights"}
    assert any("entist" in text for text in by_id[note["id"]]["highlights"].values())
    assert [r["id"] for r in out["mail"]["results"]] == [message["id"]]
    assert out["none"]["results"] == []
    assert out["bad"].is_error is True and out["bad"].content[0].text.startswith("q: ")
    assert out["event"]["event"] == note
    assert out["missing"].is_error is True and out["missing"].content[0].text == f"no event {10**9}"
    [content] = out["resource"].contents
    assert content.uri == f"brain://events/{note['id']}" and json.loads(content.text) == note
    assert {t.uri_template for t in out["templates"].resource_templates} == {"brain://events/{id}",
                                                                            "brain://mail/threads/{id}"}
    assert out["brain://events/999999"].code == -32002
    assert out["brain://nothing/1"].code == -32002 and out["brain://events/abc"].code == -32002


def test_get_mail_thread_gives_each_message_once_with_its_own_text_and_pages_at_the_cap(server: BrainServer) -> None:
    user, other = new_user(server), new_user(server)
    written = server_write(server, user["jwt"], [
        mail("thr-1", "m-2", "Re: dinner", "Friday works for me.", "2026-02-02T09:00:00Z"),
        mail("thr-1", "m-1", "dinner", "Dinner on Friday?", "2026-02-01T09:00:00Z"),
        mail("thr-1", "m-3", "Re: dinner", "Spam reply", "2026-02-03T09:00:00Z"),
        mail("thr-2", "m-4", "other", "Another thread", "2026-02-01T09:00:00Z"),
        {"type": "mail.message.updated", "data": {"account": "acc_1", "message_id": "m-2", "thread_id": "thr-1",
                                                  "labels": ["INBOX", "IMPORTANT"], "added_labels": ["IMPORTANT"]}},
        {"type": "mail.message.deleted", "data": {"account": "acc_1", "message_id": "m-3", "thread_id": "thr-1"}},
        mail("thr-long", "m-5", "long", "a" * 5000, "2026-03-01T09:00:00Z"),
        mail("thr-long", "m-6", "long", "b" * 5000, "2026-03-02T09:00:00Z"),
    ])

    async def work(session: ClientSession) -> dict[str, Any]:
        out: dict[str, Any] = {}
        out["thread"] = (await session.call_tool("get_mail_thread", {"thread_id": "thr-1"})).structured_content
        first = (await session.call_tool("get_mail_thread", {"thread_id": "thr-long"})).structured_content
        second = (await session.call_tool("get_mail_thread", {"thread_id": "thr-long", "cursor": first["next_cursor"]}))
        out["long"] = [first, second.structured_content]
        out["bad_cursor"] = await session.call_tool("get_mail_thread", {"thread_id": "thr-long", "cursor": "99"})
        out["resource"] = await session.read_resource("brain://mail/threads/thr-1")
        return out

    out = run(server, user["jwt"], work)
    thread = out["thread"]
    assert thread["thread_id"] == "thr-1" and thread["subject"] == "dinner" and thread["message_count"] == 2
    first, second = thread["messages"]
    assert [first["message_id"], second["message_id"]] == ["m-1", "m-2"]
    assert first["event_id"] == written[1]["id"] and first["body"] == "Dinner on Friday?"
    assert second["body"] == "Friday works for me." and second["labels"] == ["INBOX", "IMPORTANT"]
    assert second["from"] == {"name": "Anna", "address": "anna@example.com"} and second["attachments"] == []
    assert thread["next_cursor"] is None
    long_first, long_second = out["long"]
    assert [m["message_id"] for m in long_first["messages"]] == ["m-5"] and long_first["next_cursor"]
    assert [m["message_id"] for m in long_second["messages"]] == ["m-6"] and long_second["next_cursor"] is None
    assert out["bad_cursor"].is_error is True and "cursor" in out["bad_cursor"].content[0].text
    assert json.loads(out["resource"].contents[0].text) == thread

    # Another user has no such thread, by tool or by resource.
    async def as_other(session: ClientSession) -> Any:
        missing = await session.call_tool("get_mail_thread", {"thread_id": "thr-1"})
        with pytest.raises(MCPError) as caught:
            await session.read_resource("brain://mail/threads/thr-1")
        return missing, caught.value, await session.call_tool("get_event", {"id": written[0]["id"]})

    missing, refused, event = run(server, other["jwt"], as_other)
    assert missing.is_error is True and missing.content[0].text == "no mail thread 'thr-1'"
    assert refused.code == -32002
    assert event.is_error is True and "no event" in event.content[0].text


def test_scopes_hold_for_search_threads_and_resources(server: BrainServer) -> None:
    user = new_user(server)
    server_write(server, user["jwt"], [mail("thr-s", "m-s", "scoped", "scoped body", "2026-02-01T09:00:00Z")])
    searcher = api_key(server, user["token"], {"search": ["read"]})

    async def work(session: ClientSession) -> Any:
        listed = [tool.name for tool in (await session.list_tools()).tools]
        found = await session.call_tool("search", {"q": "scoped"})
        thread = await session.call_tool("get_mail_thread", {"thread_id": "thr-s"})
        with pytest.raises(MCPError) as caught:
            await session.read_resource("brain://mail/threads/thr-s")
        return listed, found, thread, caught.value

    listed, found, thread, refused = run(server, searcher, work)
    assert listed == ["search"]
    assert found.is_error is False and len(found.structured_content["results"]) == 1
    assert thread.is_error is True and "lacks the scope 'mail:read'" in thread.content[0].text
    assert "lacks the scope 'mail:read'" in refused.error.message

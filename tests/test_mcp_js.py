"""The MCP door driven by the MCP TypeScript SDK's own client (`@modelcontextprotocol/sdk`, pinned in
tests/js/package-lock.json): `tests/js/mcp.mjs` connects over Streamable HTTP with a user's JWT,
lists the tools, calls each, meets a tool error and a protocol error, and ends its session.

Needs node and npm (fails without them, does not skip), as the Better Auth client tests do."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import requests

from tests.support import BrainServer
from tests.test_auth_helpers import NO_LIMITS, bearer, new_user
from tests.test_auth_js import Steps, run_node


@pytest.fixture
def server(tmp_path: Path) -> Any:
    with BrainServer(tmp_path / "brain", config={"auth": NO_LIMITS}) as running:
        yield running


def test_the_typescript_sdk_client_uses_every_tool(server: BrainServer) -> None:
    user = new_user(server)
    steps = Steps(run_node("mcp.mjs", server, TOKEN=user["jwt"]))
    assert steps["connect"]["session"] is True and steps["connect"]["version"] == "2025-11-25"
    assert steps["connect"]["server"]["name"] == "brain"
    tools = {tool["name"]: tool for tool in steps["tools"]}
    assert set(tools) == {"search", "get_event", "list_events", "add_note", "add_event", "get_mail_thread", "mail_accounts"}
    assert all(tool["output"] for tool in tools.values())
    assert tools["add_note"]["readOnly"] is False and tools["list_events"]["readOnly"] is True
    note = steps["add_note"]["structured"]
    assert steps["add_note"]["isError"] is False and note["event"]["data"] == {"text": "from TypeScript"}
    assert steps["add_note_again"]["structured"] == {"event": note["event"], "replayed": True}
    assert steps["add_event"]["structured"]["event"]["type"] == "ts.ran"
    listed = steps["list_events"]["structured"]["events"]
    assert [e["type"] for e in listed] == ["ts.ran", "note.created"]
    assert steps["get_event"]["structured"] == {"event": note["event"]}
    assert [r["id"] for r in steps["search"]["structured"]["results"]] == [note["event"]["id"]]
    assert steps["mail_accounts"]["structured"] == {"accounts": []}
    assert steps["no_thread"]["isError"] is True and steps["no_thread"]["text"] == "no mail thread 'nope'"
    assert steps["bad_argument"] == {"isError": True, "structured": None,
                                     "text": "limit: must be an integer from 1 to 1000"}
    assert steps["unknown_tool"]["code"] == -32602 and "unknown tool 'no_such_tool'" in steps["unknown_tool"]["message"]
    assert steps["close"] == {"closed": True}
    # What the TypeScript client wrote is the user's, over REST too.
    rest = requests.get(f"{server.api_url}/events", headers=bearer(user["jwt"]), timeout=15).json()
    assert {e["type"] for e in rest["events"]} == {"ts.ran", "note.created"}

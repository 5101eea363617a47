"""/mcp and the protected-resource document as /openapi.json describes them."""

from __future__ import annotations

from typing import Any

from brain.apikeys import SCOPES, with_api_keys
from brain.openapi import error, json_body

_JSONRPC_MESSAGE: dict[str, Any] = {
    "type": "object",
    "required": ["jsonrpc"],
    "properties": {
        "jsonrpc": {"const": "2.0"},
        "id": {"type": ["string", "integer"]},
        "method": {"type": "string"},
        "params": {"type": "object"},
        "result": {},
        "error": {"type": "object"},
    },
}
_SESSION = {
    "name": "Mcp-Session-Id", "in": "header", "required": False, "schema": {"type": "string"},
    "description": "the session id `initialize` answered with (required on every later message)",
}
_VERSION = {
    "name": "MCP-Protocol-Version", "in": "header", "required": False, "schema": {"type": "string"},
    "description": "the negotiated protocol version",
}
_RPC_ERROR = json_body(_JSONRPC_MESSAGE, "a JSON-RPC error")
_MCP_DOC = "the Model Context Protocol's Streamable HTTP transport; see the README's Agents (MCP) section"

POST_MCP = with_api_keys({
    "operationId": "mcpMessage",
    "summary": "Send one MCP (JSON-RPC 2.0) message",
    "description": _MCP_DOC + ". Tools are listed for, and callable by, the caller's scopes.",
    "parameters": [_SESSION, _VERSION],
    "requestBody": {"required": True, "content": {"application/json": {"schema": _JSONRPC_MESSAGE}}},
    "responses": {
        "200": json_body(_JSONRPC_MESSAGE, "the JSON-RPC response (initialize: with Mcp-Session-Id)"),
        "202": {"description": "a notification or response was accepted"},
        "400": _RPC_ERROR,
        "401": error("no valid JWT or API key"),
        "403": _RPC_ERROR,
        "404": _RPC_ERROR,
        "406": _RPC_ERROR,
        "413": error("body too large"),
        "415": _RPC_ERROR,
    },
}, None)
DELETE_MCP = with_api_keys({
    "operationId": "mcpEndSession",
    "summary": "End an MCP session",
    "parameters": [_SESSION],
    "responses": {
        "204": {"description": "ended"},
        "400": _RPC_ERROR,
        "401": error("no valid JWT or API key"),
        "403": _RPC_ERROR,
        "404": _RPC_ERROR,
    },
}, None)
GET_MCP = with_api_keys({
    "operationId": "mcpStream",
    "summary": "Server-to-client stream (not offered: 405)",
    "responses": {"401": error("no valid JWT or API key"), "405": error("this server sends no messages of its own")},
}, None)
RESOURCE_METADATA = {
    "operationId": "oauthProtectedResource",
    "summary": "OAuth 2.0 protected resource metadata (RFC 9728) for MCP clients",
    "security": [],
    "responses": {"200": json_body({
        "type": "object",
        "required": ["resource", "authorization_servers"],
        "properties": {
            "resource": {"type": "string"},
            "authorization_servers": {"type": "array", "items": {"type": "string"}},
            "bearer_methods_supported": {"type": "array", "items": {"type": "string"}},
            "scopes_supported": {"type": "array", "items": {"enum": list(SCOPES)}},
            "resource_name": {"type": "string"},
        },
    })},
}

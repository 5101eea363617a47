"""/mcp and the protected-resource document as /openapi.json describes them: MCP's transport
(the JSON-RPC envelope, the session and version headers, each status and the JSON-RPC error codes
it carries), not each method (those are MCP's own: tools/list describes the tools)."""

from __future__ import annotations

from typing import Any

from brain.agents.resources import RESOURCE_NOT_FOUND
from brain.agents.transport import (
    INVALID_PARAMS, INVALID_REQUEST, METHOD_NOT_FOUND, PARSE_ERROR, SESSION_HEADER, VERSION_HEADER,
)
from brain.apikeys import SCOPES, with_api_keys
from brain.openapi import TOKEN_CODES, error, json_body, ref

# JSON-RPC 2.0 as MCP's Streamable HTTP transport carries it: one message per POST (no batches).
_ID = {"type": ["string", "integer"], "description": "The request's id, echoed in its answer"}
_JSONRPC = {"const": "2.0"}
SCHEMAS: dict[str, Any] = {
    "JsonRpcRequest": {
        "type": "object", "required": ["jsonrpc", "id", "method"],
        "properties": {"jsonrpc": _JSONRPC, "id": _ID,
                       "method": {"type": "string", "examples": ["initialize", "tools/list", "tools/call",
                                                                 "resources/read", "ping"]},
                       "params": {"type": "object"}},
    },
    "JsonRpcNotification": {
        "type": "object", "required": ["jsonrpc", "method"], "not": {"required": ["id"]},
        "properties": {"jsonrpc": _JSONRPC, "method": {"type": "string", "examples": ["notifications/initialized"]},
                       "params": {"type": "object"}},
    },
    "JsonRpcClientResponse": {
        "type": "object", "required": ["jsonrpc", "id"], "not": {"required": ["method"]},
        "description": "The client's answer to a request of the server's: this server sends none, so its result or "
                       "error is not read",
        "properties": {"jsonrpc": _JSONRPC, "id": _ID, "result": {}, "error": {}},
    },
    "JsonRpcResult": {
        "type": "object", "required": ["jsonrpc", "id", "result"],
        "properties": {"jsonrpc": _JSONRPC, "id": _ID, "result": {"type": "object"}},
    },
    "JsonRpcError": {
        "type": "object", "required": ["jsonrpc", "id", "error"],
        "properties": {
            "jsonrpc": _JSONRPC,
            "id": {"type": ["string", "integer", "null"], "description": "null when the request's id was unreadable"},
            "error": {"type": "object", "required": ["code", "message"],
                      "properties": {"code": {"type": "integer"}, "message": {"type": "string"}}},
        },
    },
}
_SESSION = {
    "name": SESSION_HEADER, "in": "header", "required": False, "schema": {"type": "string"},
    "description": "The session id `initialize` answered with: required on every later message (400 without it, 404 "
                   "once it ended or expired: initialize again)",
}
_VERSION = {
    "name": VERSION_HEADER, "in": "header", "required": False, "schema": {"type": "string"},
    "description": "The negotiated protocol version (400 when it is not the session's)",
}
_UNAUTHORIZED = {**error("No valid JWT or API key (the API listener's guard)", *TOKEN_CODES),
                 "headers": {"WWW-Authenticate": {"schema": {"type": "string"}}}}
_MCP_DOC = (
    "The Model Context Protocol's Streamable HTTP transport (see the README's Agents (MCP) section): one JSON-RPC 2.0 "
    "message per POST, answered with one JSON message (a request) or 202 (a notification, or a response of the "
    "client's). `initialize` opens a session (Mcp-Session-Id in its answer; every later message carries it, and "
    "MCP-Protocol-Version when the client sends one). Accept must allow application/json; an Origin must be one of "
    "brain's own. Protocol errors are JSON-RPC errors: -32700 unreadable JSON, -32600 not a request (or refused by "
    "the transport), -32601 no such method, -32602 bad parameters, -32002 no such resource; what goes wrong inside "
    "a tool is a tool result with isError."
)


def rpc_error(description: str, *codes: int) -> dict[str, Any]:
    """A JSON-RPC error answer (the JsonRpcError schema) carrying only these JSON-RPC error codes."""
    return json_body({"allOf": [ref("JsonRpcError")],
                      "properties": {"error": {"properties": {"code": {"enum": sorted(set(codes))}}}}}, description)


def rpc_codes(response: dict[str, Any]) -> list[int] | None:
    """The JSON-RPC error codes a response states (None: it states none)."""
    schema = response.get("content", {}).get("application/json", {}).get("schema", {})
    codes = schema.get("properties", {}).get("error", {}).get("properties", {}).get("code", {}).get("enum")
    return None if codes is None else list(codes)


# What the transport refuses (brain.agents.transport): a missing or foreign session, a version not the session's,
# a page on another origin, an Accept without JSON, a body read refuses (status as brain.web.read_json's).
POST_MCP = with_api_keys({
    "operationId": "mcpMessage",
    "summary": "Send one MCP (JSON-RPC 2.0) message",
    "description": _MCP_DOC + " Tools are listed for, and callable by, the caller's scopes.",
    "parameters": [_SESSION, _VERSION],
    "requestBody": {"required": True, "content": {"application/json": {"schema": {"oneOf": [
        ref("JsonRpcRequest"), ref("JsonRpcNotification"), ref("JsonRpcClientResponse")]}}}},
    "responses": {
        "200": {
            **json_body({"oneOf": [
                ref("JsonRpcResult"),
                rpc_error("", METHOD_NOT_FOUND, INVALID_PARAMS, RESOURCE_NOT_FOUND, INVALID_REQUEST)["content"][
                    "application/json"]["schema"],
            ]}, "The request's JSON-RPC answer: its result, or an error (-32601 no such method, -32602 no such tool "
                "or bad parameters, -32002 no such resource, -32600 a resource the API key's scopes do not reach)"),
            "headers": {SESSION_HEADER: {"schema": {"type": "string"},
                                         "description": "initialize's answer: the new session's id"}},
        },
        "202": {"description": "A notification or a response was accepted"},
        "400": rpc_error("Unreadable JSON (-32700); not a JSON-RPC 2.0 message, a batch, no session id or another "
                         "version (-32600); params not an object (-32602)", PARSE_ERROR, INVALID_REQUEST,
                         INVALID_PARAMS),
        "401": _UNAUTHORIZED,
        "403": rpc_error("An Origin that is not brain's own (-32600)", INVALID_REQUEST),
        "404": rpc_error("The session ended, expired or is another user's: initialize again (-32600)", INVALID_REQUEST),
        "406": rpc_error("Accept does not allow application/json (-32600)", INVALID_REQUEST),
        "408": rpc_error("The body did not arrive within server.body_timeout_seconds (-32600)", INVALID_REQUEST),
        "413": rpc_error("A body larger than server.max_body_bytes (-32600)", INVALID_REQUEST),
        "415": rpc_error("Not JSON (-32600)", INVALID_REQUEST),
    },
}, None)
DELETE_MCP = with_api_keys({
    "operationId": "mcpEndSession",
    "summary": "End an MCP session",
    "description": "Ends the session named in Mcp-Session-Id: later messages with it are answered 404.",
    "parameters": [_SESSION, _VERSION],
    "responses": {
        "204": {"description": "Ended"},
        "400": rpc_error("No Mcp-Session-Id, or an MCP-Protocol-Version not the session's (-32600)", INVALID_REQUEST),
        "401": _UNAUTHORIZED,
        "403": rpc_error("An Origin that is not brain's own (-32600)", INVALID_REQUEST),
        "404": rpc_error("The session ended, expired or is another user's (-32600)", INVALID_REQUEST),
    },
}, None)
GET_MCP = with_api_keys({
    "operationId": "mcpStream",
    "summary": "Server-to-client stream (not offered: 405)",
    "description": "This server sends no messages of its own, so it offers no stream (the transport's answer for "
                   "that case).",
    "responses": {
        "401": _UNAUTHORIZED,
        "405": {**error("METHOD_NOT_ALLOWED: this server sends no messages of its own", "METHOD_NOT_ALLOWED"),
                "headers": {"Allow": {"schema": {"type": "string"}, "description": "POST, DELETE"}}},
    },
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

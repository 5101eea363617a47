"""The OpenAPI 3.1 document, built from the routes the listeners serve (see `brain.routes`).

Every plugin describes its routes where it registers them (`Route.operation`); this module
only assembles: one path item per path, the operations of every listener this process knows,
the components they refer to, and, for the paths of a listener other than the main one, that
listener's own server. The helpers below write the pieces every description repeats.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from typing import Any

from brain.errors import BadRequest, DiskFull, InvalidToken, PayloadTooLarge, PluginError, ServiceUnavailable, StorageFault
from brain.routes import Components, Listener, Route

__all__ = [
    "ERROR_SCHEMA", "INVALID_CODES", "TOKEN_CODES", "UNAVAILABLE_CODES", "build_spec", "disk_full", "error", "error_codes",
    "json_body",
    "ref", "retry_after", "with_body_errors", "with_error",
]

# The body of every error brain answers (brain.errors.HTTPError.body).
ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["message", "code"],
    "properties": {"message": {"type": "string"}, "code": {"type": "string"}},
}


# The `code` values of the answers every route behind a token may give: a refused token (or its
# user deleted meanwhile, or an API key refused with Better Auth's codes: brain.api.api_keys), a
# part not ready or a database failing, a request's own mistake.
TOKEN_CODES = (InvalidToken.code, "USER_DELETED", "INVALID_API_KEY", "KEY_DISABLED", "KEY_EXPIRED")
UNAVAILABLE_CODES = (ServiceUnavailable.code, StorageFault.code)
INVALID_CODES = (BadRequest.code,)


def ref(name: str) -> dict[str, str]:
    """A reference to a schema in the document's components."""
    return {"$ref": f"#/components/schemas/{name}"}


def json_body(schema: Mapping[str, Any], description: str = "OK") -> dict[str, Any]:
    """A response (or request body) carrying JSON of this schema."""
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def error(description: str, *codes: str) -> dict[str, Any]:
    """An error response (the `Error` schema) described as given; with codes, the only `code` values it carries."""
    if not codes:
        return json_body(ref("Error"), description)
    return json_body({"allOf": [ref("Error")], "properties": {"code": {"enum": sorted(set(codes))}}}, description)


def error_codes(response: Mapping[str, Any]) -> list[str] | None:
    """The `code` values an error response states (None: it does not say)."""
    schema = response.get("content", {}).get("application/json", {}).get("schema", {})
    codes = schema.get("properties", {}).get("code", {}).get("enum")
    return None if codes is None else list(codes)


def with_error(operation: Mapping[str, Any], status: str, description: str, *codes: str) -> dict[str, Any]:
    """A copy of operation that also answers this error status with these codes (description and codes
    added to what it answered there already)."""
    described = copy.deepcopy(dict(operation))
    responses = described.setdefault("responses", {})
    known = responses.get(status)
    if known is None:
        responses[status] = error(description, *codes)
        return described
    if description not in known.get("description", ""):
        known["description"] = f"{known.get('description', '')}; {description}".lstrip("; ")
    stated = error_codes(known)
    if "content" not in known:
        known["content"] = error("", *codes)["content"]
    elif stated is not None:
        # Either side not saying which codes it carries may carry any: then neither says.
        known["content"] = error("", *stated, *codes)["content"] if codes else error("")["content"]
    return described


def retry_after(operation: dict[str, Any], status: str) -> dict[str, Any]:
    """The operation, its `status` answer also naming the Retry-After header it carries."""
    operation["responses"][status].setdefault("headers", {})["Retry-After"] = {
        "schema": {"type": "integer"}, "description": "Seconds to wait"}
    return operation


def disk_full(description: str) -> dict[str, Any]:
    """The 507 of a write on a full disk (brain.errors.DiskFull), with its Retry-After."""
    return {**error(f"INSUFFICIENT_STORAGE: {description}", DiskFull.code),
            "headers": {"Retry-After": {"schema": {"type": "integer"}, "description": "Seconds to wait"}}}


def with_body_errors(operation: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of an operation taking a JSON body, also stating what reading it may refuse
    (brain.web.read_body and read_json): not JSON, too large, not sent in time, not JSON's media type."""
    described = with_error(operation, "400", "a body that is not JSON", *INVALID_CODES)
    described = with_error(described, "408", "REQUEST_TIMEOUT: the body did not arrive within "
                           "server.body_timeout_seconds", "REQUEST_TIMEOUT")
    described = with_error(described, "413", "PAYLOAD_TOO_LARGE: a body larger than the server takes", PayloadTooLarge.code)
    return with_error(described, "415", "UNSUPPORTED_MEDIA_TYPE: not JSON", "UNSUPPORTED_MEDIA_TYPE")


def build_spec(
    info: Mapping[str, Any],
    listeners: Iterable[Listener],
    routes: Mapping[str, Iterable[Route | Components]],
    main: str,
) -> dict[str, Any]:
    """The document: `info`, the main listener as the default server, every listener's routes and webhooks."""
    by_name = {listener.name: listener for listener in listeners}
    primary = by_name[main]
    paths: dict[str, dict[str, Any]] = {}
    components: dict[str, dict[str, Any]] = {"securitySchemes": {}, "schemas": {"Error": copy.deepcopy(ERROR_SCHEMA)}}
    webhooks: dict[str, dict[str, Any]] = {"webhooks": {}}
    for name, listener in by_name.items():
        if not listener.documented:
            continue
        for entry in routes.get(name, ()):
            if isinstance(entry, Components):
                _merge(components, entry.components)
                _merge(webhooks, {"webhooks": entry.webhooks}, where="")
                continue
            _merge(components, entry.components)
            if entry.operation is None:
                continue
            item = paths.get(entry.path)
            if item is None:
                item = paths[entry.path] = {}
                if name != main:
                    item["servers"] = [{"url": listener.public_url, "description": f"{name} role"}]
            operation = entry.operation if listener.describe_guard is None else listener.describe_guard(entry)
            item[entry.method.lower()] = copy.deepcopy(dict(operation or {}))
    spec = {
        "openapi": "3.1.0",
        "info": dict(info),
        "servers": [{"url": primary.public_url, "description": f"{main} role"}],
        "security": [dict(s) for s in primary.security],
        "paths": paths,
        "components": components,
    }
    if webhooks["webhooks"]:
        spec["webhooks"] = webhooks["webhooks"]
    return spec


def _merge(into: dict[str, dict[str, Any]], more: Mapping[str, Mapping[str, Any]], where: str = "components.") -> None:
    """Add components (or webhooks); one name with two different definitions is a plugin error."""
    for kind, entries in more.items():
        section = into.setdefault(kind, {})
        for key, value in entries.items():
            if key in section and section[key] != value:
                raise PluginError(f"OpenAPI {where}{kind}.{key} is defined twice, differently")
            section[key] = copy.deepcopy(value)

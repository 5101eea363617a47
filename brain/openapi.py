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

from brain.errors import PluginError
from brain.routes import Components, Listener, Route

__all__ = ["ERROR_SCHEMA", "build_spec", "error", "json_body", "ref", "with_error"]

# The body of every error brain answers (brain.errors.HTTPError.body).
ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["message", "code"],
    "properties": {"message": {"type": "string"}, "code": {"type": "string"}},
}


def ref(name: str) -> dict[str, str]:
    """A reference to a schema in the document's components."""
    return {"$ref": f"#/components/schemas/{name}"}


def json_body(schema: Mapping[str, Any], description: str = "OK") -> dict[str, Any]:
    """A response (or request body) carrying JSON of this schema."""
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def error(description: str) -> dict[str, Any]:
    """An error response (the `Error` schema) described as given."""
    return json_body(ref("Error"), description)


def with_error(operation: Mapping[str, Any], status: str, description: str) -> dict[str, Any]:
    """A copy of operation that also answers this error status (its description extended if it did)."""
    described = copy.deepcopy(dict(operation))
    responses = described.setdefault("responses", {})
    known = responses.get(status)
    if known is None:
        responses[status] = error(description)
    elif description not in known.get("description", ""):
        known["description"] = f"{known.get('description', '')}; {description}".lstrip("; ")
        known.setdefault("content", error(description)["content"])
    return described


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
            item[entry.method.lower()] = copy.deepcopy(dict(entry.operation))
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

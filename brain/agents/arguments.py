"""Tool arguments checked against the tool's own input schema, so what a tool advertises and
what it accepts cannot drift apart.

Only the JSON Schema keywords the tools' schemas use are understood (`type`, `properties`,
`required`, `additionalProperties: false`, `items`, `maxItems`, `minLength`, `maxLength`,
`minimum`, `maximum`); an error names the argument (`limit: must be an integer from 1 to 1000`),
which an assistant can act on.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from brain.errors import BadRequest

_NAMES = {"string": "a string", "integer": "an integer", "number": "a number", "boolean": "true or false",
          "object": "an object", "array": "an array", "null": "null"}


def check_arguments(schema: Mapping[str, Any], arguments: Any) -> dict[str, Any]:
    """`arguments` if they fit `schema` (an object schema); BadRequest naming the first that does not."""
    if arguments is None:
        arguments = {}
    _check(schema, arguments, "arguments")
    return dict(arguments)


def _check(schema: Mapping[str, Any], value: Any, where: str) -> None:
    types = schema.get("type")
    if types is not None:
        allowed = (types,) if isinstance(types, str) else tuple(types)
        if not any(_is(kind, value) for kind in allowed):
            raise BadRequest(f"{where}: must be {' or '.join(_NAMES[k] for k in allowed)}{_range(schema)}")
    if isinstance(value, str):
        if len(value) < schema.get("minLength", 0):
            raise BadRequest(f"{where}: must not be empty" if schema["minLength"] == 1 else
                             f"{where}: at least {schema['minLength']} characters")
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            raise BadRequest(f"{where}: at most {schema['maxLength']} characters")
    elif _is("number", value):
        if value < schema.get("minimum", value) or value > schema.get("maximum", value):
            raise BadRequest(f"{where}: must be {_NAMES['integer' if _is('integer', value) else 'number']}{_range(schema)}")
    elif isinstance(value, list):
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            raise BadRequest(f"{where}: at most {schema['maxItems']} items")
        if "items" in schema:
            for i, item in enumerate(value):
                _check(schema["items"], item, f"{where}[{i}]")
    elif isinstance(value, dict):
        properties = schema.get("properties", {})
        for name in schema.get("required", ()):
            if name not in value:
                raise BadRequest(f"{name}: required")
        for name, item in value.items():
            if name in properties:
                _check(properties[name], item, name if where == "arguments" else f"{where}.{name}")
            elif schema.get("additionalProperties") is False:
                known = ", ".join(properties) or "none"
                raise BadRequest(f"{str(name)[:40]}: unknown argument (known: {known})")


def _is(kind: str, value: Any) -> bool:
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "null":
        return value is None
    return isinstance(value, {"string": str, "object": dict, "array": list}[kind])


def _range(schema: Mapping[str, Any]) -> str:
    if "minimum" in schema and "maximum" in schema:
        return f" from {schema['minimum']} to {schema['maximum']}"
    if "minimum" in schema:
        return f" of at least {schema['minimum']}"
    return ""

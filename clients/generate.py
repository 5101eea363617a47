"""Regenerate what the clients derive from the OpenAPI document (`make clients`).

1. `clients/openapi.json`: the document as the server builds it from its routes (default
   settings, the bundled plugins), so a client can be built without a running server; and
   `clients/asyncapi.json`, the event stream's AsyncAPI document built from it (GET /asyncapi.json).
2. `clients/python/brain_client/models.py`: a TypedDict for every schema in
   `components.schemas`, written by `python_models` below (no maintained generator emits plain
   TypedDicts over httpx without pulling in its own runtime; this one is small enough to read).
3. `clients/typescript/src/schema.d.ts`: openapi-typescript's types for the whole document
   (needs `npm ci` in clients/typescript first).

`--check` writes nothing and exits 1 when any of them is out of date (tests/test_clients.py).
"""

from __future__ import annotations

import argparse
import json
import keyword
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from brain.api.asyncapi import build_asyncapi
from brain.api.openapi import INFO
from brain.config import Settings, load_settings
from brain.openapi import build_spec
from brain.runtime import Runtime

CLIENTS = Path(__file__).resolve().parent
SPEC = CLIENTS / "openapi.json"
ASYNCAPI = CLIENTS / "asyncapi.json"
PY_MODELS = CLIENTS / "python" / "brain_client" / "models.py"
TS_DIR = CLIENTS / "typescript"
TS_TYPES = TS_DIR / "src" / "schema.d.ts"


def current_spec() -> dict[str, Any]:
    """The document a `brain serve` with default settings and the bundled plugins serves."""
    with tempfile.TemporaryDirectory() as data:
        rt = Runtime(default_settings(Path(data)))
        return build_spec(INFO, rt.listeners.values(), {name: rt.routes(name) for name in rt.listeners}, "api")


def default_settings(data: Path) -> Settings:
    """Default settings, no environment, with a throwaway data directory."""
    return load_settings(environ={}, overrides={"server": {"data_dir": str(data / "data")}})


def spec_text(spec: dict[str, Any]) -> str:
    """The document as checked in: stable key order, two-space indent."""
    return json.dumps(spec, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def class_name(name: str) -> str:
    """A schema name as a Python/TypeScript type name: mail.message.received -> MailMessageReceived."""
    return "".join(part[:1].upper() + part[1:] for part in re.split(r"[^A-Za-z0-9]+", name) if part)


class PythonModels:
    """TypedDicts for a document's schemas; inline objects get a class named after their place."""

    def __init__(self, schemas: dict[str, Any]) -> None:
        self.schemas = schemas
        # Definitions in the order they can be evaluated (what a class refers to comes first).
        self.classes: dict[str, str] = {}
        self.taken: set[str] = set()

    def render(self) -> str:
        for name in sorted(self.schemas):
            self.typed_dict(class_name(name), self.schemas[name])
        # A $ref is written before the schema it names is: sort the definitions by what they use.
        ordered: dict[str, str] = {}

        def place(name: str) -> None:
            if name in ordered:
                return
            ordered[name] = ""
            for other in self.classes:
                if other != name and re.search(rf"\b{other}\b", self.classes[name].split("=", 1)[1]):
                    place(other)
            del ordered[name]
            ordered[name] = self.classes[name]

        for name in self.classes:
            place(name)
        self.classes = ordered
        head = [
            '"""Types of the brain API\'s JSON bodies, generated from clients/openapi.json by clients/generate.py.',
            "",
            "Do not edit: run `make clients`. TypedDicts are plain dicts at run time: what the server sent,",
            "nothing dropped, nothing converted.",
            '"""',
            "",
            "from __future__ import annotations",
            "",
            "from typing import Any, Literal, NotRequired, TypedDict, Union",
            "",
            "__all__ = [",
            *(f'    "{name}",' for name in sorted(self.classes)),
            "]",
            "",
        ]
        return "\n".join(head) + "\n" + "\n\n".join(self.classes.values())

    def typed_dict(self, name: str, schema: dict[str, Any]) -> str:
        """Emit `name` for an object schema (or an alias for anything else); the type to use."""
        if name in self.taken:
            return name
        self.taken.add(name)
        if schema.get("type") != "object" or "properties" not in schema:
            self.classes[name] = f"{name} = {self.annotation(schema, name)}\n"
            return name
        required = set(schema.get("required", ()))
        fields = []
        for prop, sub in schema["properties"].items():
            kind = self.annotation(sub, name + class_name(prop))
            fields.append(f'    "{prop}": {kind if prop in required else f"NotRequired[{kind}]"},')
        doc = " ".join(str(schema.get("description", "")).split())
        comment = f"# {doc}\n" if doc else ""
        # The functional form: some fields ("from") are Python keywords.
        self.classes[name] = comment + f'{name} = TypedDict("{name}", {{\n' + "\n".join(fields) + "\n})\n"
        return name

    def annotation(self, schema: Any, place: str) -> str:
        """The Python type of a schema (inline objects become TypedDicts named after `place`)."""
        if not isinstance(schema, dict):
            return "Any"
        if "$ref" in schema:
            return class_name(schema["$ref"].rsplit("/", 1)[-1])
        if "const" in schema:
            return f"Literal[{json.dumps(schema['const']).replace('true', 'True').replace('false', 'False')}]"
        if "enum" in schema:
            values = [v for v in schema["enum"] if v is not None]
            literal = f"Literal[{', '.join(repr(v) for v in values)}]"
            return f"Union[{literal}, None]" if None in schema["enum"] else literal
        for combinator in ("oneOf", "anyOf"):
            if combinator in schema:
                options = [self.annotation(s, f"{place}{i}") for i, s in enumerate(schema[combinator])]
                return _union(options)
        kinds = schema.get("type")
        if kinds is None:
            return "Any"
        if isinstance(kinds, list):
            return _union([self.annotation({**schema, "type": k}, place) for k in kinds])
        if kinds == "object":
            if "properties" in schema:
                return self.typed_dict(place, schema)
            extra = schema.get("additionalProperties")
            return f"dict[str, {self.annotation(extra, place + 'Value')}]" if isinstance(extra, dict) else "dict[str, Any]"
        if kinds == "array":
            return f"list[{self.annotation(schema.get('items', {}), place + 'Item')}]"
        return {"string": "str", "integer": "int", "number": "float", "boolean": "bool", "null": "None"}[kinds]


def _union(options: list[str]) -> str:
    unique = list(dict.fromkeys(options))
    return unique[0] if len(unique) == 1 else f"Union[{', '.join(unique)}]"


def python_models(spec: dict[str, Any]) -> str:
    """models.py for this document."""
    assert all(not keyword.iskeyword(class_name(n)) for n in spec["components"]["schemas"])
    return PythonModels(spec["components"]["schemas"]).render()


def typescript_types(spec_path: Path) -> str:
    """openapi-typescript's output for the document at spec_path."""
    cli = TS_DIR / "node_modules" / ".bin" / "openapi-typescript"
    if not cli.exists():
        raise SystemExit(f"{cli} is missing: run `npm ci` in {TS_DIR}")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "schema.d.ts"
        subprocess.run([str(cli), str(spec_path), "--output", str(out)], check=True, capture_output=True)
        return out.read_text()


def main() -> int:
    """Write (or with --check, compare) the document and both clients' types."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail when a generated file is out of date")
    args = parser.parse_args()
    spec = current_spec()
    with tempfile.TemporaryDirectory() as tmp:
        fresh_spec = Path(tmp) / "openapi.json"
        fresh_spec.write_text(spec_text(spec))
        asyncapi = build_asyncapi(spec, default_settings(Path(tmp)).nats)
        wanted = {SPEC: spec_text(spec), ASYNCAPI: spec_text(asyncapi), PY_MODELS: python_models(spec),
                  TS_TYPES: typescript_types(fresh_spec)}
    stale = [path for path, text in wanted.items() if not path.exists() or path.read_text() != text]
    if args.check:
        for path in stale:
            print(f"out of date: {path.relative_to(CLIENTS.parent)} (run `make clients`)", file=sys.stderr)
        return 1 if stale else 0
    for path in stale:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(wanted[path])
        print(f"wrote {path.relative_to(CLIENTS.parent)}")
    return 0


if __name__ == "__main__":
    shutil.which("node") or sys.exit("node is needed for the TypeScript types")
    sys.exit(main())

"""Dev mode: the example browser app (`examples/index.html`) at /examples/ on the auth role's origin.

Served from the auth role's origin, the page signs in same-origin and calls the API the way a
browser app on a trusted origin does: through CORS, which by default trusts the auth role's
origins. `/examples/config.js` tells the page where both roles are. Only in dev mode, and only
from a source checkout (the files are not part of the installed package).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from aiohttp import web

import brain
from brain.errors import NotFound
from brain.openapi import error
from brain.process import Process
from brain.routes import Route

EXAMPLES_DIR = Path(brain.__file__).resolve().parent.parent / "examples"
_FILE = re.compile(r"[A-Za-z0-9_-]+\.(html|js|css|py)")
_TYPES = {"html": "text/html", "js": "text/javascript", "css": "text/css", "py": "text/plain"}
_OPERATION = {
    "summary": "Dev mode only: the example browser app and its files (examples/ of a source checkout)",
    "security": [],
    "responses": {"200": {"description": "The file"}, "404": error("No such example file", NotFound.code)},
}


def routes(rt: Process) -> list[Route]:
    """GET /examples/, /examples/config.js and /examples/{file}: in dev mode, else none."""
    if rt.settings.server.mode != "dev":
        return []
    config = "window.BRAIN = " + json.dumps({"auth": rt.settings.auth_public_url, "api": rt.settings.api_public_url}) + ";\n"

    async def index(_request: web.Request) -> web.StreamResponse:
        return _file("index.html")

    async def config_js(_request: web.Request) -> web.Response:
        return web.Response(text=config, content_type="text/javascript", headers={"Cache-Control": "no-store"})

    async def example(request: web.Request) -> web.StreamResponse:
        return _file(request.match_info["name"])

    return [
        Route("GET", "/examples/", index, {"operationId": "examplesIndex", **_OPERATION}, public=True),
        Route("GET", "/examples/config.js", config_js, {"operationId": "examplesConfig", **_OPERATION}, public=True),
        Route("GET", "/examples/{name}", example, {"operationId": "exampleFile", **_OPERATION, "parameters": [
            {"name": "name", "in": "path", "required": True, "description": "A file of examples/ (no path)",
             "schema": {"type": "string", "pattern": f"^{_FILE.pattern}$"}},
        ]}, public=True),
    ]


def _file(name: str) -> web.Response:
    """One file of examples/ by its plain name (no path: nothing outside the directory)."""
    kind = _FILE.fullmatch(name)
    path = EXAMPLES_DIR / name
    if kind is None or not path.is_file():
        raise NotFound("no such example file (examples are served from a source checkout)")
    return web.Response(body=path.read_bytes(), content_type=_TYPES[kind.group(1)], charset="utf-8",
                        headers={"Cache-Control": "no-store"})

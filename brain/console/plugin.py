"""What the console adds to a process: GET /console/ and its files, on the API listener.

The files are read once, when the routes are built, and answered from memory. Each answer
carries a strict Content-Security-Policy: scripts, styles and images from this origin only (no
inline script, no third party), network requests to this origin and the auth role's only, and
Trusted Types required, so the page cannot turn a string into markup by accident; every user
text reaches the DOM through `textContent`. The auth role's URL is written into index.html as a
`<meta>` (escaped), so the page needs no inline script to learn it.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from aiohttp import hdrs, web

from brain.console.settings import served
from brain.errors import NotFound
from brain.origins import origin_of
from brain.plugins import hookimpl
from brain.process import Process
from brain.routes import Route

LISTENER = "api"
STATIC_DIR = Path(__file__).resolve().parent / "static"
PREFIX = "/console/"
AUTH_URL_MARK = "{{auth_url}}"
_TYPES = {
    ".html": "text/html",
    ".js": "text/javascript",
    ".css": "text/css",
    ".svg": "image/svg+xml",
}
_OPERATION = {
    "summary": "The brain console (a web page; [console] serve)",
    "security": [],
    "responses": {"200": {"description": "The page or one of its files"}, "404": {"description": "No such file"}},
}


@dataclass(frozen=True)
class StaticFile:
    """One file of the page, as it is answered."""

    body: bytes
    content_type: str


def content_security_policy(auth_url: str) -> str:
    """The console's CSP: its own files, the API (its origin) and the auth role, nothing else."""
    auth_origin = origin_of(auth_url) or ""
    return "; ".join((
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        f"connect-src 'self' {auth_origin}".rstrip(),
        "form-action 'self'",
        "base-uri 'none'",
        "frame-ancestors 'none'",
        "require-trusted-types-for 'script'",
        "trusted-types 'none'",
    ))


def load_files(auth_url: str) -> dict[str, StaticFile]:
    """Every file of static/ by name, index.html with the auth role's URL written in."""
    files: dict[str, StaticFile] = {}
    for path in sorted(STATIC_DIR.iterdir()):
        if path.suffix not in _TYPES or not path.is_file():
            continue
        body = path.read_bytes()
        if path.name == "index.html":
            body = body.replace(AUTH_URL_MARK.encode(), html.escape(auth_url, quote=True).encode())
        files[path.name] = StaticFile(body, _TYPES[path.suffix])
    return files


def routes(rt: Process) -> list[Route]:
    """GET /console, /console/ and /console/{file} when the console is served, else none."""
    if not served(rt.settings):
        return []
    files = load_files(rt.settings.auth_public_url)
    headers = {
        "Content-Security-Policy": content_security_policy(rt.settings.auth_public_url),
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cross-Origin-Opener-Policy": "same-origin",
        "Cross-Origin-Resource-Policy": "same-origin",
        # Small files, changed with brain itself: revalidate rather than guess a lifetime.
        hdrs.CACHE_CONTROL: "no-cache",
    }

    def answer(name: str) -> web.Response:
        found = files.get(name)
        if found is None:
            raise NotFound(f"no console file {name[:100]!r}")
        return web.Response(body=found.body, content_type=found.content_type, charset="utf-8", headers=headers)

    async def bare(_request: web.Request) -> web.Response:
        return web.Response(status=301, headers={hdrs.LOCATION: PREFIX})

    async def index(_request: web.Request) -> web.Response:
        return answer("index.html")

    async def file(request: web.Request) -> web.Response:
        return answer(request.match_info["name"])

    return [
        Route("GET", "/console", bare, {
            "operationId": "consoleRedirect", "summary": "To /console/", "security": [],
            "responses": {"301": {"description": "Moved to /console/"}},
        }, public=True),
        Route("GET", PREFIX, index, {"operationId": "console", **_OPERATION}, public=True),
        Route("GET", PREFIX + "{name}", file, {
            "operationId": "consoleFile", **_OPERATION,
            "parameters": [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}],
        }, public=True),
    ]


@hookimpl
def register_routes(rt: Process, listener: str, register: Callable[[Route], None]) -> None:
    """The console's page and files on the `api` listener."""
    if listener == LISTENER:
        for route in routes(rt):
            register(route)

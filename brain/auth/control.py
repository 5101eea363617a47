"""The data directory's lock, and the auth role's control socket for `brain users delete`.

A running `brain serve` holds a *shared* lock on `data/serve.lock` from before its first actor
starts until it exits. `brain users delete` tries to take it *exclusively*:

- it gets it: no server runs on this data directory (and none can start until it is done, a
  starting server waits for it), so the command edits the files itself;
- it does not: a server runs, and the command asks it through `data/control.sock`, a Unix
  socket (0600: only the server's own user can connect) that the auth role serves. The server
  deletes exactly as `POST /api/auth/delete-user` does: under the AuthIssuer, with the API side
  revoking and purging before it answers.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from aiohttp import web

from brain.auth.db import User
from brain.auth.deletion import AccountDeletions
from brain.errors import BadRequest, NotFound
from brain.ids import is_valid_user_id
from brain.process import Process
from brain.web import MAX_BODY_KEY, error_middleware, json_response, read_json

log = logging.getLogger("brain.auth.control")

SOCKET_FILE = "control.sock"


# --- the socket -------------------------------------------------------------------------------------


@contextlib.contextmanager
def _sun_path(path: Path) -> Iterator[str]:
    """An address for bind/connect: long paths (AF_UNIX allows ~107 bytes) go through a dir fd."""
    text = str(path)
    if len(text.encode()) < 100 or not os.path.isdir("/proc/self/fd"):
        yield text
        return
    fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{fd}/{path.name}"
    finally:
        os.close(fd)


def _connect(path: Path, timeout: float) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        with _sun_path(path) as address:
            sock.connect(address)
    except BaseException:
        sock.close()
        raise
    return sock


def _bind(path: Path) -> socket.socket | None:
    """A listening socket at path; None if another live process serves it already."""
    if path.exists() or path.is_symlink():
        try:
            _connect(path, 1.0).close()
        except (ConnectionRefusedError, FileNotFoundError):
            path.unlink(missing_ok=True)  # left behind by a server that died
        except OSError:
            path.unlink(missing_ok=True)
        else:
            log.warning("%s is served by another process; `brain users delete` will talk to that one", path)
            return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with _sun_path(path) as address:
            sock.bind(address)
        os.chmod(path, 0o600)  # before listen(): nobody can connect yet
        sock.listen(16)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def find_user(ref: str) -> User | None:
    """The user with this id or (any-case) email, read from auth.db."""
    if "@" in ref:
        return User.get_or_none(User.email == ref.strip().lower())
    if not is_valid_user_id(ref):
        return None
    return User.get_or_none(User.id == ref)


class ControlServer:
    """Serves the control socket of the auth role (started and stopped with the auth app)."""

    def __init__(self, rt: Process, deletions: AccountDeletions) -> None:
        self.rt = rt
        self.deletions = deletions
        self.path = rt.settings.data_path / SOCKET_FILE
        self._runner: web.AppRunner | None = None
        self._inode: int | None = None

    async def start(self, _app: web.Application | None = None) -> None:
        """Bind the socket and serve (a failure only logs: the HTTP roles matter more)."""
        try:
            sock = _bind(self.path)
        except OSError as exc:
            log.error("control socket %s: %s; `brain users delete` cannot reach this server", self.path, exc)
            return
        if sock is None:
            return
        self._inode = os.stat(self.path).st_ino
        app = web.Application(middlewares=[error_middleware])
        app[MAX_BODY_KEY] = 16384
        app.router.add_get("/v1/ping", self.ping)
        app.router.add_post("/v1/users/delete", self.delete_user)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        await web.SockSite(self._runner, sock).start()

    async def stop(self, _app: web.Application | None = None) -> None:
        """Stop serving and remove the socket file (if it is still ours)."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
        with contextlib.suppress(OSError):
            if self._inode is not None and os.stat(self.path).st_ino == self._inode:
                self.path.unlink()

    async def ping(self, _request: web.Request) -> web.Response:
        """GET /v1/ping: who is serving."""
        return json_response({"pid": os.getpid(), "roles": sorted(self.rt.roles)})

    async def delete_user(self, request: web.Request) -> web.Response:
        """POST /v1/users/delete {user: id or email}."""
        body = await read_json(request)
        ref = body.get("user") if isinstance(body, dict) else None
        if not isinstance(ref, str) or not ref:
            raise BadRequest("user: an id or an email is required")
        user = find_user(ref)
        if user is None:
            raise NotFound(f"no user {ref!r}", code="USER_NOT_FOUND")
        public = user.public()
        done = await self.deletions.delete(user.id)
        if done is None:
            raise NotFound(f"no user {ref!r}", code="USER_NOT_FOUND")
        row, purged = done
        return json_response({"user": public, **deletion_summary(row.tokens_valid_until, purged), "mode": "server"})


def deletion_summary(tokens_valid_until: int, purged: dict[str, Any] | None) -> dict[str, Any]:
    """The JSON `brain users delete` prints about one deletion (with the purges' own figures)."""
    return {
        "deleted": True,
        "data_removed": purged is not None,
        **(purged or {}),
        "tokens_refused_until": tokens_valid_until,
    }


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        self.sock = _connect(self._path, self.timeout)  # type: ignore[arg-type]


def call(data_path: Path, method: str, path: str, body: Any = None, *, timeout: float = 180.0) -> tuple[int, Any]:
    """One request to a running server's control socket: (status, JSON body). OSError if none."""
    conn = _UnixConnection(data_path / SOCKET_FILE, timeout)
    try:
        payload = None if body is None else json.dumps(body).encode()
        conn.request(method, path, body=payload, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        raw = response.read()
        return response.status, json.loads(raw) if raw else None
    finally:
        conn.close()

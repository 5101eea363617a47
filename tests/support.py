"""Test helpers: run the real `brain serve` as a process and talk to it over HTTP."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import requests

from brain.config import load_settings
from brain.openapi import error_codes
from brain.runtime import Runtime
from brain.testing import free_port, wait_until

REPO = Path(__file__).resolve().parent.parent

__all__ = ["REPO", "BrainServer", "free_port", "to_toml", "wait_until"]


def to_toml(tables: Mapping[str, Mapping[str, Any]]) -> str:
    """A small TOML writer for settings tables (nested one level for [plugins.NAME])."""

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(value(x) for x in v) + "]"
        raise TypeError(f"cannot write {v!r} as TOML")

    lines: list[str] = []
    nested: list[tuple[str, Mapping[str, Any]]] = []
    for name, table in tables.items():
        lines.append(f"[{name}]")
        for key, v in table.items():
            if isinstance(v, Mapping):
                nested.append((f"{name}.{key}", v))
            else:
                lines.append(f"{key} = {value(v)}")
        lines.append("")
    for name, table in nested:
        lines.append(f"[{name}]")
        lines.extend(f"{key} = {value(v)}" for key, v in table.items())
        lines.append("")
    return "\n".join(lines)


# Fast password hashing for tests that are not about hashing; the auth tests that are use the
# production parameters.
FAST_ARGON2 = {"argon2_memory_kib": 1024, "argon2_time_cost": 1}
# /health's detail needs the metrics token: test servers get this one unless a test configures
# [metrics] itself, with /metrics off as by default (no route, no measuring middleware).
METRICS_TOKEN = "test-metrics-token-0123456789abcdef"


def concrete_path(path: str, operation: Mapping[str, Any], text: str = "probe", number: str = "987654321") -> str:
    """An OpenAPI path template filled in: each path parameter gets `number` where its schema is
    an integer (an event id), else `text`."""
    numbers = {p["name"] for p in operation.get("parameters", ())
               if p.get("in") == "path" and p.get("schema", {}).get("type") == "integer"}
    return re.sub(r"\{([^}/]+)\}", lambda m: number if m.group(1) in numbers else text, path)


def embedded_nats_url(url: str, data_dir: Path) -> str:
    """The embedded nats-server's URL with the credential brain keeps for it (data/nats/credentials)."""
    credential = json.loads((data_dir / "nats" / "credentials").read_text())
    return url.replace("://", f"://{credential['user']}:{credential['password']}@", 1)
# Every test client is 127.0.0.1 and some write fast: the API's request rate limits are off unless
# a test is about them (tests/test_api_limits.py).
NO_API_LIMITS = {"rate_limit_user_per_second": 0, "rate_limit_ip_per_second": 0}


class BrainServer:
    """One `brain serve` process with its own data dir and ports."""

    def __init__(
        self,
        workdir: Path,
        *,
        config: Mapping[str, Mapping[str, Any]] | None = None,
        env: Mapping[str, str] | None = None,
        roles: str = "auth,api",
        data_dir: Path | None = None,
        auth_port: int | None = None,
        api_port: int | None = None,
        ca: Path | None = None,
    ) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.data_dir = data_dir or self.workdir / "data"
        self.auth_port = auth_port or free_port()
        self.api_port = api_port or free_port()
        self.roles = roles
        self.config = {k: dict(v) for k, v in (config or {}).items()}
        self.config.setdefault("auth", {})
        for k, v in FAST_ARGON2.items():
            self.config["auth"].setdefault(k, v)
        self.config.setdefault("metrics", {"enabled": False, "token": METRICS_TOKEN})
        self.config.setdefault("api", {})
        for k, v in NO_API_LIMITS.items():
            self.config["api"].setdefault(k, v)
        # One process unless a test asks for workers (tests/test_workers.py): every other test
        # is about what a process does, and a master would double its start-up.
        self.config.setdefault("server", {}).setdefault("workers", 1)
        self.env = dict(env or {})
        # https when the config gives brain a certificate; `ca` is what clients then trust.
        self.scheme = "https" if self.config.get("server", {}).get("tls_cert") else "http"
        self.ca = ca
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.workdir / "brain.log"
        self._log_offset = 0
        self.starts = 0

    @property
    def auth_url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.auth_port}"

    @property
    def api_url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.api_port}"

    @property
    def verify(self) -> str | bool:
        """`verify=` for requests: the CA the server's certificate chains to, if one was given."""
        return str(self.ca) if self.ca else True

    def health(self, *, timeout: float = 5.0, verify: str | bool | None = None) -> dict[str, Any]:
        """The API's detailed /health document (`?detail=1` with the metrics token)."""
        token = self.config["metrics"].get("token")
        assert token, "this server has no metrics token: its /health detail cannot be read"
        r = requests.get(f"{self.api_url}/health", params={"detail": "1"}, timeout=timeout,
                         verify=self.verify if verify is None else verify, headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 200, r.text
        return r.json()  # type: ignore[no-any-return]

    def nats_url(self) -> str:
        """A URL nats-py can connect with: the server's NATS_URL, or its embedded server's with the credential."""
        if self.env.get("NATS_URL"):
            return self.env["NATS_URL"]
        return embedded_nats_url(self.health()["nats"]["url"], self.data_dir)

    def command(self) -> list[str]:
        config_path = self.workdir / "brain.toml"
        config_path.write_text(to_toml(self.config))
        return [
            sys.executable, "-m", "brain", "serve",
            "--config", str(config_path),
            "--data-dir", str(self.data_dir),
            "--auth-port", str(self.auth_port),
            "--api-port", str(self.api_port),
            "--roles", self.roles,
        ]

    def start(self, *, wait: bool = True, timeout: float = 30.0) -> BrainServer:
        """Start the process; with wait, return once it logs that it is ready."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        env = {k: v for k, v in os.environ.items() if not k.startswith("BRAIN_")}
        env.pop("NATS_URL", None)
        env.pop("AUTH_SERVER_URL", None)
        env.update(self.env)
        env["PYTHONUNBUFFERED"] = "1"
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.workdir)
        log.close()
        self.starts += 1
        if wait:
            try:
                self.wait_ready(timeout)
            except BaseException:
                # A server that never became ready (a slow machine, a bad config) must not outlive
                # the test: a `with` block or a fixture whose start failed never reaches its close().
                self.close()
                raise
        return self

    def log_text(self, *, since_start: bool = False) -> str:
        """What the server has logged (since the last start, if asked)."""
        if not self.log_path.exists():
            return ""
        data = self.log_path.read_bytes()
        if since_start:
            data = data[self._log_offset:]
        return data.decode(errors="replace")

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Block until the server logged its ready line; fail with its log if it died."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if " ready (pid" in self.log_text(since_start=True):
                return
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"brain exited with {self.proc.returncode}:\n{self.log_text(since_start=True)}")
            time.sleep(0.05)
        raise AssertionError(f"brain not ready after {timeout}s:\n{self.log_text(since_start=True)}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        """Send sig and wait for the exit code (kills and fails if it hangs)."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(f"brain did not exit within {timeout}s of {sig}:\n{self.log_text()}") from None
        return self.proc.returncode

    def kill(self) -> None:
        """kill -9, as a crash would."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._reap_nats()

    def _reap_nats(self) -> None:
        # A SIGKILLed brain cannot stop its embedded nats-server child; tests must not leak it.
        pidfile = self.data_dir / "nats" / "nats-server.pid"
        if pidfile.exists():
            try:
                os.kill(int(pidfile.read_text().strip()), signal.SIGKILL)
            except (ValueError, ProcessLookupError):
                pass

    def close(self) -> None:
        """Stop the process whatever state it is in (fixture teardown)."""
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.stop(timeout=10)
            except AssertionError:
                pass
        self._reap_nats()

    def __enter__(self) -> BrainServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def assert_declared(spec: Mapping[str, Any], r: requests.Response) -> None:
    """The answer is one the OpenAPI document declares for its request's operation: its status, and
    a JSON body valid against that status's schema (an error's `code` among those it states)."""
    request = r.request
    path, method = urlsplit(request.url).path, (request.method or "").lower()
    for template, item in spec["paths"].items():
        if method in item and re.fullmatch(re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(template)), path):
            responses = item[method]["responses"]
            break
    else:
        raise AssertionError(f"{method.upper()} {path} is not in the document")
    response = responses.get(str(r.status_code))
    assert response is not None, f"{method.upper()} {path} answered {r.status_code}, which it does not declare"
    codes = error_codes(response)
    if codes is not None:
        assert r.json()["code"] in codes, f"{method.upper()} {path} {r.status_code}: {r.json()['code']} not in {codes}"
    schema = response.get("content", {}).get("application/json", {}).get("schema")
    if schema is not None and r.headers.get("Content-Type", "").startswith("application/json"):
        # The document's components beside the schema, so that its references resolve.
        jsonschema.Draft202012Validator({**schema, "components": spec["components"]}).validate(r.json())


@contextmanager
def api_runtime(data_dir: Path, **sections: Mapping[str, Any]) -> Iterator[Runtime]:
    """The API role's actor tree in this process over `data_dir` (no plugins, no listener),
    started, then stopped; `sections` add settings (e.g. `search={"index": False}`)."""
    runtime = Runtime(load_settings(environ={}, overrides={
        "server": {"data_dir": str(data_dir), "roles": ["api"]}, "plugins": {"enabled": []}, **sections,
    }))
    runtime.start_tree()
    try:
        yield runtime
    finally:
        runtime.stop_tree()

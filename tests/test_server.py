"""The real `brain serve` process: CLI, start-up, roles, embedded NATS, supervision, shutdown."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

import brain
from tests.support import METRICS_TOKEN, BrainServer, free_port, wait_until


def run_cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("BRAIN_")}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "brain", *args], capture_output=True, text=True, timeout=60, env=full_env, cwd=cwd
    )


def test_help_and_version() -> None:
    out = run_cli("--help")
    assert out.returncode == 0 and "serve" in out.stdout
    out = run_cli("serve", "--help")
    for flag in ("--config", "--data-dir", "--host", "--auth-port", "--api-port", "--roles"):
        assert flag in out.stdout
    out = run_cli("--version")
    assert out.returncode == 0 and out.stdout.startswith("brain ")


def test_console_script_is_installed() -> None:
    script = Path(sys.executable).parent / "brain"
    assert script.exists()
    assert subprocess.run([str(script), "--version"], capture_output=True, timeout=30).returncode == 0


def test_config_error_names_the_key(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[api]\nmax_open_stores = -1\n")
    out = run_cli("serve", "--config", str(cfg), "--data-dir", str(tmp_path / "d"), cwd=tmp_path)
    assert out.returncode == 2
    assert "api.max_open_stores" in out.stderr


def test_missing_plugin_is_a_startup_error(tmp_path: Path) -> None:
    out = run_cli(
        "serve", "--data-dir", str(tmp_path / "d"), "--auth-port", "0", "--api-port", "0",
        env={"BRAIN_PLUGINS__ENABLED": "gmail,nosuch"}, cwd=tmp_path,
    )
    assert out.returncode == 2
    assert "nosuch" in out.stderr and "not installed" in out.stderr


def test_port_in_use_is_reported(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        out = run_cli("serve", "--data-dir", str(tmp_path / "d"), "--auth-port", str(port), "--api-port", "0", cwd=tmp_path)
    assert out.returncode == 1
    assert f"127.0.0.1:{port}" in out.stderr


def test_both_roles_and_embedded_nats_come_up_and_stop_cleanly(brain_server: BrainServer) -> None:
    health = requests.get(f"{brain_server.api_url}/health", timeout=5)
    assert health.status_code == 200  # at once, even while still "degraded"
    assert health.json()["status"] in ("ok", "degraded")
    # ok once the issuer's keys are loaded and the event bus is connected to NATS.
    body = wait_until(
        lambda: (b := brain_server.health())["status"] == "ok" and b,
        timeout=15, what="/health status ok",
    )
    assert body["problems"] == [] and body["nats"]["embedded"] is True and body["nats"]["connected"] is True
    assert body["jwks"]["loaded"] is True
    ok = requests.get(f"{brain_server.auth_url}/api/auth/ok", timeout=5)
    assert ok.json() == {"ok": True}
    # The embedded NATS server is really there and speaks NATS.
    host, port = body["nats"]["url"].removeprefix("nats://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as conn:
        assert conn.recv(4096).startswith(b"INFO ")
    nats_pid = int((brain_server.data_dir / "nats" / "nats-server.pid").read_text())
    assert "secret.key" in os.listdir(brain_server.data_dir)

    started = time.monotonic()
    assert brain_server.stop(signal.SIGTERM) == 0
    assert time.monotonic() - started < 8
    wait_until(lambda: not Path(f"/proc/{nats_pid}").exists(), timeout=5, what="nats-server to exit")
    log = brain_server.log_text()
    assert "shutdown complete" in log
    assert "GET /health 200" in log  # one access-log line per request


def test_sigterm_lets_a_request_in_flight_finish_and_commit(brain_server: BrainServer) -> None:
    """SIGTERM while a POST /events waits for its commit: answered 201 and stored, then exit 0."""
    import concurrent.futures
    import sqlite3

    from tests.test_auth_helpers import new_user

    user = new_user(brain_server)
    auth = {"Authorization": f"Bearer {user['jwt']}"}
    url = f"{brain_server.api_url}/events"
    first = requests.post(url, json={"type": "before.term", "data": 1}, headers=auth, timeout=10)
    assert first.status_code == 201, first.text  # the user's store is open
    db_path = brain_server.data_dir / "users" / user["user"]["id"] / "events.db"
    assert brain_server.proc is not None
    # Another process holds the database's write lock: brain's store waits (busy_timeout 5 s)
    # with the request in flight, fully received, when the signal comes.
    blocker = sqlite3.connect(db_path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pending = pool.submit(requests.post, url, json={"type": "during.term", "data": 2}, headers=auth, timeout=15)
        time.sleep(0.5)
        assert not pending.done()
        brain_server.proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        assert brain_server.proc.poll() is None and not pending.done()  # still serving it
        blocker.execute("ROLLBACK")
        blocker.close()
        response = pending.result(timeout=15)
    assert response.status_code == 201, response.text
    brain_server.proc.wait(timeout=15)
    assert brain_server.proc.returncode == 0
    with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True) as db:
        rows = db.execute("SELECT id, type FROM events ORDER BY id").fetchall()
    assert rows == [(first.json()["id"], "before.term"), (response.json()["id"], "during.term")]


def test_sigterm_drops_a_request_whose_body_never_finished(brain_server: BrainServer) -> None:
    """A body still arriving at SIGTERM is not read any further (aiohttp stops reading): the
    client's connection closes without an answer, nothing is stored, and shutdown waits no
    longer than server.shutdown_timeout (5 s) for it."""
    import json as jsonlib

    from tests.test_auth_helpers import new_user

    user = new_user(brain_server)
    body = jsonlib.dumps({"type": "half.sent", "data": "x" * 2000}).encode()
    head = (
        f"POST /events HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {user['jwt']}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    assert brain_server.proc is not None
    with socket.create_connection(("127.0.0.1", brain_server.api_port), timeout=15) as conn:
        conn.sendall(head + body[:100])
        time.sleep(0.3)
        started = time.monotonic()
        brain_server.proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        conn.sendall(body[100:])
        assert conn.recv(65536) == b""  # closed, unanswered
    brain_server.proc.wait(timeout=15)
    assert brain_server.proc.returncode == 0 and time.monotonic() - started < 9
    assert not (brain_server.data_dir / "users" / user["user"]["id"]).exists()


def test_sigint_also_shuts_down_cleanly(brain_server: BrainServer) -> None:
    assert brain_server.stop(signal.SIGINT) == 0


def test_embedded_nats_is_restarted_when_it_dies(brain_server: BrainServer) -> None:
    pidfile = brain_server.data_dir / "nats" / "nats-server.pid"
    first = int(pidfile.read_text())
    os.kill(first, signal.SIGKILL)

    def restarted() -> bool:
        try:
            pid = int(pidfile.read_text())
        except (FileNotFoundError, ValueError):
            return False
        return pid != first and Path(f"/proc/{pid}").exists()

    wait_until(restarted, timeout=15, what="a new nats-server")
    body = brain_server.health()
    assert body["supervisor"]["restarts"] >= 1
    assert "restart" in brain_server.log_text().lower()


def test_roles_run_separately(make_server) -> None:  # type: ignore[no-untyped-def]
    auth_port, api_port = free_port(), free_port()
    auth = make_server("auth", roles="auth", auth_port=auth_port, api_port=api_port).start()
    assert requests.get(f"{auth.auth_url}/api/auth/ok", timeout=5).status_code == 200
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{api_port}/health", timeout=2)
    api = make_server(
        "api", roles="api", auth_port=auth_port, api_port=api_port,
        env={"AUTH_SERVER_URL": auth.auth_url},
    ).start()
    assert requests.get(f"{api.api_url}/health", timeout=5).status_code == 200
    assert api.stop() == 0
    assert auth.stop() == 0


def test_json_logs(make_server) -> None:  # type: ignore[no-untyped-def]
    server = make_server(config={"log": {"format": "json"}}).start()
    requests.get(f"{server.api_url}/health", timeout=5)
    assert server.stop() == 0
    import json

    lines = [json.loads(line) for line in server.log_text().splitlines() if line.startswith("{")]
    access = [line for line in lines if line.get("path") == "/health"]
    assert access and access[0]["status"] == 200 and access[0]["method"] == "GET"


def test_unknown_route_is_a_json_404(brain_server: BrainServer) -> None:
    r = requests.get(f"{brain_server.api_url}/nope", timeout=5)
    assert r.status_code == 404
    assert r.json()["code"] == "NOT_FOUND"
    r = requests.delete(f"{brain_server.api_url}/health", timeout=5)
    assert r.status_code == 405 and r.json()["code"] == "METHOD_NOT_ALLOWED"
    assert set(r.headers["Allow"].split(",")) >= {"GET", "HEAD"}
    # Unmatched requests need no token, and a path trick finds nothing either.
    r = requests.put(f"{brain_server.api_url}/events", timeout=5)
    assert r.status_code == 405 and set(r.headers["Allow"].split(",")) >= {"GET", "POST"}
    r = requests.get(f"{brain_server.api_url}/events/../../etc/passwd", timeout=5)
    assert r.status_code in (401, 404) and r.headers["Content-Type"].startswith("application/json")


def test_root_giving_up_shuts_the_process_down_cleanly(brain_server: BrainServer) -> None:
    """nats-server dying more often than the root's restart intensity allows ends the process."""
    pidfile = brain_server.data_dir / "nats" / "nats-server.pid"
    assert brain_server.proc is not None
    killed: set[int] = set()

    def live_new_pid() -> int | None:
        try:
            pid = int(pidfile.read_text())
        except (FileNotFoundError, ValueError):
            return None
        return pid if pid not in killed and Path(f"/proc/{pid}").exists() else None

    for _ in range(10):  # the root allows 5 restarts in 30 s
        if brain_server.proc.poll() is not None:
            break
        try:
            pid = wait_until(lambda: live_new_pid() or brain_server.proc.poll() is not None, timeout=15, what="nats")
        except AssertionError:
            break
        if pid is True:
            break
        killed.add(pid)
        os.kill(pid, signal.SIGKILL)
    code = brain_server.proc.wait(timeout=20)
    assert code == 1
    log = brain_server.log_text()
    assert "root supervisor gave up" in log
    assert "shutdown complete" in log
    assert not any(Path(f"/proc/{p}").exists() for p in killed)


def test_health_is_degraded_without_keys_or_nats(make_server) -> None:  # type: ignore[no-untyped-def]
    """Still 200 (the process is up), but the status and its reasons say what is missing."""
    dead_auth, dead_nats = free_port(), free_port()
    server = make_server(
        roles="api", env={"AUTH_SERVER_URL": f"http://127.0.0.1:{dead_auth}", "NATS_URL": f"nats://127.0.0.1:{dead_nats}"}
    ).start()
    r = requests.get(f"{server.api_url}/health", timeout=5)
    assert r.status_code == 200
    assert r.json() == {"status": "degraded", "problems": ["jwks", "nats"], "version": brain.__version__}
    body = server.health()  # the detail says why
    assert body["status"] == "degraded"
    assert [p.split(":")[0] for p in body["problems"]] == ["jwks", "nats"]
    assert f"127.0.0.1:{dead_auth}" in body["problems"][0] and f"127.0.0.1:{dead_nats}" in body["problems"][1]


def test_public_health_is_for_load_balancers_and_the_detail_needs_the_metrics_token(make_server) -> None:  # type: ignore[no-untyped-def]
    server: BrainServer = make_server(config={"metrics": {"token": METRICS_TOKEN}}).start()
    detailed = wait_until(lambda: (b := server.health())["status"] == "ok" and b, timeout=15, what="/health ok")
    assert {"jwks", "nats", "stores", "supervisor", "uptime_seconds"} <= set(detailed)
    public = requests.get(f"{server.api_url}/health", timeout=5)
    assert public.status_code == 200 and public.headers["Cache-Control"] == "no-store"
    assert public.json() == {"status": "ok", "problems": [], "version": brain.__version__}
    # The figures (URLs, key ids, counts) only for the metrics token's bearer.
    for headers in ({}, {"Authorization": "Bearer not-the-token-at-all"}, {"Authorization": METRICS_TOKEN}):
        r = requests.get(f"{server.api_url}/health?detail=1", headers=headers, timeout=5)
        assert r.status_code == 401 and r.headers["WWW-Authenticate"] == 'Bearer realm="metrics"', r.text
        assert "jwks" not in r.text and "metrics token" in r.json()["message"]
    # Without a metrics token there is no credential to show it to: said so, never shown.
    closed: BrainServer = make_server("closed", config={"metrics": {}}).start()
    r = requests.get(f"{closed.api_url}/health?detail=1", timeout=5)
    assert r.status_code == 403 and r.json()["code"] == "HEALTH_DETAIL_DISABLED", r.text
    assert set(requests.get(f"{closed.api_url}/health", timeout=5).json()) == {"status", "problems", "version"}
    # A separate metrics listener serves the detail too, under the same rule as /metrics there.
    port = free_port()
    listener: BrainServer = make_server("listener", config={"metrics": {"port": port}}).start()
    r = wait_until(lambda: (x := requests.get(f"http://127.0.0.1:{port}/health", timeout=5)).json()["status"] == "ok"
                   and x, timeout=15, what="/health ok on the metrics listener")
    assert r.json()["jwks"]["loaded"] is True

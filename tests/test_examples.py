"""The quickstart's examples: the Python client follows a user's events live, and `brain serve`
serves the browser app at /examples/ in dev mode only (tests/test_browser.py runs the app)."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
from typing import Any

import requests

from tests.support import REPO, BrainServer
from tests.test_auth_helpers import NO_LIMITS, PASSWORD, bearer, sign_in, unique_email


def test_the_python_client_signs_up_posts_and_prints_events_as_they_commit(make_server: Any) -> None:
    server: BrainServer = make_server(config={"auth": NO_LIMITS}).start()
    email = unique_email("client")
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "examples" / "client.py"), email, PASSWORD, server.auth_url, server.api_url],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout or ()], daemon=True).start()
    try:
        assert lines.get(timeout=20).startswith("posted"), "the client did not post its note"
        first = lines.get(timeout=20)
        assert "hello from examples/client.py" in first
        # The account it signed up; an event from elsewhere shows up in its output.
        jwt = sign_in(server, email).json()["jwt"]
        r = requests.post(f"{server.api_url}/events", json={"type": "task.done", "data": {"task": "quickstart"}},
                          headers=bearer(jwt), timeout=10)
        assert r.status_code == 201
        second = lines.get(timeout=20)
        assert "quickstart" in second and str(r.json()["id"]) in second
    finally:
        proc.kill()
        proc.wait()


def test_the_browser_app_is_served_in_dev_mode_only(make_server: Any) -> None:
    dev: BrainServer = make_server("dev", config={"auth": NO_LIMITS}).start()
    r = requests.get(f"{dev.auth_url}/examples/", timeout=10)
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/html") and "EventSource" in r.text
    config = requests.get(f"{dev.auth_url}/examples/config.js", timeout=10).text
    assert json.loads(config.removeprefix("window.BRAIN = ").rstrip(";\n")) == {"auth": dev.auth_url, "api": dev.api_url}
    assert requests.get(f"{dev.auth_url}/examples/client.py", timeout=10).headers["Content-Type"].startswith("text/plain")
    for name in ("..%2Fsetup.cfg", "nope.html", "index.html%00.py", ".env"):
        assert requests.get(f"{dev.auth_url}/examples/{name}", timeout=10).status_code == 404, name
    dev.stop()

    production: BrainServer = make_server("production", config={
        "auth": {**NO_LIMITS, "argon2_memory_kib": 19456}, "server": {"mode": "production", "secret": "s" * 40},
    }).start()
    assert requests.get(f"{production.auth_url}/examples/", timeout=10).status_code == 404
    production.stop()


def quickstart_block() -> str:
    """The README's quickstart shell block (the one after `<!-- quickstart -->`)."""
    text = (REPO / "README.md").read_text()
    after = text.split("<!-- quickstart -->", 1)[1]
    return after.split("```sh\n", 1)[1].split("```", 1)[0]


def test_the_readme_quickstart_runs_as_written(make_server: Any) -> None:
    server: BrainServer = make_server(config={"auth": NO_LIMITS}).start()
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", quickstart_block()],
        env={**os.environ, "AUTH": server.auth_url, "API": server.api_url},
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "ada@example.com" in out
    assert '"next_cursor":null' in out and '"text":"hello brain"' in out
    # The search step found the note by a prefix, and marked the word.
    assert "{'text': 'hello <mark>brain</mark>'}" in out, out
    # The stream replayed the note with its id.
    assert "id: 1\ndata: {\"id\":1,\"type\":\"note.created\"" in out, out

"""docs/plugins.md's example plugin, installed as an entry point: an actor, a route and a purge
step of its own reach a real `brain serve` through the hooks alone (tests/plugins/notes_plugin.py)."""

from __future__ import annotations

import os
from pathlib import Path

import requests

from tests.support import REPO, wait_until
from tests.test_auth_helpers import PASSWORD, bearer, new_user

SAMPLE_DIST = REPO / "tests" / "plugins" / "sample_dist"


def test_the_example_plugin_adds_an_actor_a_route_and_a_purge_step(make_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    purged = tmp_path / "purged.txt"
    server = make_server(
        env={
            "BRAIN_PLUGINS__ENABLED": "notes",
            "PYTHONPATH": os.pathsep.join([str(SAMPLE_DIST), str(REPO)]),
            "BRAIN_TEST_NOTES_FILE": str(purged),
        }
    ).start()
    user = new_user(server)
    headers = bearer(user["jwt"])
    wait_until(lambda: requests.get(f"{server.api_url}/me", headers=headers, timeout=5).status_code == 200, what="API")

    # The route: behind the API listener's bearer-token guard, backed by the plugin's actor.
    assert requests.post(f"{server.api_url}/notes", timeout=5).status_code == 401
    assert requests.post(f"{server.api_url}/notes", headers=headers, timeout=5).json() == {"count": 1}
    assert requests.post(f"{server.api_url}/notes", headers=headers, timeout=5).json() == {"count": 2}
    assert requests.get(f"{server.api_url}/notes/count", headers=headers, timeout=5).json() == {"count": 2}
    # Described in /openapi.json like every other route.
    spec = requests.get(f"{server.api_url}/openapi.json", timeout=5).json()
    assert spec["paths"]["/notes/count"]["get"]["operationId"] == "notesCount"

    # The purge step: deleting the account reaches the plugin, which forgets the user's notes.
    r = requests.post(
        f"{server.auth_url}/api/auth/delete-user", json={"password": PASSWORD}, headers=bearer(user["token"]), timeout=60
    )
    assert r.status_code == 200, r.text
    assert purged.read_text().split() == [user["user"]["id"], "2"]

"""The plugin manager: entry-point loading, validation, and hooks documented."""

from __future__ import annotations

import importlib
import inspect
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from brain.errors import PluginError
from brain.plugins import hookspecs
from brain.plugins.manager import builtin_manifests, installed_plugins, load_plugins
from tests.plugins import good_plugin

REPO = Path(__file__).resolve().parent.parent
SAMPLE_DIST = Path(__file__).parent / "plugins" / "sample_dist"


@pytest.fixture
def sample_entry_points() -> Iterator[None]:
    """Make the sample plugins visible as installed entry points (a dist-info on sys.path)."""
    sys.path.insert(0, str(SAMPLE_DIST))
    try:
        yield
    finally:
        sys.path.remove(str(SAMPLE_DIST))


def test_bundled_plugins_are_installed_as_entry_points() -> None:
    found = installed_plugins()
    assert {"gmail", "outlook"} <= set(found)
    assert found["gmail"].value == "brain_gmail.plugin"


def test_enabled_plugin_is_loaded_and_called(sample_entry_points: None) -> None:
    pm = load_plugins(["good"])
    assert pm.get_plugin("good") is good_plugin
    assert pm.hook.validate_sign_up(email="robot@x.io", name="R") == ["no robots"]
    assert pm.hook.validate_sign_up(email="ann@x.io", name="Ann") == []


def test_plugins_not_enabled_are_not_loaded(sample_entry_points: None) -> None:
    pm = load_plugins([])
    assert pm.get_plugin("good") is None
    assert pm.get_plugin("misspelt") is None


def test_missing_configured_plugin_is_named() -> None:
    with pytest.raises(PluginError, match="'nosuchplugin' is enabled in config but not installed"):
        load_plugins(["nosuchplugin"])


def test_misspelt_hook_is_reported(sample_entry_points: None) -> None:
    with pytest.raises(PluginError) as info:
        load_plugins(["misspelt"])
    assert "misspelt" in str(info.value)
    assert "register_mail_provider" in str(info.value)


def test_hook_with_unknown_argument_is_reported(sample_entry_points: None) -> None:
    with pytest.raises(PluginError) as info:
        load_plugins(["wrongargs"])
    assert "wrongargs" in str(info.value)
    assert "password" in str(info.value)


def hookspec_modules() -> list[object]:
    """The core's hookspecs and each built-in plugin's own."""
    return [hookspecs, *(importlib.import_module(m.hookspecs) for m in builtin_manifests() if m.hookspecs)]


def hookspec_functions() -> list[tuple[str, inspect.Signature]]:
    return [
        (name, inspect.signature(fn))
        for module in hookspec_modules()
        for name, fn in inspect.getmembers(module, inspect.isfunction)
        if hasattr(fn, "brain_spec")
    ]


def test_every_hook_is_documented_with_its_signature_and_an_example() -> None:
    docs = (REPO / "docs" / "plugins.md").read_text()
    specs = hookspec_functions()
    assert len(specs) >= 5
    for name, sig in specs:
        args = ", ".join(sig.parameters)
        heading = f"### `{name}({args})`"
        assert heading in docs, f"hook {name} is not documented as {heading!r} in docs/plugins.md"
        section = docs.split(heading, 1)[1].split("\n### ", 1)[0]
        assert "```python" in section and "@hookimpl" in section, f"hook {name} has no example"
        assert re.search(rf"def {name}\(", section), f"the example for {name} does not implement it"


def test_every_hookspec_has_a_docstring() -> None:
    for module in hookspec_modules():
        for name, fn in inspect.getmembers(module, inspect.isfunction):
            if hasattr(fn, "brain_spec"):
                assert fn.__doc__, name


def test_event_stored_hook_sees_every_committed_event(make_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import json
    import os

    import requests

    from tests.support import REPO, wait_until
    from tests.test_auth_helpers import bearer, new_user

    events_file = tmp_path / "stored.jsonl"
    server = make_server(
        env={
            "BRAIN_PLUGINS__ENABLED": "eventsample",
            "PYTHONPATH": os.pathsep.join([str(SAMPLE_DIST), str(REPO)]),
            "BRAIN_TEST_EVENTS_FILE": str(events_file),
        }
    ).start()
    user = new_user(server)
    headers = bearer(user["jwt"])
    wait_until(lambda: requests.get(f"{server.api_url}/me", headers=headers, timeout=5).status_code == 200, what="API")
    r = requests.post(f"{server.api_url}/events", json={"type": "note.created", "data": {"n": 1}}, headers=headers, timeout=10)
    assert r.status_code == 201, r.text
    batch = [{"type": "note.created", "data": {"n": i}} for i in (2, 3)]
    r = requests.post(f"{server.api_url}/events", json=batch, headers=headers, timeout=10)
    assert r.status_code == 201, r.text
    # A refused event (bad type) is never reported.
    assert requests.post(f"{server.api_url}/events", json={"type": "", "data": 1}, headers=headers, timeout=10).status_code == 400

    def seen() -> list[dict]:
        if not events_file.exists():
            return []
        lines = [json.loads(line) for line in events_file.read_text().splitlines()]
        return lines if len(lines) >= 3 else []

    lines = wait_until(seen, timeout=10, what="the plugin to see three events")
    assert [line["event"]["data"]["n"] for line in lines] == [1, 2, 3]
    assert {line["user_id"] for line in lines} == {user["user"]["id"]}
    assert all(line["event"]["type"] == "note.created" and "id" in line["event"] for line in lines)

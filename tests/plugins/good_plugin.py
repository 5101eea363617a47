"""A sample plugin that implements hooks correctly (used by tests/test_plugins.py)."""

from brain.plugins import hookimpl

seen: dict[str, object] = {}


@hookimpl
def brain_startup(settings, plugin_settings):
    seen["startup"] = dict(plugin_settings.get("good", {}))


@hookimpl
def validate_sign_up(email):
    return "no robots" if email.startswith("robot@") else None

"""A sample auth plugin (tests/test_auth_plugins.py): vetoes, claims, sign-up notifications.

Enabled as `authsample` through the sample dist-info's entry points. Its table:
`[plugins.authsample] notify_file = "..."` (where after_sign_up appends one JSON line per user).
"""

import json

from brain.config import check_plugin_table
from brain.plugins import hookimpl

_settings: dict[str, str] = {}


@hookimpl
def brain_startup(settings, plugin_settings):
    table = plugin_settings.get("authsample", {})
    check_plugin_table("authsample", table, frozenset({"notify_file"}))
    _settings.update(table)


@hookimpl
def validate_sign_up(email, name):
    if email.endswith("@blocked.example"):
        return "sign-ups from blocked.example are closed"
    if name == "robot":
        return "no robots"
    return None


@hookimpl
def jwt_claims(user):
    # "plan" is allowed; "sub" and "iss" are reserved and must be refused by the issuer.
    return {"plan": "pro" if user["email"].endswith("@pro.example") else "free", "sub": "impostor", "iss": "evil"}


@hookimpl
def after_sign_up(user):
    path = _settings.get("notify_file")
    if path:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"id": user["id"], "email": user["email"]}) + "\n")

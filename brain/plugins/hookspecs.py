"""The hooks a brain plugin may implement. Each is documented, with an example, in docs/plugins.md.

Plugins are distributions that declare an entry point in the group `brain`, e.g.
`gmail = brain_gmail.plugin`; the module holds functions decorated with `@hookimpl`.
Hooks are called with keyword arguments only.
"""

from __future__ import annotations

from typing import Any

import pluggy

hookspec = pluggy.HookspecMarker("brain")
hookimpl = pluggy.HookimplMarker("brain")


@hookspec(historic=True)
def brain_startup(settings: Any, plugin_settings: Any) -> None:
    """Receive the server settings and this plugin's own `[plugins.NAME]` table at start-up."""


@hookspec
def register_mail_providers(register: Any) -> None:
    """Register mail providers: call `register(provider_class)` once for each."""


@hookspec
def reserve_event_types(reserve: Any) -> None:
    """Reserve event type namespaces only the server writes: call `reserve(namespace)` for each."""


@hookspec
def validate_sign_up(email: str, name: str) -> str | None:
    """Veto a sign-up by returning a reason (sent to the client as a 400), or None to allow it."""


@hookspec
def jwt_claims(user: dict[str, Any]) -> dict[str, Any] | None:
    """Return extra claims for the user's JWT; reserved claims (sub, iss, aud, exp, ...) are refused."""


@hookspec
def after_sign_up(user: dict[str, Any]) -> None:
    """Be told that a user signed up (runs after the user is committed)."""


@hookspec(firstresult=True)
def send_auth_email(to: str, subject: str, text: str, kind: str) -> bool | None:
    """Deliver an auth email (verification, password reset); return True when sent."""


@hookspec
def event_stored(user_id: str, event: dict[str, Any]) -> None:
    """Be told that an event was committed to a user's store (called off the request path)."""

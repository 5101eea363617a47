"""The auth role's own hooks (added by its manifest; documented in docs/plugins.md)."""

from __future__ import annotations

from typing import Any

from brain.plugins import hookspec


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

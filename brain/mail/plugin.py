"""What the mail role adds through the plugin hooks (registered by the runtime as a built-in)."""

from __future__ import annotations

from collections.abc import Callable

from brain.plugins import hookimpl


class MailPlugin:
    """The mail role's hook implementations."""

    # pluggy names a plugin object by its __name__ (shown in the "plugins loaded" log line).
    __name__ = "builtin-mail"

    @hookimpl
    def reserve_event_types(self, reserve: Callable[[str], None]) -> None:
        """`mail.*` is written by mail sync only: a client must not plant mail that never arrived."""
        reserve("mail")

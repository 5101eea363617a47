"""Mail sync: provider plugins, one `MailSync` actor per connected account, and the
connect / OAuth callback / status / disconnect routes of the API role.

The runtime wires it in with two calls: `child_specs(rt)` gives the `mail` supervisor under
`data_sup` (it resumes every connected account whenever it starts), and `setup_routes(app,
rt)` adds the routes to the API application. Provider plugins implement
`brain.mail.provider.MailProvider` and register it through `register_mail_providers`.
"""

from __future__ import annotations

import math
import threading
import weakref
from typing import TYPE_CHECKING, Any

from aiohttp import web

from brain.actors.supervisor import ChildSpec
from brain.mail.service import MailService, MailSupervisor

if TYPE_CHECKING:
    from brain.runtime import Runtime

__all__ = ["MailService", "child_specs", "service_for", "setup_routes"]

_services: weakref.WeakKeyDictionary[Any, MailService] = weakref.WeakKeyDictionary()
_services_lock = threading.Lock()


def service_for(rt: Runtime) -> MailService:
    """The process's mail service (created on first use)."""
    with _services_lock:
        service = _services.get(rt)
        if service is None:
            service = MailService(rt.settings, rt.secret, rt.pm, _store_sink(rt))
            _services[rt] = service
        return service


def _store_sink(rt: Runtime) -> Any:
    def append(user_id: str, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        stores = getattr(rt, "stores", None)
        if stores is None:
            raise RuntimeError("this process has no event stores (API role not running)")
        return stores.append_from_thread(user_id, events, timeout=30, max_event_bytes=rt.settings.mail.max_event_bytes)

    return append


def child_specs(rt: Runtime) -> list[ChildSpec]:
    """The `mail` supervisor under data_sup: dynamic MailSync children, resumed on start."""
    service = service_for(rt)
    return [
        ChildSpec(
            id="mail",
            # A supervisor waits for its children, each bounded by its own timeout (OTP).
            shutdown_timeout=math.inf,
            start=lambda link: MailSupervisor.start(
                link=link, name="mail", strategy="one_for_one", max_restarts=50, max_seconds=10, service=service
            ),
        )
    ]


def setup_routes(app: web.Application, rt: Runtime) -> None:
    """Add the mail routes to the API application."""
    from brain.mail.routes import add_routes

    add_routes(app, rt, service_for(rt))

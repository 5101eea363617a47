"""Everything webhooks add to a process, through the core's hooks.

Its actors (a `webhooks` group in the data tier after the stores: the DeliveryQueue, then the
WebhookSender), the commit log listener that pokes the queue, its routes on the API listener,
the event types only it writes (`webhook.*`), its /health figures, webhooks.db in backups, and
what it deletes when a user is deleted.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from brain.actors.supervisor import ChildSpec
from brain.actors.tree import Child, Group
from brain.backup import BackupFile
from brain.contracts import COMMIT_LOG, EVENT_SINK
from brain.errors import ServiceUnavailable
from brain.plugins import hookimpl
from brain.process import Process
from brain.routes import Components, Route
from brain.storage import storage_faults
from brain.webhooks import routes
from brain.webhooks.db import WebhookDb
from brain.webhooks.directory import WebhookDirectory
from brain.webhooks.queue import DB_FILE, DeliveryQueue
from brain.webhooks.sender import WebhookSender
from brain.webhooks.state import link_workers, webhooks

LISTENER = "api"
GROUP = "webhooks"


@hookimpl
def reserve_event_types(reserve: Callable[[str], None]) -> None:
    """`webhook.*` (a disabled endpoint) is written by webhooks only."""
    reserve("webhook")


@hookimpl(trylast=True)  # after the API role's, which offers the commit log
def setup_process(rt: Process) -> None:
    """Hear of every commit: users with endpoints poke the queue (the primary worker's, with several)."""
    hub = webhooks(rt)
    rt.stash[COMMIT_LOG].listen(hub.committed)
    if rt.worker.several:
        link_workers(rt, hub)


@hookimpl
def register_children(rt: Process, register: Callable[[Child | Group], None]) -> None:
    """The queue, then the sender that asks it for work (rest_for_one: a new queue, a new sender);
    on a cluster node, the directory that moves endpoints with their users."""
    hub = webhooks(rt)
    register(Group(GROUP, parent="data_sup", strategy="rest_for_one", max_restarts=10, max_seconds=60, after=("stores",)))
    register(Child(
        ChildSpec(id="queue", start=lambda link: DeliveryQueue.start(
            link=link, hub=hub, commits=rt.stash[COMMIT_LOG], events=rt.stash[EVENT_SINK], faults=storage_faults(rt),
        )),
        parent=GROUP,
    ))
    if rt.worker.several and not rt.worker.primary:
        return  # the primary worker sends every delivery (brain.webhooks.state)
    register(Child(
        ChildSpec(id="sender", start=lambda link: WebhookSender.start(link=link, hub=hub, loop=rt.loop)),
        parent=GROUP, after=("queue",),
    ))
    if rt.settings.cluster.node_id:
        # A cluster node (its primary worker): endpoints follow their users (brain.webhooks.directory).
        register(Child(
            ChildSpec(id="directory", start=lambda link: WebhookDirectory.start(link=link, rt=rt, hub=hub),
                      shutdown_timeout=10.0),
            parent=GROUP, after=("sender",),
        ))


@hookimpl
def register_routes(rt: Process, listener: str, register: Callable[[Route | Components], None]) -> None:
    """POST/GET /webhooks, GET/DELETE /webhooks/{id}, GET /webhooks/{id}/deliveries; a delivery's description."""
    if listener == LISTENER:
        for route in routes.routes(rt):
            register(route)


@hookimpl
def register_backup(register: Callable[[BackupFile], None]) -> None:
    """webhooks.db: endpoints (secrets sealed), the delivery queue and its cursors."""
    register(BackupFile(DB_FILE, "webhooks"))


@hookimpl
def register_health(rt: Process, register: Callable[..., None]) -> None:
    """Endpoints, deliveries and attempts since start; degraded while webhooks.db cannot be opened."""
    hub = webhooks(rt)
    register("webhooks", figures=hub.stats, problems=hub.problems)


@hookimpl
def user_purge(rt: Process, user_id: str) -> dict[str, Any]:
    """Delete the user's endpoints, their queued deliveries and attempts."""
    path = rt.settings.data_path / DB_FILE
    if not path.exists():
        return {"webhooks_removed": 0}
    try:
        removed = webhooks(rt).queue().purge(user_id).get(timeout=30)
    except ServiceUnavailable:
        # No queue running (an offline `brain users delete`, or one restarting): SQLite's own
        # locking lets this connection work beside any other.
        db = WebhookDb(path)
        try:
            removed = db.purge_user(user_id)
        finally:
            db.close()
    return {"webhooks_removed": removed}

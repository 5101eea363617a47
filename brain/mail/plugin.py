"""Everything mail sync adds to a process, through the core's hooks.

Its supervisor (`mail`, in the data tier after the stores; it resumes every connected account
whenever it starts), its routes on the API role's listener, its /metrics figures, the event
types only it writes (`mail.*`), and what it deletes when a user is deleted.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from typing import Any

from aiohttp import web
from peewee import fn
from prometheus_client.metrics_core import GaugeMetricFamily, Metric

from brain.actors.supervisor import ChildSpec
from brain.actors.tree import Child
from brain.backup import BackupFile
from brain.contracts import MAIL_ACCOUNTS
from brain.mail import routes
from brain.mail.db import Account, States
from brain.mail.directory import MailDirectory, answer_push_users
from brain.mail.ownership import LeasedOwnership, MailOwner, ownership_for
from brain.mail.service import MAIL_SUP, MailSupervisor, service_for, stop_user
from brain.plugins import hookimpl
from brain.process import Process
from brain.routes import Route

log = logging.getLogger("brain.mail")

LISTENER = "api"
PARENT, _, CHILD_ID = MAIL_SUP.partition("/")


@hookimpl
def reserve_event_types(reserve: Callable[[str], None]) -> None:
    """`mail.*` is written by mail sync only: a client must not plant mail that never arrived."""
    reserve("mail")


class _AccountStatus:
    """The `MailAccounts` offer: the mail service's account status, the service made on first use."""

    def __init__(self, rt: Process) -> None:
        self._rt = rt

    def status(self, user_id: str) -> list[dict[str, Any]]:
        """Every account of the user as GET /mail/status shows them (blocking)."""
        return service_for(self._rt).status(user_id)


@hookimpl
def setup_process(rt: Process) -> None:
    """Offer the users' account status to other plugins (the MCP door's `mail_accounts`); on a
    cluster node of several workers, answer the others' questions about push notifications."""
    rt.stash.set(MAIL_ACCOUNTS, _AccountStatus(rt))
    if rt.settings.cluster.node_id and rt.worker.several:
        answer_push_users(rt)


@hookimpl
def register_children(rt: Process, register: Callable[[Child], None]) -> None:
    """The mail supervisor: dynamic MailSync children, resumed on every start; with several
    workers, the `mail_owner` beside it decides which accounts this process syncs; on a cluster
    node, the `mail_directory` moves accounts with their users (brain.mail.directory; in the primary
    worker alone when there are several)."""
    service = service_for(rt)
    ownership = ownership_for(rt)
    leased = isinstance(ownership, LeasedOwnership)
    register(Child(
        ChildSpec(
            id=CHILD_ID,
            # A supervisor waits for its children, each bounded by its own timeout (OTP).
            shutdown_timeout=math.inf,
            start=lambda link: MailSupervisor.start(
                link=link, name=CHILD_ID, strategy="one_for_one", max_restarts=50, max_seconds=10, service=service,
                resume=not leased,
            ),
        ),
        parent=PARENT, after=("stores",),
    ))
    if rt.settings.cluster.node_id and (not leased or rt.worker.primary):
        # A cluster node: the accounts of the users placed on it, from the replicated bucket.
        register(Child(
            ChildSpec(id="mail_directory", start=lambda link: MailDirectory.start(link=link, rt=rt, service=service),
                      shutdown_timeout=30.0),
            parent=PARENT, after=(CHILD_ID,),
        ))
    if isinstance(ownership, LeasedOwnership):
        owner = ownership
        register(Child(
            # Stopping it stops the accounts' actors first (a page may finish): give it time.
            ChildSpec(id="mail_owner", start=lambda link: MailOwner.start(link=link, ownership=owner),
                      shutdown_timeout=60.0),
            parent=PARENT, after=(CHILD_ID,),
        ))


@hookimpl
def register_backup(register: Callable[[BackupFile], None]) -> None:
    """mail.db: accounts, sealed credentials, message index."""
    register(BackupFile("mail.db", "mail"))


@hookimpl
def register_routes(rt: Process, listener: str, register: Callable[[Route], None]) -> None:
    """/mail/connect, /mail/oauth/callback, /mail/status, /mail/disconnect."""
    if listener == LISTENER:
        for route in routes.routes(rt, service_for(rt), ownership_for(rt)):
            register(route)


@hookimpl
def setup_app(rt: Process, listener: str, app: web.Application) -> None:
    """When the API app stops: connects and downloads still waiting for a thread are dropped
    (running ones end with their provider timeout)."""
    if listener != LISTENER:
        return
    service = service_for(rt)

    async def stop_connect_pool(_app: web.Application) -> None:
        service.connect_pool.shutdown(wait=False, cancel_futures=True)
        service.download_pool.shutdown(wait=False, cancel_futures=True)
        service.conversion.close()

    app.on_cleanup.append(stop_connect_pool)


@hookimpl
def user_purge(rt: Process, user_id: str) -> dict[str, int]:
    """Stop the user's sync actors, end their push channels and revoke their grants where the
    provider allows, then delete their accounts, credentials, message index and the index of
    their cached attachments (the files go with the user's directory)."""
    if not (rt.settings.data_path / "mail.db").exists():
        return {"mail_accounts_removed": 0}  # never used here: nothing to open, nothing to delete
    stop_user(rt, user_id)
    service = service_for(rt)
    for account in service.db.accounts_for_user(user_id):
        try:
            service.disconnect(account)
        except Exception:  # the grant expires by itself; the user's data must go regardless
            log.exception("mail account %s: could not be disconnected at the provider", account.id)
    removed = service.db.purge_user(user_id)
    return {"mail_accounts_removed": removed}


@hookimpl
def register_health(rt: Process, register: Callable[..., None]) -> None:
    """Which accounts this worker syncs (the leases it holds), with several workers."""
    ownership = ownership_for(rt)
    if isinstance(ownership, LeasedOwnership):
        register("mail", figures=ownership.stats)


@hookimpl
def register_metrics(rt: Process, register: Callable[[str, Callable[[], Iterable[Metric]]], None]) -> None:
    """Connected accounts by sync state (mail.db's: the primary worker's figure stands for the server)."""
    if not rt.worker.primary:
        return

    def accounts() -> list[Metric]:
        db = service_for(rt).db
        with db.unit():
            rows = list(Account.select(Account.state, fn.COUNT(Account.id)).group_by(Account.state).tuples())
        counts = dict.fromkeys(
            (States.SYNCING, States.IDLE, States.BACKOFF, States.NEEDS_REAUTH, States.ERROR, States.DISCONNECTED), 0
        )
        counts.update(rows)
        family = GaugeMetricFamily("brain_mail_accounts", "Connected mail accounts by sync state.", labels=["state"])
        for state, count in sorted(counts.items()):
            family.add_metric([state], count)
        return [family]

    register("mail", accounts)
